"""Reading images and class lists, with a clear error for every kind of bad input.

Images become RGB float tensors ``(3, H, W)`` in [0, 1]: grayscale is repeated to three channels,
16-bit images are scaled by 1/65535, an alpha channel is dropped (the stored colour is kept),
palette and CMYK images are converted, and EXIF orientation is applied so the label map lines up
with the image as viewers show it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

# 100 megapixels: far above what the model looks at (≤ 640 px a side), below PIL's bomb guard.
DEFAULT_MAX_PIXELS = 100_000_000
# A generous sanity cap: the class aggregator is linear in K, but a list this long is a mistake.
MAX_CLASSES = 20_000


class ImageError(ValueError):
    """An image could not be read or has an unusable shape, dtype or value range."""


def _check_size(width: int, height: int, max_pixels: int, source: str) -> None:
    if width == 0 or height == 0:
        raise ImageError(f"{source} is empty ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageError(
            f"{source} is too large ({width}x{height} = {width * height:,} pixels > "
            f"max_pixels={max_pixels:,}); downscale it or raise max_pixels"
        )


def _from_pil(image: Image.Image, source: str, max_pixels: int) -> torch.Tensor:
    _check_size(image.width, image.height, max_pixels, source)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image)
        return _from_array(array.astype(np.uint16) if image.mode.startswith("I;16") else array, source)
    if image.mode in ("LA", "La", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    return _from_array(np.asarray(image.convert("RGB") if image.mode != "RGBA" else image), source)


def _from_array(array: np.ndarray, source: str) -> torch.Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"{source} must be HxW, HxWx1, HxWx3 or HxWx4; got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{source} is empty (shape {array.shape})")
    if array.dtype == np.bool_:
        raise ImageError(f"{source} is a boolean mask, not an image")
    if array.dtype == np.uint8:
        scaled = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        scaled = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.integer):
        peak = float(array.max(initial=0))
        scaled = array.astype(np.float32) / (255.0 if peak <= 255 else 65535.0)
    elif np.issubdtype(array.dtype, np.floating):
        scaled = array.astype(np.float32)
        if not np.isfinite(scaled).all():
            raise ImageError(f"{source} contains NaN or infinite values")
        low, high = float(scaled.min()), float(scaled.max())
        if low < -1e-3 or high > 1.0 + 1e-3:
            raise ImageError(
                f"{source} is floating point with values in [{low:.3g}, {high:.3g}]; "
                "float images must lie in [0, 1] (pass uint8 for 0-255 data)"
            )
        scaled = scaled.clip(0.0, 1.0)
    else:
        raise ImageError(f"{source} has unsupported dtype {array.dtype}")
    scaled = scaled[:, :, :3]  # drop alpha
    if scaled.shape[2] == 1:
        scaled = np.repeat(scaled, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))


def load_image(image: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Read an image from a path, PIL image, numpy array or tensor.

    Args:
        image: a file path; a PIL image; a numpy array ``(H, W)``, ``(H, W, 1|3|4)`` of uint8,
            uint16 or float in [0, 1]; or a tensor ``(3, H, W)``/``(1, H, W)``/``(H, W)``
            (uint8 or float in [0, 1]).
        max_pixels: refuse larger images (decompression bombs, mistakes).

    Returns:
        ``(3, H, W)`` float32 RGB in [0, 1].

    Raises:
        FileNotFoundError: the path does not exist.
        ImageError: empty, corrupt, truncated, too large, or of an unusable shape/dtype/range.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        if path.stat().st_size == 0:
            raise ImageError(f"image file {path} is empty (0 bytes)")
        try:
            with Image.open(path) as opened:
                _check_size(opened.width, opened.height, max_pixels, f"image {path}")
                opened.load()
                return _from_pil(opened, f"image {path}", max_pixels)
        except ImageError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise ImageError(f"{path} is not a readable image (corrupt or truncated?): {error}") from error
        except Image.DecompressionBombError as error:
            raise ImageError(f"image {path} is too large: {error}") from error
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
        return _from_array(t.permute(1, 2, 0).numpy(), "tensor image")
    raise TypeError(f"unsupported image type {type(image).__name__}; pass a path, PIL image, array or tensor")


def validate_classes(classes: Sequence[str], *, max_classes: int = MAX_CLASSES) -> list[str]:
    """Check a class list and return it as a list.

    Names are kept byte for byte (ADE-150's ``"bed "`` differs from ``"bed"`` on purpose).

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
        if name in seen:
            duplicates.append(f"{name!r} (at {seen[name]} and {i})")
        seen.setdefault(name, i)
    if duplicates:
        raise ValueError(f"duplicate class names: {', '.join(duplicates[:10])}")
    return names


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then rename the result onto ``path`` atomically: readers see the
    old file or the new one, never half of one, and a failed write leaves no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
