"""The result of segmenting one image: labels, optional probabilities, the classes, and helpers
to look at it or save it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lmseg.io import atomic_write

__all__ = ["Segmentation", "save_label_map", "save_probabilities"]


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a file")


def save_label_map(
    labels: np.ndarray,
    path: str | os.PathLike[str],
    *,
    num_classes: int,
    palette: np.ndarray | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a label map atomically.

    ``.png``: an 8-bit palette PNG (the classes' overlay colours) when K ≤ 255, else a 16-bit
    grayscale PNG of the class indices (K ≤ 65,536); ``.npy``: the int32 array. The 8-bit limit
    is 255, not 256, because 255 marks unlabelled pixels in 8-bit label maps (the convention of
    :mod:`lmseg.data` dataset folders and of the benchmarks): a 256th class would read back as
    "ignore".

    Args:
        labels: ``(H, W)`` class indices.
        path: ``.png`` or ``.npy`` file.
        num_classes: K, which decides the PNG's bit depth.
        palette: ``(K, 3)`` uint8 colours of a palette PNG (default: :func:`lmseg.visualize.palette`).
        overwrite: replace an existing file.
    """
    path = Path(path)
    _check_target(path, overwrite)
    suffix = path.suffix.lower()
    if suffix == ".npy":

        def write_npy(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
                np.save(f, labels.astype(np.int32))

        atomic_write(path, write_npy)
        return path
    if suffix != ".png":
        raise ValueError(f"label maps are saved as .png or .npy, not {path.suffix or 'no suffix'}")
    if num_classes > 65536:
        raise ValueError(f"{num_classes} classes do not fit a 16-bit PNG; save as .npy")
    if num_classes <= 255:
        from lmseg.visualize import palette as default_palette

        colours = default_palette(num_classes) if palette is None else palette
        image = Image.fromarray(labels.astype(np.uint8), mode="P")
        flat = np.zeros((256, 3), dtype=np.uint8)  # PIL palettes have 256 entries
        flat[: len(colours)] = colours
        image.putpalette(flat.reshape(-1).tolist())
    else:
        image = Image.fromarray(labels.astype(np.uint16))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def save_probabilities(
    probabilities: np.ndarray,
    classes: list[str],
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write per-class probabilities as an ``.npz`` file, atomically.

    The file holds ``probabilities``: ``(K, H, W)`` float16 (half the size of float32; the
    sigmoids lie in [0, 1], where float16 is exact to about 5e-4) and ``classes``: the K names
    as a unicode array, so ``np.load(path)`` needs no pickle.

    Args:
        probabilities: ``(K, H, W)`` per-class probabilities.
        classes: the K class names, in the order of the first axis.
        path: an ``.npz`` file.
        overwrite: replace an existing file.
    """
    path = Path(path)
    _check_target(path, overwrite)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"probabilities are saved as .npz, not {path.suffix or 'no suffix'}")
    if probabilities.ndim != 3 or probabilities.shape[0] != len(classes):
        raise ValueError(
            f"probabilities of shape {probabilities.shape} do not match {len(classes)} classes"
        )
    half = probabilities.astype(np.float16)
    names = np.array(classes, dtype=str)

    def write_npz(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, probabilities=half, classes=names)

    atomic_write(path, write_npz)
    return path


@dataclass
class Segmentation:
    """One image's segmentation.

    Attributes:
        labels: ``(H, W)`` int32 indices into ``classes``.
        classes: the K class names, in the order the labels index.
        probabilities: ``(K, H, W)`` float32 per-class probabilities when asked for (independent
            sigmoids, as CAT-Seg trains them: they do not sum to 1 over classes), else None.
        image: the input as ``(3, H, W)`` RGB in [0, 1], for overlays (None when not kept).
    """

    labels: np.ndarray
    classes: list[str]
    probabilities: np.ndarray | None = None
    image: torch.Tensor | None = field(default=None, repr=False)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """``np.asarray(result)`` is the label map."""
        return self.labels if dtype is None else self.labels.astype(dtype)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the label map."""
        h, w = self.labels.shape
        return int(h), int(w)

    def class_shares(self) -> dict[str, float]:
        """Share of the pixels of every class present, largest first."""
        ids, counts = np.unique(self.labels, return_counts=True)
        total = float(self.labels.size)
        order = np.argsort(-counts, kind="stable")
        return {self.classes[int(ids[i])]: float(counts[i]) / total for i in order}

    def present(self) -> list[str]:
        """The classes that label at least one pixel, largest first."""
        return list(self.class_shares())

    def overlay(self, *, alpha: float = 0.5, legend: bool = True) -> Image.Image:
        """The image with the label colours blended over it and a legend of the classes present."""
        from lmseg.visualize import overlay

        if self.image is None:
            raise ValueError("this result holds no image to draw on")
        rgb = (self.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        return overlay(rgb, self.labels, self.classes, alpha=alpha, legend=legend)

    def save_overlay(
        self, path: str | os.PathLike[str], *, overwrite: bool = False, **options: Any
    ) -> Path:
        """Write :meth:`overlay` as an image file (format from the suffix), atomically.

        Args:
            path: destination (``.png`` recommended).
            overwrite: replace an existing file.
            **options: passed to :meth:`overlay` (``alpha``, ``legend``).
        """
        path = Path(path)
        _check_target(path, overwrite)
        image = self.overlay(**options)
        fmt = Image.registered_extensions().get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"unknown image format for {path} (use .png or .jpg)")
        atomic_write(path, lambda tmp: image.save(tmp, format=fmt))
        return path

    def save_labels(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the label map (palette PNG, 16-bit PNG for K > 255, or ``.npy``), atomically."""
        return save_label_map(self.labels, path, num_classes=len(self.classes), overwrite=overwrite)

    def save_probabilities(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write :attr:`probabilities` and the class names as ``.npz`` (float16), atomically
        (see :func:`save_probabilities`)."""
        if self.probabilities is None:
            raise ValueError("this result holds no probabilities (predict with return_probabilities=True)")
        return save_probabilities(self.probabilities, self.classes, path, overwrite=overwrite)

    def summary(self) -> dict[str, Any]:
        """``{"height": H, "width": W, "shares": {class: share of pixels}}``, largest first."""
        height, width = self.shape
        return {"height": height, "width": width, "shares": self.class_shares()}

    def save_summary(
        self, path: str | os.PathLike[str], *, overwrite: bool = False, **extra: Any
    ) -> Path:
        """Write :meth:`summary` (and the ``extra`` JSON-ready fields first) as a JSON file,
        atomically."""
        path = Path(path)
        _check_target(path, overwrite)
        text = json.dumps({**extra, **self.summary()}, indent=2, ensure_ascii=False) + "\n"
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return path
