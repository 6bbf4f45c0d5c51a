"""Dataset registry, readers, preparation scripts and training augmentation on tiny fake data.

Every dataset here is written in the real on-disk formats (JPEG images, 8-bit and palette PNG
labels, 16-bit TIFF labels, PASCAL Context .mat / RLE JSON) under pytest's tmp_path.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from lmseg.data import (
    DatasetNotFoundError,
    SegmentationDataset,
    TrainAugmentation,
    dataset_root,
    get_dataset_spec,
    list_datasets,
    read_label,
)
from lmseg.data import transforms as T
from lmseg.vocabularies import load_vocabulary

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_lmseg_tool_{name}", TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_jpg(path: Path, height: int, width: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_tif(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array)


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_names_and_facts() -> None:
    assert list_datasets() == [
        "coco_train", "coco", "ade150", "ade847", "pc59", "pc459", "voc20", "voc20b",
    ]  # fmt: skip
    expected = {  # name: (CAT-Seg name, K, ignore value, label suffix)
        "coco": ("coco_2017_test_stuff_all_sem_seg", 171, 255, ".png"),
        "ade150": ("ade20k_150_test_sem_seg", 150, 255, ".png"),
        "ade847": ("ade20k_full_sem_seg_freq_val_all", 847, 65535, ".tif"),
        "pc59": ("context_59_test_sem_seg", 59, 255, ".png"),
        "pc459": ("context_459_test_sem_seg", 459, 459, ".tif"),
        "voc20": ("voc_2012_test_sem_seg", 20, 255, ".png"),
        "voc20b": ("voc_2012_test_background_sem_seg", 21, 255, ".png"),
    }
    for name, (catseg, k, ignore, suffix) in expected.items():
        spec = get_dataset_spec(name)
        assert get_dataset_spec(catseg) is spec
        assert (spec.num_classes, spec.ignore_value, spec.label_suffix) == (k, ignore, suffix)
    voc20b = get_dataset_spec("voc20b")
    assert voc20b.background_index == 20
    assert len(load_vocabulary(voc20b.vocabulary)) == 59  # prompts: 20 objects + 39 PC classes
    assert voc20b.class_names == load_vocabulary("voc20") + ["background"]
    assert get_dataset_spec("voc20").background_index is None
    # PC-459's ignore value is one past the last class: it can never occur in a label.
    assert get_dataset_spec("pc459").ignore_value == get_dataset_spec("pc459").num_classes


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(KeyError, match="ade150"):
        get_dataset_spec("ade20")


def test_dataset_root_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert dataset_root() == tmp_path / "datasets"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "env"))
    assert dataset_root() == tmp_path / "env"
    assert dataset_root(tmp_path / "arg") == tmp_path / "arg"


def test_missing_dataset_names_path_and_script(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        SegmentationDataset("ade847", root=tmp_path)
    message = str(info.value)
    expected = tmp_path / "ADE20K_2021_17_01" / "annotations_detectron2" / "validation"
    assert str(expected) in message
    assert "tools/prepare_ade20k_847.py" in message
    assert isinstance(info.value, FileNotFoundError)


def test_labels_without_images_is_an_error(tmp_path: Path) -> None:
    spec = get_dataset_spec("voc20")
    write_png(spec.label_root(tmp_path) / "a.png", np.zeros((4, 4), np.uint8))
    spec.image_root(tmp_path).mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="tools/prepare_voc.py"):
        SegmentationDataset("voc20", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# Reading fake datasets in the real formats


def test_ade150_via_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = get_dataset_spec("ade150")
    labels = {}
    for i, (h, w) in enumerate([(12, 16), (10, 9)]):
        stem = f"ADE_val_{i:08d}"
        write_jpg(spec.image_root(tmp_path) / f"{stem}.jpg", h, w, seed=i)
        labels[stem] = np.random.default_rng(i).integers(0, 150, (h, w)).astype(np.uint8)
        labels[stem][0, 0] = 255
        write_png(spec.label_root(tmp_path) / f"{stem}.png", labels[stem])
    write_jpg(spec.image_root(tmp_path) / "ADE_val_unlabelled.jpg", 8, 8)  # no label: skipped
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))

    dataset = SegmentationDataset("ade150")
    assert len(dataset) == 2
    for index, stem in enumerate(sorted(labels)):
        item = dataset[index]
        image, label = item["image"], item["label"]
        assert isinstance(image, torch.Tensor) and isinstance(label, torch.Tensor)
        assert image.dtype == torch.uint8 and image.shape == (3, *labels[stem].shape)
        assert label.dtype == torch.int64
        assert np.array_equal(label.numpy(), labels[stem])
        assert Path(str(item["file"])).name == f"{stem}.jpg"
    assert dataset.class_names == load_vocabulary("ade150")


def test_ade847_sixteen_bit_tiff_round_trip(tmp_path: Path) -> None:
    spec = get_dataset_spec("ade847")
    label = np.array([[0, 255, 256, 846], [65535, 300, 65535, 1]], dtype=np.uint16)
    write_jpg(spec.image_root(tmp_path) / "ADE_val_00000001.jpg", 2, 4)
    write_tif(spec.label_root(tmp_path) / "ADE_val_00000001.tif", label)
    assert read_label(spec.label_root(tmp_path) / "ADE_val_00000001.tif").dtype == np.uint16

    item = SegmentationDataset("ade847", root=tmp_path)[0]
    assert item["label"].tolist() == label.astype(np.int64).tolist()  # 65535 stays 65535


def test_pc459_tiff_and_pc59_share_images(tmp_path: Path) -> None:
    pc59, pc459 = get_dataset_spec("pc59"), get_dataset_spec("pc459")
    assert pc59.image_root(tmp_path) == pc459.image_root(tmp_path)
    for stem in ("2008_000002", "2008_000003", "2008_000099"):  # a train image has no label
        write_jpg(pc59.image_root(tmp_path) / f"{stem}.jpg", 3, 5)
    full = np.arange(15, dtype=np.uint16).reshape(3, 5) * 30  # 0..420, every pixel labelled
    for stem in ("2008_000002", "2008_000003"):
        write_tif(pc459.label_root(tmp_path) / f"{stem}.tif", full)
        write_png(pc59.label_root(tmp_path) / f"{stem}.png", (full % 59).astype(np.uint8))
    assert len(SegmentationDataset("pc459", root=tmp_path)) == 2
    assert len(SegmentationDataset("context_59_test_sem_seg", root=tmp_path)) == 2
    assert SegmentationDataset("pc459", root=tmp_path)[1]["label"].max() == 420


def test_palette_png_labels_give_indices(tmp_path: Path) -> None:
    spec = get_dataset_spec("voc20b")
    index = np.array([[0, 1, 20], [255, 5, 0]], dtype=np.uint8)
    img = Image.fromarray(index, mode="P")
    palette = np.zeros((256, 3), np.uint8)
    palette[1], palette[20], palette[255] = (128, 0, 0), (0, 64, 128), (224, 224, 192)
    img.putpalette(palette.reshape(-1).tolist())
    spec.label_root(tmp_path).mkdir(parents=True)
    img.save(spec.label_root(tmp_path) / "2007_000033.png")
    write_jpg(spec.image_root(tmp_path) / "2007_000033.jpg", 2, 3)
    item = SegmentationDataset(spec, root=tmp_path)[0]
    assert item["label"].tolist() == index.tolist()


def test_size_mismatch_and_transform_hook(tmp_path: Path) -> None:
    spec = get_dataset_spec("coco")
    write_jpg(spec.image_root(tmp_path) / "000000000139.jpg", 6, 8)
    write_png(spec.label_root(tmp_path) / "000000000139.png", np.ones((6, 8), np.uint8))
    write_jpg(spec.image_root(tmp_path) / "000000000285.jpg", 6, 8)
    write_png(spec.label_root(tmp_path) / "000000000285.png", np.ones((5, 8), np.uint8))

    def flip(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image.flip(-1), label + 1

    dataset = SegmentationDataset("coco", root=tmp_path, transform=flip)
    assert (dataset[0]["label"] == 2).all()
    with pytest.raises(ValueError, match="000000000285"):
        dataset[1]


def test_truncated_label_names_the_file(tmp_path: Path) -> None:
    """A truncated label raised PIL's OSError("image file is truncated"), naming no file."""
    spec = get_dataset_spec("coco_train")
    write_jpg(spec.image_root(tmp_path) / "000000000009.jpg", 20, 30)
    path = spec.label_root(tmp_path) / "000000000009.png"
    write_png(path, np.random.default_rng(0).integers(0, 171, (20, 30)).astype(np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut inside the pixel data
    with pytest.raises(ValueError) as info:
        SegmentationDataset("coco_train", root=tmp_path)[0]
    assert str(info.value).startswith(f"label {path}: unreadable (")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Preparation scripts: mappings and end-to-end runs on fake downloads


def test_coco_stuff_mapping_and_script(tmp_path: Path) -> None:
    tool = load_tool("prepare_coco_stuff")
    raw = np.array([[0, 10, 11, 12], [90, 91, 181, 182], [255, 24, 25, 26]], dtype=np.uint8)
    expected = [[0, 10, 255, 11], [255, 80, 170, 255], [255, 23, 255, 24]]
    assert tool.convert_coco_stuff_label(raw).tolist() == expected
    lut = tool.coco_stuff_lut()
    assert sorted(set(lut[:182].tolist()) - {255}) == list(range(171))

    base = tmp_path / "coco-stuff"
    write_png(base / "annotations" / "val2017" / "000000000139.png", raw)
    write_jpg(base / "images" / "val2017" / "000000000139.jpg", 3, 4)
    assert tool.main(["--root", str(tmp_path), "--splits", "val2017"]) == 0
    item = SegmentationDataset("coco", root=tmp_path)[0]
    assert item["label"].tolist() == expected


def test_coco_stuff_script_missing_input(tmp_path: Path) -> None:
    tool = load_tool("prepare_coco_stuff")
    with pytest.raises(SystemExit, match=r"coco-stuff.annotations.val2017"):
        tool.main(["--root", str(tmp_path), "--splits", "val2017"])


def test_ade150_mapping_and_script(tmp_path: Path) -> None:
    tool = load_tool("prepare_ade20k_150")
    raw = np.array([[0, 1, 2], [149, 150, 7]], dtype=np.uint8)
    assert tool.convert_ade150_label(raw).tolist() == [[255, 0, 1], [148, 149, 6]]
    base = tmp_path / "ADEChallengeData2016"
    write_png(base / "annotations" / "validation" / "ADE_val_00000001.png", raw)
    write_jpg(base / "images" / "validation" / "ADE_val_00000001.jpg", 2, 3)
    tool.main(["--root", str(tmp_path)])
    assert SegmentationDataset("ade150", root=tmp_path)[0]["label"].tolist() == [
        [255, 0, 1], [148, 149, 6],
    ]  # fmt: skip


def ade_seg_png(object_ids: np.ndarray) -> np.ndarray:
    """Encode object ids in a full-ADE20K ``_seg.png``: R = (id // 256) * 10, G = id % 256."""
    seg = np.zeros((*object_ids.shape, 3), np.uint8)
    seg[..., 0] = (object_ids // 256) * 10 + 3  # +3: the script must floor R / 10
    seg[..., 1] = object_ids % 256
    seg[..., 2] = 7  # instance channel, ignored
    return seg


def test_ade847_mapping_resize_and_script(tmp_path: Path) -> None:
    tool = load_tool("prepare_ade20k_847")
    # wall 2978 -> 0, building 312 -> 1, adding machine 3148 -> 846, 0 and unknown 5 -> 65535.
    ids = np.array([[2978, 312, 3148], [0, 5, 2978]])
    decoded = tool.decode_ade_object_ids(ade_seg_png(ids))
    assert decoded.tolist() == ids.tolist()
    label = tool.convert_ade847_label(decoded)
    assert label.dtype == np.uint16
    assert label.tolist() == [[0, 1, 846], [65535, 65535, 0]]

    assert tool.resized_shape(400, 600) == (400, 600)
    assert tool.resized_shape(600, 1000) == (512, 853)
    assert tool.resized_shape(1000, 600) == (853, 512)
    assert tool.resized_shape(520, 530) == (512, 522)
    nearest = tool.resize_label_nearest(np.arange(4 * 6).reshape(4, 6), (2, 3))
    assert nearest.tolist() == [[0, 2, 4], [12, 14, 16]]
    assert tool.split_of("ADE_val_00000001.jpg") == "validation"
    assert tool.split_of("ADE_frame_00000007.jpg") == "training"

    folder = tmp_path / "ADE20K_2021_17_01" / "images" / "ADE" / "validation" / "urban" / "street"
    write_jpg(folder / "ADE_val_00000001.jpg", 2, 3)
    write_png(folder / "ADE_val_00000001_seg.png", ade_seg_png(ids))
    big = np.full((520, 530), 2978)
    big[:, 265:] = 3148
    write_jpg(folder / "ADE_val_00000002.jpg", 520, 530)
    write_png(folder / "ADE_val_00000002_seg.png", ade_seg_png(big))
    tool.main(["--root", str(tmp_path)])

    dataset = SegmentationDataset("ade847", root=tmp_path)
    assert len(dataset) == 2
    assert dataset[0]["label"].tolist() == [[0, 1, 846], [65535, 65535, 0]]
    resized = dataset[1]
    assert resized["image"].shape == (3, 512, 522) and resized["label"].shape == (512, 522)
    assert set(resized["label"].unique().tolist()) == {0, 846}


def test_voc_mapping_and_script(tmp_path: Path) -> None:
    tool = load_tool("prepare_voc")
    raw = np.array([[0, 1, 20], [255, 15, 0]], dtype=np.uint8)
    assert tool.convert_voc_label(raw, background=False).tolist() == [[255, 0, 19], [255, 14, 255]]
    assert tool.convert_voc_label(raw, background=True).tolist() == [[20, 0, 19], [255, 14, 20]]

    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n2007_000042\n")
    write_png(voc / "SegmentationClassAug" / "2007_000033.png", raw)
    write_png(voc / "SegmentationClassAug" / "2007_000042.png", np.zeros((2, 3), np.uint8))
    for stem in ("2007_000033", "2007_000042"):
        write_jpg(voc / "JPEGImages" / f"{stem}.jpg", 2, 3)
    tool.main(["--root", str(tmp_path)])
    # The all-background image is all-ignore for VOC-20, so upstream drops it; VOC-20b keeps it.
    assert len(SegmentationDataset("voc20", root=tmp_path)) == 1
    voc20b = SegmentationDataset("voc20b", root=tmp_path)
    assert len(voc20b) == 2 and voc20b[1]["label"].unique().tolist() == [20]


def test_pascal_context_rle_and_pc59_mapping() -> None:
    tool = load_tool("prepare_pascal_context")
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (1, 1), (3, 40)]:
        for first in (0, 1):
            mask = rng.random(shape) < 0.5
            mask.flat[0] = bool(first)
            rle = tool.rle_encode(mask)
            assert isinstance(rle["counts"], str)
            assert np.array_equal(tool.rle_decode(rle), mask)
    # A hand-checked string: 2x3 mask, column-major runs [1 zero, 2 ones, 3 zeros] -> "123".
    assert tool.rle_decode({"size": [2, 3], "counts": "123"}).tolist() == [[0, 1, 0], [1, 0, 0]]
    assert tool.rle_decode({"size": [2, 3], "counts": [1, 2, 3]}).tolist() == [[0, 1, 0], [1, 0, 0]]

    lut = tool.pc59_lut()
    assert lut[0] == 255 and lut[2] == 0 and lut[9] == 1 and lut[458] == 58 and lut[1] == 255
    names459, names59 = load_vocabulary("pc459"), load_vocabulary("pc59")
    ids = tool.PC59_CATEGORY_IDS
    # Train id i is the i-th kept PC-459 id; the names agree except PC-59's "diningtable".
    renamed = [names459[c - 1] if names459[c - 1] != "table" else "diningtable" for c in ids]
    assert renamed == names59

    def ann(mask: np.ndarray, category: int) -> dict:
        return {"image_id": 1, "category_id": category, "segmentation": tool.rle_encode(mask)}

    left = np.zeros((2, 3), bool)
    left[:, 0] = True
    top = np.zeros((2, 3), bool)
    top[0] = True
    # aeroplane (2) on the left, then sky (category of "sky") on top overwrites; 1 is not in 59.
    sky = ids[names59.index("sky")]
    label = tool.pc59_label(2, 3, [ann(left, 2), ann(top, sky), ann(~(left | top), 1)])
    s = names59.index("sky")
    assert label.tolist() == [[s, s, s], [0, 255, 255]]


def test_pascal_context_script(tmp_path: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    tool = load_tool("prepare_pascal_context")
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    mask = np.zeros((2, 3), bool)
    mask[0, 1:] = True
    data = {
        "images": [
            {"image_id": 7, "file_name": "2008_000002.jpg", "height": 2, "width": 3,
             "phase": "val"},
            {"image_id": 8, "file_name": "2008_000003.jpg", "height": 2, "width": 3,
             "phase": "train"},
        ],
        "annos_segmentation": [
            {"image_id": 7, "category_id": 9, "segmentation": tool.rle_encode(mask)},
            {"image_id": 8, "category_id": 2, "segmentation": tool.rle_encode(mask)},
        ],
    }  # fmt: skip
    voc.mkdir(parents=True)
    (voc / "trainval_merged.json").write_text(json.dumps(data))
    (voc / "pascalcontext_val.txt").write_text("2008_000002\n2008_000004\n")
    label_map = np.array([[1, 459, 2], [100, 1, 1]], dtype=np.uint16)
    (voc / "trainval").mkdir()
    scipy_io.savemat(voc / "trainval" / "2008_000002.mat", {"LabelMap": label_map})
    for stem in ("2008_000002", "2008_000003"):
        write_jpg(voc / "JPEGImages" / f"{stem}.jpg", 2, 3)

    assert tool.main(["--root", str(tmp_path)]) == 0
    pc59 = SegmentationDataset("pc59", root=tmp_path)
    assert len(pc59) == 1 and pc59[0]["label"].tolist() == [[255, 1, 1], [255, 255, 255]]
    pc459 = SegmentationDataset("pc459", root=tmp_path)
    assert len(pc459) == 1
    assert pc459[0]["label"].tolist() == [[0, 458, 1], [99, 0, 0]]
    with pytest.raises(ValueError, match="1..459"):
        tool.pc459_label(np.zeros((2, 2), np.uint16))


def test_pascal_context_script_missing_json(tmp_path: Path) -> None:
    tool = load_tool("prepare_pascal_context")
    with pytest.raises(SystemExit, match="trainval_merged.json"):
        tool.main(["--root", str(tmp_path), "--variant", "59"])


# ---------------------------------------------------------------------------------------------
# Training augmentation


def test_shortest_edge_size_matches_detectron2_rule() -> None:
    assert T.shortest_edge_size(480, 640, 384, 1333) == (384, 512)
    assert T.shortest_edge_size(640, 480, 384, 1333) == (512, 384)
    assert T.shortest_edge_size(100, 1000, 384, 1333) == (133, 1333)  # long side capped
    assert T.shortest_edge_size(333, 500, 384, 1333) == (384, 577)  # 576.58 rounds up


def test_train_augmentation_shapes_padding_and_reproducibility() -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 60, 200), dtype=torch.uint8, generator=gen)
    label = torch.randint(0, 171, (60, 200), generator=gen)
    aug = TrainAugmentation(min_size=(32,), max_size=64, crop_size=(32, 32), size_divisibility=32)
    out1 = aug(image, label, generator=torch.Generator().manual_seed(3))
    out2 = aug(image, label, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out1[0], out2[0]) and torch.equal(out1[1], out2[1])
    # 60x200 -> short side 32 gives 32x107 > 64, so capped to 19x64; crop 19x32; pad to 32x32.
    img, lab = out1
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8
    assert lab.shape == (32, 32) and lab.dtype == torch.int64
    assert (lab[19:] == 255).all() and (img[:, 19:] == 128).all()
    assert (lab[:19] < 171).all()
    outs = {
        aug(image, label, generator=torch.Generator().manual_seed(s))[0].sum().item()
        for s in range(6)
    }
    assert len(outs) > 1  # different seeds, different augmentations


def test_dataloader_batches_augmented_samples(tmp_path: Path) -> None:
    spec = get_dataset_spec("coco_train")
    for i, (h, w) in enumerate([(20, 30), (40, 24), (18, 18)]):
        write_jpg(spec.image_root(tmp_path) / f"{i:012d}.jpg", h, w, seed=i)
        write_png(spec.label_root(tmp_path) / f"{i:012d}.png", np.full((h, w), i, np.uint8))
    aug = TrainAugmentation(min_size=(16,), crop_size=(16, 16), size_divisibility=16)
    dataset = SegmentationDataset("coco_train", root=tmp_path, transform=aug)
    torch.manual_seed(0)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["label"].shape == (3, 16, 16)
    assert [int(lab.max()) for lab in batch["label"]] == [0, 1, 2]
    assert len(batch["file"]) == 3


def test_train_augmentation_defaults_are_catseg() -> None:
    image = torch.zeros(3, 480, 640, dtype=torch.uint8)
    label = torch.full((480, 640), 7)
    img, lab = TrainAugmentation()(image, label, generator=torch.Generator().manual_seed(0))
    assert img.shape == (3, 384, 384) and lab.shape == (384, 384) and (lab == 7).all()


def test_crop_flip_and_label_resize_are_exact() -> None:
    image = torch.arange(3 * 4 * 6, dtype=torch.uint8).reshape(3, 4, 6)
    label = torch.arange(24).reshape(4, 6)
    img, lab = T.random_crop(image, label, (2, 3), generator=torch.Generator().manual_seed(1))
    y0, x0 = divmod(int(lab[0, 0]), 6)
    assert torch.equal(lab, label[y0 : y0 + 2, x0 : x0 + 3])
    assert torch.equal(img, image[:, y0 : y0 + 2, x0 : x0 + 3])
    img, lab = T.hflip(image, label)
    assert lab[0].tolist() == [5, 4, 3, 2, 1, 0] and torch.equal(img[:, :, 0], image[:, :, 5])
    big = torch.tensor([[0, 65535], [846, 3]])
    assert T.resize_label(big, (4, 4)).unique().tolist() == [0, 3, 846, 65535]
    # Area constraint: a crop on one class only is retried (detectron2's category-area rule).
    two = torch.zeros(8, 8, dtype=torch.int64)
    two[:, 4:] = 1
    for seed in range(5):
        _, lab = T.random_crop(
            torch.zeros(3, 8, 8, dtype=torch.uint8), two, (4, 4), ignore_value=255,
            single_category_max_area=0.9, generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        assert lab.unique().numel() == 2


def test_hsv_conversion_and_color_aug() -> None:
    colours = torch.tensor(
        [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [128, 128, 128], [0, 0, 0]],
        dtype=torch.uint8,
    ).T[:, :, None]  # (3, 6, 1)
    hsv = T.rgb_to_hsv_u8(colours)
    # OpenCV 8-bit convention: H in degrees / 2.
    assert hsv[:, :, 0].T.tolist() == [
        [0, 255, 255], [60, 255, 255], [120, 255, 255], [30, 255, 255], [0, 0, 128], [0, 0, 0],
    ]  # fmt: skip
    assert torch.equal(T.hsv_to_rgb_u8(hsv), colours)
    rng = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=rng)
    back = T.hsv_to_rgb_u8(T.rgb_to_hsv_u8(image))
    assert (back.int() - image.int()).abs().max() <= 4  # 8-bit HSV quantisation only

    out = T.color_aug_ssd(image, generator=torch.Generator().manual_seed(5))
    again = T.color_aug_ssd(image, generator=torch.Generator().manual_seed(5))
    assert out.dtype == torch.uint8 and out.shape == image.shape and torch.equal(out, again)
    grey = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    for seed in range(8):  # saturation and hue leave grey alone; brightness/contrast keep it grey
        g = T.color_aug_ssd(grey, generator=torch.Generator().manual_seed(seed))
        assert (g == g[0:1]).all()
