"""The composed model: shapes, determinism, class filtering, gradients, CAT-Seg equivalence.

The equivalence tests recompose the whole forward pass from the blocks' parameters with
CAT-Seg's formulation (cosine costs, guidance projections, the plain Swin / linear-attention /
decoder formulations of ``test_plain_paths.py``, CAT-Seg's class filtering), independently of
:meth:`lmseg.model.LMSeg.decode`.
"""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from test_plain_paths import plain_class_aggregation, plain_decoder, plain_spatial_aggregation

import lmseg
from lmseg.cost_volume import cosine_cost, select_classes
from lmseg.factory import get_config
from lmseg.fusion import FUSION_MODES
from lmseg.registry import RegistryError
from lmseg.runtime import RuntimeOptions

EXACT = RuntimeOptions(top_k=None)


@pytest.fixture(scope="module")
def model() -> lmseg.LMSeg:
    torch.manual_seed(0)
    return lmseg.create_model("lmseg_tiny")


@pytest.mark.parametrize("num_classes", [1, 5, 23])
@pytest.mark.parametrize("size", [(96, 96), (70, 130)])
def test_logit_shapes_for_any_vocabulary_and_input(model, num_classes, size):
    text = torch.randn(num_classes, model.num_prompts, model.embed_dim)
    with torch.no_grad():
        logits = model(torch.rand(2, 3, *size), text, EXACT)
    assert logits.shape == (2, num_classes, 48, 48)  # 4 x the 12x12 feature grid
    assert torch.isfinite(logits).all()


def test_per_image_text_embeddings(model):
    images = torch.rand(2, 3, 96, 96)
    text = torch.randn(2, 4, model.num_prompts, model.embed_dim)
    with torch.no_grad():
        both = model(images, text)
        first = model(images[:1], text[0])
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-5)


def test_eval_output_does_not_depend_on_earlier_calls(model):
    # Cached masks, window orders and chunk buffers must not leak between calls: the same input
    # gives bit-identical logits after calls with other vocabularies, batch sizes and modes.
    images, text = torch.rand(1, 3, 96, 96), torch.randn(6, 4, 32)
    with torch.no_grad():
        first = model(images, text)
        model(torch.rand(3, 3, 70, 130), torch.randn(2, 4, 32))
        model.train()
        model(torch.rand(2, 3, 96, 96), torch.randn(11, 4, 32))
        model.eval()
        again = model(images, text)
    assert torch.equal(again, first)


def test_class_filtering_keeps_the_highest_similarity_classes():
    torch.manual_seed(0)
    m = lmseg.create_model("lmseg_tiny")
    images, text = torch.rand(1, 3, 96, 96), torch.randn(9, 4, 32)
    with torch.no_grad():
        features = m.encode_image(images)
        cost = cosine_cost(features.embedding, text)
        best = cost.amax(dim=(1, 3, 4))[0]
        kept = select_classes(cost, 3)[0]
        logits = m.decode(features, text, RuntimeOptions(top_k=3))
    assert set(kept.tolist()) == set(best.topk(3).indices.tolist())
    dropped = [k for k in range(9) if k not in kept.tolist()]
    assert (logits[0, dropped] == -100.0).all()  # CAT-Seg's logit for filtered classes
    assert (logits[0, kept] > -50).all()
    # The kept classes get exactly what the model computes on that sub-vocabulary alone.
    with torch.no_grad():
        sub = m.decode(features, text[kept], EXACT)
    torch.testing.assert_close(logits[0, kept], sub[0], rtol=1e-5, atol=1e-5)


def test_model_is_equivariant_to_class_order(model):
    images, text = torch.rand(1, 3, 96, 96), torch.randn(7, 4, 32)
    perm = torch.randperm(7)
    with torch.no_grad():
        logits = model(images, text)
        permuted = model(images, text[perm])
    torch.testing.assert_close(permuted, logits[:, perm], rtol=1e-4, atol=1e-4)


def test_chunk_sizes_do_not_change_the_output():
    torch.manual_seed(0)
    m = lmseg.create_model("lmseg_tiny")
    images, text = torch.rand(1, 3, 96, 96), torch.randn(11, 4, 32)
    with torch.no_grad():
        whole = m(images, text, EXACT.replace(class_chunk=64, token_chunk=1 << 20))
        chunked = m(images, text, EXACT.replace(class_chunk=3, token_chunk=100))
    # Spatial and class aggregation are bit-exact under chunking; the decoder's channels-last
    # GroupNorm sums in a batch-size-dependent order (rounding only).
    torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=1e-5)


def test_gradients_reach_exactly_the_trainable_parameters():
    torch.manual_seed(0)
    m = lmseg.create_model("lmseg_tiny").train()
    logits = m(torch.rand(2, 3, 96, 96), torch.randn(5, 4, 32), EXACT)
    logits.square().mean().backward()
    clip = "vision_language_encoder.model."
    for name, p in m.named_parameters():
        if name.startswith("spatial_encoder."):
            assert not p.requires_grad and p.grad is None, name
        elif "padding_" in name:
            continue  # pad_len 16 > 5 classes: used, but only via the attention
        elif name in (clip + "logit_scale",) or name.startswith(
            tuple(clip + part for part in ("transformer.", "token_embedding", "positional_embedding",
                                           "ln_final", "text_projection"))
        ):
            assert p.grad is None, f"text tower {name} got a gradient from the image path"
        elif ".resblocks.2.attn." in name and name.startswith(clip + "visual."):
            # dense last block: attention skipped, only the value rows of in_proj are used
            continue
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def test_cosine_cost_is_the_normalised_dot_product():
    image = torch.randn(2, 8, 3, 5) * torch.rand(2, 1, 3, 5) * 10  # unnormalised, varying norms
    text = torch.randn(4, 3, 8) * 7
    cost = cosine_cost(image, text)
    assert cost.shape == (2, 3, 4, 3, 5)  # (B, P, K, h, w)
    for b, p, k, i, j in [(0, 0, 0, 0, 0), (1, 2, 3, 2, 4), (0, 1, 2, 1, 3), (1, 0, 1, 2, 0)]:
        f, t = image[b, :, i, j], text[k, p]
        expected = (f @ t) / (f.norm() * t.norm())
        torch.testing.assert_close(cost[b, p, k, i, j], expected, rtol=1e-5, atol=1e-6)
    per_image = cosine_cost(image, text.expand(2, -1, -1, -1))  # (B, K, P, D) text
    torch.testing.assert_close(per_image, cost)


def catseg_forward(
    model: lmseg.LMSeg, images: torch.Tensor, text: torch.Tensor, top_k: int | None
) -> torch.Tensor:
    """CAT-Seg's forward (with LMSeg's fusion when the model has it), from the blocks' weights;
    ``top_k`` is CAT-Seg's ``pad_len`` filtering (None: none)."""
    clip = model.vision_language_encoder(images)  # the encoders are checked against open_clip / SAM elsewhere
    feats = clip.embedding
    if model.fusion is not None:
        sam = model.spatial_adapter(model.spatial_encoder(images), tuple(feats.shape[-2:]))
        w = model.fusion.weight(clip.embedding, sam)
        feats = w * clip.embedding + (1 - w) * sam  # F = w F_c + (1 - w) F_s replaces F_c
    b, num_classes = feats.shape[0], text.shape[0]
    text = (text / text.norm(dim=-1, keepdim=True)).expand(b, -1, -1, -1)  # (B, K, P, D)
    image = feats / feats.norm(dim=1, keepdim=True)
    corr = torch.einsum("bchw,btpc->bpthw", image, text)
    classes = None
    if top_k is not None and num_classes > top_k:  # CAT-Seg keeps pad_len classes
        best = corr.permute(0, 2, 1, 3, 4).flatten(-3).max(dim=-1)[0]
        classes = best.topk(top_k, dim=-1)[1]
        text = torch.gather(text, 1, classes[..., None, None].expand(-1, -1, *text.shape[-2:]))
        corr = torch.einsum("bchw,btpc->bpthw", image, text)
    embed = model.cost_volume.embed
    x = rearrange(embed(rearrange(corr, "b p t h w -> (b t) p h w")), "(b t) c h w -> b t h w c", b=b)
    aggregator = model.aggregator
    appearance = rearrange(aggregator.appearance_projection(feats), "b c h w -> b h w c")
    mean = text.mean(dim=-2)
    guidance = aggregator.text_projection(mean / mean.norm(dim=-1, keepdim=True))
    for layer in aggregator.layers:
        x = plain_spatial_aggregation(layer.spatial, x, appearance)
        x = plain_class_aggregation(layer.classes, x, guidance)
    logits = plain_decoder(model.decoder, x, clip.guidance)
    if classes is not None:
        out = torch.full((b, num_classes, *logits.shape[-2:]), -100.0)
        logits = out.scatter(1, classes[..., None, None].expand(-1, -1, *logits.shape[-2:]), logits)
    return logits


@pytest.mark.parametrize(
    ("name", "overrides", "top_k", "num_classes"),
    [
        ("catseg_tiny", {}, 16, 5),
        ("catseg_tiny", {}, 16, 20),  # K > top_k = 16: CAT-Seg's class filtering
        ("lmseg_tiny", {"spatial_encoder": None, "fusion": None, "num_prompts": 1}, 16, 5),
        ("lmseg_tiny", {}, None, 7),  # fusion, P = 4 attribute prompts
        ("lmseg_tiny", {"fusion": {"mode": "adaptive"}}, 3, 7),
        ("catseg_tiny", {"class_attention": "softmax"}, 16, 20),  # CAT-Seg's attention_type="full"
    ],
)
def test_model_equals_catseg_recomposed_from_its_blocks(name, overrides, top_k, num_classes):
    torch.manual_seed(0)
    m = lmseg.create_model(name, **overrides).eval()
    with torch.no_grad():  # random non-trivial values everywhere (zero-initialised tokens too)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    images = torch.rand(2, 3, 96, 96)
    text = torch.randn(num_classes, m.num_prompts, m.embed_dim)
    with torch.no_grad():
        expected = catseg_forward(m, images, text, top_k)
        logits = m(images, text, RuntimeOptions(top_k=top_k))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_without_fusion_the_model_is_catseg():
    lm = lmseg.create_model("lmseg_tiny", spatial_encoder=None, fusion=None, num_prompts=1)
    cat = lmseg.create_model("catseg_tiny")
    assert lm.spatial_encoder is None and lm.fusion is None and lm.spatial_adapter is None
    # the same parameters (CAT-Seg's, which convert one-to-one) ...
    assert {k: v.shape for k, v in lm.state_dict().items()} == {
        k: v.shape for k, v in cat.state_dict().items()
    }
    # ... computing CAT-Seg's forward pass
    images, text = torch.rand(1, 3, 96, 96), torch.randn(4, 1, 32)
    with torch.no_grad():
        torch.testing.assert_close(lm(images, text), catseg_forward(lm, images, text, 16), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_fusion_is_convex_and_starts_at_init(mode):
    torch.manual_seed(0)
    m = lmseg.create_model("lmseg_tiny", fusion={"mode": mode, "init": 0.25})
    with torch.no_grad():
        f = m.encode_image(torch.rand(2, 3, 96, 96))
        w = m.fusion.weight(f.vision_language_embedding, f.spatial_embedding)
    torch.testing.assert_close(w, torch.full_like(w, 0.25))
    torch.testing.assert_close(f.embedding, 0.25 * f.vision_language_embedding + 0.75 * f.spatial_embedding)
    # once trained away from init, w still weights the CLIP features: F = w F_c + (1 - w) F_s
    with torch.no_grad():
        for p in m.fusion.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        w = m.fusion.weight(f.vision_language_embedding, f.spatial_embedding)
        fused = m.fusion(f.vision_language_embedding, f.spatial_embedding)
    assert ((w > 0) & (w < 1)).all() and not torch.allclose(w, torch.full_like(w, 0.25))
    torch.testing.assert_close(fused, w * f.vision_language_embedding + (1 - w) * f.spatial_embedding)


def test_sam_adapter_resizes_bilinearly_then_projects():
    from lmseg.fusion import SpatialAdapter

    torch.manual_seed(0)
    adapter = SpatialAdapter(in_channels=16, embed_dim=8)
    sam = torch.randn(2, 16, 16, 16)
    out = adapter(sam, (6, 6))
    # 1x1 projection and bilinear resizing (corners not aligned) commute: project, then resize
    projected = torch.einsum("oc,bchw->bohw", adapter.proj.weight[:, :, 0, 0], sam)
    projected = projected + adapter.proj.bias[None, :, None, None]
    expected = F.interpolate(projected, size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_bad_text_embeddings_are_named(model):
    images = torch.rand(1, 3, 96, 96)
    # the shape the caller passed, not an internal one
    with pytest.raises(ValueError, match=r"^text embeddings must be \(K, P, 32\) or \(B, K, P, 32\), got \(3, 4, 31\)$"):
        model(images, torch.randn(3, 4, 31))
    with pytest.raises(ValueError, match=r"^text embeddings must be .* got \(2, 3, 4, 32, 1\)$"):
        model(images, torch.randn(2, 3, 4, 32, 1))
    with pytest.raises(
        ValueError,
        match=r"^cost volume has 2 prompts per class but the embedding expects 4; build the model "
        r"with num_prompts=2 or use matching prompts$",
    ):
        model(images, torch.randn(3, 2, 32))
    with pytest.raises(ValueError, match=r"^the vocabulary is empty: give at least one class$"):
        model(images, torch.randn(0, 4, 32))
    with pytest.raises(ValueError, match=r"^expected RGB images \(B, 3, H, W\), got shape \(1, 4, 96, 96\)$"):
        model(torch.rand(1, 4, 96, 96), torch.randn(3, 4, 32))


def test_registry_and_overrides():
    assert {"lmseg_vitb16_samb", "lmseg_vitl14_samb", "catseg_vitb16", "catseg_vitl14",
            "lmseg_tiny", "catseg_tiny"} <= set(lmseg.list_models())
    assert get_config("catseg_vitb16").spatial_encoder is None
    assert get_config("lmseg_tiny", fusion={"mode": "pixel"}).fusion["mode"] == "pixel"
    with pytest.raises(KeyError, match=r"unknown model 'nope'; available: .*catseg_tiny"):
        lmseg.create_model("nope")
    with pytest.raises(RegistryError, match=r"unknown override 'windowsize'; model config keys: \[.*'aggregator'"):
        get_config("lmseg_tiny", windowsize=3)
    with pytest.raises(RegistryError, match="top_k is a runtime option"):
        get_config("lmseg_tiny", top_k=None)


def test_wrong_devices_and_dtypes_are_named(model):
    images, text = torch.rand(1, 3, 96, 96), torch.randn(3, 4, 32)
    with pytest.raises(
        TypeError,
        match=r"^images must be floating point, got torch.uint8 \(images: RGB in \[0, 1\]; "
        r"lmseg.io.load_image converts uint8\)$",
    ):
        model((images * 255).to(torch.uint8), text)
    with pytest.raises(TypeError, match=r"^text embeddings must be floating point, got torch.int64$"):
        model(images, text.long())
    with pytest.raises(ValueError, match=r"^images are on meta but the model is on cpu; move them with .to\('cpu'\)$"):
        model(images.to("meta"), text)
    with torch.no_grad():  # float64 inputs are cast to the weights' dtype
        torch.testing.assert_close(model(images.double(), text.double()), model(images, text))


def test_tiny_variants_are_the_same_in_every_run_and_leave_the_global_rng_alone():
    torch.manual_seed(1)
    a = lmseg.create_model("catseg_tiny")
    after_first = torch.rand(3)
    torch.manual_seed(2)
    b = lmseg.create_model("catseg_tiny")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    torch.manual_seed(1)
    lmseg.create_model("catseg_tiny")
    assert torch.equal(torch.rand(3), after_first)
    other = lmseg.create_model("catseg_tiny", seed=5)
    assert not torch.equal(other.decoder.head.weight, a.decoder.head.weight)
