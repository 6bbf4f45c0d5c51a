"""Datasets of your own as a folder: ``images/``, ``labels/``, a class list, optional splits.

The layout (``docs/your-own-data.md`` shows it whole)::

    mydata/
      classes.txt            one class name per line (# starts a comment line); or classes.json
      dataset.yaml           optional: name, ignore_value, ... (dataset.yml / dataset.json too)
      images/  a.jpg b.png   any of .jpg .jpeg .png .bmp .tif .tiff .webp
      labels/  a.png b.png   one channel of class indices, 8-bit (<= 255 classes) or 16-bit

Images and labels are paired by file stem. Splits are either sub-folders (``images/train``,
``labels/train``, ...) or file lists (``splits/val.txt``: one stem per line, images and labels
flat). Label value k is the k-th class of the list; the ignore value (unlabelled pixels) is
``ignore_value`` from the description file, else 255 when there are at most 255 classes and
65535 (the largest 16-bit value) otherwise.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmseg.data.datasets import DatasetNotFoundError, DatasetSpec
from lmseg.io import validate_classes

__all__ = [
    "CLASS_FILES",
    "DESCRIPTION_FILES",
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "DatasetFormatError",
    "ResolvedSplit",
    "default_ignore_value",
    "folder_splits",
    "read_class_file",
    "read_description",
    "resolve_folder",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_SUFFIXES = (".png", ".tif", ".tiff")
DESCRIPTION_FILES = ("dataset.yaml", "dataset.yml", "dataset.json")
CLASS_FILES = ("classes.txt", "classes.json")
_FOLDER_KEYS = {
    "format", "name", "classes", "ignore_value", "images", "labels", "image_suffix",
    "label_suffix",
}  # fmt: skip
SPLIT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class DatasetFormatError(ValueError):
    """A dataset folder, its description, class list or COCO file is malformed; the message
    names the file."""


@dataclass
class ResolvedSplit:
    """One split of a dataset of your own, resolved to files.

    Attributes:
        spec: classes, ignore value, name and directories.
        samples: (image file, label file) pairs, sorted by stem.
        problems: one line per file that cannot be used as it is (an image without a label, a
            label without an image, a bad annotation, ...), naming the file.
        source: what was read, for messages (``"folder /data/mydata"``).
    """

    spec: DatasetSpec
    samples: list[tuple[Path, Path]]
    problems: list[str] = field(default_factory=list)
    source: str = ""


def default_ignore_value(num_classes: int) -> int:
    """255 for at most 255 classes (8-bit labels), else 65535 (16-bit labels)."""
    return 255 if num_classes <= 255 else 65535


def read_description(folder: Path) -> tuple[dict[str, Any], Path | None]:
    """The folder's ``dataset.yaml`` / ``dataset.yml`` / ``dataset.json`` as a dict (empty and
    None when there is none)."""
    for name in DESCRIPTION_FILES:
        path = folder / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            try:
                data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            except (json.JSONDecodeError, yaml.YAMLError) as error:
                first = str(error).splitlines()[0]
                raise DatasetFormatError(f"{path}: not valid {path.suffix[1:]}: {first}") from None
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise DatasetFormatError(f"{path}: must hold a mapping of keys, got {data!r}")
            return data, path
    return {}, None


def check_keys(description: dict[str, Any], allowed: set[str], path: Path | None) -> None:
    """Raise :class:`DatasetFormatError` naming the unknown keys of a description file."""
    unknown = sorted(set(description) - allowed)
    if unknown:
        raise DatasetFormatError(f"{path}: unknown keys {unknown}; known keys: {sorted(allowed)}")


def read_class_file(path: str | os.PathLike[str]) -> list[str]:
    """Class names from ``classes.txt`` or ``classes.json``.

    A text file holds one name per line; surrounding spaces are removed, and blank lines and
    lines starting with ``#`` are skipped. A JSON file holds a list of strings, kept byte for
    byte.

    Raises:
        DatasetFormatError: not a list of names, empty, or with duplicate or blank names.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"class list {path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetFormatError(f"{path}: not valid JSON: {error}") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DatasetFormatError(f"{path}: a .json class list must be a list of strings")
    else:
        stripped = (line.strip() for line in text.splitlines())
        names = [line for line in stripped if line and not line.startswith("#")]
    try:
        return validate_classes(names)
    except (TypeError, ValueError) as error:
        raise DatasetFormatError(f"{path}: {error}") from None


def _classes(folder: Path, description: dict[str, Any], where: Path | None) -> list[str]:
    given = description.get("classes")
    if isinstance(given, list):
        try:
            return validate_classes([str(n) for n in given])
        except (TypeError, ValueError) as error:
            raise DatasetFormatError(f"{where}: classes: {error}") from None
    if isinstance(given, str):
        return read_class_file(folder / given)
    if given is not None:
        raise DatasetFormatError(f"{where}: classes must be a list of names or a file name")
    for name in CLASS_FILES:
        if (folder / name).is_file():
            return read_class_file(folder / name)
    raise DatasetFormatError(
        f"{folder}: no class list; add classes.txt (one class name per line, in label-value "
        "order) or classes.json (a list of names)"
    )


def _ignore_value(description: dict[str, Any], num_classes: int, where: Path | None) -> int:
    value = description.get("ignore_value")
    if value is None:
        return default_ignore_value(num_classes)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DatasetFormatError(f"{where}: ignore_value must be a non-negative integer")
    if value < num_classes:
        raise DatasetFormatError(
            f"{where}: ignore_value {value} is a class index (there are {num_classes} classes)"
        )
    return value


def _files(directory: Path, suffixes: tuple[str, ...]) -> tuple[dict[str, Path], list[str]]:
    """Stem -> file for the files of ``directory`` ending in one of ``suffixes`` (hidden files
    skipped); two files with one stem are a problem (the first in name order is kept)."""
    found: dict[str, Path] = {}
    problems: list[str] = []
    with os.scandir(directory) as entries:
        names = sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))
    for name in names:
        suffix = next((s for s in suffixes if name.lower().endswith(s.lower())), None)
        if suffix is None:
            continue
        stem = name[: len(name) - len(suffix)]
        if stem in found:
            problems.append(f"{directory / name}: same stem as {found[stem].name} (ignored)")
            continue
        found[stem] = directory / name
    return found, problems


def _read_split_list(path: Path) -> tuple[list[str], list[str]]:
    stems: list[str] = []
    problems: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        stem = Path(entry).name
        suffix = Path(stem).suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            stem = stem[: -len(suffix)]
        if stem in seen:
            problems.append(f"{path}:{number}: {entry!r} is listed twice")
            continue
        seen.add(stem)
        stems.append(stem)
    return stems, problems


def _dirs(folder: Path, description: dict[str, Any]) -> tuple[Path, Path]:
    images = folder / str(description.get("images", "images"))
    labels = folder / str(description.get("labels", "labels"))
    return images, labels


def folder_splits(folder: Path, description: dict[str, Any] | None = None) -> list[str]:
    """The split names of a dataset folder: the stems of ``splits/*.txt`` if there are any,
    else the sub-folders of ``images/`` when it holds no image itself; ``[]`` for a folder
    without splits."""
    description = description if description is not None else read_description(folder)[0]
    lists = folder / "splits"
    if lists.is_dir():
        names = sorted(p.stem for p in lists.glob("*.txt"))
        if names:
            return names
    images, _ = _dirs(folder, description)
    if not images.is_dir():
        return []
    with os.scandir(images) as entries:
        visible = [e for e in entries if not e.name.startswith(".")]
    if any(e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES) for e in visible):
        return []  # a flat folder: stray sub-folders are not splits
    return sorted(e.name for e in visible if e.is_dir())


def choose_split(name: str, splits: list[str], split: str | None) -> str | None:
    """The split to read: ``split`` if it exists, the only one when there is one, else an
    error that lists them."""
    if split is None:
        if len(splits) > 1:
            raise DatasetFormatError(
                f"dataset {name} has splits {', '.join(splits)}: choose one, e.g. "
                f"{name}:{splits[-1]} (or split={splits[-1]!r})"
            )
        return splits[0] if splits else None
    if split not in splits:
        known = f"its splits are {', '.join(splits)}" if splits else "it has no splits"
        raise DatasetFormatError(f"dataset {name} has no split {split!r}: {known}")
    return split


def resolve_folder(folder: Path, split: str | None = None) -> ResolvedSplit:
    """Resolve one split of a dataset folder to its image/label pairs.

    Raises:
        DatasetFormatError: a malformed description or class list, or an unknown split.
        DatasetNotFoundError: ``images/`` or ``labels/`` is missing, or no image has a label.
    """
    description, where = read_description(folder)
    check_keys(description, _FOLDER_KEYS, where)
    classes = _classes(folder, description, where)
    ignore_value = _ignore_value(description, len(classes), where)
    splits = folder_splits(folder, description)
    chosen = choose_split(str(folder), splits, split)
    images_dir, labels_dir = _dirs(folder, description)
    split_list = folder / "splits" / f"{chosen}.txt"
    listed = chosen is not None and split_list.is_file()
    if chosen is not None and not listed:
        images_dir, labels_dir = images_dir / chosen, labels_dir / chosen
    for kind, directory in (("image", images_dir), ("label", labels_dir)):
        if not directory.is_dir():
            raise DatasetNotFoundError(f"dataset {folder}: {kind} folder {directory} not found")
    image_suffix = description.get("image_suffix")
    label_suffix = description.get("label_suffix")
    images, problems = _files(images_dir, (image_suffix,) if image_suffix else IMAGE_SUFFIXES)
    labels, label_problems = _files(labels_dir, (label_suffix,) if label_suffix else LABEL_SUFFIXES)
    problems += label_problems
    if listed:
        stems, list_problems = _read_split_list(split_list)
        problems += list_problems
        for stem in stems:
            if stem not in images:
                problems.append(f"{split_list}: {stem!r} has no image in {images_dir}")
            elif stem not in labels:
                problems.append(f"image {images[stem]}: no label in {labels_dir}")
        paired = [s for s in stems if s in images and s in labels]
    else:
        problems += [
            f"image {images[s]}: no label in {labels_dir}" for s in sorted(images.keys() - labels)
        ]
        problems += [
            f"label {labels[s]}: no image in {images_dir}" for s in sorted(labels.keys() - images)
        ]
        paired = list(images.keys() & labels.keys())
    samples = [(images[s], labels[s]) for s in sorted(paired)]
    name = str(description.get("name") or folder.resolve().name)
    spec = DatasetSpec(
        name=f"{name}_{chosen}" if chosen else name,
        split=chosen or "",
        image_dir=str(images_dir),
        label_dir=str(labels_dir),
        classes=tuple(classes),
        ignore_value=ignore_value,
        description=f"folder {folder}" + (f", split {chosen}" if chosen else ""),
    )
    if not samples:
        raise DatasetNotFoundError(
            f"dataset {folder}{f' split {chosen}' if chosen else ''}: no image in {images_dir} "
            f"has a label in {labels_dir} ({len(images)} images, {len(labels)} labels)"
        )
    return ResolvedSplit(spec=spec, samples=samples, problems=problems, source=f"folder {folder}")
