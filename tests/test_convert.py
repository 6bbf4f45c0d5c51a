"""CAT-Seg checkpoint conversion: every key mapped or expected-unused, shapes checked."""

from pathlib import Path

import pytest
import torch

import lmseg
from lmseg.checkpoint import CheckpointError
from lmseg.cli import main
from lmseg.convert import AGG, _rename, convert_state_dict

REFERENCE = Path(__file__).parent / "data" / "catseg_aggregator_keys.txt"
PREFIX = AGG.replace("\\", "")


def _reference_keys() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in REFERENCE.read_text().splitlines():
        name, shape = line.split(" ", 1)
        rows.append((name, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


def _catseg_checkpoint(model: lmseg.LMSeg) -> dict[str, torch.Tensor]:
    """A synthetic CAT-Seg state dict with CAT-Seg's names, shaped for ``model``."""
    own = model.state_dict()
    source = {}
    for name, _shape in _reference_keys():
        source[PREFIX + name] = torch.randn(own[_rename(PREFIX + name)].shape)
    for key, value in own.items():
        if not key.startswith("vision_language_encoder.model."):
            continue
        rest = key[len("vision_language_encoder.model."):]
        base = "sem_seg_head.predictor.clip_model." + rest
        if rest.endswith("attn.in_proj_weight"):
            for part, chunk in zip("qkv", torch.randn(value.shape).chunk(3), strict=True):
                source[base.replace("in_proj_weight", f"{part}_proj_weight")] = chunk
        else:
            source[base] = torch.randn(value.shape)
    for i in (1, 2):
        target = own[f"decoder.guidance_upsamplers.{i - 1}.weight"]
        source[f"upsample{i}.weight"] = torch.randn(target.shape)
        source[f"upsample{i}.bias"] = torch.randn(target.shape[1])
    source[PREFIX + "layers.0.swin_block.block_2.attn_mask"] = torch.zeros(4, 36, 36)
    return source


@pytest.mark.filterwarnings("ignore::lmseg.weights.RandomWeightsWarning")
def test_every_reference_key_maps_onto_the_vitb_model_with_its_shape():
    model = lmseg.create_model("catseg_vitb16", pretrained=False)
    # OpenAI CLIP's activation: converted CAT-Seg weights are wrong under exact GELU.
    assert type(model.vision_language_encoder.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert model.vision_language_encoder.text_architecture == "QuickGELU"
    own = model.state_dict()
    for name, shape in _reference_keys():
        target = _rename(PREFIX + name)
        assert target in own, f"{name} -> {target} is not an lmseg parameter"
        assert tuple(own[target].shape) == shape, name


@pytest.fixture(scope="module")
def tiny():
    return lmseg.create_model("catseg_tiny")


def test_conversion_puts_every_tensor_in_its_place(tiny):
    source = _catseg_checkpoint(tiny)
    out = convert_state_dict(source, tiny.state_dict())
    assert set(out) == set(tiny.state_dict())
    assert torch.equal(out["aggregator.layers.1.classes.q.weight"],
                       source[PREFIX + "layers.1.attention.attention.q.weight"])
    assert torch.equal(out["aggregator.layers.0.spatial.blocks.1.mlp.fc2.bias"],
                       source[PREFIX + "layers.0.swin_block.block_2.mlp.fc2.bias"])
    assert torch.equal(out["decoder.stages.1.conv.norm2.weight"],
                       source[PREFIX + "decoder2.conv.double_conv.4.weight"])
    assert torch.equal(out["decoder.guidance_upsamplers.1.weight"], source["upsample2.weight"])
    qkv = out["vision_language_encoder.model.visual.transformer.resblocks.2.attn.in_proj_weight"]
    block = "sem_seg_head.predictor.clip_model.visual.transformer.resblocks.2.attn."
    expected = torch.cat([source[block + f"{p}_proj_weight"] for p in "qkv"])
    assert torch.equal(qkv, expected)


def test_missing_misshapen_and_unknown_keys_are_named(tiny):
    source = _catseg_checkpoint(tiny)
    missing = dict(source)
    del missing[PREFIX + "head.bias"]
    with pytest.raises(CheckpointError, match=r"target keys not filled \['decoder.head.bias'\]"):
        convert_state_dict(missing, tiny.state_dict())
    misshapen = dict(source)
    misshapen[PREFIX + "conv1.weight"] = torch.randn(32, 2, 7, 7)
    with pytest.raises(CheckpointError, match="cost_volume.embed.weight: checkpoint"):
        convert_state_dict(misshapen, tiny.state_dict())
    unknown = dict(source)
    unknown["sem_seg_head.predictor.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unknown source keys.*predictor.extra.weight"):
        convert_state_dict(unknown, tiny.state_dict())
    half = dict(source)
    del half["sem_seg_head.predictor.clip_model.transformer.resblocks.0.attn.k_proj_weight"]
    with pytest.raises(CheckpointError, match=r"missing \['k'\] projection"):
        convert_state_dict(half, tiny.state_dict())


def test_cli_converts_a_detectron2_checkpoint(tiny, tmp_path):
    source = _catseg_checkpoint(tiny)
    path = tmp_path / "catseg.pth"
    torch.save({"model": source, "iteration": 79999}, path)
    out = tmp_path / "converted.safetensors"
    assert main(["convert-catseg", str(path), str(out), "--model", "catseg_tiny"]) == 0
    model = lmseg.load_model(out)
    assert model.vision_language_encoder.text_architecture == "QuickGELU"  # the config keeps it across reloads
    assert torch.equal(model.state_dict()["decoder.head.weight"], source[PREFIX + "head.weight"])
    assert main(["convert-catseg", str(tmp_path / "nope.pth"), str(out)]) == 1
