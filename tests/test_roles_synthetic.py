"""Every registered spatial encoder and class attention swaps in with one argument and trains on
the synthetic world with the training recipe (frozen spatial encoder, the rest learning)."""

import importlib.util
import math

import numpy as np
import pytest
import torch

import lmseg
from lmseg.synthetic.world import SyntheticWorld
from lmseg.train.config import load_config
from lmseg.train.trainer import TensorSegmentationDataset, Trainer

SPATIAL = {
    "sam": None,  # lmseg_tiny's own tiny SAM
    "dinov2": {"type": "dinov2", "variant": "vits14", "image_size": 56, "embed_dim": 32, "depth": 2,
               "num_heads": 2},
    "sam2": {"type": "sam2", "variant": "hiera_t", "image_size": 128, "embed_dim": 8, "num_heads": 1,
             "stages": [1, 1, 2, 1], "global_att_blocks": [3], "window_spec": [4, 2, 2, 1],
             "window_pos_embed_bkg_spatial_size": [4, 4], "d_model": 16},
}


@pytest.fixture(scope="module")
def world_data(tmp_path_factory):
    world = SyntheticWorld.generate(0, image_size=64)
    images, labels = world.dataset(3, world.seen_ids, 6)
    pixels = (images * 255).round().to(torch.uint8)
    bank = tmp_path_factory.mktemp("bank") / "world.json"
    world.bank().save(bank)  # name-free attribute sentences: P = template + 3 = 4
    return TensorSegmentationDataset(pixels, labels, class_names=world.names), bank


@pytest.mark.parametrize("attention", ["linear", "softmax"])
@pytest.mark.parametrize("spatial", list(SPATIAL))
def test_swapped_parts_train_on_the_synthetic_world(spatial, attention, world_data, tmp_path):
    dataset, bank = world_data
    if spatial == "sam2" and importlib.util.find_spec("sam2") is None:
        pytest.skip("the sam2 package is not installed (pip install lmseg[sam2])")
    overrides = {"class_attention": attention}
    if SPATIAL[spatial] is not None:
        overrides["spatial_encoder"] = SPATIAL[spatial]
    model = lmseg.create_model("lmseg_tiny", **overrides)
    assert type(model.aggregator.layers[0].classes.attention).__name__.lower().startswith(attention)
    config = load_config(None, [
        "model.name=lmseg_tiny", "model.vision_language_weights=null", "solver.iterations=3",
        "solver.batch_size=2", "solver.lr=1e-3", "data.min_size=[64]", "data.crop_size=64",
        "data.num_workers=0", f"train.output_dir={tmp_path / 'run'}", "train.progress=false",
        "prompts.mode=attributes", f"prompts.bank={bank}",
    ])
    config.model.overrides = overrides
    trainer = Trainer(config, model=model, dataset=dataset)
    frozen = {k: v.clone() for k, v in trainer.model.spatial_encoder.state_dict().items()}
    head = trainer.model.decoder.head.weight.detach().clone()
    losses = [trainer.step()["loss"] for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses)
    assert not torch.equal(trainer.model.decoder.head.weight, head)
    for key, value in trainer.model.spatial_encoder.state_dict().items():
        assert torch.equal(value, frozen[key]), key
    # The trained model segments the world's scenes at their size.
    segmenter = lmseg.Segmenter(trainer.model.eval(), prompt_bank=bank)
    result = segmenter.predict(dataset[0]["image"], dataset.class_names[:5])
    assert result.labels.shape == (64, 64) and np.isin(result.labels, np.arange(5)).all()
