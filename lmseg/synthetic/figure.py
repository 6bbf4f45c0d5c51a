"""The demo's figure: unseen scenes, their ground truth and each configuration's prediction.

Every region of a label map is filled with the colour attribute of its class and named; a
predicted name is white where the predicted class is the true class of most of the region's
pixels, red otherwise; the legend under the grid says so. Names are placed so that no two
overlap: each goes to the free spot nearest its region's centre.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmseg.io import atomic_write
from lmseg.synthetic.world import BACKGROUND_RGB, COLORS, SyntheticWorld

__all__ = ["LabelBox", "place_labels", "save_figure", "tile_labels"]

# (left, top, right, bottom) in pixels, right and bottom exclusive.
LabelBox = tuple[int, int, int, int]

RIGHT = (255, 255, 255)
WRONG = (255, 90, 90)
_LABEL_BACK = (0, 0, 0)
_MIN_PIXELS = 12  # regions smaller than this (in label-map pixels) are not named
_STEP = 2  # candidate label positions are searched on a grid of this many pixels
_GAP = 2  # pixels kept free between two labels


def place_labels(
    sizes: Sequence[tuple[int, int]],
    anchors: Sequence[tuple[float, float]],
    bounds: tuple[int, int],
) -> list[LabelBox]:
    """Boxes for labels of the given ``(width, height)``, each at the free spot nearest its
    anchor ``(x, y)``, in order: no two boxes overlap and every box lies inside ``bounds``
    ``(width, height)``, with a small gap between any two (when a label cannot fit anywhere
    it goes centred on its anchor).
    """
    placed: list[LabelBox] = []
    for (w, h), (ax, ay) in zip(sizes, anchors, strict=True):
        w, h = min(w, bounds[0]), min(h, bounds[1])
        xs = np.arange(0, bounds[0] - w + 1, _STEP)
        ys = np.arange(0, bounds[1] - h + 1, _STEP)
        left, top = (a.ravel() for a in np.meshgrid(xs, ys))
        free = np.ones(left.shape, dtype=bool)
        for x0, y0, x1, y1 in placed:
            free &= (
                (left + w + _GAP <= x0)
                | (left >= x1 + _GAP)
                | (top + h + _GAP <= y0)
                | (top >= y1 + _GAP)
            )
        if free.any():
            distance = (left + w / 2 - ax) ** 2 + (top + h / 2 - ay) ** 2
            best = int(np.where(free, distance, np.inf).argmin())
            x, y = int(left[best]), int(top[best])
        else:
            x = int(np.clip(round(ax - w / 2), 0, bounds[0] - w))
            y = int(np.clip(round(ay - h / 2), 0, bounds[1] - h))
        placed.append((x, y, x + w, y + h))
    return placed


def tile_labels(
    world: SyntheticWorld, label: np.ndarray, truth: np.ndarray, scale: int, font: Any
) -> list[tuple[str, LabelBox, bool]]:
    """``(name, box, right)`` for every named region of ``label (S, S)`` drawn ``scale`` times
    larger, largest region first; ``right``: the class is the truth under most of the region."""
    regions = []
    for k in (int(k) for k in np.unique(label) if k):
        ys, xs = np.nonzero(label == k)
        if len(ys) < _MIN_PIXELS:
            continue
        # The region's pixel nearest its centroid: on the region even when it is split in two.
        near = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
        anchor = ((xs[near] + 0.5) * scale, (ys[near] + 0.5) * scale)
        right = bool(np.bincount(truth[ys, xs]).argmax() == k)
        regions.append((len(ys), world.classes[k].name, anchor, right))
    regions.sort(key=lambda r: -r[0])
    sizes = [_label_size(font, name) for _, name, _, _ in regions]
    side = label.shape[1] * scale, label.shape[0] * scale
    boxes = place_labels(sizes, [anchor for _, _, anchor, _ in regions], side)
    return [(name, box, right) for (_, name, _, right), box in zip(regions, boxes, strict=True)]


def _label_size(font: Any, text: str) -> tuple[int, int]:
    """A label's box: the text's extent plus a 2-pixel margin."""
    x0, y0, x1, y1 = font.getbbox(text)
    return int(x1) + 4, int(y1) + 3


def _draw_label(pen: Any, box: LabelBox, text: str, color: tuple[int, int, int], font: Any) -> None:
    pen.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=_LABEL_BACK)
    pen.text((box[0] + 2, box[1] + 1), text, fill=color, font=font)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


def save_figure(
    path: Path,
    world: SyntheticWorld,
    images: torch.Tensor,
    labels: torch.Tensor,
    predictions: dict[str, np.ndarray],
    scale: int = 3,
) -> None:
    """One line per unseen scene: the image, the ground truth, then each row's prediction,
    and a legend of the colour code under the grid.

    Args:
        images: ``(N, 3, S, S)``; labels: ``(N, S, S)`` world class ids.
        predictions: configuration name -> ``(N, S, S)`` predicted world class ids.
        scale: pixels per label-map pixel.
    """
    from PIL import Image, ImageDraw

    font, title_font = _font(11), _font(13)
    palette = np.array(
        [
            tuple(round(v * 255) for v in BACKGROUND_RGB),
            *(_fill(c.color) for c in world.classes[1:]),
        ],
        dtype=np.uint8,
    )
    s, pad = world.image_size * scale, 8
    titles = ["image", "ground truth", *predictions]
    wrapped = [_wrap(title, title_font, s) for title in titles]
    line = _label_size(title_font, "Ag")[1]
    header = pad + line * max(len(t) for t in wrapped) + 4
    legend = _legend(world, font)
    width = pad + len(titles) * (s + pad)
    grid_bottom = header + len(images) * (s + pad)
    canvas = Image.new(
        "RGB", (max(width, legend.width + 2 * pad), grid_bottom + legend.height + pad), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for j, lines in enumerate(wrapped):
        for i, text in enumerate(lines):
            draw.text((pad + j * (s + pad), pad + i * line), text, fill="black", font=title_font)

    def tile(label: np.ndarray, truth: np.ndarray) -> Image.Image:
        out = Image.fromarray(palette[np.kron(label, np.ones((scale, scale), np.int64))])
        pen = ImageDraw.Draw(out)
        for name, box, right in tile_labels(world, label, truth, scale, font):
            _draw_label(pen, box, name, RIGHT if right else WRONG, font)
        return out

    for i in range(len(images)):
        y0 = header + i * (s + pad)
        truth = labels[i].numpy()
        rgb = (images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        canvas.paste(Image.fromarray(rgb).resize((s, s), Image.Resampling.NEAREST), (pad, y0))
        canvas.paste(tile(truth, truth), (pad + (s + pad), y0))
        for j, pred in enumerate(predictions.values(), start=2):
            canvas.paste(tile(pred[i].astype(np.int64), truth), (pad + j * (s + pad), y0))
    canvas.paste(legend, (pad, grid_bottom))
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """``text`` in as few lines as keep each within ``width`` pixels."""
    for chars in range(len(text), 0, -1):
        lines = textwrap.wrap(text, chars) or [""]
        if all(_label_size(font, t)[0] <= width for t in lines):
            return lines
    return [text]


def _fill(color: str) -> tuple[int, int, int]:
    """The fill of a class of that colour attribute: its RGB, darkened so that labels stand out."""
    r, g, b = (round(v * 200) for v in COLORS[color])
    return r, g, b


def _legend(world: SyntheticWorld, font: Any) -> Any:
    """The colour code, as an image: what white and red names mean, and what the fills are."""
    from PIL import Image, ImageDraw

    name = world.classes[world.unseen_ids[0]].name
    background = tuple(round(v * 255) for v in BACKGROUND_RGB)
    # Each line: pieces ("label", text, colour), ("text", text) or ("swatch", colour).
    lines: list[list[tuple[Any, ...]]] = [
        [
            ("label", name, RIGHT),
            (
                "text",
                " white name: the predicted class is right (the true class of most of the"
                " region's pixels)",
            ),
        ],
        [("label", name, WRONG), ("text", " red name: the predicted class is wrong")],
        [
            *(("swatch", _fill(color)) for color in COLORS),
            (
                "text",
                " fill: the colour attribute of the region's (predicted) class; textures"
                " are not drawn;",
            ),
            ("swatch", background),
            ("text", " background"),
        ],
    ]
    height = _label_size(font, "Ag")[1] + 4

    def extent(piece: tuple[Any, ...]) -> int:
        return 14 if piece[0] == "swatch" else _label_size(font, piece[1])[0]

    width = max(sum(extent(p) for p in line) for line in lines)
    out = Image.new("RGB", (width, len(lines) * height), "white")
    pen = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        x, y = 0, i * height
        for piece in line:
            w = extent(piece)
            if piece[0] == "label":
                _draw_label(pen, (x, y, x + w, y + height - 4), piece[1], piece[2], font)
            elif piece[0] == "swatch":
                pen.rectangle((x + 1, y, x + 12, y + height - 5), fill=piece[1], outline="black")
            else:
                pen.text((x, y + 1), piece[1], fill="black", font=font)
            x += w
    return out
