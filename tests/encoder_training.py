"""One optimizer step of CAT-Seg's recipe on a tiny model, for the encoder tests: the spatial
encoder stays frozen and in eval mode, the spatial adapter trains."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from lmseg.model import LMSeg
from lmseg.train.config import load_config
from lmseg.train.trainer import TensorSegmentationDataset, Trainer


def one_training_step(model: LMSeg, tmp_path: Path, overrides: dict[str, Any]) -> Trainer:
    """Run one step on random 64 px crops; returns the trainer (its model has been stepped)."""
    g = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (4, 3, 72, 80), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (4, 72, 80), generator=g)
    dataset = TensorSegmentationDataset(images, labels, class_names=["thing0", "thing1", "thing2"])
    config = load_config(None, [
        "model.name=lmseg_tiny", "model.vision_language_weights=null", "solver.iterations=2",
        "solver.batch_size=2", "data.min_size=[64]", "data.crop_size=64", "data.num_workers=0",
        f"train.output_dir={tmp_path / 'run'}", "train.precision=fp32", "train.progress=false",
    ])
    config.model.overrides = overrides
    trainer = Trainer(config, model=model, dataset=dataset)
    spatial = {k: v.clone() for k, v in trainer.model.spatial_encoder.state_dict().items()}
    adapter = trainer.model.spatial_adapter.proj.weight.detach().clone()
    stats = trainer.step()
    assert math.isfinite(stats["loss"]) and stats["grad_norm"] > 0
    assert not trainer.model.spatial_encoder.training
    assert not any(p.requires_grad for p in trainer.model.spatial_encoder.parameters())
    for key, value in trainer.model.spatial_encoder.state_dict().items():
        assert torch.equal(value, spatial[key]), f"frozen spatial encoder changed: {key}"
    assert not torch.equal(trainer.model.spatial_adapter.proj.weight, adapter)
    return trainer
