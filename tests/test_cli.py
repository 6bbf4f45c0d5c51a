"""The CLI is a thin main(argv) over the library: what it writes is what the library computes."""

import numpy as np
import pytest
import torch
from PIL import Image

import lmseg
from lmseg.cli import main
from lmseg.io import load_image
from lmseg.runtime import RuntimeOptions
from lmseg.segmenter import Segmenter
from lmseg.visualize import palette
from lmseg.vocabularies import load_vocabulary


def test_models_lists_every_variant(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in lmseg.list_models():
        assert name in out, name


def _image(path, seed, size=(40, 60)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), np.uint8)).save(path)
    return str(path)


def test_predict_writes_the_segmenters_labels_and_their_overlay(tmp_path, capsys):
    paths = [_image(tmp_path / f"img{i}.png", i) for i in range(2)]
    out = tmp_path / "out"
    classes = ["cat", "dog", "sky"]
    torch.manual_seed(7)
    rc = main(["predict", *paths, "--classes", "cat, dog,sky", "--model", "lmseg_tiny",
               "--out", str(out), "--save-labels"])
    assert rc == 0
    torch.manual_seed(7)  # the same random weights as the command's model
    segmenter = Segmenter(lmseg.create_model("lmseg_tiny"))
    for i, path in enumerate(paths):
        labels = np.asarray(Image.open(out / f"img{i}.png_labels.png"))
        np.testing.assert_array_equal(labels, segmenter.predict(path, classes).labels)
        overlay = np.asarray(Image.open(out / f"img{i}.png_overlay.png").convert("RGB"))
        assert overlay.shape[0] >= 40 and overlay.shape[1] > 60  # image + legend to the right
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
        blended = (0.5 * pixels + 0.5 * palette(3)[labels]).round()
        np.testing.assert_allclose(overlay[:40, :60], blended, atol=1)
    printed = capsys.readouterr().out
    assert printed.startswith("2 written, 0 skipped as done, 0 failed") and str(out) in printed


def test_predict_with_a_vocabulary_and_sliding_window_writes_sliding_window_labels(tmp_path):
    path = _image(tmp_path / "img.png", 3, size=(30, 45))
    torch.manual_seed(11)
    rc = main(["predict", path, "--vocabulary", "voc20", "--model", "catseg_tiny",
               "--sliding-window", "--exact", "--out", str(tmp_path), "--quiet", "--save-labels"])
    assert rc == 0 and (tmp_path / "img.png_overlay.png").is_file()
    labels = np.asarray(Image.open(tmp_path / "img.png_labels.png"))
    model = lmseg.create_model("catseg_tiny")
    exact = RuntimeOptions(top_k=None)  # --exact: no class filtering
    classes = load_vocabulary("voc20")
    sliding = Segmenter(model, sliding_window=True, runtime=exact).predict(path, classes).labels
    whole = Segmenter(model, runtime=exact).predict(path, classes).labels
    np.testing.assert_array_equal(labels, sliding)
    assert (sliding != whole).any()  # the two modes are distinguishable on this image


def test_predict_precision_option_runs_under_bf16(tmp_path):
    path = _image(tmp_path / "img.png", 5)
    torch.manual_seed(2)
    assert main(["predict", path, "--classes", "a,b", "--model", "catseg_tiny", "--precision",
                 "bf16", "--out", str(tmp_path), "--quiet", "--save-labels"]) == 0
    torch.manual_seed(2)
    segmenter = Segmenter(lmseg.create_model("catseg_tiny"), precision="bf16")
    written = np.asarray(Image.open(tmp_path / "img.png_labels.png"))
    np.testing.assert_array_equal(written, segmenter.predict(path, ["a", "b"]).labels)
    assert load_image(path).shape == (3, 40, 60)


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--classes", "a,a", "--model", "lmseg_tiny"], 1, "error: duplicate class names: 'a'"),
        (["--model", "lmseg_tiny"], 2,
         "error: give exactly one of --classes, --classes-file or --vocabulary"),
        (["--classes", "a"], 1, "error: give --model NAME and/or --checkpoint PATH"),
        (["--classes", "a", "--model", "nope"], 1, "error: unknown model 'nope'; available: "),
    ],
)
def test_errors_are_reported_not_raised(tmp_path, capsys, argv, status, message):
    path = _image(tmp_path / "img.png", 0, size=(30, 30))
    assert main(["predict", path, *argv, "--out", str(tmp_path)]) == status
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err  # one line, no traceback


def test_missing_image_is_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.png"
    assert main(["predict", str(missing), "--classes", "a", "--model", "lmseg_tiny",
                 "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and err.count("\n") == 1, err


def test_prompts_subcommand_is_wired(capsys):
    import json

    assert main(["prompts", "show", "voc20", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["vocabulary"] == "voc20"
    assert [c["name"] for c in shown["classes"]] == load_vocabulary("voc20")
