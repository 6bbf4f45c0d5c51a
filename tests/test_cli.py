"""The CLI is a thin main(argv) over the library."""

import numpy as np
from PIL import Image

from lmseg.cli import main


def test_models_lists_the_variants(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "lmseg_vitb16_samb" in out and "catseg_tiny" in out


def test_predict_writes_overlays_for_several_images(tmp_path, capsys):
    paths = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 60, 3), np.uint8)).save(path)
        paths.append(str(path))
    out = tmp_path / "out"
    rc = main(["predict", *paths, "--classes", "cat, dog,sky", "--model", "lmseg_tiny",
               "--out", str(out), "--save-labels"])
    assert rc == 0
    for i in range(2):
        overlay = Image.open(out / f"img{i}.png_overlay.png")
        assert overlay.height >= 40 and overlay.width > 60  # image + legend
        assert np.asarray(Image.open(out / f"img{i}.png_labels.png")).shape == (40, 60)


def test_predict_with_a_vocabulary_and_sliding_window(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(path)
    rc = main(["predict", str(path), "--vocabulary", "voc20", "--model", "catseg_tiny",
               "--sliding-window", "--exact", "--out", str(tmp_path), "--quiet"])
    assert rc == 0 and (tmp_path / "img.png_overlay.png").is_file()


def test_errors_are_reported_not_raised(tmp_path, capsys):
    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(path)
    assert main(["predict", str(path), "--classes", "a,a", "--model", "lmseg_tiny",
                 "--out", str(tmp_path)]) == 1
    assert "duplicate class names" in capsys.readouterr().err
    assert main(["predict", str(path), "--model", "lmseg_tiny", "--out", str(tmp_path)]) == 2
    assert main(["predict", str(tmp_path / "missing.png"), "--classes", "a", "--model",
                 "lmseg_tiny", "--out", str(tmp_path)]) == 1
    assert main(["predict", str(path), "--classes", "a", "--model", "nope"]) == 1


def test_prompts_subcommand_is_wired(capsys):
    assert main(["prompts", "show", "voc20", "--json"]) == 0
    assert '"vocabulary": "voc20"' in capsys.readouterr().out
