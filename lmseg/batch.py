"""Segmenting folders of images: listing, output names, resumable batched runs, sharding.

:func:`find_images` turns folders, glob patterns and files into a sorted list of
:class:`InputImage` (each with a unique output name); :func:`predict_images` segments them with a
:class:`~lmseg.segmenter.Segmenter`, decoding and resizing in ``DataLoader`` worker processes
while the model runs, and writes the asked-for outputs of every image under one folder:

| output | file | contents |
|---|---|---|
| overlay | ``NAME_overlay.png`` | the image with the label colours blended in, and a legend |
| labels | ``NAME_labels.png`` | class indices: 8-bit palette PNG (K ≤ 255), else 16-bit |
| probs | ``NAME_probs.npz`` | ``probabilities`` (K, H, W) float16 and ``classes`` |
| summary | ``NAME_summary.json`` | the share of pixels of every class present |

``NAME`` is the image's path relative to the folder it was found in, suffix included
(``a/x.jpg`` -> ``OUT/a/x.jpg_overlay.png``), so ``x.png`` and ``x.jpg``, or ``a/x.png`` and
``b/x.png``, never share an output. With the ``summary`` output, ``OUT/summary.csv`` holds one
row per image and one column per class. Every file is written atomically
(:func:`lmseg.io.atomic_write`), and existing files are kept unless ``overwrite=True``, so an
interrupted run resumes where it stopped: images whose outputs all exist are skipped.

Under ``torch.distributed`` (``torchrun``), process ``rank`` takes images ``rank::world_size``
of the sorted list and writes their outputs; the counts and the summary rows are gathered, and
process 0 writes ``summary.csv``.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from lmseg.data.transforms import shortest_edge_size
from lmseg.io import DEFAULT_MAX_PIXELS, atomic_write, load_image, validate_classes
from lmseg.segmentation import Segmentation
from lmseg.segmenter import Segmenter

__all__ = [
    "DEFAULT_OUTPUTS",
    "IMAGE_SUFFIXES",
    "OUTPUTS",
    "RUN_FILE",
    "SUMMARY_CSV",
    "BatchReport",
    "InputImage",
    "check_output_folder",
    "find_images",
    "output_paths",
    "parse_outputs",
    "predict_images",
]

logger = logging.getLogger(__name__)

# What folder listings and glob patterns pick up (compared in lower case); a file named on the
# command line is read whatever its suffix.
IMAGE_SUFFIXES: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
OUTPUTS: dict[str, str] = {
    "overlay": "_overlay.png",
    "labels": "_labels.png",
    "probs": "_probs.npz",
    "summary": "_summary.json",
}
DEFAULT_OUTPUTS: tuple[str, ...] = ("overlay", "labels")
SUMMARY_CSV = "summary.csv"
# The settings a folder's outputs were made with: a resumed run must use the same ones.
RUN_FILE = "lmseg-predict.json"

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB = re.compile(r"[*?[]")


@dataclass(frozen=True)
class InputImage:
    """One image of a run.

    Attributes:
        path: the file.
        name: its output name: the path relative to the folder (or glob base) it was found
            under, ``/``-separated, suffix included; a file given by itself keeps its file name.
    """

    path: Path
    name: str


def _is_image(name: str, suffixes: Sequence[str]) -> bool:
    return name.lower().endswith(tuple(suffixes))


def _walk(folder: Path, suffixes: Sequence[str], exclude: Path | None) -> Iterable[InputImage]:
    """Image files under ``folder``, recursively and sorted; hidden files and folders (names
    starting with ``.``) are skipped, and each real folder is visited once (links to an
    enclosing folder would loop)."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen or (exclude is not None and Path(real) == exclude):
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not _is_image(name, suffixes):
                continue
            path = Path(root) / name
            if path.is_file():  # not a dangling link
                yield InputImage(path, path.relative_to(folder).as_posix())


def _glob_base(pattern: str) -> Path:
    """The folder part of a glob pattern before its first wildcard (``a/b/*/x.png`` -> ``a/b``)."""
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if _GLOB.search(p))]]
    return Path(*fixed) if fixed else Path(".")


def find_images(
    sources: Sequence[str | os.PathLike[str]],
    *,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
    exclude: str | os.PathLike[str] | None = None,
) -> list[InputImage]:
    """The images that folders, glob patterns and files name, sorted by output name.

    Args:
        sources: folders (searched recursively for files with one of ``suffixes``), glob
            patterns (``photos/**/*.jpg``; ``**`` crosses folders; matches are filtered by
            ``suffixes``), or image files (read whatever their suffix).
        suffixes: the image suffixes of folder listings and glob matches (lower case).
        exclude: a folder left out of listings (the run's output folder, when it lies inside
            an input folder).

    Returns:
        One :class:`InputImage` per distinct file (a file reached twice is listed once).

    Raises:
        ValueError: a URL, a folder or pattern without images, or two images that would share
            an output name.
        FileNotFoundError: a source that does not exist.
    """
    skip = Path(os.path.realpath(exclude)) if exclude is not None else None
    found: list[InputImage] = []
    for source in sources:
        text = os.fspath(source)
        if _URL.match(text):
            raise ValueError(
                f"{text}: URLs are not supported; download the file first and pass its path"
            )
        path = Path(text).expanduser()
        if path.is_dir():
            if skip is not None and Path(os.path.realpath(path)) == skip:
                raise ValueError(
                    f"the output folder is the input folder {text}: its outputs would be read as "
                    f"images by the next run; write them to a sub-folder (such as {path / 'seg'})"
                )
            images = list(_walk(path, suffixes, skip))
            if not images:
                raise ValueError(
                    f"no image files in folder {text} (looked for {', '.join(suffixes)}, "
                    "hidden files skipped)"
                )
        elif path.is_file():
            images = [InputImage(path, path.name)]
        elif _GLOB.search(text):
            base = _glob_base(text)
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            images = [
                InputImage(Path(m), Path(m).relative_to(base).as_posix())
                for m in matches
                if Path(m).is_file() and _is_image(m, suffixes)
            ]
            if not images:
                raise ValueError(f"no image files match {text} (looked for {', '.join(suffixes)})")
        elif path.exists() or path.is_symlink():
            raise FileNotFoundError(f"{text} is neither a file nor a folder (a broken link?)")
        else:
            raise FileNotFoundError(f"image not found: {text}")
        found.extend(images)
    return _unique(found)


def _unique(images: Sequence[InputImage]) -> list[InputImage]:
    """Drop repeats of one file; refuse two files with one output name (compared case-folded:
    on macOS and Windows ``X.png`` and ``x.png`` are one file name)."""
    files: set[str] = set()
    names: dict[str, InputImage] = {}
    out = []
    for image in images:
        real = os.path.realpath(image.path)
        if real in files:
            continue
        key = image.name.casefold()
        if key in names:
            other = names[key]
            if other.name != image.name:
                why = "names that differ only in case are one name on macOS and Windows"
            else:
                why = "pass the folder that holds both, or run them with different --out folders"
            raise ValueError(
                f"{other.path} and {image.path} would write the same outputs ({image.name}_*): "
                f"{why}"
            )
        files.add(real)
        names[key] = image
        out.append(image)
    return sorted(out, key=lambda image: image.name)


def parse_outputs(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"overlay,labels"`` (or a list of names, or ``"all"``) -> the output names, in the
    order of :data:`OUTPUTS`."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if names == ["all"]:
        return tuple(OUTPUTS)
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown or not names:
        raise ValueError(
            f"unknown outputs {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(OUTPUTS)} (comma-separated) or all"
            if unknown
            else f"no outputs asked for; choose from {', '.join(OUTPUTS)} or all"
        )
    return tuple(n for n in OUTPUTS if n in names)


def output_paths(out: str | os.PathLike[str], name: str, outputs: Sequence[str]) -> dict[str, Path]:
    """The files of one image's outputs (see the module's table)."""
    return {kind: Path(out) / f"{name}{OUTPUTS[kind]}" for kind in outputs}


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_folder(
    out: str | os.PathLike[str], run: dict[str, Any] | None = None, *, overwrite: bool = False
) -> Path:
    """Fail early, before any model is built, if outputs cannot go to ``out``.

    Nothing is created: a missing folder is checked through its nearest existing parent.

    Args:
        out: the output folder.
        run: the settings of this run (JSON-ready). If ``out`` holds the outputs of a run with
            other settings (its :data:`RUN_FILE`), resuming would mix them: refused unless
            ``overwrite``.
        overwrite: the run replaces existing outputs.

    Raises:
        ValueError: ``out`` (or a parent) is a file, is not writable, or holds another run.
    """
    path = Path(out).expanduser()
    existing = _nearest_existing(path)
    if not existing.is_dir():
        what = "is" if existing == path else f"lies inside {existing}, which is"
        raise ValueError(f"output folder {path} {what} a file, not a folder")
    try:  # os.access says yes to root on read-only mounts; creating a file says the truth
        with tempfile.TemporaryFile(dir=existing, prefix=".lmseg-write-test-"):
            pass
    except OSError as error:
        raise ValueError(
            f"output folder {path} is not writable ({existing}: {error.strerror or error})"
        ) from None
    if run is not None and not overwrite and (path / RUN_FILE).is_file():
        try:
            before = json.loads((path / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            before = {}
        changed = sorted(k for k in set(before) | set(run) if before.get(k) != run.get(k))
        if changed:
            raise ValueError(
                f"{path} holds the outputs of a run with other settings ({', '.join(changed)} "
                "differ); resume it with the same settings, choose another --out, or pass "
                "--overwrite to replace its outputs"
            )
    return path


@dataclass
class BatchReport:
    """What a run did (over all processes under ``torch.distributed``).

    Attributes:
        written: images whose outputs were written.
        skipped: images skipped because their outputs all existed.
        failed: ``(file, reason)`` of each image that could not be read or written.
        rows: the summary rows (name, path, height, width, shares) of the images written or
            skipped, when the ``summary`` output was asked for.
        seconds: wall time of the run.
    """

    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        """``"N written, M skipped as done, F failed"``."""
        return f"{self.written} written, {self.skipped} skipped as done, {len(self.failed)} failed"


@dataclass
class _Decoded:
    index: int
    size: tuple[int, int] = (0, 0)
    model_input: torch.Tensor | None = None  # (3, h, w) float32 in [0, 1]
    image: torch.Tensor | None = None  # (3, H, W) uint8, for overlays
    error: str | None = None
    warnings: list[tuple[str, type[Warning]]] = field(default_factory=list)


class _Images(Dataset[_Decoded]):
    """Decodes one image (and resizes it for the model) in a DataLoader worker; a broken
    file becomes an error record instead of an exception, so the run goes on."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        test_size: int | None,
        max_size: int,
        max_pixels: int,
        keep_image: bool,
    ) -> None:
        self.paths = list(paths)
        self.test_size = test_size
        self.max_size = max_size
        self.max_pixels = max_pixels
        self.keep_image = keep_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Decoded:
        # Warnings raised here (in a worker process) are handed to the main process, which
        # shows them the way it shows its own.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            item = self._decode(index)
        item.warnings = [(str(w.message), w.category) for w in caught]
        return item

    def _decode(self, index: int) -> _Decoded:
        path = self.paths[index]
        try:
            image = load_image(path, max_pixels=self.max_pixels)
        except (OSError, ValueError) as error:  # ImageError is a ValueError
            return _Decoded(index, error=str(error) or type(error).__name__)
        height, width = int(image.shape[-2]), int(image.shape[-1])
        model_input = image
        if self.test_size:
            # CAT-Seg's test resize (as lmseg eval): short side to test_size, antialiased.
            size = shortest_edge_size(height, width, self.test_size, self.max_size)
            if size != (height, width):
                model_input = F.interpolate(
                    image[None], size=size, mode="bilinear", align_corners=False, antialias=True
                )[0].clamp_(0, 1)
        pixels = image.mul(255).round_().to(torch.uint8) if self.keep_image else None
        return _Decoded(index, (height, width), model_input, pixels)


def _collate(batch: list[_Decoded]) -> list[_Decoded]:
    return batch


def _done(paths: dict[str, Path]) -> bool:
    return all(p.is_file() for p in paths.values())


def _row(image: InputImage, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": image.name,
        "path": str(image.path),
        "height": summary["height"],
        "width": summary["width"],
        "shares": summary["shares"],
    }


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> None:
    """One row per image (sorted by name), one column per class: its share of the pixels."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "path", "height", "width", *classes])
    for row in sorted(rows, key=lambda r: r["name"]):
        shares = row["shares"]
        writer.writerow(
            [row["name"], row["path"], row["height"], row["width"]]
            + [f"{shares.get(c, 0.0):.6f}" for c in classes]
        )
    text = buffer.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline=""))


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def predict_images(
    segmenter: Segmenter,
    images: Sequence[InputImage],
    classes: Sequence[str],
    out: str | os.PathLike[str],
    *,
    outputs: Sequence[str] = DEFAULT_OUTPUTS,
    batch_size: int = 4,
    workers: int = 2,
    test_size: int | None = None,
    max_size: int = 2560,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    run: dict[str, Any] | None = None,
    progress: bool | None = None,
    on_failure: Callable[[str, str], None] | None = None,
) -> BatchReport:
    """Segment many images and write their outputs under ``out``.

    Args:
        segmenter: the model and how it runs (whole image or sliding window, precision,
            device); the class list's text embedding is computed once.
        images: from :func:`find_images` (under ``torch.distributed``, every process passes the
            same list and takes its share).
        classes: the K class names.
        out: output folder (created as needed; the images' sub-folders are mirrored).
        outputs: any of :data:`OUTPUTS`.
        batch_size: images per forward pass (images of one size after the test resize share
            a pass; others run in their own).
        workers: ``DataLoader`` processes that decode and resize while the model runs (0:
            in this process).
        test_size: resize images so the short side has this length before inference
            (antialiased bilinear), as CAT-Seg's test path and ``lmseg eval`` do (640); labels
            and overlays keep the image's size. None or 0 gives the model the image as it is,
            as :meth:`Segmenter.predict` does.
        max_size: long-side cap of that resize.
        max_pixels: refuse larger images (reported as failed).
        overwrite: replace existing outputs (else they are kept, and images whose outputs all
            exist are skipped).
        run: this run's settings, written to ``out/`` :data:`RUN_FILE` (see
            :func:`check_output_folder`).
        progress: show a progress bar with images/s (process 0 only); None: when stderr is a
            terminal.
        on_failure: called with ``(file, reason)`` for each image that fails (default: a
            logged warning); the run goes on.

    Returns:
        A :class:`BatchReport`, with the counts of all processes.
    """
    from tqdm import tqdm

    outputs = parse_outputs(list(outputs))
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    names = validate_classes(classes)
    out = Path(out)
    rank, world_size = _distributed()
    start = time.perf_counter()
    report = BatchReport()

    def fail(path: Path, reason: str) -> None:
        report.failed.append((str(path), reason))
        if on_failure is not None:
            on_failure(str(path), reason)
        else:
            logger.warning("skipped %s: %s", path, reason)

    if rank == 0 and run is not None:
        settings = json.dumps(run, indent=2, ensure_ascii=False) + "\n"
        atomic_write(out / RUN_FILE, lambda tmp: Path(tmp).write_text(settings, encoding="utf-8"))

    # Shard before looking at the disk: every process gets the same share whatever it sees.
    mine = list(images)[rank::world_size]
    todo: list[InputImage] = []
    for image in mine:
        paths = output_paths(out, image.name, outputs)
        if overwrite or not _done(paths):
            todo.append(image)
            continue
        if "summary" in outputs:
            try:
                summary = json.loads(paths["summary"].read_text(encoding="utf-8"))
                report.rows.append(_row(image, summary))
            except (OSError, ValueError, KeyError, TypeError) as error:
                fail(image.path, f"cannot read its summary {paths['summary']} ({error}); "
                     "delete it or pass --overwrite")
                continue
        report.skipped += 1

    text = segmenter.text_embeddings(names) if todo else None
    loader = DataLoader(
        _Images(
            [image.path for image in todo],
            test_size=test_size or None,
            max_size=max_size,
            max_pixels=max_pixels,
            keep_image="overlay" in outputs,
        ),
        batch_size=batch_size,
        collate_fn=_collate,
        num_workers=min(workers, len(todo)),
    )
    quiet = progress is False or rank != 0 or not todo
    bar = tqdm(  # disable=None: shown on a terminal only
        total=len(todo),
        desc="segmenting",
        unit="img",
        disable=True if quiet else (None if progress is None else False),
        dynamic_ncols=True,
    )
    with bar:
        for batch in loader if todo else []:
            good = []
            for item in batch:
                for message, category in item.warnings:
                    warnings.warn(message, category, stacklevel=1)
                if item.error is not None:
                    fail(todo[item.index].path, item.error)
                    bar.update(1)
                else:
                    good.append(item)
            for item, result in zip(good, _segment(segmenter, good, text, names, outputs), strict=True):
                image = todo[item.index]
                try:
                    paths = output_paths(out, image.name, outputs)
                    summary = _write(result, image, paths, overwrite)
                except OSError as error:
                    fail(image.path, f"could not write its outputs: {error}")
                else:
                    report.written += 1
                    if summary is not None:
                        report.rows.append(_row(image, summary))
                bar.update(1)

    report = _gather(report, world_size)
    if rank == 0 and "summary" in outputs:
        _write_csv(out / SUMMARY_CSV, report.rows, names)
    report.seconds = time.perf_counter() - start
    return report


def _segment(
    segmenter: Segmenter,
    items: list[_Decoded],
    text: torch.Tensor | None,
    names: list[str],
    outputs: Sequence[str],
) -> list[Segmentation]:
    """The segmentations of a batch of decoded images, in their order."""
    if not items:
        return []
    assert text is not None
    # Equal sizes next to each other: label_maps batches runs of one shape.
    order = sorted(range(len(items)), key=lambda i: tuple(items[i].model_input.shape))  # type: ignore[union-attr]
    inputs = [items[i].model_input for i in order]
    sizes = [items[i].size for i in order]
    keep = [torch.empty(len(names), *size) for size in sizes] if "probs" in outputs else None
    labels = segmenter.label_maps(inputs, text, sizes, keep=keep)  # type: ignore[arg-type]
    results: list[Segmentation | None] = [None] * len(items)
    for j, i in enumerate(order):
        pixels = items[i].image
        results[i] = Segmentation(
            labels=labels[j].to(torch.int32).cpu().numpy(),
            classes=names,
            probabilities=None if keep is None else keep[j].numpy(),
            image=None if pixels is None else pixels.float().div_(255),
        )
    return results  # type: ignore[return-value]


def _write(
    result: Segmentation, image: InputImage, paths: dict[str, Path], overwrite: bool
) -> dict[str, Any] | None:
    """Write the outputs that are missing (or all, with ``overwrite``); returns the summary."""

    def wanted(kind: str) -> bool:
        return kind in paths and (overwrite or not paths[kind].exists())

    if wanted("labels"):
        result.save_labels(paths["labels"], overwrite=overwrite)
    if wanted("probs"):
        result.save_probabilities(paths["probs"], overwrite=overwrite)
    if wanted("overlay"):
        result.save_overlay(paths["overlay"], overwrite=overwrite)
    if "summary" not in paths:
        return None
    summary = result.summary()
    if wanted("summary"):
        result.save_summary(paths["summary"], overwrite=overwrite, image=image.name)
    return summary


def _gather(report: BatchReport, world_size: int) -> BatchReport:
    """The counts and rows of every process, on every process."""
    if world_size == 1:
        return report
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, (report.written, report.skipped, report.failed, report.rows))
    total = BatchReport()
    for written, skipped, failed, rows in parts:
        total.written += written
        total.skipped += skipped
        total.failed.extend(failed)
        total.rows.extend(rows)
    return total
