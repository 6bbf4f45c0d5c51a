"""Hub files both ways against the loopback stand-in: verified downloads, offline, push_to_hub."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import huggingface_hub.utils._http as hf_http
import pytest
import torch
from hub_server import lmseg_safetensors

import lmseg
from lmseg.hub import hub_download, model_card, parse_hub_id
from lmseg.weights import ChecksumError, WeightsNotFoundError

pytest_plugins = ["hub_server"]  # the loopback stand-in and its fixtures

REPO = "lmseg-test/files"
DATA = os.urandom(100_000)
SHA = hashlib.sha256(DATA).hexdigest()


def test_parse_hub_id():
    assert parse_hub_id("hf-hub:org/name") == ("org/name", None)
    assert parse_hub_id("hf-hub:org/name@v1.0") == ("org/name", "v1.0")
    with pytest.raises(ValueError, match="hf-hub:org/name"):
        parse_hub_id("hf-hub:nameonly")


def test_download_through_the_mirror_then_from_the_cache_with_the_server_gone(mirror):
    mirror.add_repo_file(REPO, "w.bin", DATA, repo_type="space")
    path = hub_download(REPO, "w.bin", repo_type="space")
    assert path.read_bytes() == DATA
    assert path.resolve().name == SHA  # huggingface_hub's cache, blob named by the Hub's sha256
    assert mirror.requests_for(mirror.hub_path(REPO, "w.bin", repo_type="space"), "GET")
    mirror.stop()
    assert hub_download(REPO, "w.bin", repo_type="space").read_bytes() == DATA


def test_a_wrong_recorded_digest_is_refused_and_nothing_stays_in_the_cache(mirror):
    mirror.add_repo_file(REPO, "w.bin", DATA)
    with pytest.raises(ChecksumError, match=f"expected {'a' * 64}, got {SHA}"):
        hub_download(REPO, "w.bin", sha256="a" * 64)
    from huggingface_hub import constants

    left = [p for p in Path(constants.HF_HUB_CACHE).rglob("*") if p.is_file() or p.is_symlink()]
    assert not [p for p in left if p.name in (SHA, "w.bin")]


def test_a_corrupt_blob_in_the_cache_is_detected_and_fetched_again(mirror):
    mirror.add_repo_file(REPO, "w.bin", DATA)
    path = hub_download(REPO, "w.bin")
    blob = path.resolve()
    blob.write_bytes(DATA[:-1] + bytes([DATA[-1] ^ 1]))
    again = hub_download(REPO, "w.bin")
    assert again.read_bytes() == DATA
    assert len(mirror.requests_for(mirror.hub_path(REPO, "w.bin"), "GET")) == 2


def test_a_server_error_on_the_first_request_is_retried(mirror):
    mirror.add_repo_file(REPO, "w.bin", DATA)
    mirror.fail("HEAD", mirror.hub_path(REPO, "w.bin"), "500")
    assert hub_download(REPO, "w.bin").read_bytes() == DATA


def test_unreachable_and_nothing_cached_is_one_quick_clear_error(mirror, monkeypatch):
    mirror.stop()

    def no_retry(seconds: float) -> None:
        raise AssertionError("huggingface_hub's retry loop ran")

    monkeypatch.setattr(hf_http.time, "sleep", no_retry)
    with pytest.raises(WeightsNotFoundError, match=r"could not download http://127\.0\.0\.1:\d+/huggingface\.co/"
                       r"lmseg-test/files/resolve/main/w\.bin: unreachable .*HF_HUB_OFFLINE=1"):
        hub_download(REPO, "w.bin")


def test_missing_repository_or_file_is_named(mirror):
    mirror.add_repo_file(REPO, "w.bin", DATA)
    with pytest.raises(WeightsNotFoundError, match=r"other\.bin: HTTP 404"):
        hub_download(REPO, "other.bin")
    with pytest.raises(WeightsNotFoundError, match=r"nobody/nothing/resolve/main/w\.bin: HTTP 404"):
        hub_download("nobody/nothing", "w.bin")


def test_offline_sends_nothing_and_names_url_and_cache(mirror, monkeypatch):
    mirror.add_repo_file(REPO, "w.bin", DATA)
    monkeypatch.setenv("LMSEG_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match=r"https://huggingface\.co/lmseg-test/files/resolve/main/"
                       r"w\.bin is not in the Hugging Face cache \(.*hf-cache\) and offline mode"):
        hub_download(REPO, "w.bin")
    assert mirror.requests == []


def test_push_to_hub_then_load_back_by_id_and_revision(mirror, tmp_path):
    model = lmseg.create_model("lmseg_tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    commit = lmseg.push_to_hub(model, "me/tiny", token="hf_test", training="synthetic shapes",
                               metrics={"A-150": 1.5})
    repo = mirror.repos[("model", "me/tiny")]
    assert repo.branches["main"] == commit
    assert set(repo.commits[commit]) == {"model.safetensors", "config.json", "README.md"}
    card = repo.commits[commit]["README.md"].decode()
    assert "library_name: lmseg" in card and "synthetic shapes" in card and "| A-150 | 1.5 |" in card
    assert 'lmseg.load_model("hf-hub:me/tiny")' in card

    by_id = lmseg.load_model("hf-hub:me/tiny")
    pinned = lmseg.create_model("lmseg_tiny", pretrained=f"hf-hub:me/tiny@{commit}")
    images, text = torch.rand(1, 3, 96, 96), torch.randn(3, 4, 32)
    with torch.no_grad():
        expected = model(images, text)
        assert torch.equal(by_id(images, text), expected)
        assert torch.equal(pinned(images, text), expected)

    # A second push to a branch leaves main as it was.
    other = lmseg.create_model("lmseg_tiny")
    branch_commit = lmseg.push_to_hub(other, "me/tiny", revision="v2", token="hf_test")
    assert repo.branches["v2"] == branch_commit and repo.branches["main"] == commit
    v2 = lmseg.load_model("hf-hub:me/tiny@v2")
    assert torch.equal(v2.state_dict()["decoder.head.weight"], other.state_dict()["decoder.head.weight"])


def test_model_card_says_what_is_not_known(tmp_path):
    card = model_card(lmseg.create_model("catseg_tiny"), "me/x")
    assert "Training data\n\nNot recorded." in card and "Metrics\n\nNot measured." in card
    assert '"name": "catseg_tiny"' in card


def test_a_pushed_file_loads_by_hub_id_in_the_cli(mirror, tmp_path):
    from PIL import Image

    from lmseg.cli import main

    model = lmseg.create_model("catseg_tiny")
    mirror.add_repo_file("me/cat", "model.safetensors", lmseg_safetensors(model, tmp_path))
    image = tmp_path / "img.png"
    Image.new("RGB", (32, 24)).save(image)
    assert main(["predict", str(image), "--classes", "a,b", "--checkpoint", "hf-hub:me/cat",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert (tmp_path / "out" / "img.png_overlay.png").is_file()
