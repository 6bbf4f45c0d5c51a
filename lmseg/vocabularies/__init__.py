"""Class lists of the standard open-vocabulary segmentation benchmarks.

Each vocabulary is a list of class names in label-index order, byte-identical to the lists
CAT-Seg and its successors evaluate with (ADE-150 keeps its ``"bed "`` with a trailing space;
ADE-847 keeps its comma-separated synonym lists), so that lmseg's numbers stay comparable with
published ones.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

VOCABULARIES: dict[str, str] = {
    "coco": "COCO-Stuff, 171 classes (the training vocabulary)",
    "ade150": "ADE20K-150 val, 150 classes",
    "ade847": "ADE20K-847 (full ADE20K) val, 847 classes",
    "pc59": "PASCAL Context-59 val, 59 classes",
    "pc459": "PASCAL Context-459 val, 459 classes",
    "voc20": "PASCAL VOC 2012 val without background, 20 classes",
    "voc20b": "PASCAL VOC 2012 val, background variant: 20 classes + 39 PC-59 classes as background",
}


def list_vocabularies() -> list[str]:
    """Names accepted by :func:`load_vocabulary`."""
    return list(VOCABULARIES)


@cache
def _load(name: str) -> tuple[str, ...]:
    if name not in VOCABULARIES:
        raise KeyError(
            f"unknown vocabulary {name!r}; known vocabularies: {', '.join(VOCABULARIES)}"
        )
    text = resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    return tuple(json.loads(text))


def load_vocabulary(name: str) -> list[str]:
    """Return the class names of a benchmark vocabulary, in label-index order.

    Args:
        name: one of :func:`list_vocabularies` (``"ade150"``, ``"ade847"``, ...).

    Returns:
        A new list of K class names.
    """
    return list(_load(name))


def pascal_context_val_ids() -> list[str]:
    """The 5,104 PASCAL Context validation image ids used for PC-59 and PC-459."""
    text = resources.files(__name__).joinpath("pascalcontext_val.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
