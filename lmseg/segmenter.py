"""Inference API: ``Segmenter(model).predict(image, classes)`` -> label map at the image's size.

Text embeddings are computed once per vocabulary (in memory, and on disk through
:func:`lmseg.prompts.embed_prompts`). Two inference modes, as CAT-Seg:

- whole image: the encoders resize the image to their input size; logits ``(K, 4h, 4w)`` are
  upsampled bilinearly to the image size;
- sliding window: the image is resized to 640×640, cut into 384-px windows with 1/3 overlap plus
  one global view, all run as one batch; sigmoid probabilities of the windows are averaged where
  they overlap, then averaged with the global view.

Upsampling to the image size and the arg-max run tile by tile (:mod:`lmseg.label_maps`), so memory
beyond the model's own output does not grow with the vocabulary unless probabilities are requested.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from lmseg.io import DEFAULT_MAX_PIXELS, ImageInput, load_image, validate_classes
from lmseg.label_maps import upsampled_argmax
from lmseg.model import LMSeg
from lmseg.prompts import embed_prompts, prompts_for

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class SlidingWindow:
    """CAT-Seg's sliding-window settings (resize, window side, overlap)."""

    resize: int = 640
    window: int = 384
    overlap: float = 0.333

    @property
    def stride(self) -> int:
        """Step between windows (256 px for CAT-Seg's settings)."""
        return int(self.window * (1 - self.overlap))

    def __post_init__(self) -> None:
        stride = self.stride
        if not 0 < self.window <= self.resize or stride < 1 or (self.resize - self.window) % stride:
            raise ValueError(
                f"sliding windows of {self.window} px with overlap {self.overlap} (stride {stride}) "
                f"do not tile a {self.resize} px image; pick sizes with "
                "(resize - window) divisible by the stride"
            )

    def views(self, image: torch.Tensor) -> torch.Tensor:
        """``(3, H, W)`` or ``(1, 3, H, W)`` -> ``(n + 1, 3, window, window)``: the windows of the
        image resized to ``resize``², then the whole image resized to ``window``² (global view)."""
        image = image.reshape(1, *image.shape[-3:])
        side, kernel = self.resize, self.window
        resized = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False)
        crops = rearrange(
            F.unfold(resized, kernel_size=kernel, stride=self.stride),
            "1 (c h w) n -> n c h w",
            c=3,
            h=kernel,
        )
        global_view = F.interpolate(image, size=(kernel, kernel), mode="bilinear", align_corners=False)
        return torch.cat([crops, global_view])

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits of :meth:`views` ``(n + 1, K, 4h, 4w)`` -> probabilities ``(K, resize, resize)``.

        Sigmoid probabilities of the windows, upsampled to the window size, are averaged where
        windows overlap, then averaged with the upsampled global view (CAT-Seg).
        """
        side, kernel, stride = self.resize, self.window, self.stride
        part = F.interpolate(logits, size=(kernel, kernel), mode="bilinear", align_corners=False)
        part = part.sigmoid_()  # a fresh tensor: in place
        # Windows in the order of views() (F.unfold: row-major over their top-left corners),
        # accumulated by slice additions (F.fold's col2im took most of a tiny model's sliding-window
        # inference: 1.39 -> 0.88 s per image at K = 150).
        starts = range(0, side - kernel + 1, stride)
        folded = part.new_zeros(part.shape[1], side, side)
        coverage = part.new_zeros(1, side, side)
        corners = [(y, x) for y in starts for x in starts]
        for (y, x), window in zip(corners, part[:-1], strict=True):
            folded[:, y : y + kernel, x : x + kernel] += window
            coverage[:, y : y + kernel, x : x + kernel] += 1
        folded /= coverage
        whole = F.interpolate(part[-1:], size=(side, side), mode="bilinear", align_corners=False)[0]
        return folded.add_(whole).div_(2)


class Segmenter:
    """Open-vocabulary segmentation of single images with any class list.

    Args:
        model: an :class:`~lmseg.model.LMSeg` (e.g. from :func:`lmseg.create_model`).
        prompt_mode: how class names become the model's P prompts (see
            :mod:`lmseg.prompts.compose`); default ``"template"`` for P = 1 and
            ``"attributes"`` for P = 4.
        prompt_bank: a bank (name, path or object) to use for every vocabulary; by default the
            shipped bank matching the class list, else the template alone (with a notice).
        sliding_window: use CAT-Seg's sliding-window inference by default.
        window: sliding-window geometry (CAT-Seg's 640 / 384 / 1/3 by default).
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` autocast.
        cache_dir: on-disk text-embedding cache (``$LMSEG_CACHE/text`` by default).
        class_chunk: classes recombined at once in sliding-window inference.
        max_pixels: refuse larger images.

    Example:
        >>> segmenter = Segmenter(create_model("lmseg_tiny"))
        >>> labels = segmenter.predict("photo.jpg", ["cat", "sofa", "wall"])  # (H, W) int32
    """

    def __init__(
        self,
        model: LMSeg,
        *,
        prompt_mode: str | None = None,
        prompt_bank: str | os.PathLike[str] | None = None,
        sliding_window: bool = False,
        window: SlidingWindow | None = None,
        precision: Precision = "fp32",
        cache_dir: str | os.PathLike[str] | None = None,
        class_chunk: int = 64,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {precision!r}")
        self.model = model.eval()
        if prompt_mode is None:
            defaults = {1: "template", 4: "attributes"}
            if model.num_prompts not in defaults:
                raise ValueError(
                    f"the model expects {model.num_prompts} prompts per class: pass prompt_mode"
                )
            prompt_mode = defaults[model.num_prompts]
        self.prompt_mode = prompt_mode
        self.prompt_bank = prompt_bank
        self.sliding_window = sliding_window
        self.window = window or SlidingWindow()
        self.precision = precision
        self.cache_dir = cache_dir
        self.class_chunk = class_chunk
        self.max_pixels = max_pixels
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def text_embeddings(self, classes: Sequence[str]) -> torch.Tensor:
        """Prompt embeddings ``(K, P, D)`` of a class list, cached per vocabulary."""
        names = validate_classes(classes)
        key = tuple(names)
        if key not in self._text:
            prompts = prompts_for(names, bank=self.prompt_bank, mode=self.prompt_mode)  # type: ignore[arg-type]
            p = len(prompts[0])
            if p != self.model.num_prompts:
                raise ValueError(
                    f"prompt mode {self.prompt_mode!r} gives {p} prompts per class but the model "
                    f"expects {self.model.num_prompts}"
                )
            self._text[key] = embed_prompts(
                self.model.clip, prompts, cache_dir=self.cache_dir, class_names=names
            ).to(self.device)
        return self._text[key]

    def _autocast(self) -> torch.autocast | nullcontext[None]:
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def _probabilities(self, image: torch.Tensor, text: torch.Tensor, sliding: bool) -> torch.Tensor:
        """Per-class probabilities at model resolution, before resizing to the image.

        Returns:
            ``(K, h', w')``: ``4h × 4w`` for whole-image inference, ``resize × resize`` for the
            sliding window.
        """
        image = image.to(self.device)[None]
        with torch.no_grad(), self._autocast():
            if not sliding:
                return self.model(image, text)[0].float().sigmoid()
            logits = self.model(self.window.views(image), text).float()
        # Combine per class chunk so the per-window maps of all K classes are never alive at once.
        side = self.window.resize
        out = torch.empty(logits.shape[1], side, side, device=logits.device)
        for i in range(0, logits.shape[1], self.class_chunk):
            out[i : i + self.class_chunk] = self.window.combine(logits[:, i : i + self.class_chunk])
        return out

    def predict(
        self,
        image: ImageInput,
        classes: Sequence[str],
        *,
        sliding_window: bool | None = None,
        return_probabilities: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Label every pixel of an image with one of ``classes``.

        Args:
            image: path, PIL image, numpy array or tensor (see :func:`lmseg.io.load_image`).
            classes: K class names.
            sliding_window: override the segmenter's default inference mode.
            return_probabilities: also return the per-class probabilities.

        Returns:
            ``labels`` ``(H, W)`` int32 indices into ``classes``; with
            ``return_probabilities``, ``(labels, probabilities (K, H, W) float32)``.
        """
        pixels = load_image(image, max_pixels=self.max_pixels)
        text = self.text_embeddings(classes)
        sliding = self.sliding_window if sliding_window is None else sliding_window
        probs = self._probabilities(pixels, text, sliding)
        size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        full = torch.empty(probs.shape[0], *size) if return_probabilities else None
        labels = upsampled_argmax(probs, size, keep=full).to(torch.int32).cpu()
        if full is not None:
            return labels.numpy(), full.numpy()
        return labels.numpy()
