"""COCO annotations (instances or panoptic) as semantic label maps, converted once and cached.

Classes are the file's ``categories`` in ascending ``id`` order: label value k is the k-th
category. Unlabelled pixels get the ignore value (255 for at most 255 categories, else 65535
with 16-bit labels).

Instances (polygons, uncompressed or compressed RLE, decoded by ``pycocotools``) are painted
crowd regions first, then the other instances from the largest mask to the smallest, so where
instances overlap the **smaller** one wins (it is usually the one in front); equal areas: the
later annotation in the file wins. Crowd regions (``iscrowd: 1``) are labelled with their class
(``crowd="class"``, as panopticapi's semantic conversion does), or left unlabelled
(``crowd="ignore"``). Panoptic files are read through their PNGs (segment id = R + 256·G +
256²·B; 0 is unlabelled); segments do not overlap there.

The labels are written once (each file atomically, the manifest last) under
``$LMSEG_CACHE/datasets/coco/KEY/``, KEY a sha256 of the annotation file's bytes, the converter
version and the options (and, for panoptic files, the PNGs' sizes and modification times), so
an edited annotation file is converted again and an unchanged one never is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lmseg.data.datasets import BadSampleError, read_image
from lmseg.data.folder import DatasetFormatError, default_ignore_value
from lmseg.io import atomic_write, validate_classes

__all__ = [
    "CONVERTER_VERSION",
    "CROWD_MODES",
    "CocoLabels",
    "coco_semantic_labels",
    "find_coco_images",
    "instance_label",
    "panoptic_label",
]

CONVERTER_VERSION = 1
CROWD_MODES = ("class", "ignore")


@dataclass
class CocoLabels:
    """The semantic labels of one COCO annotation file.

    Attributes:
        classes: K category names, in ascending category id order.
        ignore_value: the label value of unlabelled pixels.
        samples: (image file, label file) pairs of the images found on disk.
        problems: one line per annotation or image that could not be used, naming it.
        label_dir: the cache folder of the label PNGs.
        kind: ``"instances"`` or ``"panoptic"``.
    """

    classes: list[str]
    ignore_value: int
    samples: list[tuple[Path, Path]]
    problems: list[str] = field(default_factory=list)
    label_dir: Path = Path()
    kind: str = "instances"


def _mask_utils() -> Any:
    try:
        from pycocotools import mask
    except ImportError:
        raise ImportError(
            "COCO annotation files need pycocotools: pip install 'lmseg[coco]'"
        ) from None
    return mask


def _decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A ``bool (H, W)`` mask of a polygon list or an RLE; raises ValueError on malformed ones."""
    mask_utils = _mask_utils()
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list)]
        if len(polygons) != len(segmentation) or not polygons:
            raise ValueError("segmentation must be a list of polygons or an RLE")
        for polygon in polygons:
            if len(polygon) < 6 or len(polygon) % 2:
                raise ValueError(f"polygon with {len(polygon)} coordinates (needs >= 3 points)")
        rle = mask_utils.merge(
            mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
        )
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        size = [int(s) for s in segmentation.get("size", ())]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image's [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if sum(int(c) for c in counts) != height * width:
                raise ValueError(f"RLE counts sum to {sum(counts)}, not {height}x{width}")
            rle = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
        elif isinstance(counts, str):
            rle = {"size": size, "counts": counts.encode("ascii")}
        else:
            raise ValueError("RLE counts must be a list or a string")
    else:
        raise ValueError("segmentation must be a list of polygons or an RLE")
    mask = mask_utils.decode(rle)
    if mask.shape != (height, width):
        raise ValueError(f"decoded mask is {mask.shape}, not ({height}, {width})")
    return mask.astype(bool)


def instance_label(
    height: int,
    width: int,
    annotations: list[dict[str, Any]],
    index_of: dict[int, int],
    *,
    ignore_value: int,
    crowd: str = "class",
    dtype: Any = np.uint8,
    where: str = "",
) -> tuple[np.ndarray, list[str]]:
    """The semantic label ``(H, W)`` of one image's instance annotations.

    Crowd regions are painted first, then instances from the largest mask to the smallest (a
    smaller overlapping instance wins; equal areas: the later annotation wins).

    Args:
        annotations: the image's COCO annotations, in file order.
        index_of: category id -> class index.
        ignore_value: value of unlabelled pixels (and of crowd regions with ``crowd="ignore"``).
        where: names the image in problems.

    Returns:
        The label map and the problems (annotations that were skipped, one line each).
    """
    label = np.full((height, width), ignore_value, dtype=dtype)
    problems: list[str] = []
    painted: list[tuple[int, int, int, np.ndarray, int]] = []
    for order, ann in enumerate(annotations):
        name = f"annotation {ann.get('id', order)} of {where}"
        category = ann.get("category_id")
        if category not in index_of:
            problems.append(f"{name}: category_id {category!r} is not in categories (skipped)")
            continue
        try:
            mask = _decode(ann.get("segmentation"), height, width)
        except (ValueError, TypeError, KeyError, IndexError) as error:
            problems.append(f"{name}: {error} (skipped)")
            continue
        is_crowd = bool(ann.get("iscrowd", 0))
        value = ignore_value if is_crowd and crowd == "ignore" else index_of[category]
        painted.append((0 if is_crowd else 1, -int(mask.sum()), order, mask, value))
    for *_, mask, value in sorted(painted, key=lambda p: p[:3]):
        label[mask] = value
    return label, problems


def panoptic_label(
    png: np.ndarray,
    segments: list[dict[str, Any]],
    index_of: dict[int, int],
    *,
    ignore_value: int,
    crowd: str = "class",
    dtype: Any = np.uint8,
    where: str = "",
) -> tuple[np.ndarray, list[str]]:
    """The semantic label ``(H, W)`` of a panoptic PNG ``(H, W, 3)`` and its ``segments_info``.

    Segment id = R + 256·G + 256²·B; id 0 and ids absent from ``segments`` stay unlabelled.
    """
    rgb = png.astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    unique, inverse = np.unique(ids, return_inverse=True)
    values = np.full(len(unique), ignore_value, dtype=np.int64)
    position = {int(u): i for i, u in enumerate(unique)}
    problems: list[str] = []
    listed = set()
    for segment in segments:
        sid, category = segment.get("id"), segment.get("category_id")
        listed.add(sid)
        if category not in index_of:
            problems.append(
                f"segment {sid} of {where}: category_id {category!r} is not in categories "
                "(left unlabelled)"
            )
            continue
        if sid in position and not (segment.get("iscrowd", 0) and crowd == "ignore"):
            values[position[sid]] = index_of[category]
    stray = sorted(int(u) for u in unique if u != 0 and int(u) not in listed)
    if stray:
        problems.append(
            f"{where}: segment ids {stray[:8]} are not in segments_info (left unlabelled)"
        )
    return values[inverse].reshape(ids.shape).astype(dtype), problems


def find_coco_images(annotation_file: Path, file_name: str) -> Path:
    """The image folder of a COCO file, found by where its first image is.

    Looked at in order, for ``D/NAME_SPLIT.json`` (SPLIT: the stem after its last ``_``, or
    the whole stem): ``D/images``, ``D/../images/SPLIT``, ``D/../SPLIT`` (COCO's own layout,
    ``annotations/instances_val2017.json`` beside ``val2017/``), ``D/../images``, ``D``.

    Raises:
        DatasetFormatError: none of them holds ``file_name``.
    """
    folder = annotation_file.parent
    split = annotation_file.stem.rsplit("_", 1)[-1]
    candidates = [
        folder / "images",
        folder.parent / "images" / split,
        folder.parent / split,
        folder.parent / "images",
        folder,
    ]
    for candidate in candidates:
        if (candidate / file_name).is_file():
            return candidate
    raise DatasetFormatError(
        f"{annotation_file}: cannot find its images (looked for {file_name} in "
        f"{', '.join(str(c) for c in candidates)}); put them in one of these folders or name "
        "the folder with images: in dataset.yaml"
    )


def _categories(data: dict[str, Any], path: Path) -> tuple[list[str], dict[int, int]]:
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DatasetFormatError(f"{path}: no categories list")
    try:
        ordered = sorted(categories, key=lambda c: int(c["id"]))
        names = validate_classes([str(c["name"]) for c in ordered])
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetFormatError(f"{path}: categories: {error}") from None
    if len(names) > 65535:
        raise DatasetFormatError(f"{path}: {len(names)} categories do not fit 16-bit labels")
    return names, {int(c["id"]): k for k, c in enumerate(ordered)}


def _cache_key(raw: bytes, crowd: str, extra: str) -> str:
    digest = hashlib.sha256(raw)
    digest.update(f"\0lmseg-coco-v{CONVERTER_VERSION}\0crowd={crowd}\0{extra}".encode())
    return digest.hexdigest()


def _panoptic_folder(path: Path, given: Path | None) -> Path:
    folder = given if given is not None else path.parent / path.stem
    if not folder.is_dir():
        raise DatasetFormatError(
            f"{path}: panoptic PNG folder {folder} not found (COCO's layout keeps "
            "annotations/panoptic_val2017/ beside annotations/panoptic_val2017.json)"
        )
    return folder


def _panoptic_stats(folder: Path, annotations: list[dict[str, Any]]) -> str:
    parts = []
    for ann in annotations:
        png = folder / str(ann.get("file_name", ""))
        stat = png.stat() if png.is_file() else None
        parts.append(f"{png.name}:{stat.st_size}:{stat.st_mtime_ns}" if stat else f"{png.name}:-")
    return "\n".join(parts)


def _image_entries(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    images = data.get("images")
    if not isinstance(images, list):
        raise DatasetFormatError(f"{path}: no images list")
    return [im for im in images if isinstance(im, dict)]


def _png_writer(array: np.ndarray) -> Callable[[str], None]:
    """A writer for :func:`lmseg.io.atomic_write`: 8- or 16-bit greyscale PNG of ``array``."""
    return lambda tmp: Image.fromarray(array).save(tmp, format="PNG")


def _convert(
    path: Path,
    entries: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    index_of: dict[int, int],
    label_dir: Path,
    ignore_value: int,
    crowd: str,
    masks_dir: Path | None,
    progress: bool | None,
) -> tuple[list[dict[str, str]], list[str]]:
    """Write one label PNG per image entry; returns the manifest records and the problems."""
    from tqdm import tqdm

    dtype = np.uint8 if ignore_value <= 255 else np.uint16
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in annotations:
        by_image[ann.get("image_id")].append(ann)
    records: list[dict[str, str]] = []
    problems: list[str] = []
    bar = tqdm(
        entries,
        desc=f"labels of {path.name}",
        disable=None if progress is None else not progress,
        leave=False,
    )
    for position, entry in enumerate(bar):
        file_name = str(entry.get("file_name", ""))
        where = f"image {file_name or entry.get('id')} in {path.name}"
        try:
            height, width = int(entry["height"]), int(entry["width"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{where}: no height/width (skipped)")
            continue
        anns = by_image.get(entry.get("id"), [])
        found: list[str] = []
        if masks_dir is None:
            label, found = instance_label(
                height, width, anns, index_of,
                ignore_value=ignore_value, crowd=crowd, dtype=dtype, where=where,
            )  # fmt: skip
        elif not anns:
            label = np.full((height, width), ignore_value, dtype=dtype)
        else:
            png_path = masks_dir / str(anns[0].get("file_name", ""))
            try:
                png = read_image(png_path)
            except BadSampleError as error:
                problems.append(f"{error} ({where} skipped)")
                continue
            if png.shape[:2] != (height, width):
                problems.append(
                    f"panoptic PNG {png_path}: size {png.shape[1]}x{png.shape[0]} differs from "
                    f"{width}x{height} of {where} (skipped)"
                )
                continue
            label, found = panoptic_label(
                png, anns[0].get("segments_info", []), index_of,
                ignore_value=ignore_value, crowd=crowd, dtype=dtype,
                where=f"panoptic PNG {png_path}",
            )  # fmt: skip
        problems += found
        label_file = label_dir / f"{position:08d}.png"
        atomic_write(label_file, _png_writer(label))
        records.append({"file_name": file_name, "label": label_file.name})
    return records, problems


def coco_semantic_labels(
    annotation_file: str | os.PathLike[str],
    *,
    images: str | os.PathLike[str] | None = None,
    panoptic_masks: str | os.PathLike[str] | None = None,
    crowd: str = "class",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> CocoLabels:
    """Semantic labels of a COCO instance or panoptic file, converted once and cached.

    Args:
        annotation_file: the COCO JSON (instances: ``annotations`` with ``segmentation``;
            panoptic: ``annotations`` with ``segments_info`` and a PNG ``file_name``).
        images: the image folder (default: :func:`find_coco_images`).
        panoptic_masks: the panoptic PNG folder (default: beside the JSON, named as its stem).
        crowd: ``"class"`` or ``"ignore"``, what crowd regions become.
        cache_dir: where label folders are kept (default ``$LMSEG_CACHE/datasets/coco``).
        progress: show a progress bar while converting (None: only on a terminal).

    Raises:
        DatasetFormatError: the file is not COCO JSON (no categories, images or annotations).
        ImportError: pycocotools is not installed (instance files need it).
    """
    from lmseg.weights import cache_dir as lmseg_cache

    path = Path(annotation_file)
    if crowd not in CROWD_MODES:
        raise DatasetFormatError(f"crowd must be one of {CROWD_MODES}, got {crowd!r}")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetFormatError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DatasetFormatError(f"{path}: not a COCO annotation file (no annotations list)")
    classes, index_of = _categories(data, path)
    entries = _image_entries(data, path)
    annotations = [a for a in data["annotations"] if isinstance(a, dict)]
    panoptic = bool(annotations) and "segments_info" in annotations[0]
    masks_dir = None
    if panoptic:
        masks_dir = _panoptic_folder(path, Path(panoptic_masks) if panoptic_masks else None)
    extra = _panoptic_stats(masks_dir, annotations) if masks_dir is not None else ""
    key = _cache_key(raw, crowd, extra)
    out = Path(cache_dir) if cache_dir is not None else lmseg_cache("datasets") / "coco"
    out = out / key[:24]
    ignore_value = default_ignore_value(len(classes))
    manifest_path = out / "manifest.json"
    manifest: dict[str, Any] | None = None
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("version") != CONVERTER_VERSION:
            manifest = None
    if manifest is None:
        if not panoptic:
            _mask_utils()  # fail before any work when pycocotools is missing
        records, problems = _convert(
            path, entries, annotations, index_of, out / "labels", ignore_value, crowd, masks_dir,
            progress,
        )  # fmt: skip
        manifest = {
            "version": CONVERTER_VERSION,
            "source": str(path),
            "kind": "panoptic" if panoptic else "instances",
            "classes": classes,
            "ignore_value": ignore_value,
            "crowd": crowd,
            "images": records,
            "problems": problems,
        }
        text = json.dumps(manifest, indent=1)
        atomic_write(manifest_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    records = manifest["images"]
    image_dir = Path(images) if images is not None else None
    if image_dir is None and records:
        image_dir = find_coco_images(path, records[0]["file_name"])
    problems = list(manifest["problems"])
    samples = []
    for record in records:
        image = (image_dir or path.parent) / record["file_name"]
        if not image.is_file():
            problems.append(f"image {image}: not found (listed in {path})")
            continue
        samples.append((image, out / "labels" / record["label"]))
    return CocoLabels(
        classes=list(manifest["classes"]),
        ignore_value=int(manifest["ignore_value"]),
        samples=samples,
        problems=problems,
        label_dir=out / "labels",
        kind=str(manifest["kind"]),
    )
