"""Where pretrained weights live, the settings that govern fetching them, and their errors.

Settings (environment variables, read at each call):

- ``LMSEG_CACHE``: lmseg's cache folder (default ``~/.cache/lmseg``): plain-URL downloads
  (``sam/``), converted checkpoints (``zoo/``, ``converted/``), text embeddings (``text/``).
  Files from the Hugging Face Hub stay in huggingface_hub's own cache (``HF_HOME``,
  ``HF_HUB_CACHE``).
- ``LMSEG_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``): never touch the network; only cached files are
  used.
- ``LMSEG_MIRROR=http://host:port[/prefix]``: fetch every lmseg-managed file from a mirror
  instead (see :func:`mirror_url` for how URLs map onto it).

This module is the bottom layer of weight handling: the encoders import it, and
:mod:`lmseg.download`, :mod:`lmseg.hub` and :mod:`lmseg.zoo` build on it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

OFFLINE_HINT = "LMSEG_OFFLINE=1 / HF_HUB_OFFLINE=1"

# What the Hub's default endpoint is mirrored under (see mirror_url).
HUB_HOST = "huggingface.co"


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are missing and cannot be downloaded (e.g. offline)."""


class ChecksumError(ValueError):
    """A downloaded or cached file does not have the recorded size or digest."""


class RandomWeightsWarning(UserWarning):
    """A model was built with randomly initialised parts: its outputs are meaningless."""


def cache_dir(kind: str | None = None) -> Path:
    """lmseg's cache directory: ``$LMSEG_CACHE`` or ``~/.cache/lmseg``, plus ``kind``.

    Args:
        kind: a sub-folder such as ``"sam"``, ``"text"`` or ``"zoo"``.
    """
    root = Path(os.environ.get("LMSEG_CACHE", Path.home() / ".cache" / "lmseg")).expanduser()
    return root / kind if kind else root


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    """True when ``LMSEG_OFFLINE`` or ``HF_HUB_OFFLINE`` is set: no download is attempted."""
    if _true(os.environ.get("LMSEG_OFFLINE")) or _true(os.environ.get("HF_HUB_OFFLINE")):
        return True
    try:  # huggingface_hub reads HF_HUB_OFFLINE once, at import: honour what it decided
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def mirror() -> str | None:
    """The mirror base URL from ``LMSEG_MIRROR`` (no trailing slash), or None."""
    value = os.environ.get("LMSEG_MIRROR", "").strip().rstrip("/")
    return value or None


def mirror_url(url: str) -> str:
    """Where ``url`` is fetched from: itself, or its place on the ``LMSEG_MIRROR`` mirror.

    The mirror holds each file under its original host name and path:
    ``https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth`` is fetched from
    ``$LMSEG_MIRROR/dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth``. The query
    string, if any, is kept.
    """
    base = mirror()
    if base is None:
        return url
    parts = urlsplit(url)
    return f"{base}/{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def hub_endpoint() -> str | None:
    """The Hugging Face Hub endpoint lmseg uses: ``$LMSEG_MIRROR/huggingface.co`` when a mirror
    is set (the same host-name rule as :func:`mirror_url`), else None (huggingface_hub's default,
    which honours ``HF_ENDPOINT``)."""
    base = mirror()
    return f"{base}/{HUB_HOST}" if base else None


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


class _DropOpenCLIPRandomInit(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")


@contextmanager
def quiet_open_clip_random_init() -> Iterator[None]:
    """Hide open_clip's "No pretrained weights loaded ... initialized randomly" line.

    lmseg builds open_clip models empty and loads weights right after (a CLIP file or a full
    checkpoint), or says itself which parts stay random (:class:`RandomWeightsWarning`), so
    open_clip's line is either wrong or a duplicate. open_clip logs it on the root logger.
    """
    root = logging.getLogger()
    drop = _DropOpenCLIPRandomInit()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
