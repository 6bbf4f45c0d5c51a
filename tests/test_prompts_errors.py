"""Hostile bank files: one clear error naming the file, and messages of bounded length."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest

from lmseg.cli.prompts import register
from lmseg.prompts.bank import BankError, load_bank, validate_bank
from lmseg.prompts.generate import GenerationError, generate_bank, parse_answer, read_class_file
from lmseg.prompts.templates import clip_tokenizer

HUGE = 10_000_000  # characters


def valid_bank() -> dict:
    # Schema version 1, which every lmseg reads, so that only the value under test is wrong.
    return {
        "schema": "lmseg.prompt_bank",
        "schema_version": 1,
        "vocabulary": "custom",
        "provenance": {"model": "m", "prompt": "p", "created": "2026-12-01"},
        "classes": [
            {
                "name": "wall",
                "color": "It is white.",
                "shape": "It is flat.",
                "texture": "It is hard.",
            }
        ],
    }


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def deep(tmp_path: Path) -> Path:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    return path


def test_deeply_nested_bank_is_one_clear_error(deep: Path, capsys) -> None:
    with pytest.raises(BankError, match=r"(?s)deep\.json.*nested too deeply"):
        load_bank(deep)
    problems = validate_bank(deep)
    assert len(problems) == 1 and "deep.json" in problems[0] and "nested too deeply" in problems[0]
    assert cli(["prompts", "validate", str(deep)]) == 1
    assert "nested too deeply" in capsys.readouterr().out
    assert cli(["prompts", "show", str(deep)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "deep.json" in err and "Traceback" not in err


def test_deeply_nested_class_file_answer_and_resume(deep: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        read_class_file(deep)
    found, problems = parse_answer("[" * 100_000 + "]" * 100_000, ["wall"])
    assert found == {} and "nested too deeply" in problems[0] and len(problems[0]) < 400
    with pytest.raises(GenerationError, match="not a readable JSON bank"):
        generate_bank(
            ["wall"], deep, vocabulary="custom", base_url="http://127.0.0.1:9", progress=False
        )


def assert_cut(messages: list[str]) -> None:
    assert messages
    for message in messages:
        assert len(message) < 600, message[:300]
        assert f"({HUGE} characters)" in message or f"({HUGE + 2} characters)" in message


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["classes"][0].update(name="x" * HUGE, color=3),
        lambda d: d["classes"][0].update({"k" * HUGE: 1}),
        lambda d: d.update({"k" * HUGE: 1}),
        lambda d: d.update(schema="s" * HUGE),
        lambda d: d["provenance"].update(created="2" * HUGE),
        lambda d: d.update(schema_version="9" * HUGE),
    ],
    ids=["name", "class key", "top key", "schema", "created", "schema_version"],
)
def test_huge_values_are_cut_in_messages(mutate) -> None:
    data = valid_bank()
    mutate(data)
    assert_cut(validate_bank(data))


def test_huge_description_is_reported_quickly_and_cut() -> None:
    data = valid_bank()
    data["classes"][0]["color"] = "It is " + "very " * (HUGE // 5)
    start = time.monotonic()
    problems = validate_bank(data, tokenizer=clip_tokenizer())
    assert time.monotonic() - start < 10  # never BPE-encodes ten megabytes
    assert len(problems) == 1 and len(problems[0]) < 600
    assert "characters long" in problems[0] and "(10000006 characters)" in problems[0]


def test_huge_name_in_a_file_is_cut_in_the_cli_output(tmp_path: Path, capsys) -> None:
    data = valid_bank()
    data["classes"][0]["name"] = "x" * HUGE
    data["classes"][0]["colour"] = data["classes"][0].pop("color")
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert cli(["prompts", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert len(out) < 2000 and f"({HUGE} characters)" in out
