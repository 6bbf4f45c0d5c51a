"""SAM 2's image encoder as the spatial encoder: sizes against the official configs, parity with
the sam2 package on the official checkpoint layout, strict loading, option checks, and a tiny
LMSeg built and trained with it. Skipped without the optional ``sam2`` package."""

from __future__ import annotations

import inspect

import pytest
import torch

sam2 = pytest.importorskip("sam2")

from lmseg import create_model, load_model, save_model  # noqa: E402
from lmseg.encoders.sam2 import SAM2_VARIANTS, SAM2_WEIGHTS, build_sam2_encoder  # noqa: E402
from lmseg.weights import WeightsNotFoundError  # noqa: E402

TINY = dict(variant="hiera_t", image_size=128, embed_dim=8, num_heads=1, stages=(1, 1, 2, 1),
            global_att_blocks=(3,), window_spec=(4, 2, 2, 1), window_pos_embed_bkg_spatial_size=(4, 4),
            d_model=16)
TINY_SECTION = {"type": "sam2", **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}}
CONFIGS = {"hiera_t": "t", "hiera_s": "s", "hiera_b+": "b+", "hiera_l": "l"}


@pytest.mark.parametrize("variant", list(SAM2_VARIANTS))
def test_variant_sizes_are_the_official_configs(variant):
    """lmseg's size table against sam2's own sam2.1 yaml (Hiera's defaults where it is silent)."""
    from hydra import compose
    from sam2.modeling.backbones.hieradet import Hiera

    cfg = compose(config_name=f"configs/sam2.1/sam2.1_hiera_{CONFIGS[variant]}.yaml").model.image_encoder
    defaults = {k: p.default for k, p in inspect.signature(Hiera).parameters.items()}
    for key, ours in SAM2_VARIANTS[variant].items():
        theirs = cfg.trunk.get(key, defaults[key])
        assert (tuple(theirs) if isinstance(ours, tuple) else theirs) == ours, key
    assert set(cfg.trunk) - {"_target_"} <= set(SAM2_VARIANTS[variant])
    assert cfg.scalp == 1 and cfg.neck.d_model == 256 and cfg.neck.fpn_interp_model == "nearest"
    assert list(cfg.neck.fpn_top_down_levels) == [2, 3]
    assert cfg.neck.position_encoding.num_pos_feats == 256 and cfg.neck.position_encoding.normalize
    width = SAM2_VARIANTS[variant]["embed_dim"]
    assert list(cfg.neck.backbone_channel_list) == [8 * width, 4 * width, 2 * width, width]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_official_checkpoint_equals_sam2_image_encoder(tmp_path):
    """A full SAM 2.1 hiera_t built by sam2 from its own config, saved as released
    ({"model": state_dict}), gives lmseg's encoder the features of sam2's image encoder."""
    from sam2.build_sam import build_sam2
    from sam2.utils.transforms import SAM2Transforms

    torch.manual_seed(0)
    official = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu", mode="eval")
    with torch.no_grad():  # position embeddings start at zero: make them matter
        for p in official.image_encoder.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path / SAM2_WEIGHTS["hiera_t"].file
    torch.save({"model": official.state_dict()}, path)

    encoder = build_sam2_encoder(variant="hiera_t", image_size=256, weights=str(path))
    images = torch.rand(1, 3, 200, 300)
    ours = encoder(images)
    # sam2's image predictor transforms (square resize, ImageNet statistics), at 256 px.
    with torch.no_grad():
        theirs = official.image_encoder(SAM2Transforms(256, 0.0).transforms(images))["vision_features"]
    assert ours.shape == (1, 256, 16, 16)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_loading_is_strict_and_names_the_keys(tmp_path):
    torch.manual_seed(0)
    state = {f"image_encoder.{k}": v for k, v in build_sam2_encoder(**TINY).encoder.state_dict().items()}
    state["sam_mask_decoder.iou_token.weight"] = torch.zeros(4, 16)  # other SAM 2 modules: unused
    cases = [
        ({k: v for k, v in state.items() if k != "image_encoder.trunk.pos_embed"}, "missing.*trunk.pos_embed"),
        ({**state, "decoder.weight": torch.zeros(1)}, "unexpected.*'decoder.weight'"),
        ({**state, "image_encoder.trunk.blocks.9.norm1.weight": torch.ones(8)}, "unexpected.*blocks.9.norm1"),
        ({**state, "image_encoder.neck.convs.0.conv.bias": torch.zeros(17)}, r"mismatched.*convs.0.conv.bias"),
    ]
    for bad, message in cases:
        torch.save({"model": bad}, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=message):
            build_sam2_encoder(**TINY, weights=str(tmp_path / "bad.pt"))
    torch.save({"model": state}, tmp_path / "good.pt")
    loaded = build_sam2_encoder(**TINY, weights="good.pt", cache_dir=str(tmp_path))
    for key, value in loaded.encoder.state_dict().items():
        assert torch.equal(value, state[f"image_encoder.{key}"]), key
    with pytest.raises(WeightsNotFoundError, match="segment_anything_2/092824/sam2.1_hiera_tiny.pt"):
        build_sam2_encoder(**TINY, weights="sam2.1_hiera_tiny.pt")


@pytest.mark.parametrize(("options", "message"), [
    ({"image_size": 100}, "multiple of 32"),
    ({"image_size": 8192}, "image_size must be an integer in"),
    ({"variant": "sam2.1_hiera_t"}, "unknown SAM 2 variant"),
    ({"stages": [1, 1, 2]}, "stages must have 4 items"),
    ({"global_att_blocks": [2]}, "block 2 pools its queries"),
    ({"window_spec": [3, 2, 2, 1]}, "window_spec.0. = 3 must divide"),
    ({"d_model": 15}, "d_model must be even"),
])
def test_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        create_model("lmseg_tiny", spatial_encoder={**TINY_SECTION, **options})


def test_output_is_the_stride_16_level_at_any_input_size():
    encoder = build_sam2_encoder(**TINY)
    assert encoder.out_channels == 16
    assert encoder(torch.rand(2, 3, 50, 70)).shape == (2, 16, 8, 8)  # 128 px / 16


@pytest.mark.filterwarnings("ignore::lmseg.prompts.MissingBankWarning")
def test_tiny_lmseg_with_sam2_saves_reloads_and_trains(tmp_path):
    from encoder_training import one_training_step

    torch.manual_seed(0)
    model = create_model("lmseg_tiny", spatial_encoder=TINY_SECTION)
    save_model(model, tmp_path / "m.safetensors")
    reloaded = load_model(tmp_path / "m.safetensors")
    images, text = torch.rand(1, 3, 90, 100), torch.randn(3, 4, model.embed_dim)
    torch.testing.assert_close(reloaded(images, text), model(images, text))
    one_training_step(model, tmp_path, {"spatial_encoder": TINY_SECTION})


def test_docs_snippet_builds_a_tiny_lmseg_with_sam2():
    """The SAM 2 block of docs/blocks/encoders.md (skipped by the docs test, which runs without
    the optional package) runs here."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "blocks" / "encoders.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", page, re.MULTILINE | re.DOTALL) if '"type": "sam2"' in b]
    assert len(blocks) == 1
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "encoders.md", "exec"), namespace)
    assert namespace["model"].spatial_encoder(torch.rand(1, 3, 96, 96)).shape == (1, 16, 8, 8)
