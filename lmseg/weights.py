"""Where pretrained weights live, and the error raised when they are not there."""

from __future__ import annotations

import os
from pathlib import Path


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are missing and cannot be downloaded (e.g. offline)."""


def cache_dir(kind: str | None = None) -> Path:
    """lmseg's cache directory: ``$LMSEG_CACHE`` or ``~/.cache/lmseg``, plus ``kind``.

    Args:
        kind: a sub-folder such as ``"sam"``, ``"text"`` or ``"catseg"``.
    """
    root = Path(os.environ.get("LMSEG_CACHE", Path.home() / ".cache" / "lmseg")).expanduser()
    return root / kind if kind else root


def resolve_file(name_or_path: str | os.PathLike[str], kind: str, hint: str) -> Path:
    """Find a weights file given as a path or as a bare file name in the cache directory.

    Args:
        name_or_path: an existing path, or a file name looked up in ``cache_dir(kind)``.
        kind: cache sub-folder.
        hint: where the file can be downloaded, for the error message.

    Raises:
        WeightsNotFoundError: naming every place looked at and where to get the file.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    cached = cache_dir(kind) / path.name
    if cached.is_file():
        return cached
    raise WeightsNotFoundError(
        f"weights file {str(name_or_path)!r} not found (looked at {path} and {cached}). "
        f"Download it from {hint} and pass its path, or put it in {cache_dir(kind)} "
        "(set LMSEG_CACHE to move that folder)."
    )
