"""The synthetic demo's figure (names never overlap, a legend explains the colour code) and how
its outputs are written."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from lmseg.synthetic import SyntheticWorld
from lmseg.synthetic.figure import RIGHT, WRONG, place_labels, save_figure, tile_labels


def disjoint(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld.generate(0)


def test_labels_with_one_anchor_do_not_overlap() -> None:
    sizes = [(40, 12), (30, 12), (50, 12), (20, 12), (44, 12)]
    boxes = place_labels(sizes, [(50.0, 50.0)] * len(sizes), (120, 100))
    assert [(b[2] - b[0], b[3] - b[1]) for b in boxes] == sizes
    assert all(b[0] >= 0 and b[1] >= 0 and b[2] <= 120 and b[3] <= 100 for b in boxes)
    assert all(disjoint(a, b) for a, b in itertools.combinations(boxes, 2))
    # The first label is centred on its anchor (to the search grid's 2 pixels).
    assert (
        abs((boxes[0][0] + boxes[0][2]) / 2 - 50) <= 2
        and abs((boxes[0][1] + boxes[0][3]) / 2 - 50) <= 2
    )


def test_labels_stay_inside_the_tile() -> None:
    (box,) = place_labels([(30, 10)], [(2.0, 99.0)], (64, 100))
    assert box == (0, 90, 30, 100)


def test_names_of_a_split_region_do_not_overlap(world: SyntheticWorld) -> None:
    """An object predicted as four classes in thin stripes: four names, none overlapping, each
    coloured by whether it is the true class of most of its pixels."""
    truth = np.zeros((64, 64), np.int64)
    truth[20:40, 20:40] = k = world.unseen_ids[0]
    pred = truth.copy()
    others = [c for c in world.unseen_ids if c != k][:3]
    for i, c in enumerate(others):
        pred[20 + 2 * i : 22 + 2 * i, 20:40] = c  # three 2-pixel stripes on top of the object
    labels = tile_labels(world, pred, truth, 3, ImageFont.load_default())
    assert {name for name, _, _ in labels} == {world.classes[c].name for c in [k, *others]}
    assert {name: right for name, _, right in labels}[world.classes[k].name] is True
    assert sum(right for _, _, right in labels) == 1
    boxes = [box for _, box, _ in labels]
    assert all(disjoint(a, b) for a, b in itertools.combinations(boxes, 2))


def test_figure_has_a_legend_of_its_colour_code(world: SyntheticWorld, tmp_path) -> None:
    rng = np.random.default_rng(0)
    images, labels = world.sample(rng, world.unseen_ids, 2)
    wrong = torch.where(labels > 0, world.unseen_ids[1], 0).numpy().astype(np.int16)
    path = tmp_path / "figure.png"
    save_figure(path, world, images, labels, {"all wrong": wrong})
    with Image.open(path) as figure:
        pixels = np.asarray(figure.convert("RGB"))
    grid_bottom = 2 * (64 * 3 + 8) + 30  # two scene rows under a one-line header
    assert pixels.shape[1] >= 3 * 64 * 3 and pixels.shape[0] > grid_bottom + 30
    legend = pixels[grid_bottom:]
    for colour in (RIGHT, WRONG):  # both name colours are shown under the grid
        assert (legend == colour).all(axis=-1).any()
