"""What the encoder implementations share: the record of a released weights file, finding such a
file on disk (never downloading it), bounds checks for builder options, and ImageNet's
normalisation statistics.

Builder options can come from a checkpoint's config, so every size is checked against a bound
before anything is allocated: a file must not be able to ask for a huge model or input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmseg.weights import resolve_file

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "OfficialWeights", "check_int", "check_ints", "find_weights"]

#: ImageNet's RGB mean and standard deviation on [0, 1] images (DINOv2's and SAM 2's inputs).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class OfficialWeights:
    """One weights file as its publisher releases it, for a download layer to fetch.

    Attributes:
        file: the file name the publisher gives it.
        url: where the publisher serves it.
        licence: the licence of the weights (SPDX identifier).
        size: size in bytes, where the publisher states it (None: not published).
        sha256: checksum, where the publisher states it (None: not published).
        source: the page or file that lists the URL.
    """

    file: str
    url: str
    licence: str
    size: int | None = None
    sha256: str | None = None
    source: str = ""


def find_weights(
    weights: str | os.PathLike[str], *, kind: str, cache_dir: str | os.PathLike[str] | None, hint: str
) -> Path:
    """The weights file ``weights`` names: an existing path, or a bare file name found in
    ``cache_dir`` or in lmseg's cache folder ``kind``. Nothing is downloaded.

    Raises:
        WeightsNotFoundError: naming every place looked at and ``hint`` (where to get the file).
    """
    path = Path(weights).expanduser()
    if not path.is_file() and cache_dir is not None:
        cached = Path(cache_dir).expanduser() / path.name
        if cached.is_file():
            return cached
    return resolve_file(path, kind, hint)


def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``; a ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def check_ints(name: str, values: object, length: int | None, low: int, high: int) -> tuple[int, ...]:
    """``values`` as a tuple of ints in ``[low, high]`` (of ``length`` items when given)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list of integers, got {values!r}")
    if length is not None and len(values) != length:
        raise ValueError(f"{name} must have {length} items, got {len(values)}")
    if len(values) > 256:
        raise ValueError(f"{name} has {len(values)} items (at most 256)")
    return tuple(check_int(f"{name}[{i}]", v, low, high) for i, v in enumerate(values))
