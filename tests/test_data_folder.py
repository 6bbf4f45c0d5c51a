"""Datasets of your own as folders: layout, splits, class lists, bad samples and `lmseg data check`.

Every dataset is generated here (PNG images so pixels compare exactly, 8- and 16-bit PNG
labels); expected label maps and counts are computed from the arrays the test wrote.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch._utils import ExceptionWrapper

from lmseg.cli import main
from lmseg.data import (
    BadSampleError,
    DatasetFormatError,
    DatasetNotFoundError,
    dataset_splits,
    find_dataset,
    get_dataset_spec,
    load_dataset,
    read_classes,
    resolve_dataset,
)
from lmseg.data.check import check_dataset


def write_image(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def write_label(path: Path, label: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(path)  # uint8 -> 8-bit PNG, uint16 -> 16-bit PNG
    return label


def random_label(shape: tuple[int, int], num_classes: int, ignore: int, seed: int) -> np.ndarray:
    dtype = np.uint8 if ignore <= 255 else np.uint16
    label = np.random.default_rng(seed).integers(0, num_classes, shape).astype(dtype)
    label[0, :3] = ignore
    return label


def make_folder(
    root: Path,
    stems: list[str],
    *,
    classes: list[str],
    shape: tuple[int, int] = (6, 7),
    ignore: int = 255,
    split: str | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A folder dataset; returns stem -> (image, label) as written."""
    sub = Path(split) if split else Path()
    written = {}
    for i, stem in enumerate(stems):
        image = write_image(root / "images" / sub / f"{stem}.png", *shape, seed=i)
        label = write_label(
            root / "labels" / sub / f"{stem}.png", random_label(shape, len(classes), ignore, i)
        )
        written[stem] = (image, label)
    (root / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    return written


# -- layout ------------------------------------------------------------------------------------
def test_folder_dataset_reads_exact_images_and_labels(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    written = make_folder(root, ["b", "a", "c"], classes=["cat", "dog", "grass"])
    (root / "classes.txt").write_text("# pets, in label order\ncat\n\n  dog  \n# more\ngrass\n")
    (root / "images" / "thumbs").mkdir()  # a stray sub-folder beside images is not a split
    assert dataset_splits(root) == []
    dataset = load_dataset(root)
    assert len(dataset) == 3 and dataset.class_names == ["cat", "dog", "grass"]
    assert dataset.ignore_value == 255 and dataset.spec.name == "pets"
    for index, stem in enumerate(["a", "b", "c"]):  # sorted by stem
        item = dataset[index]
        image, label = written[stem]
        assert Path(item["file"]).name == f"{stem}.png"
        assert torch.equal(item["image"], torch.from_numpy(image).permute(2, 0, 1))
        assert item["label"].dtype == torch.int64
        assert item["label"].tolist() == label.astype(np.int64).tolist()


def test_sixteen_bit_labels_with_300_classes(tmp_path: Path) -> None:
    root = tmp_path / "many"
    classes = [f"class {i}" for i in range(300)]
    written = make_folder(root, ["x", "y"], classes=classes, shape=(9, 11), ignore=65535)
    label = written["y"][1]
    label[1, :4] = [255, 256, 299, 0]  # values an 8-bit file could not hold, and 255 as a class
    write_label(root / "labels" / "y.png", label)
    dataset = load_dataset(root)
    assert dataset.spec.num_classes == 300
    assert dataset.ignore_value == 65535  # the rule for more than 255 classes
    assert dataset[1]["label"].tolist() == label.astype(np.int64).tolist()
    assert dataset[1]["label"][1, :4].tolist() == [255, 256, 299, 0]

    (report,) = check_dataset(root, progress=False)
    assert report.ok and report.num_samples == 2
    labels = np.stack([written["x"][1], label]).astype(np.int64)
    expected = np.bincount(labels[labels != 65535], minlength=300)
    assert report.pixels == expected.tolist()
    per_image = [np.bincount(lab[lab != 65535], minlength=300) > 0 for lab in labels]
    assert report.images == np.sum(per_image, axis=0).tolist()
    assert report.ignored_pixels == int((labels == 65535).sum()) == 6


def test_splits_by_sub_folder(tmp_path: Path) -> None:
    root = tmp_path / "fields"
    classes = ["soil", "crop"]
    train = make_folder(root, ["t1", "t2", "t3"], classes=classes, split="train")
    val = make_folder(root, ["v1"], classes=classes, split="val")
    assert dataset_splits(root) == ["train", "val"]
    by_suffix = load_dataset(f"{root}:val")
    by_argument = load_dataset(root, split="val")
    assert by_suffix.samples == by_argument.samples
    assert len(by_suffix) == 1 and by_suffix.spec.name == "fields_val"
    assert by_suffix[0]["label"].tolist() == val["v1"][1].astype(np.int64).tolist()
    assert len(load_dataset(root, split="train")) == len(train)
    with pytest.raises(DatasetFormatError, match=r"has splits train, val: choose one"):
        load_dataset(root)
    with pytest.raises(DatasetFormatError, match=r"has no split 'test': its splits are train, val"):
        load_dataset(root, split="test")
    with pytest.raises(ValueError, match="names split 'val' but split='train'"):
        load_dataset(f"{root}:val", split="train")


def test_splits_by_file_list(tmp_path: Path) -> None:
    root = tmp_path / "listed"
    make_folder(root, ["a", "b", "c", "d"], classes=["x", "y", "z"])
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("# training images\na\nb.png\nb\n")
    (root / "splits" / "val.txt").write_text("c\nmissing\n")
    assert dataset_splits(root) == ["train", "val"]
    train = resolve_dataset(root, split="train")
    assert [p[0].name for p in train.samples] == ["a.png", "b.png"]
    assert train.problems == [f"{root / 'splits' / 'train.txt'}:4: 'b' is listed twice"]
    val = resolve_dataset(root, split="val")
    assert [p[0].name for p in val.samples] == ["c.png"]
    assert val.problems == [
        f"{root / 'splits' / 'val.txt'}: 'missing' has no image in {root / 'images'}"
    ]


def test_description_file(tmp_path: Path) -> None:
    root = tmp_path / "described"
    make_folder(root, ["a"], classes=["unused"], ignore=255)
    label = np.array([[0, 1, 2, 9, 9, 0, 1]] * 6, dtype=np.uint8)
    write_label(root / "labels" / "a.png", label)
    (root / "dataset.yaml").write_text("name: roads\nclasses: [road, car, tree]\nignore_value: 9\n")
    dataset = load_dataset(root)
    assert dataset.spec.name == "roads" and dataset.class_names == ["road", "car", "tree"]
    assert dataset.ignore_value == 9 and dataset[0]["label"].tolist() == label.tolist()

    (root / "dataset.yaml").write_text("classes: [road, car]\nignore_value: 1\n")
    with pytest.raises(DatasetFormatError, match=r"dataset.yaml: ignore_value 1 is a class index"):
        load_dataset(root)
    (root / "dataset.yaml").write_text("clases: [road]\n")
    with pytest.raises(DatasetFormatError, match=r"dataset.yaml: unknown keys \['clases'\]"):
        load_dataset(root)


def test_class_lists(tmp_path: Path) -> None:
    root = tmp_path / "json_classes"
    make_folder(root, ["a"], classes=["a", "b"])
    (root / "classes.txt").unlink()
    with pytest.raises(DatasetFormatError, match=r"no class list; add classes.txt"):
        load_dataset(root)
    (root / "classes.json").write_text(json.dumps(["bed ", "lamp"]))  # kept byte for byte
    assert load_dataset(root).class_names == ["bed ", "lamp"]
    assert read_classes(root) == read_classes(root / "classes.json") == ["bed ", "lamp"]
    (root / "classes.json").unlink()
    (root / "classes.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(DatasetFormatError, match=r"classes.txt: duplicate class names: 'cat'"):
        load_dataset(root)


def test_dataset_strings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder(tmp_path / "root" / "mine", ["a"], classes=["x"])
    monkeypatch.chdir(tmp_path)
    assert find_dataset("ade150") == (get_dataset_spec("ade150"), None)
    # a relative path is looked up in the current folder, then under the dataset root
    assert len(load_dataset("mine", root=tmp_path / "root")) == 1
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "root"))
    assert find_dataset("mine:val") == (tmp_path / "root" / "mine", "val")
    with pytest.raises(DatasetNotFoundError, match=r"unknown dataset 'ade20': not a registered"):
        load_dataset("ade20")
    with pytest.raises(ValueError, match="'ade150' is the val split"):
        load_dataset("ade150", split="train")


# -- bad samples -------------------------------------------------------------------------------
def test_every_bad_sample_is_named_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "bad"
    make_folder(
        root, ["good", "value", "size", "trunc_label", "trunc_image", "rgb"], classes=["a", "b"]
    )
    images, labels = root / "images", root / "labels"
    write_label(labels / "value.png", np.array([[0, 1, 7, 255, 9, 7, 1]] * 6, dtype=np.uint8))
    write_label(labels / "size.png", np.zeros((5, 7), np.uint8))
    data = (labels / "trunc_label.png").read_bytes()
    (labels / "trunc_label.png").write_bytes(data[: len(data) // 2])
    data = (images / "trunc_image.png").read_bytes()
    (images / "trunc_image.png").write_bytes(data[: len(data) - 40])
    write_label(labels / "rgb.png", np.zeros((6, 7, 3), np.uint8))
    write_image(images / "lonely.png", 6, 7, seed=9)  # no label
    write_label(labels / "orphan.png", np.zeros((6, 7), np.uint8))  # no image

    with caplog.at_level(logging.WARNING, logger="lmseg.data.load"):
        dataset = load_dataset(root)
    assert "bad: 2 file(s) or annotation(s) left out" in caplog.text
    files = {Path(image).stem: i for i, (image, _) in enumerate(dataset.samples)}
    expected = {
        "value": f"label {labels / 'value.png'}: values [7, 9] outside the 2 classes "
        "(0..1, ignore value 255)",
        "size": f"label {labels / 'size.png'}: size 7x5 differs from image "
        f"{images / 'size.png'} (7x6)",
        "rgb": f"label {labels / 'rgb.png'}: shape (6, 7, 3), expected one channel (H, W) of "
        "class indices (an 8- or 16-bit grey or palette PNG, not a colour image)",
    }
    for stem, message in expected.items():
        with pytest.raises(BadSampleError) as info:
            dataset[files[stem]]
        assert str(info.value) == message
    for stem, kind, folder in (("trunc_label", "label", labels), ("trunc_image", "image", images)):
        with pytest.raises(BadSampleError) as info:
            dataset[files[stem]]
        assert str(info.value).startswith(f"{kind} {folder / (stem + '.png')}: unreadable (")
        assert "\n" not in str(info.value)
    assert dataset[files["good"]]["label"].shape == (6, 7)

    (report,) = check_dataset(root, progress=False)
    assert sorted(report.errors) == sorted(
        [
            f"image {images / 'lonely.png'}: no label in {labels}",
            f"label {labels / 'orphan.png'}: no image in {images}",
            *expected.values(),
            *(e for e in report.errors if "unreadable" in e),
        ]
    )
    assert sum("unreadable" in e for e in report.errors) == 2


def test_bad_sample_message_survives_loader_workers(tmp_path: Path) -> None:
    root = tmp_path / "worker"
    make_folder(root, ["a"], classes=["a", "b"])
    write_label(root / "labels" / "a.png", np.full((6, 7), 5, np.uint8))
    dataset = load_dataset(root)
    with pytest.raises(BadSampleError) as direct:
        dataset[0]
    # What a DataLoader does with a worker's exception, without a worker process (stopping a
    # worker that raised takes torch 5 s): wrap it with its traceback, re-raise in the caller.
    try:
        dataset[0]
    except BadSampleError:
        wrapped = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0")
    with pytest.raises(BadSampleError) as through_worker:
        wrapped.reraise()
    assert str(through_worker.value) == str(direct.value)  # one line, not the traceback


# -- the command -------------------------------------------------------------------------------
def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cmd"
    written = make_folder(root, ["a", "b"], classes=["sky", "sea", "sand"], split="train")
    make_folder(root, ["c"], classes=["sky", "sea", "sand"], split="val")
    out = tmp_path / "report.json"
    assert main(["data", "check", str(root), "--split", "train", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    labels = np.stack([written["a"][1], written["b"][1]]).astype(np.int64)
    pixels = np.bincount(labels[labels != 255], minlength=3)
    images = [int(sum((lab == k).any() for lab in labels)) for k in range(3)]
    total = labels.size
    for k, name in enumerate(["sky", "sea", "sand"]):
        share = 100 * pixels[k] / total
        row = f"{k:>5}  {name:<9}  {pixels[k]:>13,}  {share:>6.2f}%  {images[k]:>7,}"
        assert row in printed.splitlines()
    assert printed.rstrip().endswith("cmd_train: ok: no errors")
    saved = json.loads(out.read_text())
    assert [c["pixels"] for c in saved[0]["classes"]] == pixels.tolist()
    assert saved[0]["ignored_pixels"] == 6 and saved[0]["errors"] == []

    write_label(root / "labels" / "val" / "c.png", np.full((6, 7), 3, np.uint8))
    assert main(["data", "check", str(root)]) == 1  # both splits
    printed = capsys.readouterr().out
    bad = root / "labels" / "val" / "c.png"
    lines = [line for line in printed.splitlines() if line.startswith("error: ")]
    assert lines == [
        f"error: label {bad}: values [3] outside the 3 classes (0..2, ignore value 255)"
    ]
    assert "cmd_train: ok: no errors" in printed and "cmd_val: FAILED: 1 error" in printed

    assert main(["data", "check", str(tmp_path / "nowhere")]) == 1
    assert "error: unknown dataset" in capsys.readouterr().err
