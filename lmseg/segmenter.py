"""Inference API: ``Segmenter(model).predict(image, classes)`` -> a :class:`Segmentation`.

Text embeddings are computed once per vocabulary (in memory, and on disk through
:func:`lmseg.prompts.embed_prompts`). Two inference modes, as CAT-Seg:

- whole image: the encoders resize the image to their input size; logits ``(K, 4h, 4w)`` are
  upsampled bilinearly to the image size;
- sliding window: the image is resized to 640×640, cut into 384-px windows with 1/3 overlap plus
  one global view, all run as one batch; sigmoid probabilities of the windows are averaged where
  they overlap, then averaged with the global view.

Probabilities are independent per-class sigmoids, as CAT-Seg trains them (binary cross-entropy
per class): they do not sum to 1 over the classes, and the label of a pixel is the class of
highest probability. Upsampling to the image size and the arg-max run tile by tile (:mod:`lmseg.label_maps`), so
memory beyond the model's own output does not grow with the vocabulary or the image size unless
probabilities are requested. :meth:`Segmenter.label_maps` is the one batched path that :meth:`Segmenter.predict`
and benchmark evaluation (:mod:`lmseg.eval`) both use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from lmseg.io import DEFAULT_MAX_PIXELS, ImageInput, load_image, validate_classes
from lmseg.label_maps import upsampled_argmax
from lmseg.model import LMSeg
from lmseg.prompts import embed_prompts, prompts_for
from lmseg.runtime import Precision, RuntimeOptions, resolve_device
from lmseg.segmentation import Segmentation

__all__ = ["Precision", "Segmentation", "Segmenter", "SlidingWindow", "upsampled_argmax"]

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


def _same_size_groups(images: Sequence[torch.Tensor]) -> Iterator[list[int]]:
    """Runs of consecutive images of one shape (whole-image inference batches them)."""
    group: list[int] = []
    for i, image in enumerate(images):
        if group and images[group[0]].shape != image.shape:
            yield group
            group = []
        group.append(i)
    if group:
        yield group


class Segmenter:
    """Open-vocabulary segmentation of images with any class list.

    Args:
        model: an :class:`~lmseg.model.LMSeg` (e.g. from :func:`lmseg.create_model`).
        runtime: how the model runs (:class:`~lmseg.runtime.RuntimeOptions`: chunk sizes,
            attention backend, precision, class filtering, preprocessing, device).
        prompt_mode: how class names become the model's P prompts (see
            :mod:`lmseg.prompts.compose`); default ``"template"`` for P = 1 and
            ``"attributes"`` for P = 4.
        prompt_bank: a bank (name, path or object) to use for every vocabulary; by default
            each class is looked up in the shipped banks (:func:`lmseg.prompts.prompts_for`),
            and classes found nowhere get the template alone (with a logged notice).
        sliding_window: use CAT-Seg's sliding-window inference by default.
        window: sliding-window geometry (CAT-Seg's 640 / 384 / 1/3 by default).
        precision: shorthand for ``runtime.precision`` (``"fp32"``, ``"bf16"``, ``"fp16"``).
        device: shorthand for ``runtime.device``; the model is moved there (``"cuda"``, ``"cpu"``,
            ``"auto"``); a device this machine lacks is one clear error.
        cache_dir: on-disk text-embedding cache (``$LMSEG_CACHE/text`` by default).
        upsample_chunk: classes per chunk of probabilities handed to the label-map step (the
            sliding-window recombination runs chunk by chunk).
        max_pixels: refuse larger images.

    Example:
        >>> segmenter = Segmenter(create_model("lmseg_tiny"))
        >>> result = segmenter.predict("photo.jpg", ["cat", "sofa", "wall"])
        >>> result.labels  # (H, W) int32 indices into result.classes
    """

    def __init__(
        self,
        model: LMSeg,
        *,
        runtime: RuntimeOptions | None = None,
        prompt_mode: str | None = None,
        prompt_bank: str | os.PathLike[str] | None = None,
        sliding_window: bool = False,
        window: SlidingWindow | None = None,
        precision: Precision | None = None,
        device: str | torch.device | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        upsample_chunk: int = 64,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        runtime = runtime or RuntimeOptions()
        if precision is not None:
            runtime = runtime.replace(precision=precision)
        if device is not None:
            runtime = runtime.replace(device=str(device))
        self.runtime = runtime
        self.model = model.eval()
        if runtime.device is not None:
            self.model.to(resolve_device(runtime.device))
        if prompt_mode is None:
            defaults = {1: "template", 4: "attributes"}
            if model.num_prompts not in defaults:
                raise ValueError(
                    f"the model expects {model.num_prompts} prompts per class: pass prompt_mode"
                )
            prompt_mode = defaults[model.num_prompts]
        if upsample_chunk < 1:
            raise ValueError(f"upsample_chunk must be positive, got {upsample_chunk}")
        self.prompt_mode = prompt_mode
        self.prompt_bank = prompt_bank
        self.sliding_window = sliding_window
        self.window = window or SlidingWindow()
        self.cache_dir = cache_dir
        self.upsample_chunk = upsample_chunk
        self.max_pixels = max_pixels
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def precision(self) -> Precision:
        return self.runtime.precision

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
                self.model.text_encoder, prompts, cache_dir=self.cache_dir, class_names=names
            ).to(self.device)
        return self._text[key]

    def _autocast(self) -> torch.autocast | nullcontext[None]:
        if self.runtime.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.runtime.precision])

    def _logits(
        self, images: Sequence[torch.Tensor], text: torch.Tensor, sliding: bool
    ) -> list[torch.Tensor]:
        """Per-image logits: ``(n + 1, K, 4h, 4w)`` views for the sliding window (all images'
        views in one forward), ``(1, K, 4h', 4w')`` for whole images (equal sizes batched)."""
        model, runtime = self.model, self.runtime
        per_image: list[torch.Tensor] = [torch.empty(0)] * len(images)
        with torch.no_grad(), self._autocast():
            if sliding:
                views = [self.window.views(image) for image in images]
                logits = model(torch.cat(views), text, runtime).float()
                for i, part in enumerate(logits.split([len(v) for v in views])):
                    per_image[i] = part
            else:
                for group in _same_size_groups(images):
                    batch = torch.stack([images[i] for i in group])
                    logits = model(batch, text, runtime).float()
                    for j, i in enumerate(group):
                        per_image[i] = logits[j : j + 1]
        return per_image

    def _probability_chunks(
        self, logits: torch.Tensor, image_size: tuple[int, int], sliding: bool
    ) -> Iterator[torch.Tensor]:
        """Class chunks ``(k, h', w')`` of one image's probabilities at model resolution."""
        for part in logits.split(self.upsample_chunk, dim=1):
            if sliding:
                yield self.window.combine(part)
                continue
            probs = part[0].sigmoid()
            if self.runtime.preprocessing == "catseg":
                # detectron2's sem_seg_postprocess crops the prediction to the image's size before
                # resizing it; at model resolution the crop keeps the whole map unless the image
                # is smaller than it.
                probs = probs[:, : image_size[0], : image_size[1]]
            yield probs

    def label_maps(
        self,
        images: Sequence[torch.Tensor],
        text: torch.Tensor,
        sizes: Sequence[tuple[int, int]] | None = None,
        *,
        sliding: bool | None = None,
        keep: Sequence[torch.Tensor | None] | None = None,
    ) -> list[torch.Tensor]:
        """Label maps of a batch of images (the one inference path of lmseg).

        Args:
            images: ``(3, H_i, W_i)`` float RGB in [0, 1], any sizes.
            text: prompt embeddings ``(K, P, D)`` (:meth:`text_embeddings`).
            sizes: output size of each label map (default: each image's own).
            sliding: sliding-window or whole-image inference (default: the segmenter's).
            keep: per image, an optional ``(K, H_i, W_i)`` buffer to fill with probabilities.

        Returns:
            One ``int64 (H_i, W_i)`` label map per image, on the model's device.
        """
        sliding = self.sliding_window if sliding is None else sliding
        device = self.device
        images = [image.to(device) for image in images]
        sizes = sizes or [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        logits = self._logits(images, text, sliding)
        out = []
        for i, per_image in enumerate(logits):
            image_size = (int(images[i].shape[-2]), int(images[i].shape[-1]))
            chunks = self._probability_chunks(per_image, image_size, sliding)
            buffer = keep[i] if keep is not None else None
            out.append(upsampled_argmax(chunks, (int(sizes[i][0]), int(sizes[i][1])), keep=buffer))
        return out

    def predict(
        self,
        image: ImageInput,
        classes: Sequence[str],
        *,
        sliding_window: bool | None = None,
        return_probabilities: bool = False,
    ) -> Segmentation:
        """Label every pixel of an image with one of ``classes``.

        Args:
            image: path, PIL image, numpy array or tensor (see :func:`lmseg.io.load_image`).
            classes: K class names.
            sliding_window: override the segmenter's default inference mode.
            return_probabilities: also keep the per-class probabilities ``(K, H, W)``
                (independent sigmoids: they do not sum to 1 over classes).

        Returns:
            A :class:`~lmseg.segmentation.Segmentation`: ``labels`` ``(H, W)`` int32 indices
            into ``classes``, ``probabilities`` when asked, helpers to save an overlay or a
            label map.
        """
        pixels = load_image(image, max_pixels=self.max_pixels)
        names = validate_classes(classes)
        text = self.text_embeddings(names)
        size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        full = torch.empty(len(names), *size) if return_probabilities else None
        labels = self.label_maps([pixels], text, [size], sliding=sliding_window, keep=[full])[0]
        return Segmentation(
            labels=labels.to(torch.int32).cpu().numpy(),
            classes=list(names),
            probabilities=None if full is None else full.numpy(),
            image=pixels,
        )
