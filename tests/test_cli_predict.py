"""``lmseg predict`` over folders: listing, output names, resume, broken images, checks that come
before any model is built, and what the outputs hold."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lmseg.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::lmseg.prompts.MissingBankWarning")

MODEL = ["--model", "lmseg_tiny", "--workers", "0"]


def write_image(path: Path, height: int = 40, width: int = 60, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def summary_line(out: str) -> str:
    return [line for line in out.splitlines() if "written" in line][-1]


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command builds a model."""

    def refuse(args: object) -> None:
        raise AssertionError("the model was built before the arguments were checked")

    monkeypatch.setattr("lmseg.cli.predict.model_from_args", refuse)


def test_a_folder_is_listed_recursively_and_its_structure_mirrored(tmp_path: Path, capsys) -> None:
    photos = tmp_path / "photos"
    write_image(photos / "a" / "x.png", seed=1)
    write_image(photos / "b" / "x.png", seed=2)
    write_image(photos / "b" / "x.jpg", 30, 50, seed=3)
    write_image(photos / "deep" / "er" / "y.PNG", seed=4)  # suffixes in any case
    write_image(photos / ".cache" / "h.png")  # hidden folder
    write_image(photos / ".h.png")  # hidden file
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["predict", str(photos), "--classes", "cat,dog", *MODEL, "--out", str(out)]) == 0
    names = ["a/x.png", "b/x.jpg", "b/x.png", "deep/er/y.PNG"]
    expected = {f"{n}_{kind}.png" for n in names for kind in ("overlay", "labels")}
    assert files_under(out) == expected | {"lmseg-predict.json"}
    for name in names:
        height, width = Image.open(photos / name).size[::-1]
        assert Image.open(out / f"{name}_labels.png").size == (width, height)
        overlay = Image.open(out / f"{name}_overlay.png")
        assert overlay.height >= height and overlay.width > width  # the image and a legend
    assert summary_line(capsys.readouterr().out).startswith("4 written, 0 skipped as done, 0 failed")


def test_same_stems_get_their_own_outputs(tmp_path: Path) -> None:
    png, jpg = write_image(tmp_path / "x.png", seed=1), write_image(tmp_path / "x.jpg", seed=2)
    out = tmp_path / "out"
    assert main(["predict", str(png), str(jpg), "--classes", "a,b", *MODEL, "--out", str(out)]) == 0
    assert {"x.png_overlay.png", "x.jpg_overlay.png", "x.png_labels.png", "x.jpg_labels.png"} <= (
        files_under(out)
    )


def test_two_files_that_would_share_outputs_are_refused_up_front(
    tmp_path: Path, capsys, no_model
) -> None:
    first, second = write_image(tmp_path / "a" / "x.png"), write_image(tmp_path / "b" / "x.png")
    rc = main(["predict", str(first), str(second), "--classes", "a", *MODEL,
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and str(first) in err and str(second) in err and "same outputs" in err
    assert not (tmp_path / "out").exists()


def test_labels_equal_the_segmenter_of_each_image(tmp_path: Path) -> None:
    """Batched runs (two equal sizes share a pass, a third size runs alone) give the labels of
    Segmenter.predict image by image (by default the model sees the image as it is)."""
    import lmseg

    paths = [write_image(tmp_path / "in" / f"{i}.png", *size, seed=i)
             for i, size in enumerate([(40, 60), (40, 60), (52, 36)])]
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "in"), "--classes", "sky,grass,box", *MODEL,
                 "--batch-size", "3", "--out", str(out)]) == 0
    segmenter = lmseg.Segmenter(lmseg.create_model("lmseg_tiny"))
    for path in paths:
        expected = segmenter.predict(path, ["sky", "grass", "box"]).labels
        written = np.asarray(Image.open(out / f"{path.name}_labels.png"))
        assert np.array_equal(written, expected), path.name


def test_the_test_resize_feeds_the_model_and_outputs_keep_the_image_size(tmp_path: Path) -> None:
    """--test-size 640 resizes images so their short side is 640 (antialiased bilinear, as
    lmseg eval) and upsamples the labels back to the image's size."""
    import lmseg

    path = write_image(tmp_path / "img.png", 40, 60)
    out = tmp_path / "out"
    assert main(["predict", str(path), "--classes", "sky,grass", *MODEL, "--test-size", "640",
                 "--out", str(out)]) == 0
    segmenter = lmseg.Segmenter(lmseg.create_model("lmseg_tiny"))
    image = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1).float() / 255
    resized = F.interpolate(image[None], size=(640, 960), mode="bilinear", antialias=True)[0]
    text = segmenter.text_embeddings(["sky", "grass"])
    expected = segmenter.label_maps([resized.clamp(0, 1)], text, [(40, 60)])[0]
    written = np.asarray(Image.open(out / "img.png_labels.png"))
    assert np.array_equal(written, expected.numpy())


def test_a_rerun_skips_finished_images_and_keeps_existing_files(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    for i in range(3):
        write_image(folder / f"{i}.png", seed=i)
    out = tmp_path / "out"
    args = ["predict", str(folder), "--classes", "a,b", *MODEL, "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    (out / "0.png_overlay.png").write_bytes(b"kept")  # finished outputs are never rewritten
    (out / "1.png_labels.png").unlink()  # 1.png is unfinished: only its label map is missing
    overlay_1 = (out / "1.png_overlay.png").read_bytes()
    assert main(args) == 0
    assert summary_line(capsys.readouterr().out).startswith("1 written, 2 skipped as done, 0 failed")
    assert (out / "0.png_overlay.png").read_bytes() == b"kept"
    assert (out / "1.png_overlay.png").read_bytes() == overlay_1
    assert (out / "1.png_labels.png").is_file()

    assert main([*args, "--overwrite"]) == 0
    assert summary_line(capsys.readouterr().out).startswith("3 written, 0 skipped as done")
    assert Image.open(out / "0.png_overlay.png").format == "PNG"  # rewritten


def test_a_rerun_with_other_settings_is_refused(tmp_path: Path, capsys) -> None:
    """Resuming into outputs made with another class list would mix the two runs."""
    path = write_image(tmp_path / "img.png")
    out = tmp_path / "out"
    assert main(["predict", str(path), "--classes", "a,b", *MODEL, "--out", str(out)]) == 0
    capsys.readouterr()
    before = (out / "img.png_labels.png").read_bytes()
    rc = main(["predict", str(path), "--classes", "a,b,c", *MODEL, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "other settings (classes differ)" in err and "--overwrite" in err
    assert (out / "img.png_labels.png").read_bytes() == before
    assert main(["predict", str(path), "--classes", "a,b,c", *MODEL, "--out", str(out),
                 "--overwrite"]) == 0


def test_broken_images_are_reported_and_skipped(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    write_image(folder / "a.png", seed=1)
    (folder / "b.png").write_bytes(b"this is not a png")
    data = write_image(folder / "c.png", seed=2).read_bytes()
    (folder / "c.png").write_bytes(data[: len(data) // 2])  # truncated
    write_image(folder / "d.png", seed=3)
    out = tmp_path / "out"
    # Two worker processes decode while the model runs.
    rc = main(["predict", str(folder), "--classes", "a,b", "--model", "lmseg_tiny",
               "--workers", "2", "--batch-size", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert str(folder / "b.png") in errors[0] and str(folder / "c.png") in errors[1]
    assert summary_line(captured.out).startswith("2 written, 0 skipped as done, 2 failed")
    assert files_under(out) == {f"{n}.png_{k}.png" for n in "ad" for k in ("overlay", "labels")} | {
        "lmseg-predict.json"
    }


def test_all_outputs_agree_with_each_other(tmp_path: Path) -> None:
    classes = ["sky", "grass", "box", "road"]
    folder = tmp_path / "in"
    write_image(folder / "a.png", 40, 60, seed=1)
    write_image(folder / "sub" / "b.png", 30, 20, seed=2)
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--classes", ",".join(classes), *MODEL,
                 "--outputs", "all", "--out", str(out)]) == 0
    with open(out / "summary.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [row["name"] for row in rows] == ["a.png", "sub/b.png"]
    for row in rows:
        name = row["name"]
        labels_png = Image.open(out / f"{name}_labels.png")
        assert labels_png.mode == "P"  # palette PNG for K <= 255
        labels = np.asarray(labels_png)
        with np.load(out / f"{name}_probs.npz") as npz:
            assert npz["classes"].tolist() == classes
            probs = npz["probabilities"]
        assert probs.dtype == np.float16 and probs.shape == (4, *labels.shape)
        # the label of a pixel is its most probable class (float16 may tie near-equal ones)
        chosen = np.take_along_axis(probs, labels[None].astype(np.int64), 0)[0]
        assert (chosen >= probs.max(0) - 1e-3).all()
        shares = np.bincount(labels.ravel(), minlength=4) / labels.size
        summary = json.loads((out / f"{name}_summary.json").read_text(encoding="utf-8"))
        assert summary["image"] == name and (summary["height"], summary["width"]) == labels.shape
        assert summary["shares"] == pytest.approx(
            {c: s for c, s in zip(classes, shares, strict=True) if s > 0}
        )
        assert [float(row[c]) for c in classes] == pytest.approx(shares, abs=1e-6)
        assert (int(row["height"]), int(row["width"])) == labels.shape


def test_a_folder_given_with_a_glob(tmp_path: Path) -> None:
    write_image(tmp_path / "in" / "a" / "x.png", seed=1)
    write_image(tmp_path / "in" / "b" / "y.jpg", seed=2)
    out = tmp_path / "out"
    pattern = str(tmp_path / "in" / "**" / "*.png")
    assert main(["predict", pattern, "--classes", "a", *MODEL, "--out", str(out)]) == 0
    assert files_under(out) == {"a/x.png_overlay.png", "a/x.png_labels.png", "lmseg-predict.json"}


def test_an_output_folder_inside_the_input_folder_is_not_read_back(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "photos"
    write_image(folder / "a.png")
    args = ["predict", str(folder), "--classes", "a,b", *MODEL, "--out", str(folder / "seg")]
    assert main(args) == 0 and main(args) == 0
    assert summary_line(capsys.readouterr().out).startswith("0 written, 1 skipped as done")
    assert files_under(folder / "seg") == {"a.png_overlay.png", "a.png_labels.png",
                                           "lmseg-predict.json"}


def test_an_output_folder_that_cannot_be_used_is_one_error_before_the_model(
    tmp_path: Path, capsys, no_model
) -> None:
    image = write_image(tmp_path / "img.png")
    taken = tmp_path / "file"
    taken.write_text("x")
    for out, words in [(taken, "is a file"), (taken / "sub", "lies inside")]:
        assert main(["predict", str(image), "--classes", "a", *MODEL, "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: output folder") and words in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_output_folder_is_one_error_before_the_model(
    tmp_path: Path, capsys, no_model
) -> None:
    image = write_image(tmp_path / "img.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["predict", str(image), "--classes", "a", *MODEL,
                     "--out", str(locked / "out")]) == 1
    finally:
        locked.chmod(0o700)
    assert "not writable" in capsys.readouterr().err


def test_urls_are_refused_before_the_model(tmp_path: Path, capsys, no_model) -> None:
    rc = main(["predict", "https://example.com/cat.jpg", "--classes", "a", *MODEL,
               "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "URLs are not supported" in err and "download the file first" in err


def test_class_files(tmp_path: Path, capsys) -> None:
    image = write_image(tmp_path / "img.png")
    names = tmp_path / "classes.txt"
    names.write_text("# my classes\nsky\n\n  grass  \n# done\n", encoding="utf-8")
    for option in (["--classes-file", str(names)], ["--classes", f"@{names}"]):
        out = tmp_path / option[0].strip("-")
        assert main(["predict", str(image), *option, *MODEL, "--outputs", "summary",
                     "--out", str(out)]) == 0
        header = (out / "summary.csv").read_text(encoding="utf-8").splitlines()[0]
        assert header == "name,path,height,width,sky,grass"


def test_a_class_name_that_is_a_file_gets_a_hint(tmp_path: Path, capsys, no_model) -> None:
    image = write_image(tmp_path / "img.png")
    names = tmp_path / "classes.txt"
    names.write_text("sky\ngrass\n", encoding="utf-8")
    assert main(["predict", str(image), "--classes", str(names), *MODEL,
                 "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--classes-file {names}" in err


def test_device_option(tmp_path: Path, capsys) -> None:
    image = write_image(tmp_path / "img.png")
    out = tmp_path / "out"
    assert main(["predict", str(image), "--classes", "a", *MODEL, "--device", "cpu",
                 "--out", str(out)]) == 0
    if not torch.cuda.is_available():
        assert main(["predict", str(image), "--classes", "a", *MODEL, "--device", "cuda",
                     "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no usable CUDA GPU" in err


def test_max_pixels_option(tmp_path: Path, capsys) -> None:
    small, large = write_image(tmp_path / "in" / "a.png", 10, 10), write_image(tmp_path / "in" / "b.png")
    out = tmp_path / "out"
    rc = main(["predict", str(tmp_path / "in"), "--classes", "a", *MODEL, "--max-pixels", "500",
               "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1 and "max_pixels" in captured.err and str(large) in captured.err
    assert (out / f"{small.name}_labels.png").is_file()
    assert not (out / f"{large.name}_labels.png").exists()


DOCS = Path(__file__).resolve().parents[1] / "docs"


def _commands_in(page: Path) -> list[list[str]]:
    """The ``lmseg ...`` command lines of a page's bash blocks (``torchrun -m lmseg.cli ...``
    too), split as a shell would."""
    import re
    import shlex

    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for start, word in enumerate(words):
                if word in ("lmseg", "lmseg.cli"):
                    commands.append(words[start + 1 :])
                    break
    return commands


@pytest.mark.parametrize("page", ["predict.md", "getting-started.md"])
def test_the_documented_commands_parse(page: str) -> None:
    from lmseg.cli import build_parser

    commands = _commands_in(DOCS / page)
    assert any(words[:1] == ["predict"] for words in commands)
    parser = build_parser()
    for words in commands:
        if words != ["--version"]:
            parser.parse_args(words)  # an unknown option exits the test with status 2


def test_the_python_of_the_predict_page_runs(tmp_path: Path, monkeypatch) -> None:
    from test_docs import python_blocks

    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs_snippet"}
    page = DOCS / "predict.md"
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    assert blocks
    for line, code in blocks:
        exec(compile(code, f"{page}:{line}", "exec"), namespace)


def test_links_round_a_folder_are_not_followed_forever(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_image(folder / "sub" / "a.png")
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--classes", "a", *MODEL, "--out", str(out)]) == 0
    assert files_under(out) == {"sub/a.png_overlay.png", "sub/a.png_labels.png",
                                "lmseg-predict.json"}


def test_the_input_folder_is_not_an_output_folder(tmp_path: Path, capsys, no_model) -> None:
    folder = tmp_path / "in"
    write_image(folder / "a.png")
    assert main(["predict", str(folder), "--classes", "a", *MODEL, "--out", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "write them to a sub-folder" in err
