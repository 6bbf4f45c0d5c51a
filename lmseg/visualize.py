"""Colour overlays with a legend for label maps."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """A fixed, well-spread colour per class: ``(K, 3)`` uint8 (golden-ratio hues)."""
    hues = (np.arange(num_classes) * 0.618033988749895 + seed * 0.1) % 1.0
    sat = 0.65 + 0.3 * ((np.arange(num_classes) // 7) % 2)
    val = 0.95 - 0.25 * ((np.arange(num_classes) // 3) % 2)
    i = np.floor(hues * 6).astype(int) % 6
    f = hues * 6 - np.floor(hues * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    table = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)]
    rgb = np.stack([np.choose(i, [c[ch] for c in table]) for ch in range(3)], axis=1)
    return (rgb * 255).round().astype(np.uint8)


def legend_width(names: Sequence[str]) -> int:
    """Width in pixels of the legend :func:`overlay` draws to the right of an image listing
    ``names`` (margins, colour swatch, the longest name in the default font)."""
    font = ImageFont.load_default()
    return 12 + 14 + 6 + max((int(font.getlength(name)) for name in names), default=0) + 12


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
        legend: draw a legend to the right, classes ordered by area.
        max_legend: at most this many legend rows.
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
    order = ids[np.argsort(-counts)][:max_legend]
    font = ImageFont.load_default()
    row = 16
    width = legend_width([classes[i] for i in order])
    out = Image.new("RGB", (canvas.width + width, max(canvas.height, row * len(order) + 16)), "white")
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    for r, i in enumerate(order):
        y = 8 + r * row
        x = canvas.width + 12
        draw.rectangle([x, y, x + 12, y + 12], fill=tuple(int(c) for c in colours[i]), outline="black")
        draw.text((x + 20, y), classes[i], fill="black", font=font)
    return out
