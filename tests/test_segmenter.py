"""predict(image, classes): every input kind, odd images, bad class lists, both inference modes."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import lmseg
from lmseg.io import ImageError, load_image, validate_classes
from lmseg.segmenter import Segmenter

CLASSES = ["cat", "sofa", "wall"]


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    warnings.simplefilter("ignore")  # the no-bank notice
    return Segmenter(lmseg.create_model("lmseg_tiny"))


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)


def test_label_map_at_image_size_for_every_input_kind(segmenter, rgb, tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    results = [
        segmenter.predict(path, CLASSES),
        segmenter.predict(str(path), CLASSES),
        segmenter.predict(Image.fromarray(rgb), CLASSES),
        segmenter.predict(rgb, CLASSES),
        segmenter.predict(torch.from_numpy(rgb).permute(2, 0, 1), CLASSES),
        segmenter.predict(rgb.astype(np.float32) / 255, CLASSES),
    ]
    for result in results:
        labels = result.labels
        assert labels.shape == (50, 70) and labels.dtype == np.int32
        assert labels.min() >= 0 and labels.max() < len(CLASSES)
        np.testing.assert_array_equal(labels, results[0].labels)
        assert result.classes == CLASSES and result.probabilities is None


def test_probabilities_and_sliding_window(segmenter, rgb):
    result = segmenter.predict(rgb, CLASSES, return_probabilities=True)
    labels, probs = result.labels, result.probabilities
    assert probs.shape == (3, 50, 70) and ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_array_equal(labels, probs.argmax(0))
    sliding = segmenter.predict(rgb, CLASSES, sliding_window=True, return_probabilities=True)
    assert sliding.shape == (50, 70)
    assert not np.allclose(sliding.probabilities, probs)


def test_class_chunking_does_not_change_labels(rgb):
    model = lmseg.create_model("catseg_tiny")
    classes = [f"thing {i}" for i in range(13)]
    a = Segmenter(model, upsample_chunk=64).predict(rgb, classes, sliding_window=True)
    b = Segmenter(model, upsample_chunk=4).predict(rgb, classes, sliding_window=True)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_text_embeddings_are_cached_per_vocabulary(segmenter):
    first = segmenter.text_embeddings(CLASSES)
    assert segmenter.text_embeddings(CLASSES) is first
    assert first.shape == (3, 4, 32)


def test_shipped_bank_gives_attribute_prompts(segmenter):
    from lmseg.vocabularies import load_vocabulary

    voc = load_vocabulary("voc20")
    text = segmenter.text_embeddings(voc)
    assert text.shape == (20, 4, 32)
    assert not torch.allclose(text[:, 0], text[:, 1])  # attribute prompts differ from the template


def test_odd_images(segmenter, tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((20, 30, 4), np.uint8)).save(rgba)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 30), 65535, np.uint16)).save(deep)
    for path in (gray, rgba, deep):
        assert segmenter.predict(path, CLASSES).shape == (20, 30)
    assert load_image(deep).max() == pytest.approx(1.0)
    assert load_image(gray)[:, 0, 0].tolist() == pytest.approx([128 / 255] * 3)


def test_exif_rotation_is_applied(segmenter, tmp_path):
    image = Image.fromarray(np.zeros((20, 30, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).shape == (3, 30, 20)
    assert segmenter.predict(path, CLASSES).shape == (30, 20)


def test_bad_images_get_clear_errors(segmenter, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    cases = [
        (empty, "is empty"),
        (corrupt, "not a readable image"),
        (truncated, "not a readable image"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((5, 5, 2), np.uint8), "must be HxW"),
        (np.full((5, 5, 3), 3.0, np.float32), "must lie in"),
        (np.full((5, 5, 3), np.nan, np.float32), "NaN"),
        (np.zeros((5, 5), bool), "boolean mask"),
    ]
    for image, message in cases:
        with pytest.raises(ImageError, match=message):
            segmenter.predict(image, CLASSES)
    with pytest.raises(FileNotFoundError):
        segmenter.predict(tmp_path / "missing.png", CLASSES)
    with pytest.raises(TypeError, match="unsupported image type"):
        segmenter.predict(42, CLASSES)


def test_huge_images_are_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(path)
    with pytest.raises(ImageError, match="too large"):
        load_image(path, max_pixels=100_000)


@pytest.mark.parametrize(
    ("classes", "error", "message"),
    [
        ([], ValueError, "class list is empty"),
        ("cat,dog", TypeError, "not a single string"),
        (["cat", "dog", "cat"], ValueError, "duplicate class names: 'cat'"),
        (["cat", "  "], ValueError, "class 1 has an empty name"),
        (["cat", 3], TypeError, "class 1 is int"),
        ([f"c{i}" for i in range(30)], ValueError, "more than max_classes=20"),
    ],
)
def test_bad_class_lists(classes, error, message):
    with pytest.raises(error, match=message):
        validate_classes(classes, max_classes=20)


def test_overlong_class_name_is_named(segmenter, rgb):
    name = "very " * 80 + "long thing"
    with pytest.raises(ValueError, match="very very"):
        segmenter.predict(rgb, ["cat", name])


def test_sliding_windows_must_tile_the_image():
    from lmseg.segmenter import SlidingWindow

    SlidingWindow()  # CAT-Seg's 640 / 384 / 1/3 tiles exactly
    with pytest.raises(ValueError, match="do not tile a 192 px image"):
        SlidingWindow(resize=192, window=96, overlap=0.4)


def test_sliding_window_combine_puts_every_window_back_where_views_took_it():
    from lmseg.segmenter import SlidingWindow

    window = SlidingWindow(resize=40, window=24, overlap=1 / 3)  # stride 16: 2 x 2 windows
    image = torch.rand(3, 30, 50) * 0.98 + 0.01
    views = window.views(image)  # (5, 3, 24, 24)
    assert views.shape == (5, 3, 24, 24)
    # Feed each view's pixels back as "logits" of 3 classes: overlapping windows then agree
    # wherever they overlap, so the window average must reproduce the resized image exactly.
    combined = window.combine(torch.logit(views))
    resized = torch.nn.functional.interpolate(image[None], size=(40, 40), mode="bilinear")[0]
    global_part = torch.nn.functional.interpolate(views[-1:], size=(40, 40), mode="bilinear")[0]
    torch.testing.assert_close(2 * combined - global_part, resized, rtol=1e-5, atol=1e-5)


# -- sliding window against CAT-Seg's formulation ----------------------------------------------
def catseg_views(image: torch.Tensor, resize: int, kernel: int, overlap: float) -> torch.Tensor:
    """CAT-Seg's ``inference_sliding_window`` input side: ``(3, H, W)`` -> windows + global view."""
    stride = int(kernel * (1 - overlap))
    resized = torch.nn.functional.interpolate(image[None], size=(resize, resize), mode="bilinear", align_corners=False)[0]
    windows = torch.nn.Unfold(kernel_size=kernel, stride=stride)(resized)  # (3·k·k, L)
    windows = windows.T.reshape(-1, 3, kernel, kernel)
    global_view = torch.nn.functional.interpolate(image[None], size=(kernel, kernel), mode="bilinear", align_corners=False)
    return torch.cat([windows, global_view])


def catseg_combine(logits: torch.Tensor, resize: int, kernel: int, overlap: float) -> torch.Tensor:
    """CAT-Seg's output side: model-resolution logits of the views -> ``(K, resize, resize)``.

    Window logits are upsampled to the window size (bilinear, corners not aligned), turned into
    probabilities, folded back with F.fold and divided by the fold of ones; then averaged with
    the global view's probabilities upsampled to the full size.
    """
    stride = int(kernel * (1 - overlap))
    out = torch.nn.functional.interpolate(logits, size=kernel, mode="bilinear", align_corners=False).sigmoid()
    global_output = torch.nn.functional.interpolate(out[-1:], size=(resize, resize), mode="bilinear", align_corners=False)
    fold = torch.nn.Fold((resize, resize), kernel_size=kernel, stride=stride)
    unfold = torch.nn.Unfold(kernel_size=kernel, stride=stride)
    windows = fold(out[:-1].flatten(1).T) / fold(unfold(torch.ones(1, resize, resize)))
    return (windows + global_output[0]) / 2


def test_sliding_window_combine_of_model_resolution_logits_equals_catseg():
    from lmseg.segmenter import SlidingWindow

    window = SlidingWindow(resize=40, window=24, overlap=1 / 3)  # stride 16: 2 x 2 windows
    for size in (6, 12, 7):  # the model's 4h x 4w grid is smaller than the window (and may be odd)
        logits = torch.randn(5, 3, size, size) * 3
        torch.testing.assert_close(
            window.combine(logits.clone()), catseg_combine(logits, 40, 24, 1 / 3), rtol=1e-5, atol=1e-6
        )


def test_sliding_window_views_equal_catseg():
    from lmseg.segmenter import SlidingWindow

    image = torch.rand(3, 30, 50)
    views = SlidingWindow(resize=40, window=24, overlap=1 / 3).views(image)
    torch.testing.assert_close(views, catseg_views(image, 40, 24, 1 / 3), rtol=0, atol=1e-6)


@pytest.mark.parametrize("sliding", [False, True])
def test_predict_equals_catseg_inference(segmenter, rgb, sliding):
    """Labels and probabilities of predict() from the model's logits, computed CAT-Seg's way:
    whole image (sigmoid of the logits, upsampled bilinearly to the image) or sliding window."""
    from lmseg.segmenter import SlidingWindow

    window = SlidingWindow(resize=160, window=96, overlap=0.333)  # 2 x 2 windows of 96 px
    previous, segmenter.window = segmenter.window, window
    try:
        result = segmenter.predict(rgb, CLASSES, sliding_window=sliding, return_probabilities=True)
        labels, probs = result.labels, result.probabilities
    finally:
        segmenter.window = previous
    image = load_image(rgb)
    text = segmenter.text_embeddings(CLASSES)
    with torch.no_grad():
        if sliding:
            logits = segmenter.model(catseg_views(image, 160, 96, 0.333), text)
            small = catseg_combine(logits, 160, 96, 0.333)
        else:
            small = segmenter.model(image[None], text)[0].sigmoid()
    expected = torch.nn.functional.interpolate(small[None], size=(50, 70), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(probs, expected.numpy(), rtol=1e-4, atol=1e-5)
    # Labels are the arg-max, wherever the two best classes are not tied within rounding.
    top2 = expected.topk(2, dim=0).values
    clear = (top2[0] - top2[1] > 1e-4).numpy()
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(labels[clear], expected.argmax(0).numpy()[clear])
