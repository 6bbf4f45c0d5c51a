"""COCO instance and panoptic files as semantic datasets: exact label maps, overlap and crowd
rules, bad annotations, the content-keyed cache.

Polygons are axis-aligned rectangles with integer corners, whose pixels (those whose centre
lies inside) are known without pycocotools; uncompressed RLE counts are written by the test's
own column-major encoder. Panoptic files need no pycocotools; instance files do (the ``coco``
extra, part of ``dev``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lmseg.cli import main
from lmseg.data import DatasetFormatError, dataset_splits, load_dataset, resolve_dataset
from lmseg.data import coco as coco_module
from lmseg.data.check import check_dataset

# pycocotools' decode trips numpy 2's copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

needs_pycocotools = pytest.mark.skipif(
    importlib.util.find_spec("pycocotools") is None,
    reason="instance annotations need pycocotools (pip install 'lmseg[coco]')",
)


def rectangle(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    """A COCO polygon: pixels with x0 <= col < x1 and y0 <= row < y1 (centres inside)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def column_major_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = mask.astype(bool).flatten(order="F")
    counts, current, run = [], False, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def write_images(folder: Path, entries: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, entry in enumerate(entries):
        h, w = entry["height"], entry["width"]
        pixels = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / entry["file_name"])


CATEGORIES = [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 9, "name": "tree"}]
DOG, CAT, TREE = 0, 1, 2  # ascending category id: 2, 5, 9


def instance_file(root: Path) -> tuple[Path, list[np.ndarray]]:
    """Two images; returns the JSON path and the expected labels."""
    images = [
        {"id": 1, "file_name": "one.png", "height": 8, "width": 10},
        {"id": 2, "file_name": "two.png", "height": 6, "width": 7},
    ]
    crowd = np.zeros((8, 10), bool)
    crowd[0:4, 7:10] = True
    small = np.zeros((8, 10), np.uint8)
    small[6:8, 0:2] = 1
    pycocotools = pytest.importorskip("pycocotools.mask")
    compressed = pycocotools.encode(np.asfortranarray(small))
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 5, "segmentation": rectangle(0, 0, 6, 5)},
        {"id": 11, "image_id": 1, "category_id": 2, "segmentation": rectangle(4, 2, 8, 7)},
        {"id": 12, "image_id": 1, "category_id": 9, "iscrowd": 1,
         "segmentation": column_major_rle(crowd)},
        {"id": 13, "image_id": 1, "category_id": 5,
         "segmentation": {"size": [8, 10], "counts": compressed["counts"].decode()}},
        # equal areas overlapping: the later annotation wins
        {"id": 20, "image_id": 2, "category_id": 5, "segmentation": rectangle(0, 0, 4, 4)},
        {"id": 21, "image_id": 2, "category_id": 2, "segmentation": rectangle(2, 2, 6, 6)},
    ]  # fmt: skip
    one = np.full((8, 10), 255, np.uint8)
    one[crowd] = TREE  # crowd regions first
    one[0:5, 0:6] = CAT  # then the largest instance (30 px)
    one[2:7, 4:8] = DOG  # the smaller (20 px) wins where they overlap, also over the crowd
    one[6:8, 0:2] = CAT  # the smallest (4 px)
    two = np.full((6, 7), 255, np.uint8)
    two[0:4, 0:4] = CAT
    two[2:6, 2:6] = DOG
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    path = root / "annotations" / "instances_val.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    write_images(root / "images" / "val", images)  # found as ../images/SPLIT
    return path, [one, two]


@needs_pycocotools
def test_instances_give_exact_labels(tmp_path: Path) -> None:
    path, expected = instance_file(tmp_path)
    dataset = load_dataset(path)
    assert dataset.class_names == ["dog", "cat", "tree"] and dataset.ignore_value == 255
    assert len(dataset) == 2
    for index, label in enumerate(expected):
        item = dataset[index]
        assert Path(item["file"]).parent == tmp_path / "images" / "val"
        assert item["label"].tolist() == label.astype(np.int64).tolist()
        assert item["image"].shape == (3, *label.shape)


@needs_pycocotools
def test_crowd_regions_can_be_ignored(tmp_path: Path) -> None:
    path, (one, _) = instance_file(tmp_path / "data")
    folder = tmp_path / "data"
    (folder / "dataset.yaml").write_text(
        "format: coco\nannotations: annotations/instances_val.json\nimages: images/val\n"
        "crowd: ignore\n"
    )
    expected = one.copy()
    expected[expected == TREE] = 255  # the crowd's own pixels; the dog still wins over it
    assert load_dataset(folder)[0]["label"].tolist() == expected.astype(np.int64).tolist()


@needs_pycocotools
def test_bad_annotations_are_named(tmp_path: Path) -> None:
    images = [
        {"id": 1, "file_name": "a.png", "height": 4, "width": 5},
        {"id": 2, "file_name": "gone.png", "height": 4, "width": 5},
        {"id": 3, "file_name": "nosize.png"},
    ]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 77, "segmentation": rectangle(0, 0, 2, 2)},
        {"id": 2, "image_id": 1, "category_id": 5, "segmentation": [[0, 0, 3, 3]]},
        {"id": 3, "image_id": 1, "category_id": 5, "segmentation": {"size": [5, 4], "counts": [20]}},
        {"id": 4, "image_id": 1, "category_id": 5, "segmentation": {"size": [4, 5], "counts": [3, 4]}},
        {"id": 5, "image_id": 1, "category_id": 2, "segmentation": rectangle(1, 1, 3, 3)},
    ]  # fmt: skip
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    write_images(tmp_path / "images", images[:1])
    resolved = resolve_dataset(path)
    where = "of image a.png in bad.json"
    assert resolved.problems == [
        f"annotation 1 {where}: category_id 77 is not in categories (skipped)",
        f"annotation 2 {where}: polygon with 4 coordinates (needs >= 3 points) (skipped)",
        f"annotation 3 {where}: RLE size [5, 4] differs from the image's [4, 5] (skipped)",
        f"annotation 4 {where}: RLE counts sum to 7, not 4x5 (skipped)",
        "image nosize.png in bad.json: no height/width (skipped)",
        f"image {tmp_path / 'images' / 'gone.png'}: not found (listed in {path})",
    ]
    expected = np.full((4, 5), 255)
    expected[1:3, 1:3] = DOG
    assert load_dataset(path)[0]["label"].tolist() == expected.tolist()
    (report,) = check_dataset(path, progress=False)
    assert report.errors == resolved.problems and report.pixels == [4, 0, 0]


def panoptic_file(root: Path, num_categories: int = 3) -> tuple[Path, list[np.ndarray], int]:
    """Panoptic COCO: PNGs with segment ids in all three channels. Returns the JSON path, the
    expected labels and the ignore value."""
    categories = [{"id": 1 + 3 * k, "name": f"category {k}"} for k in range(num_categories)]
    last = num_categories - 1
    ignore = 255 if num_categories <= 255 else 65535
    ids = np.zeros((5, 6), np.int64)
    ids[0:2] = 7  # R only
    ids[2:4, 0:3] = 3 * 256 + 1  # G and R
    ids[2:4, 3:6] = 2 * 65536 + 5  # B and R
    ids[4, 0:2] = 99  # not in segments_info
    segments = [
        {"id": 7, "category_id": 1, "iscrowd": 0},
        {"id": 3 * 256 + 1, "category_id": 1 + 3 * last, "iscrowd": 0},
        {"id": 2 * 65536 + 5, "category_id": 4, "iscrowd": 1},
    ]
    png = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    masks = root / "annotations" / "panoptic_val"
    masks.mkdir(parents=True)
    Image.fromarray(png).save(masks / "p.png")
    images = [{"id": 1, "file_name": "p.jpg", "height": 5, "width": 6}]
    data = {
        "images": images,
        "annotations": [{"image_id": 1, "file_name": "p.png", "segments_info": segments}],
        "categories": categories,
    }
    path = root / "annotations" / "panoptic_val.json"
    path.write_text(json.dumps(data))
    write_images(root / "val", images)  # COCO's layout: annotations/ beside val/
    label = np.full((5, 6), ignore, np.int64)
    label[0:2] = 0
    label[2:4, 0:3] = last
    label[2:4, 3:6] = 1  # crowd="class": a crowd segment keeps its category
    return path, [label], ignore


def test_panoptic_gives_exact_labels(tmp_path: Path) -> None:
    path, (label,), ignore = panoptic_file(tmp_path)
    resolved = resolve_dataset(path)
    assert resolved.problems == [
        f"panoptic PNG {path.parent / 'panoptic_val' / 'p.png'}: segment ids [99] are not in "
        "segments_info (left unlabelled)"
    ]
    dataset = load_dataset(path)
    assert dataset.class_names == ["category 0", "category 1", "category 2"]
    assert Path(dataset[0]["file"]).parent == tmp_path / "val"
    assert dataset[0]["label"].tolist() == label.tolist()


def test_panoptic_with_300_categories_writes_16_bit_labels(tmp_path: Path) -> None:
    path, (label,), ignore = panoptic_file(tmp_path, num_categories=300)
    assert ignore == 65535
    dataset = load_dataset(path)
    assert dataset.spec.num_classes == 300 and dataset.ignore_value == 65535
    assert dataset[0]["label"].tolist() == label.tolist()
    assert int(dataset[0]["label"].max()) == 65535 and 299 in dataset[0]["label"]
    with Image.open(dataset.samples[0][1]) as stored:
        assert stored.mode == "I;16"


def test_cache_is_keyed_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _ = panoptic_file(tmp_path)
    first = load_dataset(path)
    folder = first.samples[0][1].parent.parent
    assert (folder / "manifest.json").is_file()
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]  # atomic writes

    def no_conversion(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(coco_module, "_convert", no_conversion)
    assert load_dataset(path).samples == first.samples  # unchanged file: read from the cache
    data = json.loads(path.read_text())
    data["categories"][0]["name"] = "renamed"
    path.write_text(json.dumps(data))
    with pytest.raises(AssertionError, match="converted again"):
        load_dataset(path)  # new content, new key
    monkeypatch.undo()
    renamed = load_dataset(path)
    assert renamed.class_names[0] == "renamed"
    assert renamed.samples[0][1].parent.parent != folder


def test_coco_folder_with_splits(tmp_path: Path) -> None:
    path, (label,), _ = panoptic_file(tmp_path)
    (tmp_path / "dataset.yaml").write_text(
        "format: coco\nname: parks\n"
        "annotations: {val: annotations/panoptic_val.json, test: annotations/panoptic_val.json}\n"
        "images: {val: val, test: val}\n"
    )
    assert dataset_splits(tmp_path) == ["test", "val"]
    dataset = load_dataset(f"{tmp_path}:val")
    assert dataset.spec.name == "parks_val"
    assert dataset[0]["label"].tolist() == label.tolist()
    with pytest.raises(DatasetFormatError, match="has splits test, val"):
        load_dataset(tmp_path)


def test_images_folder_not_found_names_the_places(tmp_path: Path) -> None:
    path, _, _ = panoptic_file(tmp_path)
    (tmp_path / "val" / "p.jpg").unlink()
    with pytest.raises(DatasetFormatError, match=r"cannot find its images \(looked for p.jpg in"):
        load_dataset(path)


def test_check_command_on_coco(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, (label,), _ = panoptic_file(tmp_path)
    assert main(["data", "check", str(path), "--quiet"]) == 1  # the stray segment id
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("error: ")] == [
        f"error: panoptic PNG {path.parent / 'panoptic_val' / 'p.png'}: segment ids [99] are "
        "not in segments_info (left unlabelled)"
    ]
    pixels = np.bincount(label[label != 255], minlength=3)
    assert "    0  category 0" in out and f"{pixels[0]:>13,}" in out
