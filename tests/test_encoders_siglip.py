"""Dense SigLIP: parity with open_clip and timm where the paths coincide, the dense MAP head,
strict loading, option checks, the tokenizer's offline rule, and a tiny LMSeg trained with it."""

from __future__ import annotations

import importlib.util

import open_clip
import pytest
import timm
import torch
from einops import rearrange

from lmseg import create_model, load_model, save_model
from lmseg.encoders.siglip import SigLIPEncoder, build_siglip_encoder, load_tokenizer
from lmseg.weights import WeightsNotFoundError

TINY = {
    "model_name": "ViT-B-16-SigLIP", "image_size": 96, "guidance_layers": [0, 1], "tokenizer_name": "ViT-B-16",
    "vision_cfg": {"width": 32, "depth": 3, "num_heads": 2, "patch_size": 8, "image_size": 64},
    "text_cfg": {"width": 32, "heads": 2, "layers": 2, "vocab_size": 49408, "context_length": 77},
}


@pytest.fixture(scope="module")
def siglip() -> SigLIPEncoder:
    torch.manual_seed(0)
    encoder = build_siglip_encoder(**TINY)
    with torch.no_grad():  # the MAP head's latent starts small: make every weight matter
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return encoder


def test_pooled_path_equals_open_clip_encode_image(siglip):
    images = torch.rand(2, 3, 64, 64)  # the trunk's own input size
    torch.testing.assert_close(siglip.encode_image(images), siglip.model.encode_image(siglip.preprocess(images, (64, 64))))


def test_text_equals_open_clip_encode_text(siglip):
    texts = ["a photo of a cat", "A photo of a wall in the scene"]
    tokens = siglip.tokenize(texts)
    assert torch.equal(tokens, open_clip.get_tokenizer("ViT-B-16")(texts, context_length=77))
    torch.testing.assert_close(siglip.encode_text(tokens), siglip.model.encode_text(tokens))
    assert siglip.encode_text(tokens).shape == (2, 32)


def test_dense_embedding_is_the_map_head_on_each_token_alone(siglip):
    """With one key the head's attention weight is 1: timm's own head on a one-token sequence is
    the dense embedding of that token."""
    native = SigLIPEncoder(model=siglip.model, image_size=64, guidance_layers=(0, 1), tokenizer_name="ViT-B-16")
    images = torch.rand(1, 3, 64, 64)
    dense = native(images).embedding
    assert dense.shape == (1, 32, 8, 8)
    tokens = siglip.trunk.forward_features(native.preprocess(images))  # timm's path, (1, 64, 32)
    expected = torch.stack([siglip.trunk.forward_head(tokens[:, t : t + 1]) for t in range(64)], dim=-1)
    torch.testing.assert_close(dense, rearrange(expected, "1 d (h w) -> 1 d h w", h=8), rtol=1e-5, atol=1e-5)
    # ... and it is not the pooled embedding broadcast (the head does attend over tokens).
    assert not torch.allclose(dense, siglip.encode_image(images)[..., None, None].expand_as(dense), atol=1e-3)


def test_other_input_sizes_follow_timm_dynamic_img_size(siglip):
    """At 96 px (the trunk is built for 64) taps and dense embedding equal timm's own
    resampling path, a model of the same weights with dynamic_img_size."""
    dynamic = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, num_classes=0, global_pool="map",
                                embed_dim=32, depth=3, num_heads=2, patch_size=8, img_size=64, dynamic_img_size=True)
    dynamic.load_state_dict(siglip.trunk.state_dict())
    images = torch.rand(2, 3, 96, 96)
    features = siglip(images)
    x = siglip.preprocess(images)
    taps = dynamic.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert len(features.guidance) == 2
    for ours, theirs in zip(features.guidance, taps, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    tokens = dynamic.forward_features(x)
    torch.testing.assert_close(
        features.embedding, rearrange(siglip.dense_head(tokens), "b (h w) d -> b d h w", h=12), rtol=1e-5, atol=1e-5
    )


def test_attention_weights_name_the_packed_rows(siglip):
    found = {a.name: a for a in siglip.attention_weights()}
    params = dict(siglip.named_parameters())
    assert all(params[name] is a.weight for name, a in found.items())
    qkv = found["model.visual.trunk.blocks.2.attn.qkv.weight"]
    assert qkv.rows == {"q": slice(0, 32), "k": slice(32, 64), "v": slice(64, 96)} and not qkv.unused
    kv = found["model.visual.trunk.attn_pool.kv.weight"]
    assert kv.rows == {"k": slice(0, 32), "v": slice(32, 64)} and kv.unused == {"k"}
    assert found["model.visual.trunk.attn_pool.q.weight"].unused == {"q"}
    assert "model.text.transformer.resblocks.1.attn.in_proj_weight" in found
    assert len(found) == 3 + 2 + 2


def test_weights_file_loads_strictly(siglip, tmp_path):
    state = siglip.model.state_dict()
    torch.save(state, tmp_path / "open_clip_model.pt")
    loaded = build_siglip_encoder(**TINY, weights="open_clip_model.pt", cache_dir=str(tmp_path))
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    torch.save({k: v for k, v in state.items() if k != "visual.trunk.attn_pool.latent"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="visual.trunk.attn_pool.latent"):
        build_siglip_encoder(**TINY, weights=str(tmp_path / "bad.pt"))
    with pytest.raises(WeightsNotFoundError, match="huggingface.co/timm/ViT-B-16-SigLIP/"):
        build_siglip_encoder(**TINY, weights="open_clip_model.safetensors")


@pytest.mark.parametrize(("options", "message"), [
    ({"model_name": "ViT-B-16"}, "not one of open_clip's built-in SigLIP models"),
    ({"model_name": "hf-hub:timm/ViT-B-16-SigLIP"}, "not one of open_clip's built-in SigLIP models"),
    ({"tokenizer_name": "local-dir:/tmp"}, "tokenizer_name 'local-dir:/tmp' is not one"),
    ({"vision_cfg": {"width": 32, "layers": 2}}, r"unknown size\(s\) \['layers'\]"),
    ({"text_cfg": {"width": 10_000}}, "text_cfg.width must be an integer in"),
    ({"image_size": 100}, "multiple of the patch size 8"),
    ({"guidance_layers": [0, 3]}, r"guidance layers \(0, 3\) must lie in \[0, 2\]"),
])
def test_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        create_model("lmseg_tiny", vision_language_encoder={"type": "siglip", **TINY, **options})


def test_released_tokenizer_is_read_from_the_local_cache_only(tmp_path):
    if importlib.util.find_spec("transformers") is None:
        with pytest.raises(ImportError, match="'timm/ViT-B-16-SigLIP': install transformers"):
            load_tokenizer("ViT-B-16-SigLIP", 64, str(tmp_path))
    else:
        with pytest.raises(WeightsNotFoundError, match="'timm/ViT-B-16-SigLIP' are not in the Hugging Face cache"):
            load_tokenizer("ViT-B-16-SigLIP", 64, str(tmp_path))


def test_released_sizes_build_on_the_meta_device():
    with torch.device("meta"):
        encoder = build_siglip_encoder()
    assert (encoder.embed_dim, encoder.width, encoder.grid_size, encoder.context_length) == (768, 768, (24, 24), 64)
    assert encoder.pixel_mean == (0.5, 0.5, 0.5)


@pytest.mark.filterwarnings("ignore::lmseg.prompts.MissingBankWarning")
def test_tiny_lmseg_with_siglip_saves_reloads_and_trains_q_and_v(tmp_path):
    from encoder_training import one_training_step

    section = {"type": "siglip", **TINY}
    torch.manual_seed(0)
    model = create_model("lmseg_tiny", vision_language_encoder=section)
    assert model.embed_dim == 32 and model.vision_language_encoder.grid_size == (12, 12)
    save_model(model, tmp_path / "m.safetensors")
    reloaded = load_model(tmp_path / "m.safetensors")
    images, text = torch.rand(1, 3, 90, 100), torch.randn(3, 4, 32)
    torch.testing.assert_close(reloaded(images, text), model(images, text))

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = one_training_step(model, tmp_path, {"vision_language_encoder": section})  # "qv" fine-tuning
    after = dict(trainer.model.named_parameters())
    trunk = "vision_language_encoder.model.visual.trunk"
    for i in range(3):
        name = f"{trunk}.blocks.{i}.attn.qkv.weight"
        old, new = before[name], after[name]
        assert torch.equal(new[32:64], old[32:64]), f"k rows changed: {name}"
        assert not torch.equal(new[:32], old[:32]) and not torch.equal(new[64:], old[64:]), name
    kv = after[f"{trunk}.attn_pool.kv.weight"]
    assert torch.equal(kv[:32], before[f"{trunk}.attn_pool.kv.weight"][:32])  # unused key rows
    assert not torch.equal(kv[32:], before[f"{trunk}.attn_pool.kv.weight"][32:])
    assert torch.equal(after[f"{trunk}.attn_pool.q.weight"], before[f"{trunk}.attn_pool.q.weight"])
    assert torch.equal(after[f"{trunk}.attn_pool.proj.weight"], before[f"{trunk}.attn_pool.proj.weight"])
