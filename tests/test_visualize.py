"""Overlays: a palette whose classes stay distinct, a legend that scales and says what it cut."""

import json
from importlib import resources

import numpy as np
import pytest
from PIL import ImageDraw

from lmseg.visualize import legend_width, overlay, palette


def _rgb_distances(colours: np.ndarray) -> np.ndarray:
    c = colours.astype(float)
    d = np.linalg.norm(c[:, None] - c[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return d


def test_palette_colours_stay_apart_for_large_vocabularies():
    for k in (20, 150, 847):
        colours = palette(k)
        assert colours.shape == (k, 3) and colours.dtype == np.uint8
        assert len({tuple(c) for c in colours}) == k  # every class its own colour
    # Measured: 54.8 and 22.5 (colours spread in CIELAB); the golden-ratio hues they replace had
    # pairs 10 apart among 150.
    assert _rgb_distances(palette(20)).min() > 45
    assert _rgb_distances(palette(150)).min() > 18
    # Two ADE-150 classes that were both navy with the earlier palette.
    names = json.loads(resources.files("lmseg.vocabularies").joinpath("ade150.json").read_text())
    colours = palette(len(names)).astype(float)
    wardrobe, tray = colours[names.index("wardrobe")], colours[names.index("tray")]
    assert np.linalg.norm(wardrobe - tray) > 80
    # A palette of K colours is a prefix of a longer one: a class keeps its colour.
    assert np.array_equal(palette(847)[:150], palette(150))


def _swatch_side(picture: np.ndarray, width: int) -> int:
    """Height of the first legend line: the run of rows with ink from the legend's top."""
    inked = (picture[:, width:] != 255).any(axis=(1, 2))
    first = int(np.argmax(inked))
    run = 0
    while first + run < len(inked) and inked[first + run]:
        run += 1
    return run


@pytest.mark.parametrize("height", [150, 3000])
def test_legend_scales_with_the_image(height):
    width = height * 3 // 2
    image = np.full((height, width, 3), 127, np.uint8)
    labels = np.zeros((height, width), np.int64)
    labels[:, width // 2 :] = 1
    picture = np.asarray(overlay(image, labels, ["sky", "grass"]))
    side = _swatch_side(picture, width)
    assert side >= max(11, height // 50) - 1  # text and swatch a fiftieth of the image height
    assert picture.shape[1] == width + legend_width(["sky", "grass"], image_height=height)


def test_cut_legend_says_how_many_more(monkeypatch):
    drawn = []
    original = ImageDraw.ImageDraw.text

    def spy(self, xy, text, *args, **kwargs):
        drawn.append(text)
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy)
    names = [f"class {i}" for i in range(60)]
    labels = np.repeat(np.arange(60), 10)[None].repeat(20, 0)  # 60 classes of equal area
    image = np.zeros((20, 600, 3), np.uint8)
    overlay(image, labels, names, max_legend=40)
    assert len(drawn) == 41 and drawn[-1] == "+20 more"
    assert drawn[:40] == names[:40]  # ties keep class order
    drawn.clear()
    overlay(image, labels, names, max_legend=60)
    assert len(drawn) == 60 and not any("more" in t for t in drawn)
