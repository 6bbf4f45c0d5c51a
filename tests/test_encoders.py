"""Dense CLIP and SAM encoders: parity with open_clip and segment_anything on shared weights."""

from functools import partial

import pytest
import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from lmseg.encoders import CLIPEncoder, build_sam_encoder, load_clip_model
from lmseg.factory import get_config
from lmseg.weights import WeightsNotFoundError


@pytest.fixture(scope="module")
def clip() -> CLIPEncoder:
    cfg = get_config("lmseg_tiny").vision_language_encoder
    torch.manual_seed(0)
    model = load_clip_model(cfg["model_name"], model_cfg=cfg["model_cfg"])
    return CLIPEncoder(model=model, image_size=cfg["image_size"], guidance_layers=cfg["guidance_layers"])


# OpenAI CLIP's normalisation constants (RGB in [0, 1]) and SAM's (pixel values / 255).
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SAM_MEAN = tuple(v / 255 for v in (123.675, 116.28, 103.53))
SAM_STD = tuple(v / 255 for v in (58.395, 57.12, 57.375))


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_preprocess_resizes_bilinearly_and_normalises_with_openai_constants(clip):
    images = torch.rand(2, 3, 50, 70)
    resized = torch.nn.functional.interpolate(images, size=(96, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(clip.preprocess(images), normalise(resized, CLIP_MEAN, CLIP_STD))


def test_pooled_path_equals_open_clip_encode_image(clip):
    images = torch.rand(2, 3, 96, 96)
    ours = clip.encode_image(images)
    upstream = clip.model.encode_image(normalise(images, CLIP_MEAN, CLIP_STD))
    torch.testing.assert_close(ours, upstream, rtol=1e-5, atol=1e-5)


def openai_text_features(model, tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """OpenAI CLIP's text tower written out from its weights: causal pre-LN transformer with
    QuickGELU MLPs, ln_final, the end-of-text token's feature (the highest token id) times
    text_projection. Unnormalised."""
    x = model.token_embedding.weight[tokens] + model.positional_embedding
    n = x.shape[1]
    causal = torch.full((n, n), float("-inf")).triu(1)
    for block in model.transformer.resblocks:
        y = block.ln_1(x)
        q, k, v = torch.nn.functional.linear(y, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, -1)
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
        attn = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + causal).softmax(-1)
        x = x + block.attn.out_proj((attn @ v).transpose(1, 2).flatten(2))
        h = block.mlp.c_fc(block.ln_2(x))
        x = x + block.mlp.c_proj(h * torch.sigmoid(1.702 * h))  # QuickGELU
    x = model.ln_final(x)
    return x[torch.arange(len(tokens)), tokens.argmax(dim=-1)] @ model.text_projection


def test_text_features_follow_openai_clip(clip):
    tokens = clip.tokenize(["a photo of a cat", "A photo of a wall in the scene"])
    assert tokens.shape == (2, 77)
    # CLIP's BPE: start 49406, "a" 320, "photo" 1125, "of" 539, "cat" 2368, end 49407, then zeros
    assert tokens[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    heads = get_config("lmseg_tiny").vision_language_encoder["model_cfg"]["text_cfg"]["heads"]
    with torch.no_grad():
        expected = openai_text_features(clip.model, tokens, heads)
        torch.testing.assert_close(clip.encode_text(tokens), expected, rtol=1e-4, atol=1e-5)


def test_guidance_taps_equal_open_clip_intermediates(clip):
    images = torch.rand(1, 3, 96, 96)
    feats = clip(images)
    upstream = clip.model.visual.forward_intermediates(
        clip.preprocess(images), indices=[0, 1], intermediates_only=True
    )["image_intermediates"]
    assert len(feats.guidance) == 2
    for ours, theirs in zip(feats.guidance, upstream, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_dense_last_block_follows_catseg(clip):
    """Dense mode: skip attention, v -> out_proj, CLS residual to every token, then the MLP."""
    images = torch.rand(1, 3, 96, 96)
    feats = clip(images)
    visual = clip.model.visual
    x = visual.ln_pre(
        torch.cat([visual.class_embedding.expand(1, 1, -1),
                   visual.conv1(clip.preprocess(images)).flatten(2).transpose(1, 2)], 1)
        + visual.positional_embedding
    )
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    last = visual.transformer.resblocks[-1]
    width = x.shape[-1]
    # With the attention forced to the identity (each token attends only to itself) a standard
    # block gives x + out_proj(v); the dense block replaces the residual x by the CLS token.
    v = torch.nn.functional.linear(last.ln_1(x), last.attn.in_proj_weight[2 * width:],
                                   last.attn.in_proj_bias[2 * width:])
    y = last.attn.out_proj(v) + x[:, :1]
    y = y + last.mlp(last.ln_2(y))
    expected = (visual.ln_post(y[:, 1:]) @ visual.proj).transpose(1, 2).reshape(1, -1, 12, 12)
    torch.testing.assert_close(feats.embedding, expected, rtol=1e-5, atol=1e-5)


def test_positional_embedding_resized_bicubically_for_other_grids(clip):
    wide = CLIPEncoder(model=clip.model, image_size=(96, 160), guidance_layers=(0, 1))
    feats = wide(torch.rand(1, 3, 50, 70))
    assert feats.embedding.shape == (1, 32, 12, 20)
    pos = clip.model.visual.positional_embedding  # (1 + 12·12, width)
    assert wide.positional_embedding((12, 12)) is pos
    # CAT-Seg's resized_pos_embed: the class position kept, the 12x12 patch grid resized
    # bicubically (corners not aligned) to the new grid
    grid = pos[1:].reshape(1, 12, 12, -1).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(grid, size=(12, 20), mode="bicubic", align_corners=False)
    expected = torch.cat([pos[:1], resized[0].flatten(1).T])
    torch.testing.assert_close(wide.positional_embedding((12, 20)), expected)


def test_unknown_pretrained_tag_is_a_clear_error():
    with pytest.raises(WeightsNotFoundError, match="neither a file nor an open_clip pretrained tag"):
        load_clip_model("ViT-B-16", "no-such-tag")


def test_offline_pretrained_download_names_what_to_fetch(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="download the weights from"):
        load_clip_model("ViT-B-16", "openai", cache_dir=str(tmp_path))


def test_clip_weights_load_from_a_file(clip, tmp_path):
    path = tmp_path / "clip.pt"
    torch.save(clip.model.state_dict(), path)
    cfg = dict(get_config("lmseg_tiny").vision_language_encoder["model_cfg"])
    reloaded = load_clip_model("tiny", str(path), model_cfg=cfg)
    for key, value in clip.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


SAM_TINY = dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4,
                patch_size=8, out_chans=32)


def _official_format_sam(image_size: int) -> Sam:
    """A tiny full SAM (encoder, prompt encoder, mask decoder) as build_sam makes it."""
    encoder = ImageEncoderViT(
        img_size=image_size, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
        global_attn_indexes=(1,), window_size=4, out_chans=32,
    )
    for p in encoder.parameters():  # rel-pos tables start at zero: make them matter
        torch.nn.init.normal_(p, std=0.05)
    grid = image_size // 8
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(grid, grid),
                                     input_image_size=(image_size, image_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(transformer_dim=32, transformer=TwoWayTransformer(
            depth=1, embedding_dim=32, mlp_dim=64, num_heads=2), num_multimask_outputs=3),
    )


def test_sam_encoder_equals_segment_anything(tmp_path):
    sam = _official_format_sam(64)
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(sam.state_dict(), path)
    ours = build_sam_encoder("vit_b", image_size=64, checkpoint=str(path), **SAM_TINY)
    images = torch.rand(2, 3, 64, 64)
    expected = sam.image_encoder(normalise(images, SAM_MEAN, SAM_STD))
    torch.testing.assert_close(ours(images), expected)
    assert ours(images).shape == (2, 32, 8, 8)
    assert not any(p.requires_grad for p in ours.parameters())


def test_sam_smaller_input_resizes_position_tables(tmp_path):
    path = tmp_path / "sam.pth"
    torch.save(_official_format_sam(64).state_dict(), path)
    small = build_sam_encoder("vit_b", image_size=32, checkpoint=str(path), **SAM_TINY)
    assert small.encoder.pos_embed.shape == (1, 4, 4, 32)
    assert small(torch.rand(1, 3, 100, 80)).shape == (1, 32, 4, 4)


def test_sam_checkpoint_from_cache_dir_and_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSEG_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="sam_vit_b_01ec64.pth"):
        build_sam_encoder("vit_b", image_size=64, checkpoint="sam_vit_b_01ec64.pth", **SAM_TINY)
    (tmp_path / "sam").mkdir()
    state = _official_format_sam(64).state_dict()
    torch.save(state, tmp_path / "sam" / "sam_vit_b_01ec64.pth")
    build_sam_encoder("vit_b", image_size=64, checkpoint="sam_vit_b_01ec64.pth", **SAM_TINY)
    del state["image_encoder.neck.0.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing \['neck.0.weight'\]"):
        build_sam_encoder("vit_b", image_size=64, checkpoint=str(tmp_path / "broken.pth"), **SAM_TINY)


def test_sam_encodes_image_by_image_the_same_as_batched():
    from lmseg.encoders.sam import build_sam_encoder

    torch.manual_seed(0)
    encoder = build_sam_encoder("vit_b", image_size=64, embed_dim=32, depth=2, num_heads=2,
                                global_attn_indexes=(1,), window_size=2).eval()
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        encoder.image_chunk = 3
        batched = encoder(images)
        encoder.image_chunk = None  # CPU default: one image at a time
        single = encoder(images)
    torch.testing.assert_close(single, batched, rtol=1e-5, atol=1e-5)
    assert single.shape == (3, 256, 4, 4)
