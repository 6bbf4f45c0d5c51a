#!/usr/bin/env python3
"""Prepare PASCAL Context-59 and -459 validation labels in CAT-Seg's layout.

Input (under ``<root>/VOCdevkit/VOC2010/``)::

    JPEGImages/*.jpg            # VOCtrainval_03-May-2010.tar
    trainval_merged.json        # PC-59: per-image RLE masks with 459-label category ids
    trainval/*.mat              # PC-459: trainval.tar.gz, one LabelMap (values 1..459) per image
    pascalcontext_val.txt       # PC-459 val ids (optional: lmseg ships the same 5,104 ids)

Output::

    annotations_detectron2/pc59_val/*.png    # uint8, 0..58, 255 = ignore
    annotations_detectron2/pc459_val/*.tif   # uint16, 0..458 (every pixel labelled)

PC-59 (CAT-Seg's ``prepare_pascal_context_59.py``): for each ``phase == "val"`` image the masks
are painted in file order onto a zero canvas; the 59 kept category ids, in increasing order,
become 0..58 and everything else (0 = unlabeled, the other 400 classes) 255.
PC-459 (``prepare_pascal_context_459.py``): ``LabelMap - 1`` saved as a 16-bit TIFF.
RLE masks are decoded here (COCO's compressed format), so pycocotools is not needed; PC-459 needs
``scipy`` to read the ``.mat`` files.

Usage: ``python tools/prepare_pascal_context.py [--root DIR] [--variant 59|459|both]``
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from lmseg.data.datasets import dataset_root, preparation_parser

IGNORE_VALUE = 255
# PC-459 label ids (1-based, as in labels.txt) of the 59 PC-59 classes, in increasing order; the
# i-th becomes train id i. Listed in CAT-Seg's prepare_pascal_context_59.py (with 0 first).
PC59_CATEGORY_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98,
    104, 105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295,
    296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440,
    445, 454, 458,
)  # fmt: skip
NUM_PC459_CLASSES = 459


def pc59_lut() -> np.ndarray:
    """A ``uint8`` table over PC-459 label ids 0..459: the 59 kept ids -> 0..58, others 255."""
    assert len(PC59_CATEGORY_IDS) == 59 and list(PC59_CATEGORY_IDS) == sorted(PC59_CATEGORY_IDS)
    lut = np.full(NUM_PC459_CLASSES + 1, IGNORE_VALUE, dtype=np.uint8)
    lut[list(PC59_CATEGORY_IDS)] = np.arange(59, dtype=np.uint8)
    return lut


_PC59_LUT = pc59_lut()


def _rle_counts_from_string(text: str | bytes) -> list[int]:
    # COCO's compressed RLE: each count is 5-bit groups, least significant first, 0x20 = "more
    # groups follow", the last group's 0x10 bit = negative; counts after the second are stored as
    # deltas to the count two places earlier; characters are offset by 48.
    data = text.encode() if isinstance(text, str) else text
    counts: list[int] = []
    pos = 0
    while pos < len(data):
        value, shift, more = 0, 0, True
        while more:
            c = data[pos] - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def _rle_counts_to_string(counts: list[int]) -> str:
    out = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = value & 0x1F
            value >>= 5
            more = value != -1 if c & 0x10 else value != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (``{"size": [h, w], "counts": str | bytes | list}``) to a (h, w) mask.

    Runs alternate background/foreground starting with background, in column-major order.
    """
    height, width = (int(x) for x in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = _rle_counts_from_string(counts)
    if sum(counts) != height * width:
        raise ValueError(f"RLE counts sum to {sum(counts)}, expected {height}x{width}")
    values = np.zeros(len(counts), dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T.copy()


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Encode a (h, w) binary mask as a compressed COCO RLE (the inverse of :func:`rle_decode`)."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "counts": _rle_counts_to_string(counts),
    }


def pc59_label(height: int, width: int, annotations: list[dict[str, Any]]) -> np.ndarray:
    """The (H, W) ``uint8`` PC-59 label of one image from its ``annos_segmentation`` entries.

    Later masks overwrite earlier ones, as upstream paints them in file order.
    """
    category = np.zeros((height, width), dtype=np.int64)
    for ann in annotations:
        mask = rle_decode(ann["segmentation"])
        if mask.shape != (height, width):
            raise ValueError(
                f"mask of image {ann.get('image_id')} is {mask.shape}, image is {(height, width)}"
            )
        category[mask > 0] = int(ann["category_id"])
    # Ids outside 0..459 look up entry 0 ("unlabeled"), which is 255 like every dropped class.
    in_range = (category >= 0) & (category <= NUM_PC459_CLASSES)
    return _PC59_LUT[np.where(in_range, category, 0)]


def pc459_label(label_map: np.ndarray) -> np.ndarray:
    """PASCAL Context's ``LabelMap`` (values 1..459) to a ``uint16`` label 0..458."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"expected a (H, W) LabelMap, got shape {label_map.shape}")
    low, high = int(label_map.min()), int(label_map.max())
    if low < 1 or high > NUM_PC459_CLASSES:
        raise ValueError(f"LabelMap values must lie in 1..459, found {low}..{high}")
    return (label_map.astype(np.int64) - 1).astype(np.uint16)


def prepare_pc59(voc: Path, json_path: Path) -> int:
    if not json_path.is_file():
        raise SystemExit(
            f"error: PASCAL Context-59 annotations not found: {json_path}\n"
            "Download https://codalabuser.blob.core.windows.net/public/trainval_merged.json "
            f"into {voc} (see docs/datasets.md)."
        )
    out_dir = voc / "annotations_detectron2" / "pc59_val"
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(json_path) as f:
        data = json.load(f)
    images = [d for d in data["images"] if d["phase"] == "val"]
    wanted = {d["image_id"] for d in images}
    annos: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in data["annos_segmentation"]:
        if ann["image_id"] in wanted:
            annos[ann["image_id"]].append(ann)
    for d in images:
        label = pc59_label(int(d["height"]), int(d["width"]), annos.get(d["image_id"], []))
        Image.fromarray(label).save(out_dir / (Path(d["file_name"]).stem + ".png"))
    print(f"pc59: wrote {len(images)} labels to {out_dir}")
    return len(images)


def _val_ids(voc: Path, val_list: Path | None) -> list[str]:
    path = val_list or voc / "pascalcontext_val.txt"
    if path.is_file():
        return path.read_text().split()
    if val_list is not None:
        raise SystemExit(f"error: PASCAL Context val list not found: {val_list}")
    try:  # the same list ships with lmseg
        from lmseg.vocabularies import pascal_context_val_ids
    except ImportError:
        raise SystemExit(
            f"error: {path} not found and lmseg is not importable; pass --val-list"
        ) from None
    return pascal_context_val_ids()


def prepare_pc459(voc: Path, mat_dir: Path, val_list: Path | None) -> int:
    if not mat_dir.is_dir():
        raise SystemExit(
            f"error: PASCAL Context-459 .mat labels not found: {mat_dir}\n"
            "Download https://roozbehm.info/pascal-context/trainval.tar.gz and unpack it into "
            f"{voc} (see docs/datasets.md)."
        )
    try:
        from scipy.io import loadmat
    except ImportError:
        raise SystemExit("error: PC-459 preparation reads .mat files: pip install scipy") from None
    out_dir = voc / "annotations_detectron2" / "pc459_val"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for image_id in _val_ids(voc, val_list):
        src = mat_dir / f"{image_id}.mat"
        if not src.is_file():
            continue  # as upstream: ids without a .mat are skipped
        label = pc459_label(loadmat(src)["LabelMap"])
        tifffile.imwrite(out_dir / f"{image_id}.tif", label)
        written += 1
    print(f"pc459: wrote {written} labels to {out_dir}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = preparation_parser(__doc__)
    parser.add_argument("--variant", choices=["59", "459", "both"], default="both")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="trainval_merged.json (default: VOC2010/trainval_merged.json)",
    )
    parser.add_argument(
        "--mat-dir",
        type=Path,
        default=None,
        help="folder of PC-459 .mat files (default: VOC2010/trainval)",
    )
    parser.add_argument(
        "--val-list",
        type=Path,
        default=None,
        help="PC-459 val ids (default: VOC2010/pascalcontext_val.txt)",
    )
    args = parser.parse_args(argv)

    voc = dataset_root(args.root) / "VOCdevkit" / "VOC2010"
    if not (voc / "JPEGImages").is_dir():
        print(
            f"warning: {voc / 'JPEGImages'} is missing; the labels alone are not loadable",
            file=sys.stderr,
        )
    if args.variant in ("59", "both"):
        prepare_pc59(voc, args.json or voc / "trainval_merged.json")
    if args.variant in ("459", "both"):
        prepare_pc459(voc, args.mat_dir or voc / "trainval", args.val_list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
