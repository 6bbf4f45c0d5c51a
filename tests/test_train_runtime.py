"""Training-only settings are runtime options: CAT-Seg's 2×2 class-aggregation pooling applies
to training steps only, evaluation runs unpooled, and checkpoints store none of it."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lmseg.aggregation.class_aggregation import ClassAggregation
from lmseg.aggregation.reference import class_aggregation
from lmseg.checkpoint import read_header
from lmseg.convert import convert_catseg
from lmseg.factory import load_model
from lmseg.runtime import RuntimeOptions
from lmseg.train.config import load_config
from lmseg.train.trainer import TensorSegmentationDataset, Trainer

# every name a runtime setting has had: RuntimeOptions' fields and the earlier model field
RUNTIME_NAMES = {f.name for f in dataclasses.fields(RuntimeOptions)} | {"train_pool_size"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A CAT-Seg checkpoint for ``catseg_tiny`` converted with ``lmseg convert-catseg``."""
    from test_convert import _catseg_checkpoint  # CAT-Seg's names, tiny shapes

    from lmseg.factory import create_model

    folder = tmp_path_factory.mktemp("converted")
    torch.manual_seed(3)
    source = {k: v * 0.2 for k, v in _catseg_checkpoint(create_model("catseg_tiny")).items()}
    torch.save({"model": source, "iteration": 79999}, folder / "catseg.pth")
    convert_catseg(folder / "catseg.pth", folder / "converted.safetensors", model="catseg_tiny")
    return folder / "converted.safetensors"


def write_fake_voc(root: Path) -> None:
    """One VOC-20 validation image in CAT-Seg's prepared layout."""
    rng = np.random.default_rng(0)
    images = root / "VOCdevkit/VOC2012/JPEGImages"
    labels = root / "VOCdevkit/VOC2012/annotations_detectron2/val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(images / "0.jpg")
    Image.fromarray(rng.integers(0, 20, (48, 64)).astype(np.uint8)).save(labels / "0.png")


def make_trainer(tmp_path: Path, converted: Path) -> Trainer:
    write_fake_voc(tmp_path / "data")
    config = load_config(
        None,
        [
            "model.name=catseg_tiny",
            "model.vision_language_weights=null",
            "solver.iterations=2",
            "solver.batch_size=1",
            "data.num_workers=0",
            f"data.root={tmp_path / 'data'}",
            f"train.output_dir={tmp_path / 'run'}",
            "train.progress=false",
            "eval.datasets=[voc20]",
            "eval.sliding_window=false",
            "eval.limit=1",
        ],
    )
    assert config.train.class_pool_size == 2  # the recipe's default
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (2, 64, 64), generator=g)
    dataset = TensorSegmentationDataset(images, labels, class_names=["cat", "dog", "grass"])
    return Trainer(config, model=load_model(converted), dataset=dataset, augment=False)


class Recorder:
    """What every class aggregation of the model received and returned, with its weights then."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[dict] = []
        for module in model.modules():
            if isinstance(module, ClassAggregation):
                module.register_forward_pre_hook(self.before, with_kwargs=True)
                module.register_forward_hook(self.after, with_kwargs=True)

    def before(self, module, args, kwargs):
        x, guidance = args
        self.calls.append(
            {
                "block": copy.deepcopy(module),  # the optimizer step changes the weights after
                "x": x.detach().clone(),  # the inference path may overwrite x in place
                "guidance": None if guidance is None else guidance.detach().clone(),
                "pool": kwargs["runtime"].class_pool_size,
                "grad": torch.is_grad_enabled(),
            }
        )

    def after(self, module, args, kwargs, output):
        self.calls[-1]["out"] = output.detach().clone()


def assert_catseg_aggregation(call: dict, pool_size: int) -> None:
    block = call["block"].train(False)  # no dropout in the block: modes agree
    with torch.no_grad():
        expected = class_aggregation(block, call["x"], call["guidance"], pool_size=pool_size)
        other = class_aggregation(block, call["x"], call["guidance"], pool_size=3 - pool_size)
    torch.testing.assert_close(call["out"], expected, rtol=1e-4, atol=1e-5)
    assert (call["out"] - other).abs().max() > 1e-3  # the pooling size shows in the output


def test_training_pools_like_catseg_and_evaluation_does_not(tmp_path, converted):
    trainer = make_trainer(tmp_path, converted)
    recorder = Recorder(trainer.model)
    stats = trainer.step()
    assert stats["grad_norm"] > 0
    training = recorder.calls
    assert [(c["pool"], c["grad"]) for c in training] == [(2, True), (2, True)]  # 2 layers
    for call in training:
        assert_catseg_aggregation(call, pool_size=2)

    recorder.calls = []
    trainer.evaluate()
    evaluation = recorder.calls
    assert evaluation and {(c["pool"], c["grad"]) for c in evaluation} == {(1, False)}
    for call in evaluation:
        assert_catseg_aggregation(call, pool_size=1)
    assert trainer.model.aggregator.training  # back to training after the evaluation


def test_checkpoints_store_no_runtime_setting(tmp_path, converted):
    trainer = make_trainer(tmp_path, converted)
    trainer.config.eval.datasets = []
    trainer.train()
    run = tmp_path / "run"
    original = read_header(converted).config

    def names(node) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {n for v in node.values() for n in names(v)}
        if isinstance(node, list):
            return {n for v in node for n in names(v)}
        return set()

    for path in (run / "checkpoints/iter_0000002/model.safetensors", run / "model_final.safetensors"):
        header = read_header(path)
        assert header.config == original  # the model's own config, nothing added
        assert not names(header.config) & RUNTIME_NAMES
        assert not {k for k in header.metadata if k != "lmseg_config"} & RUNTIME_NAMES
    state = torch.load(run / "checkpoints/iter_0000002/state.pt", weights_only=True)
    assert not set(state) & (RUNTIME_NAMES | {"runtime"})
    # the run's config keeps the training setting, where a rerun reads it
    assert load_config(run / "config.yaml").train.class_pool_size == 2
