"""From a folder or a COCO file to an evaluated fine-tuned model, with the commands a user runs
(tiny random-weight model, small images), and training that passes over bad samples.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lmseg.checkpoint import save_model
from lmseg.cli import main
from lmseg.data import load_dataset
from lmseg.factory import create_model
from lmseg.train.config import load_config
from lmseg.train.data_stream import epoch_permutation
from lmseg.train.trainer import Trainer

# pycocotools' decode trips numpy 2's copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CLASSES = ["sky", "grass", "road"]


def write_folder(root: Path, splits: dict[str, int], size: tuple[int, int] = (40, 56)) -> None:
    """A folder dataset with sub-folder splits; labels hold 0..2 and a 255 band."""
    rng = np.random.default_rng(0)
    for split, count in splits.items():
        for i in range(count):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{split}{i}.jpg")
            label = rng.integers(0, len(CLASSES), size).astype(np.uint8)
            label[:2] = 255
            Image.fromarray(label).save(root / "labels" / split / f"{split}{i}.png")
    (root / "classes.txt").write_text("# three classes\n" + "\n".join(CLASSES) + "\n")


def write_coco(root: Path, name: str, count: int, size: tuple[int, int] = (40, 56)) -> Path:
    """A COCO instance file with polygon annotations and its images under root/images."""
    h, w = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    images, annotations = [], []
    for i in range(count):
        file_name = f"{name}{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "images" / file_name
        )
        images.append({"id": i, "file_name": file_name, "height": h, "width": w})
        for k, (x0, x1) in enumerate([(0, 20), (20, 40), (40, 56)]):
            polygon = [x0, 0, x1, 0, x1, h, x0, h]
            annotations.append(
                {"id": 10 * i + k, "image_id": i, "category_id": k + 1, "segmentation": [polygon]}
            )
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]
    path = root / f"{name}.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


@pytest.mark.parametrize("kind", ["folder", "coco"])
def test_check_eval_finetune_eval(kind: str, tmp_path: Path) -> None:
    if kind == "coco":
        pytest.importorskip("pycocotools")
        train = write_coco(tmp_path / "data", "train", 3)
        val = write_coco(tmp_path / "data", "val", 2)
        train_set, val_set, val_name = str(train), str(val), "val"
    else:
        write_folder(tmp_path / "data", {"train": 3, "val": 2})
        train_set, val_set = f"{tmp_path / 'data'}:train", f"{tmp_path / 'data'}:val"
        val_name = "data_val"
    quick = ["--whole", "--test-size", "64", "--num-workers", "0", "--device", "cpu", "--quiet"]

    assert run_cli("data", "check", train_set, "--quiet") == 0
    assert run_cli("data", "check", val_set, "--quiet") == 0

    torch.manual_seed(0)
    before = tmp_path / "before"
    assert (
        run_cli("eval", "--model", "catseg_tiny", "--dataset", val_set, "--out", before, *quick)
        == 0
    )
    report = json.loads((before / f"{val_name}_report.json").read_text())
    assert report["num_images"] == 2 and [r["name"] for r in report["per_class"]] == CLASSES
    truth = [r["truth_pixels"] for r in report["per_class"]]
    labels = np.stack([load_dataset(val_set)[i]["label"].numpy() for i in range(2)])
    assert truth == np.bincount(labels[labels != 255], minlength=3).tolist()
    assert (before / f"{val_name}_confusion.png").is_file()
    assert (before / f"{val_name}_report.md").read_text().startswith("# Evaluation of")

    torch.manual_seed(0)
    start = tmp_path / "start.safetensors"
    save_model(create_model("catseg_tiny"), start)  # "any checkpoint" to fine-tune from
    run = tmp_path / "run"
    overrides = [
        f"data.dataset={train_set}",
        f"eval.datasets=[{val_set}]",
        "model.name=catseg_tiny",
        f"model.weights={start}",
        "solver.iterations=2",
        "solver.batch_size=2",
        "solver.warmup_iters=1",
        "data.min_size=[48]",
        "data.crop_size=48",
        "data.num_workers=0",
        "eval.sliding_window=false",
        "train.progress=false",
        "train.checkpoint_period=2",
    ]
    assert (
        run_cli("train", "finetune_custom", *overrides, "--output-dir", run, "--device", "cpu") == 0
    )
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert logged[0]["iteration"] == 2 and logged[0]["skipped_samples"] == 0
    assert set(logged[-1]["eval"][val_set]) == {"mIoU", "fwIoU", "mAcc", "pAcc"}
    assert (run / "eval" / "iter_0000002" / f"{val_name}_report.json").is_file()

    after = tmp_path / "after"
    final = run / "model_final.safetensors"
    assert run_cli("eval", "--checkpoint", final, "--dataset", val_set, "--out", after, *quick) == 0
    scored = json.loads((after / f"{val_name}.json").read_text())
    assert scored["model"] == "catseg_tiny" and scored["num_images"] == 2


def tiny_config(output_dir: Path, dataset: str, *overrides: str) -> Any:
    return load_config(
        None,
        [
            "model.name=catseg_tiny",
            "model.vision_language_weights=null",
            f"data.dataset={dataset}",
            "solver.iterations=4",
            "solver.batch_size=2",
            "data.min_size=[48]",
            "data.crop_size=48",
            "data.num_workers=0",
            f"train.output_dir={output_dir}",
            "train.checkpoint_period=2",
            "train.log_period=2",
            "train.progress=false",
            *overrides,
        ],
    )


def seeded_model() -> Any:
    torch.manual_seed(0)
    return create_model("catseg_tiny")


def test_training_passes_over_bad_samples(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    write_folder(root, {"train": 4})
    labels = root / "labels" / "train"
    truncated = labels / "train1.png"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    wrong = labels / "train2.png"
    Image.fromarray(np.full((40, 56), 7, np.uint8)).save(wrong)
    dataset = f"{root}:train"

    with caplog.at_level(logging.WARNING, logger="lmseg.train.data_stream"):
        full = Trainer(tiny_config(tmp_path / "full", dataset), model=seeded_model())
        history = full.train()
    assert len(history) == 4 and all(np.isfinite(h["loss"]) for h in history)
    warned = [r.getMessage() for r in caplog.records if r.name == "lmseg.train.data_stream"]
    assert len(warned) == 2  # once per bad file, however often it comes up
    assert any(str(truncated) in m and "unreadable" in m for m in warned)
    assert any(str(wrong) in m and "values [7]" in m for m in warned)

    # Independently: each key of the stream skips the run of bad items from its item onwards.
    bad = {1, 2}  # train1, train2 in stem order
    keys = [int(i) for epoch in range(2) for i in epoch_permutation(4, 0, epoch)][:8]
    expected = sum(next(n for n in range(4) if (item + n) % 4 not in bad) for item in keys)
    logged = [
        json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    ]
    assert sum(r["skipped_samples"] for r in logged) == expected > 0

    killed = Trainer(tiny_config(tmp_path / "run", dataset), model=seeded_model())
    killed.train(until=2)
    resumed = Trainer(tiny_config(tmp_path / "run", dataset), model=create_model("catseg_tiny"))
    assert resumed.resume()
    rest = resumed.train()
    assert [h["loss"] for h in killed.history + rest] == [h["loss"] for h in history]


def test_fine_tuning_recipe_is_shipped() -> None:
    config = load_config("finetune_custom")
    assert config.data.dataset == "path/to/your/dataset:train"
    assert config.model.weights == "path/to/checkpoint.safetensors"
    assert config.model.vision_language_weights is None  # the checkpoint holds CLIP
    s = config.solver
    assert (s.iterations, s.lr, s.warmup_iters, s.vision_language_finetune) == (2000, 5e-5, 100, "qv")
    assert config.train.class_pool_size == 2


def test_missing_dataset_in_a_config_is_one_line(tmp_path: Path, capsys: Any) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model: {name: catseg_tiny, vision_language_weights: null}\n")
    args = ["train", str(config), f"data.dataset={tmp_path / 'nope'}", "--device", "cpu"]
    assert run_cli(*args, "--output-dir", tmp_path / "run") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown dataset") and str(tmp_path / "nope") in err
    assert "\n" not in err


def test_pycocotools_is_a_dev_dependency() -> None:
    """The COCO tests above skip without pycocotools; the dev extra installs it."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    dev = " ".join(pyproject["project"]["optional-dependencies"]["dev"])
    assert "pycocotools" in dev and "scipy" in dev


def test_your_own_data_page_snippets_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python blocks of docs/your-own-data.md run in order, as a reader pastes them."""
    page = Path(__file__).resolve().parents[1] / "docs" / "your-own-data.md"
    blocks = re.findall(r"^```python\n(.*?)^```$", page.read_text(), re.MULTILINE | re.DOTALL)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "docs_snippet"}
    for code in blocks:
        exec(compile(code, str(page), "exec"), namespace)


def test_evaluation_stops_on_a_bad_sample_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_folder(tmp_path / "data", {"val": 2})
    bad = tmp_path / "data" / "labels" / "val" / "val1.png"
    Image.fromarray(np.full((40, 56), 3, np.uint8)).save(bad)
    args = ["eval", "--model", "catseg_tiny", "--dataset", f"{tmp_path / 'data'}:val"]
    assert run_cli(*args, "--whole", "--test-size", "64", "--num-workers", "0", "--quiet") == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: label {bad}: values [3] outside the 3 classes (0..2, ignore value 255)"


def test_check_command_reads_a_registered_benchmark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "annotations_detectron2" / "val").mkdir(parents=True)
    for stem, value in (("a", 3), ("b", 21)):
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(voc / "JPEGImages" / f"{stem}.jpg")
        label = np.full((4, 5), value, np.uint8)
        Image.fromarray(label).save(voc / "annotations_detectron2" / "val" / f"{stem}.png")
    assert run_cli("data", "check", "voc20", "--root", tmp_path, "--quiet") == 1
    out = capsys.readouterr().out
    bad = voc / "annotations_detectron2" / "val" / "b.png"
    assert (
        f"error: label {bad}: values [21] outside the 20 classes (0..19, ignore value 255)" in out
    )
    # boat (class 3) covers all 20 pixels of a.png, the only label without an error
    assert f"    3  {'boat':<11}  {20:>13,}  {100:>6.2f}%  {1:>7,}" in out.splitlines()
    assert out.rstrip().endswith("voc20: FAILED: 1 error")
