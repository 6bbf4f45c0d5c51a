"""What every ``lmseg`` command shares: error lines, warnings, --version, --help texts."""

from __future__ import annotations

import argparse
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lmseg
from lmseg.cli import build_parser, main, run_command


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (sub-)command of a parser, as (words, parser)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


COMMANDS = [words for words, _ in _commands(build_parser())]
# Sphinx and reST markup that means a docstring leaked into a help text.
MARKUP = re.compile(r"``|:(?:mod|func|class|meth|attr|data|exc):`")


def test_every_command_is_reached() -> None:
    assert {("predict",), ("eval",), ("prompts", "show"), ("weights", "list")} <= set(COMMANDS)


@pytest.mark.parametrize("words", COMMANDS, ids=lambda words: " ".join(words) or "lmseg")
def test_help_has_no_docstring_markup(words: tuple[str, ...], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: lmseg")
    assert not MARKUP.search(text), MARKUP.search(text)


def test_markup_check_sees_roles_and_literals() -> None:
    assert MARKUP.search("see :func:`lmseg.io.load_image`") and MARKUP.search("``--out``")
    assert not MARKUP.search('"photos/**/*.jpg" and OUT/a/x.jpg_overlay.png')


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"lmseg {lmseg.__version__}"


def test_a_key_error_prints_its_message_without_quotes(tmp_path: Path, capsys) -> None:
    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    assert main(["predict", str(path), "--vocabulary", "nope", "--model", "lmseg_tiny",
                 "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown vocabulary 'nope'; known vocabularies: ")
    assert err.count("\n") == 1

    def raises(args: argparse.Namespace) -> int:
        raise KeyError("no entry 'x' in the table")

    assert run_command(argparse.Namespace(func=raises)) == 1
    assert capsys.readouterr().err == "error: no entry 'x' in the table\n"


def test_os_errors_are_one_line(capsys) -> None:
    def raises(args: argparse.Namespace) -> int:
        raise PermissionError(13, "Permission denied", "/some/file")

    assert run_command(argparse.Namespace(func=raises)) == 1
    assert capsys.readouterr().err == "error: /some/file: Permission denied\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_with_an_absent_device_is_one_line(capsys) -> None:
    assert main(["eval", "--model", "lmseg_tiny", "--dataset", "ade150", "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no usable CUDA GPU" in err


def test_warnings_and_logged_warnings_are_one_line_each(capsys) -> None:
    from lmseg.cli import one_line_warnings

    with one_line_warnings():
        warnings.warn("first line\n  second line", UserWarning, stacklevel=1)
        logging.getLogger("lmseg.somewhere").warning("logged\nover two lines")
        logging.getLogger("lmseg.somewhere").info("not shown")
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: first line second line", "warning: logged over two lines"]


def test_warnings_of_decoding_workers_reach_the_command_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """Warnings raised while an image is decoded in a worker process are shown by the command,
    one line each, like its own."""
    import lmseg.batch
    import lmseg.prompts.compose

    monkeypatch.setattr(lmseg.prompts.compose, "_notified", set())  # the notice comes once a process
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"{i}.png")
    load = lmseg.batch.load_image

    def warning_load(path, **kwargs):
        warnings.warn(f"odd colour profile in\n{Path(path).name}", UserWarning, stacklevel=1)
        return load(path, **kwargs)

    monkeypatch.setattr(lmseg.batch, "load_image", warning_load)  # fork-started workers see it
    assert main(["predict", str(folder), "--classes", "a,b", "--model", "lmseg_tiny",
                 "--workers", "2", "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "warning: odd colour profile in 0.png" in lines
    assert "warning: odd colour profile in 1.png" in lines
    # the template fallback notice of the prompts, once, on one line
    assert len([line for line in lines if "are in no shipped prompt bank" in line]) == 1
    assert any(line.startswith("warning: 2 of 2 classes are in no shipped prompt bank") for line in lines)


def test_commands_that_report_their_own_key_errors_print_no_quotes(capsys) -> None:
    assert main(["prompts", "show", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no shipped prompt bank for 'nope'") and err.count("\n") == 1
