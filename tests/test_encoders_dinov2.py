"""DINOv2 as the spatial encoder: parity with timm, the official file layout, strict loading,
option checks, and a tiny LMSeg built and trained with it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from lmseg import create_model, load_model, save_model
from lmseg.encoders.dinov2 import DINOV2_WEIGHTS, build_dinov2_encoder
from lmseg.registry import RegistryError
from lmseg.weights import WeightsNotFoundError

TINY = dict(image_size=56, embed_dim=32, depth=2, num_heads=2)  # a 4×4 grid
TINY_SECTION = {"type": "dinov2", "variant": "vits14", "image_size": 112, "embed_dim": 32, "depth": 2,
                "num_heads": 2}


def _randomise(module: torch.nn.Module) -> None:
    # timm starts layer scales at 1e-5 and tokens near zero: make every weight matter.
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


@pytest.mark.parametrize("variant", ["vits14", "vits14_reg4"])
def test_dense_tokens_equal_timm_forward_features(variant):
    encoder = build_dinov2_encoder(variant=variant, **TINY)
    _randomise(encoder)
    images = torch.rand(2, 3, 40, 70)
    out = encoder(images)
    assert out.shape == (2, 32, 4, 4)
    # timm's own path on DINOv2's inputs: a 56 px square, ImageNet statistics.
    x = F.interpolate(images, size=(56, 56), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    tokens = encoder.model.forward_features(x)
    prefix = 1 + (4 if variant.endswith("reg4") else 0)  # CLS (+ registers) come first
    assert tokens.shape[1] == prefix + 16
    expected = rearrange(tokens[:, prefix:], "b (h w) c -> b c h w", h=4)
    torch.testing.assert_close(out, expected)


# -- the official layout ----------------------------------------------------------------------
def _official_state(width: int, depth: int, grid: int, registers: int, swiglu: bool) -> dict[str, torch.Tensor]:
    """A random state dict with facebookresearch/dinov2's key names and shapes."""
    g = torch.Generator().manual_seed(1)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    state = {
        "cls_token": r(1, 1, width), "pos_embed": r(1, 1 + grid * grid, width), "mask_token": r(1, width),
        "patch_embed.proj.weight": r(width, 3, 14, 14), "patch_embed.proj.bias": r(width),
        "norm.weight": 1 + r(width), "norm.bias": r(width),
    }
    if registers:
        state["register_tokens"] = r(1, registers, width)
    hidden = 64 if swiglu else 4 * width
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({
            b + "norm1.weight": 1 + r(width), b + "norm1.bias": r(width),
            b + "attn.qkv.weight": r(3 * width, width), b + "attn.qkv.bias": r(3 * width),
            b + "attn.proj.weight": r(width, width), b + "attn.proj.bias": r(width),
            b + "ls1.gamma": r(width), b + "norm2.weight": 1 + r(width), b + "norm2.bias": r(width),
            b + "ls2.gamma": r(width),
        })
        if swiglu:  # DINOv2's SwiGLUFFNFused (ViT-g)
            state.update({b + "mlp.w12.weight": r(2 * hidden, width), b + "mlp.w12.bias": r(2 * hidden),
                          b + "mlp.w3.weight": r(width, hidden), b + "mlp.w3.bias": r(width)})
        else:
            state.update({b + "mlp.fc1.weight": r(hidden, width), b + "mlp.fc1.bias": r(hidden),
                          b + "mlp.fc2.weight": r(width, hidden), b + "mlp.fc2.bias": r(width)})
    return state


def _dinov2_reference(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int, depth: int) -> torch.Tensor:
    """DINOv2's forward_features written from its definition, on the official tensors:
    x_norm_patchtokens as (B, C, h, w)."""
    width = state["cls_token"].shape[-1]
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=14)
    h = tokens.shape[-2]
    tokens = tokens.flatten(2).transpose(1, 2)
    tokens = torch.cat([state["cls_token"].expand(len(x), -1, -1), tokens], 1) + state["pos_embed"]
    if "register_tokens" in state:  # inserted after the CLS token, after the position embedding
        regs = state["register_tokens"].expand(len(x), -1, -1)
        tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], 1)
    for i in range(depth):
        p = {k[len(f"blocks.{i}."):]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        y = F.layer_norm(tokens, (width,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        q, k, v = (F.linear(y, p["attn.qkv.weight"], p["attn.qkv.bias"])
                   .reshape(len(x), -1, 3, heads, width // heads).permute(2, 0, 3, 1, 4))
        attn = (q @ k.transpose(-2, -1) / math.sqrt(width // heads)).softmax(-1)
        y = F.linear((attn @ v).transpose(1, 2).reshape(len(x), -1, width), p["attn.proj.weight"], p["attn.proj.bias"])
        tokens = tokens + p["ls1.gamma"] * y
        y = F.layer_norm(tokens, (width,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        if "mlp.w12.weight" in p:
            a, b = F.linear(y, p["mlp.w12.weight"], p["mlp.w12.bias"]).chunk(2, dim=-1)
            y = F.linear(F.silu(a) * b, p["mlp.w3.weight"], p["mlp.w3.bias"])
        else:
            y = F.linear(F.gelu(F.linear(y, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"], p["mlp.fc2.bias"])
        tokens = tokens + p["ls2.gamma"] * y
    tokens = F.layer_norm(tokens, (width,), state["norm.weight"], state["norm.bias"], eps=1e-6)
    prefix = 1 + (state["register_tokens"].shape[1] if "register_tokens" in state else 0)
    return rearrange(tokens[:, prefix:], "b (h w) c -> b c h w", h=h)


@pytest.mark.parametrize(("variant", "registers", "swiglu", "width"),
                         [("vits14", 0, False, 32), ("vits14_reg4", 4, False, 32), ("vitg14", 0, True, 24)])
def test_official_layout_file_matches_dinov2_definition(tmp_path, variant, registers, swiglu, width):
    state = _official_state(width, 2, 4, registers, swiglu)
    path = tmp_path / DINOV2_WEIGHTS[variant].file
    torch.save(state, path)
    encoder = build_dinov2_encoder(variant=variant, image_size=56, embed_dim=width, depth=2, num_heads=2,
                                   weights=str(path))
    images = torch.rand(2, 3, 56, 56)
    torch.testing.assert_close(encoder(images), _dinov2_reference(state, encoder.preprocess(images), 2, 2),
                               rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_position_embedding_of_the_file_is_resized_to_the_input_size(tmp_path):
    state = _official_state(32, 2, 37, 0, False)  # DINOv2's 518 px grid
    torch.save(state, tmp_path / "w.pth")
    encoder = build_dinov2_encoder(variant="vits14", **TINY, weights=str(tmp_path / "w.pth"))
    pos = encoder.model.pos_embed
    assert pos.shape == (1, 1 + 16, 32)
    torch.testing.assert_close(pos[:, :1], state["pos_embed"][:, :1])  # the CLS position is kept
    grid = rearrange(state["pos_embed"][:, 1:], "1 (h w) c -> 1 c h w", h=37)
    resized = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(pos[:, 1:], rearrange(resized, "1 c h w -> 1 (h w) c"))


def test_loading_is_strict_and_names_the_keys(tmp_path):
    good = _official_state(32, 2, 4, 0, False)
    cases = [
        ({k: v for k, v in good.items() if k != "blocks.1.ls2.gamma"}, "missing.*blocks.1.ls2.gamma"),
        ({**good, "blocks.2.norm1.weight": torch.ones(32)}, "unexpected.*blocks.2.norm1.weight"),
        ({**good, "norm.bias": torch.zeros(33)}, r"mismatched.*norm.bias: file \(33,\)"),
    ]
    for state, message in cases:
        torch.save(state, tmp_path / "w.pth")
        with pytest.raises(ValueError, match=message):
            build_dinov2_encoder(variant="vits14", **TINY, weights=str(tmp_path / "w.pth"))


def test_weights_by_file_name_in_cache_dir_and_a_clear_error_when_absent(tmp_path):
    name = DINOV2_WEIGHTS["vits14"].file
    torch.save(_official_state(32, 2, 4, 0, False), tmp_path / name)
    encoder = build_dinov2_encoder(variant="vits14", **TINY, weights=name, cache_dir=str(tmp_path))
    assert encoder.model.blocks[1].ls2.gamma.abs().sum() > 1  # the file's values, not 1e-5
    with pytest.raises(WeightsNotFoundError, match="dl.fbaipublicfiles.com/dinov2/dinov2_vits14/"):
        build_dinov2_encoder(variant="vits14", **TINY, weights=name)


@pytest.mark.parametrize(("options", "message"), [
    ({"image_size": 100}, "multiple of 14"),
    ({"image_size": 14 * 1000}, "image_size must be an integer in"),
    ({"variant": "vit_small_patch14_dinov2"}, "unknown DINOv2 variant"),
    ({"depth": 100}, "depth must be an integer in"),
])
def test_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        create_model("lmseg_tiny", spatial_encoder={**TINY_SECTION, **options})
    with pytest.raises(RegistryError, match="pretrained"):
        create_model("lmseg_tiny", spatial_encoder={**TINY_SECTION, "pretrained": True})


@pytest.mark.filterwarnings("ignore::lmseg.prompts.MissingBankWarning")
def test_tiny_lmseg_with_dinov2_saves_reloads_and_trains(tmp_path):
    from encoder_training import one_training_step

    torch.manual_seed(0)
    model = create_model("lmseg_tiny", spatial_encoder=TINY_SECTION)
    assert model.spatial_encoder.out_channels == 32 and model.spatial_adapter.proj.in_channels == 32
    save_model(model, tmp_path / "m.safetensors")
    reloaded = load_model(tmp_path / "m.safetensors")
    images, text = torch.rand(1, 3, 90, 100), torch.randn(3, 4, model.embed_dim)
    torch.testing.assert_close(reloaded(images, text), model(images, text))
    one_training_step(model, tmp_path, {"spatial_encoder": TINY_SECTION})
