"""Checkpoints carry their config, round-trip exactly and fail loudly when they do not fit."""

import json
import re

import pytest
import torch
from safetensors.torch import save_file

import lmseg
from lmseg.checkpoint import CheckpointError, load_weights, read_config


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
    with pytest.raises(CheckpointError, match=r"missing \[.*spatial_encoder\..*mismatched \[cost_volume.embed.weight"):
        load_weights(other, path)
    with pytest.raises(
        CheckpointError,
        match=rf"^checkpoint {re.escape(str(path))} does not fit the model 'lmseg_tiny': missing "
        r"\[fusion.weight_logit, spatial_adapter\..* \(\d+ in all\)\], unexpected \[\], mismatched "
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


# A format-1 config exactly as the earlier release wrote it (lmseg_tiny, channel fusion).
V1_CONFIG = {
    "name": "lmseg_tiny",
    "clip": {"model_name": "tiny", "image_size": 96, "guidance_layers": [0, 1], "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 96, "patch_size": 8, "width": 32, "layers": 3, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        "quick_gelu": True}, "tokenizer_name": "ViT-B-16", "quick_gelu": True},
    "sam": {"variant": "vit_b", "image_size": 64, "overrides": {
        "embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1], "window_size": 4,
        "patch_size": 8, "out_chans": 32}},
    "fusion": {"mode": "channel", "init": 0.5, "hidden_dim": 16},
    "aggregator": {"hidden_dim": 32, "appearance_guidance_dim": 32, "text_guidance_dim": 32,
                   "num_layers": 2, "num_heads": 2, "window_size": 6, "mlp_ratio": 4.0, "pad_len": 16,
                   "train_pool_size": 1, "decoder_dims": [32, 16], "decoder_guidance_dims": [32, 16],
                   "decoder_guidance_proj_dims": [16, 8], "class_chunk": 8, "token_chunk": None},
    "num_prompts": 4,
    "top_k": 8,
}
V1_PREFIXES = {"vision_language_encoder.": "clip.", "spatial_adapter.": "sam_adapter.",
               "spatial_encoder.": "sam."}


def _write(path, state, config, version="1"):
    metadata = {"lmseg_config": config if isinstance(config, str) else json.dumps(config),
                "lmseg_format": version}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)


def test_format_1_checkpoints_load_with_their_weights(tmp_path):
    model = lmseg.create_model("lmseg_tiny", fusion={"mode": "channel"})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    state = {}
    for key, value in model.state_dict().items():
        for new, old in V1_PREFIXES.items():
            if key.startswith(new):
                key = old + key[len(new):]
                break
        state[key] = value
    path = tmp_path / "v1.safetensors"
    _write(path, state, V1_CONFIG)
    reloaded = lmseg.load_model(path)
    assert reloaded.config["vision_language_encoder"]["type"] == "open_clip"
    assert reloaded.config["fusion"] == {"type": "weighted", "mode": "channel", "init": 0.5, "hidden_dim": 16}
    assert "class_chunk" not in json.dumps(reloaded.config) and "top_k" not in reloaded.config
    images, text = torch.rand(1, 3, 96, 96), torch.randn(3, 4, 32)
    with torch.no_grad():
        assert torch.equal(model(images, text), reloaded(images, text))
    fresh = lmseg.create_model("lmseg_tiny", fusion={"mode": "channel"})
    load_weights(fresh, path)  # into a built model too
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True))


def test_saved_config_holds_no_runtime_option(tmp_path):
    path = tmp_path / "m.safetensors"
    lmseg.save_model(lmseg.create_model("catseg_tiny"), path)
    config = read_config(path)
    text = json.dumps(config)
    for runtime_field in ("top_k", "class_chunk", "token_chunk", "train_pool_size", "pool", "backend",
                          "precision", "device", "inplace"):
        assert runtime_field not in text, runtime_field


@pytest.mark.parametrize("name", ["hf-hub:org/repo", "local-dir:/tmp/somewhere"])
def test_a_checkpoint_cannot_name_a_remote_or_local_source(tmp_path, name, monkeypatch):
    calls = []
    import open_clip
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: calls.append(a) or None)
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda *a, **k: calls.append(a) or None)
    model = lmseg.create_model("catseg_tiny")
    config = dict(model.config)
    config["vision_language_encoder"] = {**config["vision_language_encoder"], "model_cfg": None,
                                         "model_name": name}
    path = tmp_path / "hostile.safetensors"
    _write(path, model.state_dict(), config, version="2")
    with pytest.raises(CheckpointError, match="not one of open_clip's built-in model configs"):
        lmseg.load_model(path)
    config["vision_language_encoder"] = {**model.config["vision_language_encoder"], "tokenizer_name": name}
    _write(path, model.state_dict(), config, version="2")
    with pytest.raises(CheckpointError, match="tokenizer_name"):
        lmseg.load_model(path)
    assert calls == []


def test_sizes_in_a_checkpoint_are_checked_before_allocating(tmp_path):
    import resource

    model = lmseg.create_model("catseg_tiny")
    config = json.loads(json.dumps(model.config))
    # A ViT-L sized vision tower in the metadata of a tiny file.
    config["vision_language_encoder"]["model_cfg"]["vision_cfg"].update(width=1024, layers=24)
    path = tmp_path / "big.safetensors"
    _write(path, model.state_dict(), config, version="2")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="does not fit"):
        lmseg.load_model(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200  # building it for real would take over 1 GB
    config["vision_language_encoder"]["model_cfg"]["vision_cfg"]["layers"] = 100_000
    _write(path, model.state_dict(), config, version="2")
    with pytest.raises(CheckpointError, match="out of range"):
        lmseg.load_model(path)


@pytest.mark.parametrize("metadata", ["[1, 2]", "null", "not json {", '{"name": "x"}', '"text"'])
def test_bad_metadata_is_one_error_naming_the_file(tmp_path, metadata):
    path = tmp_path / "bad.safetensors"
    _write(path, {"x": torch.zeros(1)}, metadata, version="2")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        lmseg.load_model(path)


def test_unknown_types_and_options_are_named(tmp_path):
    model = lmseg.create_model("catseg_tiny")
    path = tmp_path / "m.safetensors"
    for section, expected in [
        ({"spatial_encoder": {"type": "nope"}}, "unknown spatial encoder type 'nope'"),
        ({"vision_language_encoder": {**model.config["vision_language_encoder"], "weights": "x.pt"}},
         r"\['weights'\] cannot be set in a config"),
        ({"aggregator": {**model.config["aggregator"], "class_attention": {"type": "linear", "x": 1}}},
         r"unknown option\(s\) \['x'\]"),
        ({"format": 3}, "unknown model config keys"),
    ]:
        _write(path, model.state_dict(), {**model.config, **section}, version="2")
        with pytest.raises(CheckpointError, match=expected):
            lmseg.load_model(path)
    _write(path, model.state_dict(), model.config, version="9")
    with pytest.raises(CheckpointError, match="format '9'"):
        lmseg.load_model(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(tmp_path, bad):
    model = lmseg.create_model("catseg_tiny")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["decoder.head.weight"].view(-1)[0] = bad
    path = tmp_path / "nan.safetensors"
    _write(path, state, model.config, version="2")
    with pytest.raises(CheckpointError, match="NaN or infinite values in 1 tensor.*decoder.head.weight"):
        lmseg.load_model(path)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_weights(lmseg.create_model("catseg_tiny"), path)
