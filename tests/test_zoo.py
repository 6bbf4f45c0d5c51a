"""The zoo: table, resolution of pretrained=, CAT-Seg download + conversion + cache, warnings."""

from __future__ import annotations

import logging
import re
import warnings

import pytest
import torch
from hub_server import catseg_pth, lmseg_safetensors, open_clip_safetensors, sam_pth, to_bytes

import lmseg
from lmseg import convert, zoo
from lmseg.checkpoint import CheckpointError
from lmseg.factory import get_config
from lmseg.weights import RandomWeightsWarning, WeightsNotFoundError

pytest_plugins = ["hub_server"]  # the loopback stand-in and its fixtures

SPACE = "lmseg-test/catseg-tiny-weights"


def seeded(name: str, seed: int = 1) -> lmseg.LMSeg:
    return lmseg.create_model(name, pretrained=False, seed=seed)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def catseg_release(mirror, zoo_sandbox):
    """catseg_tiny:test, a released-format CAT-Seg .pth on a Space of the stand-in."""
    reference = seeded("catseg_tiny")
    mirror.add_repo_file(SPACE, "model_tiny.pth", catseg_pth(reference), repo_type="space")
    zoo_sandbox.register_weights(
        "catseg_tiny", "test", description="CAT-Seg layout at tiny size", license="MIT",
        checkpoint=zoo.FileSource(repo_id=SPACE, repo_type="space", filename="model_tiny.pth"),
        checkpoint_format="catseg",
    )
    return reference


# -- the table ----------------------------------------------------------------------------------
def test_released_weights_are_in_the_table():
    b = zoo.get_weights("catseg_vitb16", "catseg")
    assert b.default and b.checkpoint_format == "catseg"
    assert (b.checkpoint.repo_id, b.checkpoint.repo_type, b.checkpoint.filename) == (
        "hamacojr/CAT-Seg-weights", "space", "model_base.pth")
    assert zoo.get_weights("catseg_vitl14", "catseg").checkpoint.filename == "model_large.pth"
    # CAT-Seg README (upstream 6d3a188), six benchmarks each.
    assert b.metrics == {"A-847": 12.0, "PC-459": 19.0, "A-150": 31.8, "PC-59": 57.5, "PAS-20": 94.6,
                         "PAS-20b": 77.3}
    assert zoo.get_weights("catseg_vitl14", "catseg").metrics["A-150"] == 37.9
    lmseg_default = zoo.get_weights("lmseg_vitb16_samb", zoo.default_tag("lmseg_vitb16_samb"))
    assert lmseg_default.checkpoint is None and lmseg_default.random_parts(lmseg.factory.get_config("lmseg_vitb16_samb")) == ("aggregator",)
    assert "UNTRAINED" in lmseg_default.description
    assert zoo.default_tag("lmseg_tiny") is None and zoo.default_tag("catseg_tiny") is None


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_sam_files_record_full_digests_matching_their_names(variant):
    source = zoo.SAM_WEIGHTS[variant]
    assert source.url == f"https://dl.fbaipublicfiles.com/segment_anything/{source.name}"
    short = re.fullmatch(r"sam_vit_[blh]_([0-9a-f]{6})\.pth", source.name).group(1)
    assert source.md5.startswith(short)  # the file name carries the start of its MD5
    assert re.fullmatch(r"[0-9a-f]{64}", source.sha256) and source.size > 100_000_000


def test_clip_tags_resolve_to_open_clips_hub_files():
    source = zoo.clip_source("ViT-B-16", "openai")
    assert (source.repo_id, source.filename) == ("timm/vit_base_patch16_clip_224.openai",
                                                 "open_clip_model.safetensors")
    with pytest.raises(WeightsNotFoundError, match="not an open_clip pretrained tag|known tags"):
        zoo.clip_source("ViT-B-16", "nope")


def test_register_weights_defaults_and_duplicates(zoo_sandbox):
    zoo_sandbox.register_weights("catseg_tiny", "a", description="", license="MIT", vision_language="x")
    with pytest.raises(ValueError, match="already registered"):
        zoo_sandbox.register_weights("catseg_tiny", "a", description="", license="MIT")
    zoo_sandbox.register_weights("catseg_tiny", "b", description="", license="MIT", default=True)
    zoo_sandbox.register_weights("catseg_tiny", "c", description="", license="MIT", default=True)
    assert zoo.default_tag("catseg_tiny") == "c"
    assert [e.tag for e in zoo.list_weights("catseg_tiny") if e.default] == ["c"]
    with pytest.raises(ValueError, match="exactly one of url= or repo_id="):
        zoo.FileSource(url="https://x/y", repo_id="a/b", filename="f")


# -- resolution ---------------------------------------------------------------------------------
def test_random_weights_warn_once_naming_the_parts():
    with pytest.warns(RandomWeightsWarning, match=r"catseg_vitb16 was built with random CLIP and "
                      r"aggregator weights: its segmentations are meaningless"):
        lmseg.create_model("catseg_vitb16", pretrained=False)
    plan = zoo.resolve(get_config("lmseg_vitb16_samb"), False)
    assert plan.random_parts == ("CLIP", "SAM", "aggregator")
    assert "random CLIP, SAM and aggregator weights" in plan.warning() and "\n" not in plan.warning()
    # The default LMSeg plan loads CLIP and SAM and says plainly that nothing trained exists.
    default = zoo.WeightsPlan("lmseg_vitb16_samb", "lmseg_vitb16_samb:openai", vision_language="c", spatial="s",
                              random_parts=("aggregator",))
    assert "untrained aggregator" in default.warning()
    assert "no trained weights have been released for it" in default.warning()


def test_tiny_variants_are_random_by_design_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lmseg.create_model("lmseg_tiny")
        lmseg.create_model("catseg_tiny", pretrained=False)
    assert zoo.resolve(get_config("lmseg_tiny"), True).by_design


def test_unknown_weights_name_the_choices(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"neither a file.*tags: catseg, openai"):
        lmseg.create_model("catseg_vitb16", pretrained="nope")
    with pytest.raises(WeightsNotFoundError, match="checkpoint not found"):
        lmseg.load_model(tmp_path / "missing.pth")


def test_offline_default_weights_fail_in_one_line_without_a_request(mirror, monkeypatch):
    monkeypatch.setenv("LMSEG_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        lmseg.create_model("catseg_vitb16")
    message = str(info.value)
    assert "\n" not in message and "hamacojr/CAT-Seg-weights/resolve/main/model_base.pth" in message
    assert "LMSEG_OFFLINE=1" in message and "HF_HUB_OFFLINE=1" in message and "cache" in message
    assert mirror.requests == []


# -- CAT-Seg releases ---------------------------------------------------------------------------
def test_catseg_release_is_downloaded_converted_cached_then_used_with_the_server_gone(catseg_release, mirror, monkeypatch):
    model = lmseg.create_model("catseg_tiny", "test")
    assert same_weights(model, catseg_release)
    converted = zoo.cached_files(zoo.get_weights("catseg_tiny", "test"), get_config("catseg_tiny"))
    assert converted["checkpoint"].name == "test.safetensors"
    mirror.stop()

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(convert, "convert_catseg", no_conversion)
    again = lmseg.create_model("catseg_tiny", "test")
    assert same_weights(again, catseg_release)


def test_a_modified_converted_file_is_detected_and_converted_again(catseg_release, mirror):
    lmseg.create_model("catseg_tiny", "test")
    path = zoo.cached_files(zoo.get_weights("catseg_tiny", "test"), get_config("catseg_tiny"))["checkpoint"]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside a tensor: safetensors itself would not notice
    path.write_bytes(bytes(data))
    assert same_weights(lmseg.create_model("catseg_tiny", "test"), catseg_release)


def test_a_catseg_pth_given_as_a_path_is_detected_by_content_and_converted_once(tmp_path, monkeypatch):
    reference = seeded("catseg_tiny")
    path = tmp_path / "weights.safetensors"  # a misleading name: the content decides
    path.write_bytes(catseg_pth(reference))
    assert same_weights(lmseg.create_model("catseg_tiny", pretrained=path), reference)

    monkeypatch.setattr(convert, "convert_catseg", lambda *a, **k: pytest.fail("converted twice"))
    assert same_weights(lmseg.create_model("catseg_tiny", pretrained=str(path)), reference)


def test_foreign_torch_files_are_refused_with_a_reason(tmp_path):
    path = tmp_path / "other.pth"
    path.write_bytes(to_bytes({"model": {"backbone.weight": torch.zeros(2)}}))
    with pytest.raises(CheckpointError, match="not a CAT-Seg checkpoint"):
        lmseg.create_model("catseg_tiny", pretrained=path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world, not weights")
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint, nor a PyTorch"):
        lmseg.load_model(junk)


def test_open_clip_random_init_line_is_hidden_when_weights_follow(catseg_release, caplog):
    with caplog.at_level(logging.WARNING), pytest.warns(RandomWeightsWarning):
        lmseg.create_model("catseg_tiny", "test")
        lmseg.create_model("catseg_vitb16", pretrained=False)  # lmseg's own warning says it
    assert "initialized randomly" not in caplog.text


# -- parts: CLIP from the Hub, SAM from a URL ---------------------------------------------------
def test_clip_and_sam_parts_are_fetched_and_the_aggregator_stays_random(mirror, zoo_sandbox):
    reference = seeded("lmseg_tiny")
    mirror.add_repo_file("lmseg-test/tiny-clip", "open_clip_model.safetensors", open_clip_safetensors(reference))
    sam_url = "https://dl.fbaipublicfiles.com/segment_anything/sam_tiny_test.pth"
    mirror.add_url(sam_url, sam_pth(reference))
    zoo_sandbox.register_weights(
        "lmseg_tiny", "parts", description="CLIP + SAM", license="MIT",
        vision_language=zoo.FileSource(
            repo_id="lmseg-test/tiny-clip", filename="open_clip_model.safetensors"
        ),
        spatial=zoo.FileSource(url=sam_url, folder="sam"),
    )
    plan = zoo.resolve(get_config("lmseg_tiny"), "parts")
    assert plan.random_parts == ("aggregator",) and plan.checkpoint is None
    model = lmseg.create_model("lmseg_tiny", "parts")
    own, ref = model.state_dict(), reference.state_dict()
    for key in ref:
        if key.startswith(("vision_language_encoder.", "spatial_encoder.")):
            assert torch.equal(own[key], ref[key]), key
    assert not torch.equal(own["decoder.head.weight"], ref["decoder.head.weight"])  # untrained


def test_lmseg_checkpoint_entries_load_as_is(mirror, zoo_sandbox, tmp_path):
    reference = seeded("lmseg_tiny", seed=3)
    mirror.add_repo_file("lmseg-test/trained", "model.safetensors", lmseg_safetensors(reference, tmp_path))
    zoo_sandbox.register_weights(
        "lmseg_tiny", "trained", description="trained", license="MIT", default=True,
        checkpoint=zoo.FileSource(repo_id="lmseg-test/trained", filename="model.safetensors"),
    )
    assert same_weights(lmseg.create_model("lmseg_tiny"), reference)  # the new default tag


def test_the_docs_zoo_table_covers_the_zoo():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "weights.md").read_text()
    for entry in zoo.list_weights():
        assert f"`{entry.variant}:{entry.tag}`" in page, entry
        if entry.metrics:
            row = next(line for line in page.splitlines() if line.startswith(f"| `{entry.variant}:{entry.tag}` ("))
            assert [float(c) for c in row.split("|")[2:8]] == list(entry.metrics.values())
    for source in zoo.SAM_WEIGHTS.values():
        assert f"`{source.name}` | {source.size:,} B | `{source.md5}`" in page
