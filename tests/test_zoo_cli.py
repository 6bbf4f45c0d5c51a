"""The zoo from the command line: lmseg weights list/download/path, models, predict end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hub_server import catseg_pth
from PIL import Image

import lmseg
from lmseg import zoo
from lmseg.cli import main

pytest_plugins = ["hub_server"]  # the loopback stand-in and its fixtures

SPACE = "lmseg-test/catseg-tiny-weights"


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 255, (40, 56, 3), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def released(mirror, zoo_sandbox):
    """catseg_tiny's default weights: a released-format CAT-Seg .pth on the stand-in's Space."""
    torch.manual_seed(5)
    reference = lmseg.create_model("catseg_tiny", pretrained=False)
    mirror.add_repo_file(SPACE, "model_tiny.pth", catseg_pth(reference), repo_type="space")
    zoo_sandbox.register_weights(
        "catseg_tiny", "test", description="CAT-Seg layout at tiny size", license="MIT", default=True,
        checkpoint=zoo.FileSource(repo_id=SPACE, repo_type="space", filename="model_tiny.pth"),
        checkpoint_format="catseg",
    )
    return reference


def test_weights_list_shows_the_zoo(capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "catseg_vitb16:catseg" in out and "hamacojr/CAT-Seg-weights/resolve/main/model_base.pth" in out
    assert "sam_vit_b_01ec64.pth" in out and "(random: aggregator)" in out
    assert "A-847 12.0" in out and "A-150 37.9" in out
    assert "lmseg_tiny" in out and "random by design" in out
    row = next(line for line in out.splitlines() if line.startswith("catseg_vitb16:catseg"))
    assert row.split()[1:4] == ["*", "no", "?"]  # default, not cached, size not published


def test_models_say_which_variants_download_weights(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "weights: catseg_vitb16:catseg (downloads the released checkpoint" in out
    assert "weights: lmseg_vitb16_samb:openai (downloads CLIP + SAM; untrained: aggregator" in out
    assert "weights: none, random by design" in out


def test_download_then_path_for_an_offline_cluster(released, mirror, capsys):
    assert main(["weights", "path", "catseg_tiny:test"]) == 1
    assert "checkpoint: not cached" in capsys.readouterr().out
    assert main(["weights", "download", "catseg_tiny"]) == 0
    assert "catseg_tiny:test checkpoint:" in capsys.readouterr().out
    mirror.stop()
    assert main(["weights", "path", "catseg_tiny"]) == 0
    assert "zoo/catseg_tiny/test.safetensors" in capsys.readouterr().out


def test_predict_downloads_verifies_converts_caches_then_runs_with_the_server_gone(released, mirror, image, tmp_path):
    from lmseg.segmenter import Segmenter

    expected = Segmenter(released).predict(str(image), ["cat", "dog", "sky"])
    for run in ("first", "server gone"):
        out = tmp_path / run
        argv = ["predict", str(image), "--classes", "cat,dog,sky", "--model", "catseg_tiny",
                "--out", str(out), "--save-labels", "--quiet"]
        assert main(argv) == 0
        assert np.array_equal(np.asarray(Image.open(out / "photo.png_labels.png")), expected)
        mirror.stop()
    assert len(mirror.requests_for(mirror.hub_path(SPACE, "model_tiny.pth", repo_type="space"), "GET")) == 1


def test_predict_takes_a_released_catseg_pth_as_checkpoint(image, tmp_path, capsys):
    torch.manual_seed(2)
    reference = lmseg.create_model("catseg_tiny", pretrained=False)
    pth = tmp_path / "model_base.pth"
    pth.write_bytes(catseg_pth(reference))
    argv = ["predict", str(image), "--classes", "a,b", "--out", str(tmp_path), "--quiet", "--save-labels"]
    assert main([*argv, "--model", "catseg_tiny", "--checkpoint", str(pth)]) == 0
    from lmseg.segmenter import Segmenter

    expected = Segmenter(reference).predict(str(image), ["a", "b"])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "photo.png_labels.png")), expected)
    # Without --model the variant is detected from the CLIP width: the released ViT-B or ViT-L.
    assert main([*argv, "--checkpoint", str(pth)]) == 1
    assert "unsupported CLIP width 32 (expected 768 or 1024)" in capsys.readouterr().err


def test_random_weights_are_asked_for_and_warned_about_in_one_line(image, tmp_path, capsys):
    argv = ["predict", str(image), "--classes", "a,b", "--model", "catseg_vitb16", "--random-weights",
            "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: lmseg: catseg_vitb16 was built with random CLIP and aggregator weights: its "
                   "segmentations are meaningless; the released weights are catseg_vitb16:catseg (lmseg "
                   "weights list)"]
    assert main([*argv, "--checkpoint", "x.pth"]) == 1
    assert capsys.readouterr().err == "error: --random-weights excludes --checkpoint and a weights tag\n"


def test_offline_and_missing_is_one_error_line(mirror, image, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LMSEG_OFFLINE", "1")
    rc = main(["predict", str(image), "--classes", "a,b", "--model", "catseg_vitb16", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: ")
    assert "model_base.pth" in err[0] and "LMSEG_OFFLINE=1" in err[0]
    assert mirror.requests == []


def test_a_checksum_mismatch_is_one_error_line_and_leaves_nothing(mirror, zoo_sandbox, capsys):
    url = "https://dl.fbaipublicfiles.com/segment_anything/sam_tiny.pth"
    mirror.add_url(url, b"not the recorded bytes")
    zoo_sandbox.register_weights(
        "lmseg_tiny", "bad", description="", license="MIT",
        spatial=zoo.FileSource(url=url, sha256="0" * 64, folder="sam"),
    )
    assert main(["weights", "download", "lmseg_tiny:bad"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"expected {'0' * 64}, got " in err[0]
    assert not (lmseg.weights.cache_dir("sam") / "sam_tiny.pth").exists()


def test_weights_commands_name_bad_input_in_one_line(capsys):
    assert main(["weights", "path", "lmseg_tiny"]) == 1
    assert capsys.readouterr().err == "error: lmseg_tiny has no weights in the zoo (random by design)\n"
    assert main(["weights", "download", "catseg_vitb16:nope"]) == 1
    assert "catseg_vitb16 has no weights tagged 'nope' (known tags: catseg, openai)" in capsys.readouterr().err
