"""One entry point for every dataset: a registered benchmark name, a folder, or a COCO file.

``load_dataset("ade150")``, ``load_dataset("data/mydata", split="val")`` (or
``"data/mydata:val"``) and ``load_dataset("coco/annotations/instances_val2017.json")`` all
return the :class:`~lmseg.data.SegmentationDataset` that evaluation and training consume. The
same strings work in ``lmseg eval --dataset``, in a training config's ``data.dataset`` and
``eval.datasets``, and in ``lmseg data check``.

How a string is read: a registered name wins; else an existing path (relative paths are looked
up in the current directory, then under the dataset root); else ``PATH:SPLIT`` when ``PATH``
is one. A folder holding ``dataset.yaml`` with ``format: coco`` is a COCO dataset (with
``annotations:`` one file, or one per split); any other folder is a folder dataset
(:mod:`lmseg.data.folder`); a ``.json`` file is a COCO file (:mod:`lmseg.data.coco`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lmseg.data.coco import CROWD_MODES, coco_semantic_labels
from lmseg.data.datasets import (
    DatasetNotFoundError,
    DatasetSpec,
    SegmentationDataset,
    Transform,
    dataset_root,
    get_dataset_spec,
    list_datasets,
)
from lmseg.data.folder import (
    SPLIT_NAME,
    DatasetFormatError,
    ResolvedSplit,
    check_keys,
    choose_split,
    folder_splits,
    read_class_file,
    read_description,
    resolve_folder,
)

__all__ = [
    "dataset_splits",
    "find_dataset",
    "load_dataset",
    "read_classes",
    "resolve_dataset",
]

logger = logging.getLogger(__name__)

_COCO_KEYS = {"format", "name", "annotations", "images", "panoptic_masks", "crowd"}
_FORMATS = ("folder", "coco")


def find_dataset(
    name_or_path: str | os.PathLike[str] | DatasetSpec,
    *,
    root: str | os.PathLike[str] | None = None,
) -> tuple[DatasetSpec | Path, str | None]:
    """What a dataset string names, without reading the dataset.

    Returns:
        ``(spec, None)`` for a registered benchmark, ``(path, split)`` for a folder or COCO
        file (``split`` from a ``PATH:SPLIT`` suffix, else None).

    Raises:
        DatasetNotFoundError: neither a registered name nor an existing path.
    """
    if isinstance(name_or_path, DatasetSpec):
        return name_or_path, None
    text = os.fspath(name_or_path)
    try:
        return get_dataset_spec(text), None
    except KeyError:
        pass
    found = _existing(text, root)
    if found is not None:
        return found, None
    head, colon, tail = text.rpartition(":")
    if colon and head and SPLIT_NAME.fullmatch(tail):
        found = _existing(head, root)
        if found is not None:
            return found, tail
    raise DatasetNotFoundError(
        f"unknown dataset {text!r}: not a registered name ({', '.join(list_datasets())}) nor "
        f"an existing folder or COCO .json file (looked in {Path.cwd()} and in the dataset "
        f"root {dataset_root(root)})"
    )


def _existing(text: str, root: str | os.PathLike[str] | None) -> Path | None:
    path = Path(text).expanduser()
    if path.exists():
        return path
    if not path.is_absolute() and (dataset_root(root) / path).exists():
        return dataset_root(root) / path
    return None


def _format(folder: Path) -> tuple[str, dict[str, Any], Path | None]:
    description, where = read_description(folder)
    kind = description.get("format", "folder")
    if kind not in _FORMATS:
        raise DatasetFormatError(f"{where}: format must be one of {_FORMATS}, got {kind!r}")
    return str(kind), description, where


def _per_split(value: Any, key: str, where: Path | None) -> dict[str, str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"": value}
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return {str(k): v for k, v in value.items()}
    raise DatasetFormatError(f"{where}: {key} must be a path or a mapping split -> path")


def _coco_splits(folder: Path, description: dict[str, Any], where: Path | None) -> list[str]:
    annotations = _per_split(description.get("annotations"), "annotations", where)
    if not annotations:
        raise DatasetFormatError(f"{where}: format coco needs annotations: FILE.json")
    return sorted(k for k in annotations if k)


def dataset_splits(
    name_or_path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None
) -> list[str]:
    """The split names of a dataset of your own (``[]`` without splits or for a registered
    benchmark, whose names already fix the split)."""
    found, split = find_dataset(name_or_path, root=root)
    if isinstance(found, DatasetSpec) or split is not None or not found.is_dir():
        return [split] if split else []
    kind, description, where = _format(found)
    if kind == "coco":
        return _coco_splits(found, description, where)
    return folder_splits(found, description)


def _resolve_coco(
    path: Path, split: str | None, description: dict[str, Any], where: Path | None
) -> ResolvedSplit:
    folder = path if path.is_dir() else path.parent
    images: str | None = None
    masks: str | None = None
    crowd = "class"
    chosen: str | None = None
    if path.is_dir():
        check_keys(description, _COCO_KEYS, where)
        annotations = _per_split(description.get("annotations"), "annotations", where) or {}
        chosen = choose_split(str(path), _coco_splits(path, description, where), split)
        file = path / annotations[chosen or ""]
        images = (_per_split(description.get("images"), "images", where) or {}).get(chosen or "")
        masks = (_per_split(description.get("panoptic_masks"), "panoptic_masks", where) or {}).get(
            chosen or ""
        )
        crowd = str(description.get("crowd", "class"))
        if crowd not in CROWD_MODES:
            raise DatasetFormatError(f"{where}: crowd must be one of {CROWD_MODES}")
        name = str(description.get("name") or path.resolve().name)
    else:
        if split is not None:
            raise DatasetFormatError(f"{path} is one COCO file: it has no split {split!r}")
        file, name = path, path.stem
    if not file.is_file():
        raise DatasetNotFoundError(f"COCO annotation file {file} not found")
    labels = coco_semantic_labels(
        file,
        images=folder / images if images else None,
        panoptic_masks=folder / masks if masks else None,
        crowd=crowd,
    )
    spec = DatasetSpec(
        name=f"{name}_{chosen}" if chosen else name,
        split=chosen or "",
        image_dir=str(labels.samples[0][0].parent if labels.samples else folder),
        label_dir=str(labels.label_dir),
        classes=tuple(labels.classes),
        ignore_value=labels.ignore_value,
        description=f"COCO {labels.kind} {file}",
    )
    if not labels.samples:
        raise DatasetNotFoundError(f"COCO file {file}: none of its images was found")
    return ResolvedSplit(
        spec=spec, samples=labels.samples, problems=labels.problems, source=f"COCO file {file}"
    )


def resolve_dataset(
    name_or_path: str | os.PathLike[str],
    *,
    split: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> ResolvedSplit:
    """A dataset of your own resolved to files: its spec, (image, label) pairs and the
    problems found on the way (files without a partner, skipped annotations).

    Raises:
        DatasetNotFoundError: the path does not exist, or has no usable sample.
        DatasetFormatError: a malformed description, class list or COCO file, or a split that
            is not there (or not named when there are several).
        ValueError: ``name_or_path`` is a registered benchmark (use :func:`load_dataset`).
    """
    found, suffix = find_dataset(name_or_path, root=root)
    if isinstance(found, DatasetSpec):
        raise ValueError(f"{found.name} is a registered benchmark, not a dataset folder")
    if suffix is not None and split is not None and suffix != split:
        raise ValueError(f"{name_or_path} names split {suffix!r} but split={split!r} was given")
    split = split if split is not None else suffix
    if found.is_file():
        if found.suffix.lower() != ".json":
            raise DatasetFormatError(f"{found}: a dataset file must be a COCO .json file")
        return _resolve_coco(found, split, {}, None)
    kind, description, where = _format(found)
    if kind == "coco":
        return _resolve_coco(found, split, description, where)
    return resolve_folder(found, split)


def load_dataset(
    name_or_path: str | os.PathLike[str] | DatasetSpec,
    *,
    split: str | None = None,
    root: str | os.PathLike[str] | None = None,
    transform: Transform | None = None,
) -> SegmentationDataset:
    """The dataset of a registered benchmark name, a dataset folder or a COCO file.

    Args:
        name_or_path: ``"ade150"`` (:func:`lmseg.data.list_datasets`), a folder
            (``images/``, ``labels/``, ``classes.txt``), a COCO ``.json`` file, or a folder
            whose ``dataset.yaml`` says ``format: coco``; ``PATH:SPLIT`` names a split.
        split: the split of a dataset of your own (sub-folder or ``splits/NAME.txt``);
            needed when it has several. Registered names fix their split (``coco_train``).
        root: the dataset root of the registered benchmarks (default
            ``$DETECTRON2_DATASETS``, else ``./datasets``); relative paths are also looked
            up under it.
        transform: called as ``transform(image, label) -> (image, label)`` on every item.

    Files that cannot be paired (an image without a label, ...) and annotations that cannot be
    used are left out with one warning that counts them; ``lmseg data check`` lists them all.

    Raises:
        DatasetNotFoundError: unknown name, missing path, or no usable sample.
        DatasetFormatError: a malformed dataset description, class list or COCO file.
    """
    found, suffix = find_dataset(name_or_path, root=root)
    if isinstance(found, DatasetSpec):
        if split is not None and split != found.split:
            raise ValueError(
                f"dataset {found.name!r} is the {found.split} split; other splits are "
                f"registered under their own names ({', '.join(list_datasets())})"
            )
        return SegmentationDataset(found, root=root, transform=transform)
    assert not isinstance(name_or_path, DatasetSpec)  # a spec is always found as itself
    resolved = resolve_dataset(name_or_path, split=split, root=root)
    if resolved.problems:
        logger.warning(
            "%s: %d file(s) or annotation(s) left out, first: %s (`lmseg data check %s` lists "
            "them all)",
            resolved.spec.name,
            len(resolved.problems),
            resolved.problems[0],
            os.fspath(name_or_path),
        )
    folder = found if found.is_dir() else found.parent
    return SegmentationDataset(
        resolved.spec, root=folder, transform=transform, samples=resolved.samples
    )


def read_classes(source: str | os.PathLike[str]) -> list[str]:
    """Class names from a class file (``classes.txt`` / ``.json``, as
    :func:`lmseg.data.folder.read_class_file`), or the classes of a dataset (a registered
    name, a dataset folder or a COCO file)."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() != ".json":
        return read_class_file(path)
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DatasetFormatError(f"{path}: not valid JSON: {error}") from None
        if isinstance(data, list):
            return read_class_file(path)
    found, _ = find_dataset(source)
    if isinstance(found, DatasetSpec):
        return found.class_names
    splits = dataset_splits(source)
    return list(resolve_dataset(source, split=splits[0] if splits else None).spec.classes)
