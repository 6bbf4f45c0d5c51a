"""Colour overlays with a legend for label maps.

The palette spreads its colours in CIELAB (farthest-point sampling of an sRGB grid), so any two
of the first few hundred classes differ visibly, not only neighbouring indices; each class keeps
its colour in every image of a vocabulary. The legend's text and swatches scale with the image,
so they stay readable on a phone photo as on a 6000×4000 one.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Legend text height in pixels: a fiftieth of the image height, at least this.
_MIN_FONT = 11
# Colours of the palette chosen by farthest-point sampling (beyond, the sequence repeats: so many
# classes cannot all look different anyway).
_MAX_DISTINCT = 1024


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """``(N, 3)`` sRGB in [0, 1] -> CIELAB (D65), for perceptual colour distances."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


class _DistinctColours:
    """Farthest-point sampling in CIELAB of an sRGB grid, extended on demand: each colour is as
    far from all earlier ones as the grid allows (so a palette of K colours is a prefix of one of
    more). Very light colours are left out: the legend is drawn on white."""

    def __init__(self) -> None:
        steps = np.linspace(0.0, 1.0, 20)
        grid = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
        lab = _srgb_to_lab(grid)
        keep = (lab[:, 0] > 20) & (lab[:, 0] < 88)
        self.grid, self.lab = grid[keep], lab[keep]
        self.chosen = [int(np.argmax(np.hypot(self.lab[:, 1], self.lab[:, 2])))]  # most saturated
        self.nearest = np.linalg.norm(self.lab - self.lab[self.chosen[0]], axis=1)

    def first(self, count: int) -> np.ndarray:
        """The first ``min(count, _MAX_DISTINCT)`` colours, ``(n, 3)`` uint8."""
        count = min(count, _MAX_DISTINCT, len(self.grid))
        while len(self.chosen) < count:
            pick = int(np.argmax(self.nearest))
            self.chosen.append(pick)
            np.minimum(self.nearest, np.linalg.norm(self.lab - self.lab[pick], axis=1), out=self.nearest)
        return (self.grid[self.chosen[:count]] * 255).round().astype(np.uint8)


_COLOURS = _DistinctColours()


def palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """A fixed colour per class, ``(K, 3)`` uint8, the first ones maximally distinct.

    Args:
        num_classes: K.
        seed: rotates which colours come first (0: the standard palette).
    """
    colours = _COLOURS.first(num_classes + seed)
    index = (np.arange(num_classes) + seed) % len(colours)
    return colours[index]


def _font_size(image_height: int | None) -> int:
    return max(_MIN_FONT, round((image_height or 0) / 50))


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in scalable font at ``size`` pixels (no system font needed)."""
    return ImageFont.load_default(size=size)


def legend_width(names: Sequence[str], *, image_height: int | None = None, more: int = 0) -> int:
    """Width in pixels of the legend :func:`overlay` draws beside an image of ``image_height``
    pixels listing ``names`` (margins, swatch, the longest name; ``more`` > 0 adds the
    "+N more" line)."""
    size = _font_size(image_height)
    font = _font(size)
    lines = list(names) + ([f"+{more} more"] if more else [])
    text = max((int(np.ceil(font.getlength(name))) for name in lines), default=0)
    return 2 * size + size + size // 2 + text + size


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    *,
    alpha: float = 0.5,
    legend: bool = True,
    max_legend: int = 40,
    hidden: Collection[int] = (),
) -> Image.Image:
    """Blend a colour-coded label map over an image and add a legend of the classes present.

    Args:
        image: ``(H, W, 3)`` uint8 RGB, or float in [0, 1].
        labels: ``(H, W)`` class indices.
        classes: K class names.
        alpha: weight of the colours.
        legend: draw a legend to the right, classes ordered by area; text and swatches scale
            with the image height.
        max_legend: at most this many legend rows; the rest are counted on a "+N more" line.
        hidden: class indices left uncoloured (their pixels show the image) and out of the
            legend; each class keeps its colour whatever is hidden.

    Returns:
        An RGB PIL image (wider than the input when a legend is drawn and a class is shown).
    """
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    colours = palette(len(classes))
    blended = (image * (1 - alpha) + colours[labels] * alpha).round().astype(np.uint8)
    shown = ~np.isin(labels, list(hidden))
    canvas = Image.fromarray(np.where(shown[..., None], blended, image))
    ids, counts = np.unique(labels[shown], return_counts=True)
    if not legend or ids.size == 0:
        return canvas
    ranked = ids[np.argsort(-counts, kind="stable")]
    order, more = ranked[:max_legend], max(0, len(ranked) - max_legend)
    size = _font_size(canvas.height)
    font = _font(size)
    row, margin = int(size * 1.5), size
    lines = len(order) + (1 if more else 0)
    width = legend_width([classes[i] for i in order], image_height=canvas.height, more=more)
    height = max(canvas.height, 2 * margin + row * lines)
    out = Image.new("RGB", (canvas.width + width, height), "white")
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    x = canvas.width + margin
    for r, i in enumerate(order):
        y = margin + r * row
        draw.rectangle(
            [x, y, x + size, y + size],
            fill=tuple(int(c) for c in colours[i]),
            outline="black",
            width=max(1, size // 12),
        )
        draw.text((x + size + size // 2, y), classes[i], fill="black", font=font)
    if more:
        draw.text((x, margin + len(order) * row), f"+{more} more", fill="black", font=font)
    return out
