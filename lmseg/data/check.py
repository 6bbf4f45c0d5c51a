"""``lmseg data check``: every problem of a dataset at once, and its class frequencies.

Reads every image and label of a split in full (so truncated files show up) and reports, one
line per file: images without labels and labels without images, unreadable or truncated files,
labels whose size differs from their image, label values outside the class list, and the
annotations a COCO conversion had to skip. It also counts, per class, the labelled pixels and
the images the class occurs in.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmseg.data.datasets import (
    BadSampleError,
    DatasetSpec,
    SegmentationDataset,
    check_label_values,
    read_image,
    read_label,
    size_mismatch,
)
from lmseg.data.folder import ResolvedSplit
from lmseg.data.load import dataset_splits, find_dataset, resolve_dataset

__all__ = ["CheckReport", "check_dataset", "check_samples"]


@dataclass
class CheckReport:
    """The outcome of checking one split.

    Attributes:
        dataset: the dataset's name (with its split).
        source: what was read.
        num_samples: image/label pairs checked.
        class_names: the K classes.
        ignore_value: the label value of unlabelled pixels.
        errors: one line per problem, naming the file.
        pixels: per class, labelled pixels over all readable labels.
        images: per class, the number of labels it occurs in.
        ignored_pixels: pixels with the ignore value.
    """

    dataset: str
    source: str
    num_samples: int
    class_names: list[str]
    ignore_value: int
    errors: list[str] = field(default_factory=list)
    pixels: list[int] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    ignored_pixels: int = 0

    @property
    def ok(self) -> bool:
        """True when there is no error."""
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        """JSON-ready fields, the per-class counts as ``{"name", "pixels", "images"}`` rows."""
        data = asdict(self)
        data["classes"] = [
            {"name": n, "pixels": p, "images": i}
            for n, p, i in zip(self.class_names, self.pixels, self.images, strict=True)
        ]
        for key in ("class_names", "pixels", "images"):
            del data[key]
        return data

    def format(self) -> str:
        """The report as text: a header, one ``error:`` line per problem, the class table."""
        k = len(self.class_names)
        lines = [
            f"{self.dataset}: {self.source}; {self.num_samples} samples, {k} classes, "
            f"ignore value {self.ignore_value}"
        ]
        lines += [f"error: {e}" for e in self.errors]
        total = sum(self.pixels) + self.ignored_pixels
        width = max([9, *(len(n) for n in self.class_names)])
        lines += [
            "",
            f"{'id':>5}  {'class':<{width}}  {'pixels':>13}  {'share':>7}  {'images':>7}",
        ]
        for index, (name, pixels, images) in enumerate(
            zip(self.class_names, self.pixels, self.images, strict=True)
        ):
            share = 100 * pixels / total if total else math.nan
            lines.append(
                f"{index:>5}  {name:<{width}}  {pixels:>13,}  {share:>6.2f}%  {images:>7,}"
            )
        if total:
            share = 100 * self.ignored_pixels / total
            lines.append(
                f"{'':>5}  {'(ignored)':<{width}}  {self.ignored_pixels:>13,}  {share:>6.2f}%"
            )
        absent = [n for n, p in zip(self.class_names, self.pixels, strict=True) if p == 0]
        if absent:
            shown = ", ".join(absent[:10]) + (", ..." if len(absent) > 10 else "")
            lines.append(f"{len(absent)} classes never occur: {shown}")
        count = len(self.errors)
        verdict = "ok: no errors" if self.ok else f"FAILED: {count} error{'s' * (count > 1)}"
        lines.append(f"{self.dataset}: {verdict}")
        return "\n".join(lines)


def check_samples(
    spec: DatasetSpec,
    samples: list[tuple[Path, Path]],
    *,
    problems: list[str] | None = None,
    source: str = "",
    progress: bool | None = None,
) -> CheckReport:
    """Read every (image, label) pair in full and count classes; see :class:`CheckReport`."""
    from tqdm import tqdm

    k, ignore = spec.num_classes, spec.ignore_value
    report = CheckReport(
        dataset=spec.name,
        source=source or spec.description,
        num_samples=len(samples),
        class_names=spec.class_names,
        ignore_value=ignore,
        errors=list(problems or []),
    )
    pixels = np.zeros(k, dtype=np.int64)
    images = np.zeros(k, dtype=np.int64)
    bar = tqdm(
        samples, desc=f"check {spec.name}", disable=None if progress is None else not progress
    )
    for image_path, label_path in bar:
        try:
            image_shape: tuple[int, ...] | None = read_image(image_path).shape
        except BadSampleError as error:
            report.errors.append(str(error))
            image_shape = None
        try:
            label = read_label(label_path)
        except BadSampleError as error:
            report.errors.append(str(error))
            continue
        if image_shape is not None and image_shape[:2] != label.shape:
            report.errors.append(size_mismatch(image_path, label_path, image_shape, label.shape))
        try:
            check_label_values(label, k, ignore, label_path)
        except BadSampleError as error:
            report.errors.append(str(error))
        values, counts = np.unique(label, return_counts=True)
        valid = (values >= 0) & (values < k)
        pixels[values[valid]] += counts[valid]
        images[values[valid]] += 1
        report.ignored_pixels += int(counts[values == ignore].sum())
    report.pixels, report.images = pixels.tolist(), images.tolist()
    return report


def check_dataset(
    name_or_path: str | os.PathLike[str],
    *,
    split: str | None = None,
    root: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> list[CheckReport]:
    """Check a dataset: one split, or every split when ``split`` is None.

    Raises:
        DatasetNotFoundError, DatasetFormatError: the dataset cannot be read at all.
    """
    found, suffix = find_dataset(name_or_path, root=root)
    if isinstance(found, DatasetSpec):
        data = SegmentationDataset(found, root=root)
        return [check_samples(found, data.samples, source=found.description, progress=progress)]
    if split is None and suffix is None:
        splits: list[str | None] = list(dataset_splits(name_or_path, root=root)) or [None]
    else:
        splits = [split]
    reports = []
    for name in splits:
        resolved: ResolvedSplit = resolve_dataset(name_or_path, split=name, root=root)
        reports.append(
            check_samples(
                resolved.spec,
                resolved.samples,
                problems=resolved.problems,
                source=resolved.source + (f", split {name}" if name else ""),
                progress=progress,
            )
        )
    return reports
