"""Plain-URL downloads against the loopback stand-in: verified, atomic, resumable, retried, offline."""

from __future__ import annotations

import hashlib
import os

import pytest

import lmseg.download
from lmseg.download import DownloadError, download_url, verify_file
from lmseg.weights import ChecksumError, WeightsNotFoundError, mirror_url

pytest_plugins = ["hub_server"]  # the loopback stand-in and its fixtures

URL = "https://dl.example.org/weights/model.pth"
DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()


def test_mirror_maps_host_and_path_under_the_base(monkeypatch):
    monkeypatch.delenv("LMSEG_MIRROR", raising=False)
    assert mirror_url(URL) == URL
    monkeypatch.setenv("LMSEG_MIRROR", "http://mirror.example:8080/models/")
    assert mirror_url(URL) == "http://mirror.example:8080/models/dl.example.org/weights/model.pth"
    assert mirror_url("https://h.org/a/b?x=1") == "http://mirror.example:8080/models/h.org/a/b?x=1"


def test_first_download_is_verified_then_served_from_the_cache_with_the_server_gone(mirror, tmp_path):
    path = mirror.add_url(URL, DATA)
    dest = tmp_path / "cache" / "model.pth"
    assert download_url(URL, dest, sha256=SHA, md5=MD5, size=len(DATA)) == dest
    assert dest.read_bytes() == DATA
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.pth", "model.pth.lock"]
    assert [r.method for r in mirror.requests_for(path)] == ["GET"]
    mirror.stop()
    assert download_url(URL, dest, sha256=SHA, size=len(DATA)).read_bytes() == DATA


def test_checksum_mismatch_deletes_the_download_and_names_both_values(mirror, tmp_path):
    mirror.add_url(URL, DATA)
    dest = tmp_path / "model.pth"
    wrong = "0" * 64
    with pytest.raises(ChecksumError, match=f"expected {wrong}, got {SHA}"):
        download_url(URL, dest, sha256=wrong)
    assert not dest.exists() and not dest.with_name("model.pth.part").exists()
    with pytest.raises(ChecksumError, match=f"md5 mismatch: expected {'1' * 32}, got {MD5}"):
        download_url(URL, dest, md5="1" * 32)
    assert not dest.exists()


def test_a_connection_cut_mid_file_resumes_with_a_range_request(mirror, tmp_path):
    path = mirror.add_url(URL, DATA)
    mirror.fail("GET", path, "cut")
    dest = tmp_path / "model.pth"
    assert download_url(URL, dest, sha256=SHA, size=len(DATA)).read_bytes() == DATA
    first, second = mirror.requests_for(path, "GET")
    assert "Range" not in first.headers
    offset = int(second.headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < offset <= len(DATA) // 2  # what arrived before the cut (whole blocks) is kept


def test_a_partial_file_left_by_an_earlier_run_is_resumed(mirror, tmp_path):
    path = mirror.add_url(URL, DATA)
    dest = tmp_path / "model.pth"
    dest.with_name("model.pth.part").write_bytes(DATA[:1000])
    assert download_url(URL, dest, sha256=SHA).read_bytes() == DATA
    assert mirror.requests_for(path, "GET")[0].headers["Range"] == "bytes=1000-"


def test_a_server_error_is_retried_then_succeeds(mirror, tmp_path):
    path = mirror.add_url(URL, DATA)
    mirror.fail("GET", path, "500", "500")
    dest = tmp_path / "model.pth"
    assert download_url(URL, dest, sha256=SHA).read_bytes() == DATA
    assert len(mirror.requests_for(path, "GET")) == 3


def test_retries_are_bounded(mirror, tmp_path):
    path = mirror.add_url(URL, DATA)
    mirror.fail("GET", path, *["500"] * 10)
    with pytest.raises(DownloadError, match="HTTP 500"):
        download_url(URL, tmp_path / "model.pth", sha256=SHA)
    assert len(mirror.requests_for(path, "GET")) == lmseg.download.RETRIES + 1
    assert not (tmp_path / "model.pth").exists()


def test_a_missing_file_fails_at_once_naming_url_and_cache_path(mirror, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404.*cache path .*model.pth"):
        download_url(URL, tmp_path / "model.pth")
    assert len(mirror.requests) == 1


def test_an_unreachable_host_costs_one_quick_attempt(mirror, tmp_path, monkeypatch):
    mirror.stop()
    slept: list[float] = []
    monkeypatch.setattr(lmseg.download.time, "sleep", slept.append)
    with pytest.raises(DownloadError, match=r"could not download .* LMSEG_OFFLINE=1"):
        download_url(URL, tmp_path / "model.pth", sha256=SHA)
    assert slept == []  # no retry loop


def test_offline_mode_sends_nothing(mirror, tmp_path, monkeypatch):
    mirror.add_url(URL, DATA)
    monkeypatch.setenv("LMSEG_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match=r"not in the cache .*offline mode .*https://dl.example.org"):
        download_url(URL, tmp_path / "model.pth")
    assert mirror.requests == []


def test_a_corrupt_file_in_the_cache_is_detected_and_fetched_again(mirror, tmp_path):
    path = mirror.add_url(URL, DATA)
    dest = download_url(URL, tmp_path / "model.pth", sha256=SHA)
    broken = bytearray(DATA)
    broken[100] ^= 0xFF
    dest.write_bytes(bytes(broken))  # same size, different bytes
    assert download_url(URL, dest, sha256=SHA).read_bytes() == DATA
    assert len(mirror.requests_for(path, "GET")) == 2


def test_a_file_without_published_digest_is_checked_against_its_first_verification(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    first = verify_file(path)
    assert first == hashlib.sha256(b"abc").hexdigest()
    path.write_bytes(b"abd")
    with pytest.raises(ChecksumError, match=f"expected {first}"):
        verify_file(path)
