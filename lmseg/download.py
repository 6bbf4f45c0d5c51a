"""Plain-URL downloads: resumable, atomic, verified, retried, mirror- and offline-aware.

:func:`download_url` fetches a file into lmseg's cache:

- **atomic**: bytes go to ``<file>.part`` and the file appears under its name only once it is
  complete and verified, so a crash never leaves a truncated file under the real name;
- **resumable**: a ``.part`` left by an interrupted download is continued with an HTTP
  ``Range`` request (a server that ignores ``Range`` restarts it from zero);
- **verified before first use**: size, sha256 and/or MD5 when recorded; a mismatch deletes the
  file and names the expected and actual values;
- **retried**: connection drops and 5xx answers are retried with exponential backoff, a bounded
  number of times; a host that cannot be reached at all fails after one quick attempt;
- **offline**: with ``LMSEG_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` no request is made;
- **mirrored**: with ``LMSEG_MIRROR`` set the request goes to the mirror
  (:func:`lmseg.weights.mirror_url`).

Cached files are checked again before each use (:func:`verify_file`): cheaply by size and
modification time against what was recorded when they were verified, and by a full re-hash
whenever those changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from filelock import FileLock
from tqdm import tqdm

from lmseg.io import atomic_write
from lmseg.weights import (
    OFFLINE_HINT,
    ChecksumError,
    WeightsNotFoundError,
    cache_dir,
    is_offline,
    mirror_url,
)

__all__ = ["DownloadError", "download_url", "file_digests", "verify_file"]

# Retries after the first attempt, and the first backoff (doubled after each retry): a server
# that keeps failing is given up on after about 1 + 2 + 4 s.
RETRIES = 3
BACKOFF_S = 1.0
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
CHUNK = 1 << 20
# Network reads: a dropped connection loses at most the block being read.
NET_CHUNK = 1 << 16


class DownloadError(WeightsNotFoundError):
    """A file could not be downloaded (unreachable host, HTTP error, retries exhausted)."""


@dataclass
class Digests:
    """Digests and size of a file, as hex strings."""

    sha256: str
    md5: str
    size: int


def file_digests(path: str | os.PathLike[str]) -> Digests:
    """sha256 and MD5 of a file, read once in 1 MiB chunks."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    size = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
            md5.update(block)
            size += len(block)
    return Digests(sha256=sha.hexdigest(), md5=md5.hexdigest(), size=size)


# -- verification markers -----------------------------------------------------------------------
def _marker(path: Path) -> Path:
    key = hashlib.sha1(str(path.resolve()).encode(), usedforsecurity=False).hexdigest()
    return cache_dir("verified") / f"{key}.json"


def _read_marker(path: Path) -> dict | None:
    try:
        data = json.loads(_marker(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("path") == str(path.resolve()) else None


def _write_marker(path: Path, digests: Digests) -> None:
    stat = path.stat()
    data = {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": digests.sha256,
        "md5": digests.md5,
    }
    atomic_write(_marker(path), lambda tmp: Path(tmp).write_text(json.dumps(data)))


def forget(path: str | os.PathLike[str]) -> None:
    """Delete a cached file and its verification marker."""
    path = Path(path)
    _marker(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def _mismatch(path: Path, expected: dict[str, str | int | None], actual: Digests) -> str | None:
    for name in ("size", "sha256", "md5"):
        want = expected.get(name)
        got = getattr(actual, name)
        if want is not None and str(want).lower() != str(got).lower():
            return f"{name} mismatch: expected {want}, got {got}"
    return None


def verify_file(
    path: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
) -> str:
    """Check a file against its recorded size and digests; returns its sha256.

    A file verified before and unchanged since (same size and modification time) is not
    re-hashed. Without a published digest, the digest recorded when the file was first verified
    is the reference, so a file modified in the cache is still caught.

    Raises:
        ChecksumError: naming the expected and actual values. The file is left in place; callers
            that own it delete it (:func:`forget`).
    """
    path = Path(path)
    stat = path.stat()
    if size is not None and stat.st_size != size:
        raise ChecksumError(f"{path}: size mismatch: expected {size} bytes, got {stat.st_size}")
    marker = _read_marker(path)
    if marker is not None:
        recorded = {"size": marker.get("size"), "sha256": marker.get("sha256"), "md5": marker.get("md5")}
        published = {"sha256": sha256, "md5": md5}
        agrees = all(v is None or str(v).lower() == str(recorded[k]).lower() for k, v in published.items())
        if agrees and marker.get("mtime_ns") == stat.st_mtime_ns and marker.get("size") == stat.st_size:
            return str(marker["sha256"])
    actual = file_digests(path)
    expected: dict[str, str | int | None] = {"size": size, "sha256": sha256, "md5": md5}
    if marker is not None:  # the values recorded when it was first verified
        expected = {
            "size": size,
            "sha256": sha256 or marker.get("sha256"),
            "md5": md5 or marker.get("md5"),
        }
    problem = _mismatch(path, expected, actual)
    if problem:
        raise ChecksumError(f"{path}: {problem}")
    _write_marker(path, actual)
    return actual.sha256


# -- download -----------------------------------------------------------------------------------
def _offline_error(url: str, path: Path) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"{path.name} is not in the cache ({path}) and offline mode ({OFFLINE_HINT}) forbids "
        f"downloading it from {url}; fetch it on a machine with internet (lmseg weights "
        "download) and copy the cache folder"
    )


def _retryable_status(code: int) -> bool:
    return code >= 500 or code in (408, 429)


def download_url(
    url: str,
    path: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    desc: str | None = None,
) -> Path:
    """Download ``url`` to ``path`` unless a verified copy is there; returns ``path``.

    Args:
        url: the file's original URL (``LMSEG_MIRROR`` redirects it, see
            :func:`lmseg.weights.mirror_url`).
        path: destination in the cache.
        sha256: expected sha256 (hex), or None.
        md5: expected MD5 (hex), or None.
        size: expected size in bytes, or None.
        desc: progress-bar label (the file name by default).

    Raises:
        WeightsNotFoundError: offline and not cached.
        DownloadError: the host is unreachable, answered an HTTP error, or kept failing.
        ChecksumError: the downloaded bytes do not match; nothing is left in the cache.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                verify_file(path, sha256=sha256, md5=md5, size=size)
                return path
            except ChecksumError:
                forget(path)  # corrupt in the cache: fetched again below
        if is_offline():
            raise _offline_error(url, path)
        source = mirror_url(url)
        part = path.with_name(path.name + ".part")
        _fetch(source, part, size=size, desc=desc or path.name, cache=path)
        actual = file_digests(part)
        problem = _mismatch(part, {"size": size, "sha256": sha256, "md5": md5}, actual)
        if problem:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"downloaded {source}: {problem}; the download was deleted")
        os.replace(part, path)
        _write_marker(path, actual)
    return path


def _fetch(url: str, part: Path, *, size: int | None, desc: str, cache: Path) -> None:
    """Stream ``url`` into ``part``, resuming what is there; retry transient failures."""
    reached = False  # a response came back in this call: the host is up, failures are transient
    delay = BACKOFF_S
    last = ""
    for attempt in range(RETRIES + 1):
        if attempt:
            time.sleep(delay)
            delay *= 2
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset > size:
            part.unlink()
            offset = 0
        if size is not None and offset == size:
            return  # a complete .part from an earlier run: verified by the caller
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with requests.get(
                url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
            ) as response:
                reached = True
                if response.status_code == 416 and offset:  # Range past the end: start again
                    part.unlink()
                    last = "HTTP 416 for a resumed range"
                    continue
                if _retryable_status(response.status_code):
                    last = f"HTTP {response.status_code}"
                    continue
                if response.status_code >= 400:
                    raise DownloadError(
                        f"could not download {url}: HTTP {response.status_code} "
                        f"{response.reason}; cache path {cache}"
                    )
                if offset and response.status_code != 206:
                    offset = 0  # the server ignored Range and sends the whole file
                length = response.headers.get("Content-Length")
                total = offset + int(length) if length and length.isdigit() else size
                with (
                    open(part, "ab" if offset else "wb") as out,
                    tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=desc, disable=None) as bar,
                ):
                    for block in response.iter_content(NET_CHUNK):
                        out.write(block)
                        bar.update(len(block))
                got = part.stat().st_size
                if total is not None and got < total:
                    last = f"connection closed after {got} of {total} bytes"
                    continue
                return
        except requests.RequestException as error:
            last = f"{type(error).__name__}: {error}"
            if not reached and isinstance(error, requests.ConnectionError):
                break  # unreachable host: one quick attempt, no retries
    raise DownloadError(
        f"could not download {url} ({last}); cache path {cache}; if this machine is offline, "
        f"set {OFFLINE_HINT} and copy the file there"
    )
