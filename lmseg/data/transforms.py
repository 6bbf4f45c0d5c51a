"""Training augmentation of CAT-Seg's semantic dataset mapper, in pure tensor code.

CAT-Seg (``MaskFormerSemanticDatasetMapper`` with ``configs/config.yaml``, which
``vitb_384.yaml`` / ``vitl_336.yaml`` inherit) applies, in this order:

1. ``ResizeShortestEdge(MIN_SIZE_TRAIN=(384,), MAX_SIZE_TRAIN=1333, "choice")``: the short side
   goes to 384 (no scale jitter), the long side is capped at 1333 (detectron2's default).
2. ``RandomCrop_CategoryAreaConstraint("absolute", (384, 384), SINGLE_CATEGORY_MAX_AREA=1.0)``:
   a plain random crop, since an area limit of 1.0 never retries.
3. ``ColorAugSSDTransform`` (``INPUT.COLOR_AUG_SSD: True``): SSD's photometric distortion.
4. ``RandomFlip()``: horizontal, probability 0.5.
5. Padding to ``SIZE_DIVISIBILITY=384``: image with 128, label with the ignore value.

Every random draw comes from an optional ``torch.Generator``, so a seeded generator reproduces an
augmentation exactly. Shapes: image ``uint8 (3, H, W)`` RGB, label ``int64 (H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "TrainAugmentation",
    "color_aug_ssd",
    "hflip",
    "hsv_to_rgb_u8",
    "pad_to_divisible",
    "random_crop",
    "resize",
    "resize_image",
    "resize_label",
    "rgb_to_hsv_u8",
    "shortest_edge_size",
]


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high] (both inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def _coin(generator: torch.Generator | None, p: float = 0.5) -> bool:
    return bool(torch.rand((), generator=generator, dtype=torch.float64).item() < p)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    return low + (high - low) * u


def shortest_edge_size(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """Output (height, width) of detectron2's ``ResizeShortestEdge.get_output_shape``.

    The short side becomes ``short_edge``; if the long side would then exceed ``max_size`` both
    are scaled down so it equals ``max_size``; sides are rounded half up.
    """
    scale = short_edge / min(height, width)
    new_h, new_w = (short_edge, scale * width) if height < width else (scale * height, short_edge)
    if max(new_h, new_w) > max_size:
        rescale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * rescale, new_w * rescale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a ``uint8 (3, H, W)`` image to ``size`` = (h, w).

    detectron2 resizes uint8 images with PIL's bilinear filter, which low-pass filters when
    shrinking; ``antialias=True`` is PyTorch's port of that filter (values may differ by one
    grey level from PIL's fixed-point arithmetic: on CPU, PyTorch's uint8 kernel leaves ~0.2 % of
    values one level off, the float path elsewhere ~15 %).
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    x = image[None].contiguous() if image.device.type == "cpu" else image[None].float()
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    if out.dtype == torch.uint8:
        return out
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an ``int64 (H, W)`` label map to ``size`` = (h, w).

    Matches detectron2, which resizes the (double) label with ``F.interpolate(mode="nearest")``;
    float64 holds every label value (up to 65535) exactly.
    """
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    out = F.interpolate(label[None, None].double(), size=size, mode="nearest")[0, 0]
    return out.to(label.dtype)


def resize(
    image: torch.Tensor, label: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize an image bilinearly and its label with nearest neighbour to ``size`` = (h, w)."""
    return resize_image(image, size), resize_label(label, size)


def random_crop(
    image: torch.Tensor,
    label: torch.Tensor,
    crop_size: tuple[int, int],
    *,
    ignore_value: int | None = None,
    single_category_max_area: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """detectron2's ``RandomCrop_CategoryAreaConstraint`` with an "absolute" crop size.

    The crop is ``min(crop_size, image size)`` per side at a uniform offset. With
    ``single_category_max_area < 1`` up to 10 offsets are tried until no single class (ignore
    pixels excluded) covers that fraction of the crop; CAT-Seg uses 1.0, i.e. one draw.
    """
    height, width = label.shape[-2:]
    crop_h, crop_w = min(crop_size[0], height), min(crop_size[1], width)
    tries = 1 if single_category_max_area >= 1.0 else 10
    for _ in range(tries):
        y0 = _randint(0, height - crop_h, generator)
        x0 = _randint(0, width - crop_w, generator)
        if tries == 1:
            break
        crop = label[y0 : y0 + crop_h, x0 : x0 + crop_w]
        values, counts = torch.unique(crop, return_counts=True)
        if ignore_value is not None:
            counts = counts[values != ignore_value]
        if len(counts) > 1 and counts.max() < counts.sum() * single_category_max_area:
            break
    return (
        image[:, y0 : y0 + crop_h, x0 : x0 + crop_w],
        label[y0 : y0 + crop_h, x0 : x0 + crop_w],
    )


def hflip(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror an image (…, H, W) and its label (H, W) left-right."""
    return image.flip(-1), label.flip(-1)


def rgb_to_hsv_u8(image: torch.Tensor) -> torch.Tensor:
    """OpenCV's 8-bit ``COLOR_RGB2HSV``: ``uint8 (3, H, W)`` RGB to H in [0, 180), S, V in [0, 255].

    Computed in exact arithmetic with round-half-up where OpenCV uses 12-bit fixed point, so a
    value can differ from ``cv2.cvtColor`` by one.
    """
    r, g, b = image.to(torch.int64).unbind(0)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    # Hue in units of 1/6 turn scaled by diff; ties between maxima resolve R, then G (as OpenCV).
    h_raw = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    safe_diff = diff.clamp(min=1).double()
    h = torch.where(diff > 0, torch.floor(30.0 * h_raw / safe_diff + 0.5), 0.0)
    h = torch.where(h < 0, h + 180.0, h)
    s = torch.where(v > 0, torch.floor(diff * 255.0 / v.clamp(min=1).double() + 0.5), 0.0)
    return torch.stack([h, s, v.double()]).to(torch.uint8)


def hsv_to_rgb_u8(hsv: torch.Tensor) -> torch.Tensor:
    """OpenCV's 8-bit ``COLOR_HSV2RGB``: inverse of :func:`rgb_to_hsv_u8` (H in [0, 180))."""
    h, s, v = hsv.to(torch.float32).unbind(0)
    h = torch.remainder(h * (6.0 / 180.0), 6.0)
    s, v = s / 255.0, v / 255.0
    sector = torch.floor(h)
    f = h - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # Standard HSV sectors: (r, g, b) = (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q).
    table = torch.stack(
        [
            torch.stack([v, q, p, p, t, v]),
            torch.stack([t, v, v, q, p, p]),
            torch.stack([p, p, t, v, v, q]),
        ]
    )  # (3, 6, H, W)
    index = sector.long().clamp_(0, 5)[None, None].expand(3, 1, *h.shape)
    rgb = torch.gather(table, 1, index)[:, 0]
    # OpenCV's saturate_cast rounds half to even, like torch.round.
    return torch.round(rgb * 255.0).clamp_(0, 255).to(torch.uint8)


def _affine_u8(x: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    # ColorAugSSDTransform.convert: float32 affine map, clip to [0, 255], truncate to uint8.
    return (x.to(torch.float32) * alpha + beta).clamp_(0, 255).to(torch.uint8)


def color_aug_ssd(
    image: torch.Tensor,
    *,
    brightness_delta: float = 32.0,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SSD's photometric distortion on a ``uint8 (3, H, W)`` RGB image.

    As detectron2's ``ColorAugSSDTransform`` (defaults are its defaults): brightness with
    probability 1/2, then either contrast → saturation → hue or saturation → hue → contrast
    (1/2 each), every step applied with probability 1/2. Saturation and hue act in OpenCV's
    8-bit HSV space (hue shift in [-18, 18] of 180).
    """
    img = image
    if _coin(generator):
        img = _affine_u8(img, beta=_uniform(-brightness_delta, brightness_delta, generator))

    def contrast(x: torch.Tensor) -> torch.Tensor:
        if _coin(generator):
            return _affine_u8(x, alpha=_uniform(*contrast_range, generator))
        return x

    def saturation(x: torch.Tensor) -> torch.Tensor:
        if _coin(generator):
            hsv = rgb_to_hsv_u8(x)
            hsv[1] = _affine_u8(hsv[1], alpha=_uniform(*saturation_range, generator))
            return hsv_to_rgb_u8(hsv)
        return x

    def hue(x: torch.Tensor) -> torch.Tensor:
        if _coin(generator):
            hsv = rgb_to_hsv_u8(x)
            shift = _randint(-hue_delta, hue_delta, generator)
            hsv[0] = torch.remainder(hsv[0].to(torch.int64) + shift, 180).to(torch.uint8)
            return hsv_to_rgb_u8(hsv)
        return x

    steps = (contrast, saturation, hue) if _coin(generator) else (saturation, hue, contrast)
    for step in steps:
        img = step(img)
    return img


def pad_to_divisible(
    image: torch.Tensor,
    label: torch.Tensor,
    divisor: int,
    *,
    ignore_value: int,
    pad_value: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad bottom/right so H and W are multiples of ``divisor`` (no-op if ``divisor <= 0``).

    CAT-Seg's mapper pads the image with 128 and the label with the ignore value, so padding
    never counts as a class. (Its crops are never larger than ``divisor``, so "pad to
    ``divisor``" there and "pad to a multiple" here agree.)
    """
    if divisor <= 0:
        return image, label
    height, width = label.shape[-2:]
    pad_h = math.ceil(height / divisor) * divisor - height
    pad_w = math.ceil(width / divisor) * divisor - width
    if pad_h == 0 and pad_w == 0:
        return image, label
    image = F.pad(image, (0, pad_w, 0, pad_h), value=pad_value)
    label = F.pad(label, (0, pad_w, 0, pad_h), value=ignore_value)
    return image, label


class TrainAugmentation:
    """CAT-Seg's training augmentation; defaults are its ``configs/config.yaml`` values.

    Args:
        min_size: short-edge sizes (``INPUT.MIN_SIZE_TRAIN``).
        max_size: long-edge cap (``INPUT.MAX_SIZE_TRAIN``, detectron2's default 1333).
        size_sampling: ``"choice"`` picks one of ``min_size``; ``"range"`` draws an integer in
            ``[min_size[0], min_size[1]]`` (scale jitter).
        crop_size: (h, w) of the random crop, or ``None`` to skip cropping.
        single_category_max_area: crop retry limit (1.0 = no retry, CAT-Seg's value).
        color_aug: apply :func:`color_aug_ssd` (``INPUT.COLOR_AUG_SSD``).
        flip_prob: probability of a horizontal flip.
        ignore_value: label value of padding and of the crop area rule.
        size_divisibility: pad to multiples of this (``INPUT.SIZE_DIVISIBILITY``); 0 disables.
        pad_value: image value of padding.

    Call with ``(image uint8 (3, H, W), label int64 (H, W), generator=None)``; returns the
    augmented pair, ``(3, 384, 384)`` and ``(384, 384)`` with the defaults.
    """

    def __init__(
        self,
        *,
        min_size: Sequence[int] = (384,),
        max_size: int = 1333,
        size_sampling: str = "choice",
        crop_size: tuple[int, int] | None = (384, 384),
        single_category_max_area: float = 1.0,
        color_aug: bool = True,
        flip_prob: float = 0.5,
        ignore_value: int = 255,
        size_divisibility: int = 384,
        pad_value: int = 128,
    ) -> None:
        if size_sampling not in ("choice", "range"):
            raise ValueError(f"size_sampling must be 'choice' or 'range', got {size_sampling!r}")
        if size_sampling == "range" and len(min_size) != 2:
            raise ValueError(f"size_sampling='range' needs min_size=(low, high), got {min_size}")
        self.min_size = tuple(int(s) for s in min_size)
        self.max_size = max_size
        self.size_sampling = size_sampling
        self.crop_size = crop_size
        self.single_category_max_area = single_category_max_area
        self.color_aug = color_aug
        self.flip_prob = flip_prob
        self.ignore_value = ignore_value
        self.size_divisibility = size_divisibility
        self.pad_value = pad_value

    def _short_edge(self, generator: torch.Generator | None) -> int:
        if self.size_sampling == "range":
            return _randint(self.min_size[0], self.min_size[1], generator)
        return self.min_size[_randint(0, len(self.min_size) - 1, generator)]

    def __call__(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be uint8 (3, H, W), got {image.dtype} {image.shape}")
        if tuple(label.shape) != tuple(image.shape[-2:]):
            raise ValueError(f"label shape {tuple(label.shape)} != image {image.shape[-2:]}")
        short_edge = self._short_edge(generator)
        if short_edge > 0:  # detectron2 treats a size of 0 as "no resize"
            height, width = label.shape
            size = shortest_edge_size(height, width, short_edge, self.max_size)
            image, label = resize(image, label, size)
        if self.crop_size is not None:
            image, label = random_crop(
                image,
                label,
                self.crop_size,
                ignore_value=self.ignore_value,
                single_category_max_area=self.single_category_max_area,
                generator=generator,
            )
        if self.color_aug:
            image = color_aug_ssd(image, generator=generator)
        if _coin(generator, self.flip_prob):
            image, label = hflip(image, label)
        image, label = pad_to_divisible(
            image,
            label,
            self.size_divisibility,
            ignore_value=self.ignore_value,
            pad_value=self.pad_value,
        )
        return image.contiguous(), label.contiguous()

    def __repr__(self) -> str:
        return (
            f"TrainAugmentation(min_size={self.min_size}, max_size={self.max_size}, "
            f"crop_size={self.crop_size}, color_aug={self.color_aug}, "
            f"flip_prob={self.flip_prob}, ignore_value={self.ignore_value}, "
            f"size_divisibility={self.size_divisibility})"
        )
