"""The files of a prediction: label-map bit depth, probabilities, and atomic (re)writes that a
failure midway never leaves truncated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmseg.cli import main
from lmseg.segmentation import Segmentation, save_label_map

pytestmark = pytest.mark.filterwarnings("ignore::lmseg.prompts.MissingBankWarning")


@pytest.mark.parametrize("num_classes", [255, 256, 300])
def test_label_maps_leave_255_to_unlabelled_pixels_in_8_bit_files(tmp_path, num_classes) -> None:
    """8-bit label maps reserve 255 for unlabelled pixels (lmseg.data folders, the benchmarks):
    a 256th class must go to a 16-bit file, or it would read back as unlabelled."""
    from lmseg.data.folder import default_ignore_value

    labels = np.arange(12 * 25).reshape(12, 25) % num_classes
    path = save_label_map(labels, tmp_path / "labels.png", num_classes=num_classes)
    image = Image.open(path)
    read = np.asarray(image).astype(np.int64)
    assert np.array_equal(read, labels)
    ignore = default_ignore_value(num_classes)
    assert not (read == ignore).any()  # no class reads back as the ignore value
    assert image.mode == ("P" if num_classes <= 255 else "I;16")


def test_probabilities_file_holds_float16_and_the_class_names(tmp_path) -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((3, 5, 7), dtype=np.float32)
    result = Segmentation(labels=probs.argmax(0).astype(np.int32), classes=["a", "b c", "d"],
                          probabilities=probs)
    path = result.save_probabilities(tmp_path / "p.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]  # no p.npz.npz, no temp file
    with np.load(path, allow_pickle=False) as npz:
        assert npz["classes"].tolist() == ["a", "b c", "d"]
        assert npz["probabilities"].dtype == np.float16
        np.testing.assert_allclose(npz["probabilities"], probs, atol=5e-4)
    with pytest.raises(FileExistsError):
        result.save_probabilities(path)
    with pytest.raises(ValueError, match="no probabilities"):
        Segmentation(labels=result.labels, classes=result.classes).save_probabilities(tmp_path / "q.npz")


def _image(path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# output -> the writer it goes through, and the end of its file name
WRITERS = {
    "overlay": (Image.Image, "save", "_overlay.png"),
    "labels": (Image.Image, "save", "_labels.png"),
    "probs": (np, "savez", "_probs.npz"),
    "summary": (Path, "write_text", "_summary.json"),
}


@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_write_failing_midway_leaves_the_old_file_whole(tmp_path, monkeypatch, capsys, kind) -> None:
    image = _image(tmp_path / "img.png")
    out = tmp_path / "out"
    args = ["predict", str(image), "--classes", "a,b", "--model", "lmseg_tiny", "--workers", "0",
            "--outputs", "all", "--out", str(out)]
    assert main(args) == 0
    owner, name, suffix = WRITERS[kind]
    target = out / f"img.png{suffix}"
    before = target.read_bytes()
    capsys.readouterr()
    original = getattr(owner, name)

    def half_then_fail(*call, **kwargs):
        # The file being written (a path, or numpy's file object) gets half its bytes, then the
        # disk is full.
        dest = next(a for a in call if isinstance(a, (str, Path)) or hasattr(a, "write"))
        where = dest.name if hasattr(dest, "write") else str(dest)
        if suffix not in where:
            return original(*call, **kwargs)
        if hasattr(dest, "write"):
            dest.write(before[: len(before) // 2])
        else:
            Path(where).write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.chdir(tmp_path)  # a relative path written by mistake stays in the test's folder
    monkeypatch.setattr(owner, name, half_then_fail)
    rc = main([*args, "--overwrite"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert rc == 1 and "No space left on device" in err and str(image) in err
    assert target.read_bytes() == before  # the old file, whole
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left
