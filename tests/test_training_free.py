"""The training-free baseline: MaskCLIP's dense CLIP features and cosine similarity, no training."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lmseg
from lmseg.training_free import CLIP_LOGIT_SCALE, TrainingFreeModel
from lmseg.weights import RandomWeightsWarning


@pytest.fixture(scope="module")
def model() -> TrainingFreeModel:
    return lmseg.create_model("maskclip_tiny")


def test_dense_features_are_maskclips_value_path(model):
    # MaskCLIP: the last block's value projection through out-proj, no residual and no MLP, then
    # ln_post and the projection; written here on open_clip's modules directly.
    clip = model.vision_language_encoder.model.visual
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        x = clip.conv1(model.vision_language_encoder.preprocess(images)).flatten(2).transpose(1, 2)
        x = torch.cat([clip.class_embedding.expand(2, 1, -1), x], 1) + clip.positional_embedding
        x = clip.ln_pre(x)
        for block in clip.transformer.resblocks[:-1]:
            x = block(x)
        last = clip.transformer.resblocks[-1]
        width = x.shape[-1]
        v = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:])
        expected = clip.ln_post(last.attn.out_proj(v)[:, 1:]) @ clip.proj
        ours = model.vision_language_encoder(images).embedding
    torch.testing.assert_close(ours.flatten(2).transpose(1, 2), expected, rtol=1e-5, atol=1e-5)
    catseg = lmseg.create_model("catseg_tiny")  # the same weights in CAT-Seg's dense mode differ
    catseg.vision_language_encoder.model.load_state_dict(model.vision_language_encoder.model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(catseg.vision_language_encoder(images).embedding, ours, atol=1e-3)


def test_labels_are_the_arg_max_of_cosine_similarity_and_probabilities_a_softmax(model):
    image = torch.rand(3, 60, 80)
    classes = ["sky", "grass", "road", "car"]
    segmenter = lmseg.Segmenter(model)
    result = segmenter.predict(image, classes, return_probabilities=True)
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-5)
    text = segmenter.text_embeddings(classes)  # (K, 1, D)
    with torch.no_grad():
        dense = F.normalize(model.vision_language_encoder(image[None]).embedding, dim=1)[0]
    cos = torch.einsum("dhw,kd->khw", dense, F.normalize(text[:, 0], dim=-1))
    expected = (CLIP_LOGIT_SCALE * cos).softmax(0)
    up = F.interpolate(expected[None], size=(60, 80), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(result.probabilities, up.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(result.labels, up.argmax(0).numpy())


def test_prompts_of_a_class_are_averaged_like_maskclips_ensemble(model):
    features = model.encode_image(torch.rand(1, 3, 96, 96))
    text = torch.randn(3, 2, model.embed_dim)
    with torch.no_grad():
        two = model.decode(features, text)
        mean = F.normalize(F.normalize(text, dim=-1).mean(1, keepdim=True), dim=-1)
        one = model.decode(features, mean)
    torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-4)


def test_saves_and_reloads_without_an_aggregator(model, tmp_path):
    path = tmp_path / "maskclip.safetensors"
    lmseg.save_model(model, path)
    reloaded = lmseg.load_model(path)
    assert isinstance(reloaded, TrainingFreeModel) and reloaded.config["aggregator"] is None
    images, text = torch.rand(1, 3, 96, 96), torch.randn(4, 1, model.embed_dim)
    with torch.no_grad():
        assert torch.equal(model(images, text), reloaded(images, text))


def test_only_clip_is_named_random_and_the_zoo_default_needs_only_clip():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lmseg.create_model("maskclip_vitb16", pretrained=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, RandomWeightsWarning)]
    assert len(messages) == 1 and "random CLIP weights" in messages[0]
    assert "aggregator" not in messages[0] and "maskclip_vitb16:openai" in messages[0]
    from lmseg import zoo

    entry = zoo.get_weights("maskclip_vitb16", zoo.default_tag("maskclip_vitb16"))
    assert entry.vision_language == "openai" and entry.checkpoint is None
    assert entry.random_parts(lmseg.factory.get_config("maskclip_vitb16")) == ()
