"""lmseg.io: image reading (paths that are not images, size limit, TIFF value scaling,
multi-frame files), class-list checks and atomic writes (permissions, leftover temporaries)."""

import logging
import os
import stat
import time

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from lmseg.io import DEFAULT_MAX_PIXELS, ImageError, atomic_write, load_image, validate_classes
from lmseg.vocabularies import list_vocabularies, load_vocabulary

# -- paths that are not image files ---------------------------------------------------------


def test_a_directory_is_named_as_such(tmp_path):
    with pytest.raises(ImageError, match="is a directory, not an image file"):
        load_image(tmp_path)


def test_a_symbolic_link_loop_is_named_as_such(tmp_path):
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(ImageError, match="symbolic link loop"):
        load_image(tmp_path / "a.png")


def test_missing_files_and_broken_links_are_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found: .*missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(FileNotFoundError, match="broken symbolic link .*gone.png"):
        load_image(tmp_path / "link.png")


@pytest.mark.parametrize("url", ["https://example.com/cat.jpg", "http://host/a b.png", "s3://b/k.png"])
def test_urls_are_refused_plainly(url):
    with pytest.raises(ImageError, match="URLs are not supported") as error:
        load_image(url)
    assert url in str(error.value)  # quoted as given, not folded into a path
    assert "download the file first" in str(error.value)


def test_a_pipe_is_not_opened(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(fifo)  # opening it would block until a writer appears


# -- size limit ----------------------------------------------------------------------------


def test_a_tiny_file_of_a_huge_image_is_refused_by_default(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (9000, 9000)).save(path)  # 81 megapixels in a few kilobytes
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageError, match="too large") as error:
        load_image(path)
    message = str(error.value)
    assert "9000x9000 = 81,000,000 pixels" in message
    assert f"max_pixels={DEFAULT_MAX_PIXELS:,}" in message and "--max-pixels" in message


def test_max_pixels_is_the_limit(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(path)
    with pytest.raises(ImageError, match="too large"):
        load_image(path, max_pixels=119_999)
    assert load_image(path, max_pixels=120_000).shape == (3, 300, 400)
    with pytest.raises(ImageError, match="too large"):
        load_image(torch.zeros(3, 300, 400), max_pixels=100_000)


# -- value scaling ---------------------------------------------------------------------------


def test_32_bit_integer_tiffs_are_scaled_by_their_range(tmp_path):
    for high, full_scale in ((200, 255), (60_000, 65_535), (3_000_000, 2**32 - 1)):
        values = np.linspace(0, high, 12 * 16).reshape(12, 16).astype(np.int32)
        path = tmp_path / f"mode_i_{high}.tif"
        Image.fromarray(values).save(path)
        assert Image.open(path).mode == "I"
        image = load_image(path)
        assert float(image.max()) <= 1.0
        expected = torch.from_numpy(values.astype(np.float32) / np.float32(full_scale))
        torch.testing.assert_close(image[0], expected)
        torch.testing.assert_close(image[2], expected)


def test_integer_images_with_negative_values_are_refused(tmp_path):
    path = tmp_path / "signed.tif"
    tifffile.imwrite(path, np.array([[-5, 0], [7, 9]], np.int32))
    with pytest.raises(ImageError, match="negative integer values .*-5"):
        load_image(path)
    with pytest.raises(ImageError, match="negative"):
        load_image(np.array([[-1, 3]], np.int16))


def test_16_bit_tiffs_are_divided_by_65535(tmp_path):
    values = np.array([[0, 1000], [40_000, 65_535]], np.uint16)
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, values)
    torch.testing.assert_close(load_image(path)[1], torch.from_numpy(values / 65535.0).float())


def test_float_tiffs_must_lie_in_0_1(tmp_path):
    inside = tmp_path / "inside.tif"
    values = np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)
    Image.fromarray(values).save(inside)
    assert Image.open(inside).mode == "F"
    torch.testing.assert_close(load_image(inside)[0], torch.from_numpy(values))
    outside = tmp_path / "outside.tif"
    tifffile.imwrite(outside, values * 1000)
    with pytest.raises(ImageError, match=r"values in \[0, 1e\+03\]; float images must lie in \[0, 1\]$"):
        load_image(outside)


def test_conversion_matches_plain_division(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    rgba = rng.integers(0, 256, (7, 9, 4), dtype=np.uint8)
    expected_rgb = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)
    assert torch.equal(load_image(rgb), expected_rgb)
    assert torch.equal(load_image(rgba), torch.from_numpy(rgba[..., :3] / np.float32(255.0)).permute(2, 0, 1))
    expected_gray = torch.from_numpy(gray.astype(np.float32) / 255.0)
    assert torch.equal(load_image(gray), expected_gray.expand(3, 7, 9))
    path = tmp_path / "gray.png"
    Image.fromarray(gray).save(path)
    assert torch.equal(load_image(path), expected_gray.expand(3, 7, 9))
    big_endian = np.array([[1, 2], [300, 65535]], ">u2")
    torch.testing.assert_close(load_image(big_endian)[0], torch.tensor([[1, 2], [300, 65535]]) / 65535.0)


# -- multi-frame files -----------------------------------------------------------------------


def test_multi_frame_files_use_the_first_frame_and_say_so(tmp_path, caplog):
    frames = [Image.fromarray(np.full((8, 10, 3), value, np.uint8)) for value in (10, 200, 90)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    tiff = tmp_path / "pages.tif"
    frames[0].save(tiff, save_all=True, append_images=frames[1:2])
    single = tmp_path / "single.png"
    frames[1].save(single)
    with caplog.at_level(logging.WARNING, logger="lmseg.io"):
        first = load_image(gif)
        load_image(tiff)
        load_image(single)
    assert float(first.mean()) == pytest.approx(10 / 255, abs=0.02)
    messages = [r.getMessage() for r in caplog.records if r.name == "lmseg.io"]
    assert messages == [f"{gif} has 3 frames; using the first", f"{tiff} has 2 frames; using the first"]


# -- class lists ------------------------------------------------------------------------------


def test_names_equal_up_to_case_and_whitespace_are_duplicates():
    with pytest.raises(ValueError, match=r"'cat' \(at 0\) and 'Cat' \(at 2\), 'cat' \(at 0\) and 'CAT ' \(at 3\)"):
        validate_classes(["cat", "dog", "Cat", "CAT "])
    with pytest.raises(ValueError, match="'big  cat' .* and 'Big cat'"):
        validate_classes(["big  cat", "Big cat"])
    with pytest.raises(ValueError, match=r"'bed' \(at 0\) and 'bed ' \(at 1\)"):
        validate_classes(["bed", "bed "])


def test_names_are_kept_byte_for_byte():
    assert validate_classes(["bed ", "Cat", "sofa, couch"]) == ["bed ", "Cat", "sofa, couch"]


@pytest.mark.parametrize("name", list_vocabularies())
def test_every_shipped_vocabulary_is_valid(name):
    classes = load_vocabulary(name)
    assert validate_classes(classes) == classes


# -- atomic writes ------------------------------------------------------------------------------


def _write_with_umask(path, umask):
    old = os.umask(umask)
    try:
        atomic_write(path, lambda tmp: open(tmp, "w").write("x"))  # noqa: SIM115
    finally:
        os.umask(old)
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_get_the_users_umask(tmp_path):
    assert _write_with_umask(tmp_path / "a.json", 0o022) == 0o644
    assert _write_with_umask(tmp_path / "b.json", 0o077) == 0o600
    assert _write_with_umask(tmp_path / "c.json", 0o002) == 0o664


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("old")
    path.chmod(0o640)
    assert _write_with_umask(path, 0o022) == 0o640
    assert path.read_text() == "x"


def test_stale_temporaries_of_the_target_are_removed(tmp_path):
    target = tmp_path / "model.safetensors"
    stale = tmp_path / ".model.safetensors.k3x_9a0q.tmp"  # left by a killed write
    fresh = tmp_path / ".model.safetensors.0123abcd.tmp"  # maybe a live write right now
    other = tmp_path / ".model.safetensors.bak.0123abcd.tmp"  # another target's
    for path in (stale, fresh, other):
        path.write_text("partial")
    an_hour_ago = time.time() - 3600
    for path in (stale, other):
        os.utime(path, (an_hour_ago, an_hour_ago))
    atomic_write(target, lambda tmp: open(tmp, "w").write("new"))  # noqa: SIM115
    assert target.read_text() == "new"
    assert not stale.exists()
    assert fresh.exists() and other.exists()


def test_a_failed_write_leaves_the_target_and_no_temporary(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_text("old")

    def fail(tmp):
        open(tmp, "w").write("half")  # noqa: SIM115
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
