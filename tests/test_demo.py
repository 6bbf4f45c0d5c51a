"""The demo's logic without a browser: segmentation -> overlay + table, hiding classes, pixel
lookup, the model cache, bad inputs, and the ``lmseg demo`` command (with Gradio mocked out
where it is not installed)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

import lmseg.segmenter
from lmseg import create_model, save_model
from lmseg.cli import build_parser, main
from lmseg.demo import logic
from lmseg.demo.logic import (
    DemoError,
    ModelCache,
    Segmentation,
    class_table,
    parse_classes,
    pixel_info,
    render,
    segment,
)
from lmseg.visualize import legend_width, palette

CLASSES = "sky, grass, soil"


def scene(seed: int = 0, size: tuple[int, int] = (150, 200)) -> np.ndarray:
    """``(H, W, 3)`` uint8: a sky/grass/soil picture with a little noise."""
    h, w = size
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:] = (120, 170, 230)
    rgb[h // 2 :] = (70, 150, 60)
    rgb[3 * h // 4 :] = (130, 90, 50)
    noise = np.random.default_rng(seed).integers(-20, 20, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache(device="cpu")


def run(cache: ModelCache, image, **kwargs) -> Segmentation:
    options = dict(
        classes_text=CLASSES, vocabulary=None, variant="lmseg_tiny", weights=None, sliding=False
    )
    return segment(cache, image, **{**options, **kwargs})


def test_segment_gives_an_overlay_with_legend_and_a_table(cache, tmp_path):
    image = scene()
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    result = run(cache, str(path))  # the page hands over the upload's path
    assert result.labels.shape == (150, 200) and result.classes == ("sky", "grass", "soil")
    assert np.array_equal(result.image, image) and result.random_weights

    picture = np.asarray(render(result))
    present = sorted(set(result.labels.ravel().tolist()))
    names = [result.classes[i] for i in present]
    assert picture.shape == (150, 200 + legend_width(names), 3)
    left = picture[:, :200].astype(int)
    expected = np.round(image * 0.5 + palette(3)[result.labels] * 0.5)  # overlay's alpha 0.5
    assert np.abs(left - expected).max() <= 1 and not np.array_equal(left, image)

    rows = class_table(result)
    assert [row[0] for row in rows if row[1] > 0] == result.present()
    assert sorted(row[0] for row in rows) == ["grass", "sky", "soil"]
    counts = {row[0]: row[1] for row in rows}
    for i, name in enumerate(result.classes):
        assert counts[name] == int((result.labels == i).sum())
    assert [row[1] for row in rows] == sorted((row[1] for row in rows), reverse=True)
    assert sum(row[2] for row in rows) == pytest.approx(100.0, abs=0.05)


def test_a_second_image_with_the_same_vocabulary_reuses_the_text_embeddings(cache, monkeypatch):
    calls = []
    original = lmseg.segmenter.embed_prompts

    def counting(*args, **kwargs):
        calls.append(kwargs.get("class_names"))
        return original(*args, **kwargs)

    monkeypatch.setattr(lmseg.segmenter, "embed_prompts", counting)
    classes = "cat, sofa, lamp, rug"
    run(cache, scene(1), classes_text=classes)
    run(cache, scene(2, (64, 80)), classes_text=classes)
    assert calls == [["cat", "sofa", "lamp", "rug"]]  # embedded once for both images
    assert cache.segmenter("lmseg_tiny", None) is cache.segmenter("lmseg_tiny", None)
    run(cache, scene(3), classes_text="cat, sofa")
    assert len(calls) == 2  # a new vocabulary is embedded


def test_hiding_classes_rerenders_without_running_the_model(cache, monkeypatch):
    result = run(cache, scene())
    shown = result.present()
    assert len(shown) >= 2, "the fixed random model labels this scene with several classes"
    monkeypatch.setattr(logic, "predict_labels", lambda *a, **k: pytest.fail("model was run"))
    monkeypatch.setattr(
        lmseg.segmenter.Segmenter, "predict", lambda *a, **k: pytest.fail("model was run")
    )

    hidden = shown[0]
    picture = np.asarray(render(result, hidden=[hidden]))
    mask = result.labels == result.classes.index(hidden)
    assert picture.shape[1] == 200 + legend_width(shown[1:])
    assert np.array_equal(picture[:, :200][mask], result.image[mask])  # hidden: the bare image
    assert not np.array_equal(picture[:, :200][~mask], result.image[~mask])  # the rest blended

    bare = np.asarray(render(result, hidden=list(result.classes)))
    assert np.array_equal(bare, result.image)  # all hidden: the input, no legend
    with pytest.raises(DemoError, match="not in the list: tree"):
        render(result, hidden=["tree"])


def test_pixel_lookup_names_the_class_under_the_click():
    labels = np.zeros((10, 20), np.int32)
    labels[:, 15:] = 1  # a quarter of the image is "dog"
    result = Segmentation(np.zeros((10, 20, 3), np.uint8), labels, ("cat", "dog"), True)
    assert pixel_info(result, 3, 4) == "pixel (3, 4): cat (75.0% of the image)"
    assert pixel_info(result, 19, 9) == "pixel (19, 9): dog (25.0% of the image)"
    assert "outside the image (20×10)" in pixel_info(result, 20, 4)  # on the legend
    assert "outside the image" in pixel_info(result, 3, -1)


@pytest.mark.parametrize(
    ("text", "vocabulary", "message"),
    [
        ("", None, "no classes: type class names"),
        ("   ", "", "no classes"),
        ("cat,, dog", None, "empty class name"),
        ("cat, dog, cat", None, "duplicate class names"),
        ("cat", "voc20", "not both"),
        ("", "nope", "unknown vocabulary 'nope'"),
    ],
)
def test_unusable_class_lists_say_what_is_wrong(text, vocabulary, message):
    with pytest.raises(DemoError, match=message):
        parse_classes(text, vocabulary)


def test_class_lists_from_text_or_a_vocabulary():
    assert parse_classes(" cat ,dog,  traffic light ", None) == ["cat", "dog", "traffic light"]
    voc = parse_classes("", "voc20")
    assert len(voc) == 20 and voc[0] == "aeroplane"


def test_bad_uploads_and_settings_say_what_is_wrong(cache, tmp_path):
    corrupt = tmp_path / "holiday.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    with pytest.raises(
        DemoError, match="cannot read the upload: holiday.png is not a readable image"
    ) as error:
        run(cache, str(corrupt))
    assert str(tmp_path) not in str(error.value)  # the temporary folder is not shown
    with pytest.raises(DemoError, match="no image"):
        run(cache, None)
    with pytest.raises(DemoError, match="checkpoint not found"):
        run(cache, scene(), weights=str(tmp_path / "missing.safetensors"))
    with pytest.raises(DemoError, match="unknown model 'nope'"):
        run(cache, scene(), variant="nope")


def test_a_segmenter_error_becomes_the_message(cache, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError(
            "prompt mode 'attributes' gives 4 prompts per class but the model expects 1"
        )

    monkeypatch.setattr(lmseg.segmenter.Segmenter, "predict", refuse)
    with pytest.raises(DemoError, match="gives 4 prompts per class"):
        run(cache, scene())


def test_a_checkpoint_from_the_weights_field_is_loaded(cache, tmp_path):
    torch.manual_seed(7)
    trained = create_model("catseg_tiny")
    path = tmp_path / "catseg_tiny.safetensors"
    save_model(trained, path)
    result = run(cache, scene(), variant="catseg_tiny", weights=str(path))
    assert not result.random_weights
    loaded = cache.segmenter("catseg_tiny", path).model
    for (name, mine), theirs in zip(
        trained.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(mine, theirs), name
    with pytest.raises(DemoError, match="cannot load lmseg_tiny"):
        run(cache, scene(), variant="lmseg_tiny", weights=str(path))  # wrong architecture


def test_random_weights_are_the_same_on_every_start_and_leave_the_global_seed_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    first = ModelCache(device="cpu").segmenter("catseg_tiny", None).model
    assert torch.equal(torch.rand(3), expected)
    second = ModelCache(device="cpu").segmenter("catseg_tiny", None).model
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_an_unknown_device_is_refused_with_its_name():
    with pytest.raises(DemoError, match="unknown device 'gpu9'"):
        ModelCache(device="gpu9")


def test_the_cache_keeps_at_most_max_models():
    cache = ModelCache(device="cpu", max_models=1)
    first = cache.segmenter("catseg_tiny", None)
    cache.segmenter("lmseg_tiny", None)
    assert cache.segmenter("catseg_tiny", None) is not first  # dropped, then rebuilt


# The page's event functions (need Gradio).


def test_the_segment_button_fills_every_output(cache, monkeypatch):
    app = pytest.importorskip("lmseg.demo.app", reason="the demo extra (gradio) is not installed")
    seen = []
    original = logic.predict_labels

    def spy(segmenter, image, classes, *, sliding):
        seen.append(sliding)
        return original(segmenter, image, classes, sliding=sliding)

    monkeypatch.setattr(logic, "predict_labels", spy)
    picture, rows, hide, pixel, status, state = app.on_segment(
        cache, scene(), CLASSES, "", "lmseg_tiny", "", "sliding window"
    )
    assert seen == [True]
    assert isinstance(picture, Image.Image) and picture.size[1] == 150
    assert sorted(row[0] for row in rows) == ["grass", "sky", "soil"]
    assert hide.choices == [(name, name) for name in state.present()]
    assert "random weights give meaningless outputs" in status
    assert "Segmented 200×150 px with **lmseg_tiny** (sliding window)" in status
    hidden = app.on_hide(state, [state.present()[0]])
    assert np.array_equal(np.asarray(hidden), np.asarray(render(state, [state.present()[0]])))


@pytest.mark.parametrize(
    ("image", "classes", "message"),
    [
        (
            "corrupt",
            CLASSES,
            "**Error:** cannot read the upload: upload.png is not a readable image",
        ),
        ("scene", "", "**Error:** no classes"),
        (None, CLASSES, "**Error:** no image"),
    ],
)
def test_bad_inputs_give_a_message_on_the_page_not_a_traceback(
    cache, tmp_path, image, classes, message
):
    app = pytest.importorskip("lmseg.demo.app", reason="the demo extra (gradio) is not installed")
    if image == "corrupt":
        image = tmp_path / "upload.png"
        image.write_bytes(b"GIF89a truncated")
        image = str(image)
    elif image == "scene":
        image = scene()
    picture, rows, hide, pixel, status, state = app.on_segment(
        cache, image, classes, "", "lmseg_tiny", "", "whole image"
    )
    assert status.startswith(message)
    assert picture is None and rows == [] and state is None and hide.choices == []
    assert app.on_hide(None, ["sky"]) is None


def test_the_upload_reaches_lmseg_unopened(tmp_path):
    """gr.Image opens uploads with PIL before the event runs (a corrupt one failed inside
    Gradio with PIL's message); the Segment event takes the upload unprocessed and hands its
    path to lmseg, which says what is wrong."""
    app = pytest.importorskip("lmseg.demo.app", reason="the demo extra (gradio) is not installed")
    import gradio as gr
    from gradio.data_classes import ImageData

    corrupt = tmp_path / "upload.png"
    corrupt.write_bytes(b"not an image")
    payload = ImageData(path=str(corrupt), orig_name="upload.png")
    with pytest.raises(Exception, match="cannot identify image file"):
        gr.Image(type="filepath").preprocess(payload)

    page = app.build_app()
    events = [fn for fn in page.fns.values() if fn.name == "segment_event"]
    assert len(events) == 1 and events[0].preprocess is False
    assert app.upload_path(payload.model_dump()) == str(corrupt)
    status = app.on_segment(
        ModelCache(), payload.model_dump(), CLASSES, "", "lmseg_tiny", "", "whole image"
    )[4]
    assert status.startswith(
        "**Error:** cannot read the upload: upload.png is not a readable image"
    )


def test_build_app_refuses_an_unknown_model():
    app = pytest.importorskip("lmseg.demo.app", reason="the demo extra (gradio) is not installed")
    with pytest.raises(DemoError, match="unknown model 'nope'"):
        app.build_app(model="nope")


# The command.


def test_demo_command_serves_on_loopback_without_a_share_link_by_default():
    args = build_parser().parse_args(["demo"])
    assert (args.host, args.port, args.share, args.model) == (
        "127.0.0.1",
        7860,
        False,
        "lmseg_tiny",
    )


def test_demo_command_passes_its_options_to_the_server(monkeypatch, tmp_path):
    app = pytest.importorskip("lmseg.demo.app", reason="the demo extra (gradio) is not installed")
    calls = {}
    monkeypatch.setattr(app, "launch", lambda demo, **kwargs: calls.update(kwargs) or "")
    assert main(["demo", "--port", "7999", "--model", "catseg_tiny", "--device", "cpu"]) == 0
    assert calls == {"host": "127.0.0.1", "port": 7999, "share": False}


def test_demo_command_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    monkeypatch.delitem(sys.modules, "lmseg.demo.app", raising=False)
    assert main(["demo"]) == 1
    assert "pip install 'lmseg[demo]'" in capsys.readouterr().err
