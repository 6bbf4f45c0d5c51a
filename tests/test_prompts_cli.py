"""``lmseg prompts show`` and ``lmseg prompts validate``, called in-process."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from lmseg.cli.prompts import register
from lmseg.prompts import bank as bank_module
from lmseg.prompts.bank import ClassAttributes, PromptBank, Provenance
from lmseg.vocabularies import load_vocabulary


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(argv)


def voc20_bank() -> PromptBank:
    return PromptBank(
        "voc20",
        Provenance("m", "p", "2026-11-25", notes="test"),
        [
            ClassAttributes(
                n, f"It is grey {i}.", f"It is round {i}.", [f"It is soft {i}.", f"It is dry {i}."]
            )
            for i, n in enumerate(load_vocabulary("voc20"))
        ],
    )


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch) -> Path:
    """A stand-in shipped-bank folder holding a valid voc20 bank."""
    folder = tmp_path / "banks"
    voc20_bank().save(folder / "voc20.json")
    monkeypatch.setattr(bank_module, "_shipped_dir", lambda: folder)
    return folder


def test_show_json_prints_the_schema(shipped: Path, capsys) -> None:
    args = parse(["prompts", "show", "voc20", "--json"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((shipped / "voc20.json").read_text(encoding="utf-8"))
    assert printed["schema"] == "lmseg.prompt_bank"


def test_show_text_and_modes(shipped: Path, capsys) -> None:
    args = parse(["prompts", "show", "voc20"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("voc20: 20 classes (model m, created 2026-11-25)")
    assert "texture: It is soft 0. It is dry 0." in out
    args = parse(["prompts", "show", str(shipped / "voc20.json"), "--mode", "attributes"])
    assert args.func(args) == 0
    assert "A photo of a aeroplane in the scene. It is round 0." in capsys.readouterr().out


def test_show_unknown(shipped: Path, capsys) -> None:
    args = parse(["prompts", "show", "nothing"])
    assert args.func(args) == 1
    assert "no shipped prompt bank" in capsys.readouterr().err


def test_validate_shipped_and_paths(shipped: Path, tmp_path: Path, capsys) -> None:
    args = parse(["prompts", "validate"])
    assert args.func(args) == 0
    assert "ok   voc20: 20 classes" in capsys.readouterr().out

    data = voc20_bank().to_dict()
    data["classes"][3]["colour"] = data["classes"][3].pop("color")
    data["classes"][0], data["classes"][1] = data["classes"][1], data["classes"][0]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    args = parse(["prompts", "validate", str(shipped / "voc20.json"), str(bad)])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert f"FAIL {bad}" in out
    assert 'classes[3] ("boat"): unknown key "colour"' in out
    assert 'classes[3] ("boat"): field "color" is missing' in out

    data = voc20_bank().to_dict()
    data["classes"][0], data["classes"][1] = data["classes"][1], data["classes"][0]
    bad.write_text(json.dumps(data), encoding="utf-8")
    assert args.func(args) == 1
    assert 'classes[0] ("bicycle"): out of order, expected "aeroplane"' in capsys.readouterr().out


def test_validate_with_nothing_to_check(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(bank_module, "_shipped_dir", lambda: tmp_path / "empty")
    args = parse(["prompts", "validate"])
    assert args.func(args) == 1
    assert "no shipped banks" in capsys.readouterr().err


def test_prompts_without_subcommand_prints_usage(capsys) -> None:
    args = parse(["prompts"])
    assert args.func(args) == 2
    assert "show" in capsys.readouterr().err


def test_validate_warns_about_stock_sentences_and_differences(
    shipped: Path, tmp_path: Path, capsys
) -> None:
    data = voc20_bank().to_dict()
    for entry in data["classes"][:6]:
        entry["shape"] = "It is black or silver."
    stock = tmp_path / "stock.json"
    stock.write_text(json.dumps(data), encoding="utf-8")
    args = parse(["prompts", "validate", str(stock)])
    assert args.func(args) == 0  # warnings alone do not fail...
    out = capsys.readouterr().out
    assert f"WARN {stock}: 20 classes, 1 warning" in out
    assert "'It is black or silver.' is used by 6 classes (more than 5)" in out
    args = parse(["prompts", "validate", "--strict", str(stock)])
    assert args.func(args) == 1  # ...unless --strict
    capsys.readouterr()

    other = voc20_bank().to_dict()
    other["vocabulary"] = "mine"
    other["classes"][7]["color"] = "It is purple."  # "cat"
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps(other), encoding="utf-8")
    args = parse(["prompts", "validate", "--strict", str(shipped / "voc20.json"), str(mine)])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "WARN across 2 banks: 1 class described differently" in out
    assert "'cat' is described in 2 different ways" in out
    assert out.rstrip().endswith(
        "2 banks: 2 ok, 0 with warnings, 0 failed; 1 difference between banks"
    )
