"""The composed model: shapes, determinism, class filtering, gradients, CAT-Seg equivalence."""

import pytest
import torch

import lmseg
from lmseg.cost_volume import FILTERED_LOGIT, cosine_cost, select_classes
from lmseg.factory import get_config
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


def test_eval_is_deterministic(model):
    images, text = torch.rand(1, 3, 96, 96), torch.randn(6, 4, 32)
    with torch.no_grad():
        assert torch.equal(model(images, text), model(images, text))


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
    assert (logits[0, dropped] == FILTERED_LOGIT).all()
    assert (logits[0, kept] != FILTERED_LOGIT).any()
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


def test_without_fusion_the_model_is_catseg():
    lm = lmseg.create_model("lmseg_tiny", spatial_encoder=None, fusion=None, num_prompts=1)
    cat = lmseg.create_model("catseg_tiny")
    assert lm.state_dict().keys() == cat.state_dict().keys()
    cat.load_state_dict(lm.state_dict())
    images, text = torch.rand(1, 3, 96, 96), torch.randn(4, 1, 32)
    with torch.no_grad():
        assert torch.equal(lm(images, text), cat(images, text))


def test_fusion_changes_features_and_starts_at_init():
    m = lmseg.create_model("lmseg_tiny", fusion={"mode": "channel", "init": 0.25})
    with torch.no_grad():
        f = m.encode_image(torch.rand(1, 3, 96, 96))
        w = m.fusion.weight(f.vision_language_embedding, f.spatial_embedding)
    torch.testing.assert_close(w, torch.full_like(w, 0.25))
    torch.testing.assert_close(
        f.embedding, 0.25 * f.vision_language_embedding + 0.75 * f.spatial_embedding
    )


def test_bad_text_embeddings_are_named(model):
    images = torch.rand(1, 3, 96, 96)
    with pytest.raises(ValueError, match="text embeddings must be"):
        model(images, torch.randn(3, 4, 31))
    with pytest.raises(ValueError, match="2 prompts per class but the embedding expects 4"):
        model(images, torch.randn(3, 2, 32))
    with pytest.raises(ValueError, match="vocabulary is empty"):
        model(images, torch.randn(0, 4, 32))
    with pytest.raises(ValueError, match="RGB images"):
        model(torch.rand(1, 4, 96, 96), torch.randn(3, 4, 32))


def test_registry_and_overrides():
    assert {"lmseg_vitb16_samb", "lmseg_vitl14_samb", "catseg_vitb16", "catseg_vitl14",
            "lmseg_tiny", "catseg_tiny"} <= set(lmseg.list_models())
    assert get_config("catseg_vitb16").spatial_encoder is None
    assert get_config("lmseg_tiny", fusion={"mode": "pixel"}).fusion["mode"] == "pixel"
    with pytest.raises(KeyError, match="unknown model"):
        lmseg.create_model("nope")
    with pytest.raises(RegistryError, match="unknown override 'windowsize'"):
        get_config("lmseg_tiny", windowsize=3)
    with pytest.raises(RegistryError, match="top_k is a runtime option"):
        get_config("lmseg_tiny", top_k=None)


def test_wrong_devices_and_dtypes_are_named(model):
    images, text = torch.rand(1, 3, 96, 96), torch.randn(3, 4, 32)
    with pytest.raises(TypeError, match="images must be floating point, got torch.uint8"):
        model((images * 255).to(torch.uint8), text)
    with pytest.raises(TypeError, match="text embeddings must be floating point"):
        model(images, text.long())
    with pytest.raises(ValueError, match="images are on meta but the model is on cpu"):
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
