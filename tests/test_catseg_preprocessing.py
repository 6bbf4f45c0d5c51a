"""CAT-Seg's whole-image preprocessing as a runtime option: the normalised image is zero-padded to
a multiple of 32 (detectron2's ImageList, MODEL.MASK_FORMER.SIZE_DIVISIBILITY), resized to the CLIP
input, and the sigmoid of the logits resized straight to the image size (sem_seg_postprocess).

The reference below is written the way CAT-Seg's ``CATSeg.forward`` does it, on 0-255 pixels with
CLIP's mean and std, independently of lmseg's encoders' own preprocessing."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lmseg
from lmseg.runtime import RuntimeOptions

CLIP_MEAN = torch.tensor([122.7709383, 116.7460125, 104.09373615]).view(3, 1, 1)
CLIP_STD = torch.tensor([68.5005327, 66.6321579, 70.32316305]).view(3, 1, 1)


def catseg_whole_image(model, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """CAT-Seg's whole-image path: probabilities ``(K, H, W)`` of ``image`` ``(3, H, W)`` in [0, 1]."""
    h, w = image.shape[-2:]
    normalised = (image * 255 - CLIP_MEAN) / CLIP_STD
    padded = F.pad(normalised, (0, -w % 32, 0, -h % 32), value=0.0)  # ImageList pads with 0
    side = model.vision_language_encoder.image_size
    resized = F.interpolate(padded[None], size=side, mode="bilinear", align_corners=False)
    # Feed the resized, normalised image through the model: undo its own normalisation exactly.
    pixels = resized * (CLIP_STD / 255) + CLIP_MEAN / 255
    with torch.no_grad():
        logits = model(pixels, text, RuntimeOptions(top_k=None))
    probs = logits.sigmoid()[0]
    # sem_seg_postprocess: crop to the image size (a no-op at model resolution), resize.
    probs = probs[:, :h, :w]
    return F.interpolate(probs[None], size=(h, w), mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize("size", [(70, 130), (96, 96), (50, 33)])
def test_catseg_preprocessing_reproduces_catseg_whole_image_inference(size):
    model = lmseg.create_model("catseg_tiny")
    segmenter = lmseg.Segmenter(model, runtime=RuntimeOptions(preprocessing="catseg", top_k=None))
    image = torch.rand(3, *size)
    classes = ["sky", "grass", "road", "car", "tree"]
    text = segmenter.text_embeddings(classes)
    expected = catseg_whole_image(model, image, text)
    result = segmenter.predict(image, classes, return_probabilities=True)
    np.testing.assert_allclose(result.probabilities, expected.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(result.labels, expected.argmax(0).numpy())
    if size[0] % 32 or size[1] % 32:  # padding changes the result: the option is not a no-op
        plain = lmseg.Segmenter(model, runtime=RuntimeOptions(top_k=None))
        default = plain.predict(image, classes, return_probabilities=True).probabilities
        assert np.abs(default - expected.numpy()).max() > 1e-3


def test_catseg_preprocessing_pads_with_the_colour_that_normalises_to_zero():
    model = lmseg.create_model("catseg_tiny")
    encoder = model.vision_language_encoder
    mean = torch.tensor(encoder.pixel_mean).view(1, 3, 1, 1)
    normalised = encoder.preprocess(mean.expand(1, 3, 8, 8).clone(), size=(8, 8))
    torch.testing.assert_close(normalised, torch.zeros_like(normalised), atol=1e-6, rtol=0)


def test_the_command_line_takes_catseg_preprocessing(tmp_path):
    from PIL import Image

    from lmseg.cli import main

    pixels = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    classes = ["sky", "grass", "road"]
    argv = ["predict", str(tmp_path / "x.png"), "--classes", ",".join(classes), "--model", "catseg_tiny",
            "--exact", "--outputs", "labels", "--quiet"]
    assert main([*argv, "--preprocessing", "catseg", "--out", str(tmp_path / "catseg")]) == 0
    model = lmseg.create_model("catseg_tiny")
    expected = lmseg.Segmenter(model, runtime=RuntimeOptions(preprocessing="catseg", top_k=None)).predict(
        tmp_path / "x.png", classes
    )
    written = np.asarray(Image.open(tmp_path / "catseg" / "x.png_labels.png"))
    np.testing.assert_array_equal(written, expected.labels)
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0  # the default differs here
    plain = np.asarray(Image.open(tmp_path / "plain" / "x.png_labels.png"))
    assert (plain != written).mean() > 0.1
