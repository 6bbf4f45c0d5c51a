"""Reading images and class lists, and writing files atomically, with a clear error for every
kind of bad input.

Images become RGB float tensors ``(3, H, W)`` in [0, 1]:

- 8-bit data is divided by 255 and 16-bit data by 65,535; other integer data (32-bit TIFFs of
  mode ``I``, int32/int64 arrays) is scaled like 8-bit data if its values fit in 0..255, like
  16-bit data if they fit in 0..65,535, else by 2**32 - 1; negative values are refused;
- floating-point data (32-bit TIFFs of mode ``F``, float arrays and tensors) must be finite and
  already lie in [0, 1] (values less than 1e-3 outside are clipped), else it is refused;
- grayscale is repeated to three channels, an alpha channel is dropped (the stored colour is
  kept), palette and CMYK images are converted, and EXIF orientation is applied so the label
  map lines up with the image as viewers show it;
- of a multi-frame file (animated GIF/PNG/WebP, multi-page TIFF) the first frame is used, and a
  warning naming the file and its frame count is logged (logger ``lmseg.io``).

Images larger than ``max_pixels`` (default 64 megapixels) are refused from the file header,
before anything is decoded: the model looks at the image at ≤ 640 px a side whatever its size,
but the label map comes back at the image's own size, and a prediction peaks at about 24 bytes
per pixel (36 with three classes on one thread): 1.5 to 2.3 GB at the default limit (measured
with ``lmseg_tiny``). Raise ``max_pixels`` (the ``lmseg predict`` option ``--max-pixels``) for
larger images, or downscale them first.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import stat
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

# 64 megapixels: above full-frame cameras (Sony's 61 MP, 50 MP phone sensors), below 9000×9000.
DEFAULT_MAX_PIXELS = 64_000_000
# A generous sanity cap: the class aggregator is linear in K, but a list this long is a mistake.
MAX_CLASSES = 20_000
# Temporary files of atomic_write not modified for this long belong to an interrupted write
# (a live writer modifies its file as it writes) and are removed by the next write of the target.
STALE_TEMPORARY_SECONDS = 15 * 60

_LOG = logging.getLogger(__name__)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_TEMPORARY_SUFFIX = ".tmp"


class ImageError(ValueError):
    """An image could not be read or has an unusable shape, dtype or value range."""


# -- images -----------------------------------------------------------------------------------


def _check_size(width: int, height: int, max_pixels: int, source: str) -> None:
    if width == 0 or height == 0:
        raise ImageError(f"{source} is empty ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageError(
            f"{source} is too large ({width}x{height} = {width * height:,} pixels > "
            f"max_pixels={max_pixels:,}); downscale it, or raise the limit (max_pixels= in "
            "the API, --max-pixels for lmseg predict)"
        )


def _check_path(path: Path) -> None:
    """A one-line error for a path that is not a readable regular file."""
    try:
        info = path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ImageError(f"{path} is a symbolic link loop: it never leads to a file") from None
        if path.is_symlink():
            raise FileNotFoundError(
                f"image not found: {path} is a broken symbolic link (to {os.readlink(path)})"
            ) from None
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileNotFoundError(f"image not found: {path}") from None
        if error.errno == errno.EACCES:
            raise ImageError(f"cannot read {path}: permission denied") from None
        raise ImageError(f"cannot read {path}: {error.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path} is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{path} is not a regular file (a device, pipe or socket)")
    if info.st_size == 0:
        raise ImageError(f"image file {path} is empty (0 bytes)")


def _load_file(image: str | os.PathLike, max_pixels: int) -> torch.Tensor:
    text = os.fsdecode(os.fspath(image))
    path = Path(text)
    if _URL.match(text) and not path.exists():
        raise ImageError(
            f"URLs are not supported ({text}): download the file first and pass its path"
        )
    _check_path(path)
    source = f"image {path}"
    try:
        with Image.open(path) as opened:
            _check_size(opened.width, opened.height, max_pixels, source)
            frames = int(getattr(opened, "n_frames", 1))
            if frames > 1:
                _LOG.warning("%s has %d frames; using the first", path, frames)
            opened.load()
            ImageOps.exif_transpose(opened, in_place=True)  # ours to change: saves a copy
            return _from_pil(opened, source, max_pixels, oriented=True)
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(f"cannot read {path}: permission denied") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"{source} is too large for Pillow's decompression-bomb guard: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path} is not a readable image (corrupt or truncated?): {error}") from error


def _from_pil(
    image: Image.Image, source: str, max_pixels: int, *, oriented: bool = False
) -> torch.Tensor:
    _check_size(image.width, image.height, max_pixels, source)
    if not oriented:  # EXIF orientation not applied yet
        image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):
        return _from_array(np.asarray(image).astype(np.uint16), source)
    if image.mode in ("I", "F"):
        return _from_array(np.asarray(image), source)
    if image.mode in ("LA", "La", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    return _from_array(np.asarray(image), source)


def _integer_scale(array: np.ndarray, source: str) -> float:
    """The full-scale value integer data is divided by (see the module docstring)."""
    if array.dtype == np.uint8:
        return 255.0
    if array.dtype == np.uint16:
        return 65535.0
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise ImageError(
            f"{source} has negative integer values (down to {low}); integer images must be "
            "non-negative"
        )
    for full_scale in (255, 65535, 2**32 - 1):
        if high <= full_scale:
            return float(full_scale)
    raise ImageError(f"{source} has integer values up to {high:,}, beyond 32 bits")


def _from_array(array: np.ndarray, source: str) -> torch.Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"{source} must be HxW, HxWx1, HxWx3 or HxWx4; got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{source} is empty (shape {array.shape})")
    if array.dtype == np.bool_:
        raise ImageError(f"{source} is a boolean mask, not an image")
    is_float = np.issubdtype(array.dtype, np.floating)
    if not (is_float or np.issubdtype(array.dtype, np.integer)):
        raise ImageError(f"{source} has unsupported dtype {array.dtype}")
    channels = array[:, :, :3]  # drop alpha
    if is_float:
        low, high = float(channels.min()), float(channels.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ImageError(f"{source} contains NaN or infinite values")
        if low < -1e-3 or high > 1.0 + 1e-3:
            hint = "" if source.startswith("image ") else " (pass uint8 for 0-255 data)"
            raise ImageError(
                f"{source} is floating point with values in [{low:.3g}, {high:.3g}]; "
                f"float images must lie in [0, 1]{hint}"
            )
    else:
        full_scale = _integer_scale(channels, source)
    if is_float:
        channels = channels.astype(np.float32, copy=False)
    elif not channels.dtype.isnative:
        channels = channels.astype(channels.dtype.newbyteorder("="))
    if channels.dtype.kind == "u" and channels.dtype.itemsize > 2:
        channels = channels.astype(np.int64)  # torch has no arithmetic on uint32/uint64
    # One float32 allocation (3, H, W): the channel move, the gray-to-RGB repeat and the dtype
    # conversion happen in the copy, then the scaling in place (a 64 MP image: 768 MB, not 3x).
    with warnings.catch_warnings():  # PIL's arrays are read-only; they are only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        view = torch.from_numpy(np.ascontiguousarray(channels)).permute(2, 0, 1)
    height, width = int(view.shape[1]), int(view.shape[2])
    out = torch.empty(3, height, width, dtype=torch.float32)
    out.copy_(view.expand(3, height, width) if view.shape[0] == 1 else view)
    if is_float:
        return out.clamp_(0.0, 1.0)
    return out.div_(full_scale)


def load_image(image: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Read an image from a path, PIL image, numpy array or tensor.

    Args:
        image: a file path (not a URL); a PIL image; a numpy array ``(H, W)``,
            ``(H, W, 1|3|4)`` of unsigned or non-negative integers or floats in [0, 1]; or a
            tensor ``(3, H, W)``/``(1, H, W)``/``(H, W)`` (uint8 or float in [0, 1]). Value
            scaling and multi-frame files: see :mod:`lmseg.io`.
        max_pixels: refuse larger images (decompression bombs, mistakes), before decoding.

    Returns:
        ``(3, H, W)`` float32 RGB in [0, 1].

    Raises:
        FileNotFoundError: the path does not exist (or is a broken symbolic link).
        ImageError: a URL, a directory, a symbolic-link loop, an unreadable, empty, corrupt,
            truncated or too large file, or an unusable shape/dtype/range.
    """
    if isinstance(image, (str, os.PathLike)):
        return _load_file(image, max_pixels)
    if isinstance(image, Image.Image):
        return _from_pil(image, "PIL image", max_pixels)
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            _check_size(image.shape[1], image.shape[0], max_pixels, "array image")
        return _from_array(image, "array image")
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ImageError(f"tensor images must be (3, H, W), (1, H, W) or (H, W); got {tuple(image.shape)}")
        _check_size(int(t.shape[2]), int(t.shape[1]), max_pixels, "tensor image")
        return _from_array(t.permute(1, 2, 0).numpy(), "tensor image")
    raise TypeError(f"unsupported image type {type(image).__name__}; pass a path, PIL image, array or tensor")


# -- class lists ------------------------------------------------------------------------------


def _name_key(name: str) -> str:
    # CLIP's tokenizer lowercases and collapses whitespace, so names equal under this key get the
    # same text embedding and would split their pixels by float noise.
    return " ".join(name.split()).casefold()


def validate_classes(classes: Sequence[str], *, max_classes: int = MAX_CLASSES) -> list[str]:
    """Check a class list and return it as a list.

    Names are kept byte for byte (ADE-150's ``"bed "`` keeps its trailing space), but two names
    that differ only in case or whitespace (``"cat"``, ``"Cat"``, ``"CAT "``) are duplicates: the
    text encoder cannot tell them apart.

    Raises:
        TypeError: not a sequence of strings (a single string is refused: pass a list).
        ValueError: empty list, empty/blank names, duplicates, or more than ``max_classes``.
    """
    if isinstance(classes, (str, bytes)):
        raise TypeError(
            f"classes must be a list of names, not a single string ({classes!r}); "
            "e.g. ['cat', 'dog'] or 'cat,dog'.split(',')"
        )
    names = list(classes)
    if not names:
        raise ValueError("the class list is empty: give at least one class name")
    if len(names) > max_classes:
        raise ValueError(f"the class list has {len(names):,} names, more than max_classes={max_classes:,}")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"class {i} is {type(name).__name__} ({name!r}), not a string")
        if not name.strip():
            raise ValueError(f"class {i} has an empty name")
    seen: dict[str, int] = {}
    duplicates = []
    for i, name in enumerate(names):
        first = seen.setdefault(_name_key(name), i)
        if first != i:
            duplicates.append(f"{names[first]!r} (at {first}) and {name!r} (at {i})")
    if duplicates:
        raise ValueError(
            f"duplicate class names: {', '.join(duplicates[:10])}; names that differ only in "
            "case or whitespace are the same class to the text encoder"
        )
    return names


# -- files ------------------------------------------------------------------------------------


def _temporary_name(target: Path) -> str:
    return f".{target.name}.{secrets.token_hex(4)}{_TEMPORARY_SUFFIX}"


def _remove_stale_temporaries(target: Path) -> None:
    """Remove temporaries of ``target`` left by interrupted writes (killed process, power loss)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}{re.escape(_TEMPORARY_SUFFIX)}")
    cutoff = time.time() - STALE_TEMPORARY_SECONDS
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
        except OSError:  # removed by another writer meanwhile, or not ours to remove
            pass


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then rename the result onto ``path`` atomically: readers see the
    old file or the new one, never half of one, and a failed write leaves no temporary file.

    The file gets the permissions any new file of the user gets (``0o666`` less the umask), or
    keeps those of the file it replaces. The temporary is ``.NAME.XXXXXXXX.tmp`` beside the
    target; one left by an interrupted write (a killed process) is removed by the next write of
    the same target once it is ``STALE_TEMPORARY_SECONDS`` (15 minutes) old.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = None
    while True:
        tmp = path.parent / _temporary_name(path)
        try:
            # Created through open(2) with 0o666, so the kernel applies the umask, as for any
            # file the user writes (tempfile.mkstemp would force 0o600).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    os.close(fd)
    try:
        if mode is not None:  # before anything is written, and again if write() made a new file
            os.chmod(tmp, mode)
        write(str(tmp))
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
