"""Checkpoints carry their config, round-trip exactly and fail loudly when they do not fit."""

import re

import pytest
import torch
from safetensors.torch import save_file

import lmseg
from lmseg.checkpoint import CheckpointError, load_weights


def test_round_trip_without_architecture_name(tmp_path):
    model = lmseg.create_model("lmseg_tiny", fusion={"mode": "adaptive"})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "model.safetensors"
    lmseg.save_model(model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp files left
    reloaded = lmseg.load_model(path)
    assert reloaded.config == model.config
    assert reloaded.fusion.mode == "adaptive"  # rebuilt from the stored config alone
    state = reloaded.state_dict()
    assert set(state) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    images, text = torch.rand(1, 3, 96, 96), torch.randn(3, 4, 32)
    with torch.no_grad():
        assert torch.equal(model(images, text), reloaded(images, text))


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    path = tmp_path / "tiny.safetensors"
    lmseg.save_model(lmseg.create_model("catseg_tiny"), path)
    other = lmseg.create_model("lmseg_tiny")
    with pytest.raises(CheckpointError, match=r"missing \[.*sam\..*mismatched \[cost_volume.embed.weight"):
        load_weights(other, path)
    with pytest.raises(
        CheckpointError,
        match=rf"^checkpoint {re.escape(str(path))} does not fit the model 'lmseg_tiny': missing "
        r"\[fusion.weight_logit, sam\..* \(\d+ in all\)\], unexpected \[\], mismatched "
        r"\[cost_volume.embed.weight: checkpoint \(32, 1, 7, 7\) vs model \(32, 4, 7, 7\)\]$",
    ):
        lmseg.create_model("lmseg_tiny", pretrained=str(path))


def test_foreign_and_corrupt_files_are_refused(tmp_path):
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, bare)
    with pytest.raises(CheckpointError, match="carries no lmseg config"):
        lmseg.load_model(bare)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        lmseg.load_model(junk)
    with pytest.raises(FileNotFoundError):
        lmseg.load_model(tmp_path / "missing.safetensors")
