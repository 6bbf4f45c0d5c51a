"""Prompt-bank schema, validation, loading, and the shipped banks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from lmseg.prompts import bank as bank_module
from lmseg.prompts.bank import (
    BANK_JSON_SCHEMA,
    BankError,
    PromptBank,
    find_bank,
    load_bank,
    shipped_banks,
    validate_bank,
)
from lmseg.prompts.templates import clip_tokenizer
from lmseg.vocabularies import load_vocabulary

EXPECTED_BANKS = ("coco", "ade150", "ade847", "pc59", "pc459", "voc20", "voc20b")
BANK_DIR = Path(bank_module.__file__).parent / "banks"
PRESENT_BANKS = sorted(p.stem for p in BANK_DIR.glob("*.json"))


def entry(name: str, **overrides: object) -> dict:
    e = {
        "name": name,
        "color": "It is mostly grey.",
        "shape": "It is long and thin.",
        "texture": ["It has a rough surface.", "It is made of stone"],
    }
    e.update(overrides)
    return e


def bank_dict(names=("wall", "bed ", "building, edifice"), vocabulary="custom") -> dict:
    return {
        "schema": "lmseg.prompt_bank",
        "schema_version": 2,
        "vocabulary": vocabulary,
        "provenance": {
            "model": "test-llm",
            "model_version": "test-llm-2026-11-01",
            "prompt": "describe",
            "prompt_kind": "exact",
            "created": "2026-11-25",
        },
        "classes": [entry(n) for n in names],
    }


def v1_bank_dict(names=("wall", "bed ")) -> dict:
    """A bank as lmseg wrote them before schema version 2."""
    return {
        "schema": "lmseg.prompt_bank",
        "schema_version": 1,
        "vocabulary": "custom",
        "provenance": {"model": "old-llm", "prompt": "describe", "created": "2026-11-25"},
        "classes": [entry(n) for n in names],
    }


def test_valid_bank_round_trips(tmp_path: Path) -> None:
    data = bank_dict()
    assert validate_bank(data) == []
    bank = PromptBank.from_dict(data)
    assert bank.names == ["wall", "bed ", "building, edifice"]
    assert bank.get("bed ").text("texture") == "It has a rough surface. It is made of stone."
    path = tmp_path / "b.json"
    bank.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == data
    assert load_bank(path) == bank
    assert validate_bank(path) == []
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["classes"][1].pop("color"), 'classes[1] ("bed "): field "color" is missing'),
        (
            lambda d: d["classes"][1].update(color="  "),
            'classes[1] ("bed "): field "color" is empty',
        ),
        (
            lambda d: d["classes"][0].update(shape=[]),
            'classes[0] ("wall"): field "shape" is an empty list',
        ),
        (
            lambda d: d["classes"][0].update(shape=["It is flat.", ""]),
            'classes[0] ("wall"): field "shape"[1] is empty',
        ),
        (
            lambda d: d["classes"][2].update(texture=3),
            'classes[2] ("building, edifice"): field "texture" must be a string or a list',
        ),
        (
            lambda d: d["classes"][0].update(colour="red"),
            'classes[0] ("wall"): unknown key "colour"',
        ),
        (lambda d: d.update(extra=1), 'unknown top-level key "extra"'),
        (lambda d: d.update(schema_version=3), 'unsupported "schema_version" 3'),
        (
            lambda d: d["provenance"].pop("model_version"),
            'provenance: field "model_version" is missing',
        ),
        (
            lambda d: d["provenance"].update(prompt_kind="guess"),
            'provenance: "prompt_kind" must be one of exact, summary',
        ),
        (
            lambda d: d["provenance"].update(revisions=[{"date": "2026-12-01"}]),
            'provenance: revisions[0]: field "model" is missing',
        ),
        (
            lambda d: d["provenance"].update(
                revisions=[
                    {
                        "date": "1 Dec",
                        "model": "m",
                        "model_version": "v",
                        "prompt": "p",
                        "prompt_kind": "exact",
                        "changes": "c",
                    }
                ]
            ),
            'provenance: revisions[0]: "date" must be an ISO date',
        ),
        (lambda d: d.update(schema="something"), '"schema" must be "lmseg.prompt_bank"'),
        (lambda d: d.pop("provenance"), 'top-level field "provenance" is missing'),
        (lambda d: d["provenance"].pop("model"), 'provenance: field "model" is missing'),
        (
            lambda d: d["provenance"].update(created="25/11/2026"),
            'provenance: "created" must be an ISO date',
        ),
        (lambda d: d["provenance"].update(temperature=0), 'provenance: unknown key "temperature"'),
        (
            lambda d: d["classes"].append(entry("wall")),
            'classes[3] ("wall"): duplicate of classes[0]',
        ),
        (lambda d: d["classes"][0].update(name=""), 'classes[0] (""): field "name" is empty'),
    ],
)
def test_schema_rejects(mutate, expected: str) -> None:
    data = bank_dict()
    mutate(data)
    problems = validate_bank(data)
    assert any(p.startswith(expected) for p in problems), problems
    with pytest.raises(BankError, match="invalid prompt bank"):
        PromptBank.from_dict(data)


def test_order_and_completeness_against_class_list() -> None:
    data = bank_dict(names=("a", "b", "c"))
    assert validate_bank(data, class_names=["a", "b", "c"]) == []
    swapped = validate_bank(data, class_names=["a", "c", "b"])
    assert any('classes[1] ("b"): out of order, expected "c"' in p for p in swapped), swapped
    missing = validate_bank(data, class_names=["a", "b", "c", "d"])
    assert any(p.startswith('incomplete: 1 of 4 classes have no entry: "d"') for p in missing)
    extra = validate_bank(data, class_names=["a", "b"])
    assert any(p.startswith('classes[2] ("c"): not in the class list') for p in extra)
    # A trailing space is part of the name: "bed" does not match "bed ".
    spaced = validate_bank(bank_dict(names=("bed",)), class_names=["bed "])
    assert any('"bed"' in p and "not in the class list" in p for p in spaced)


def test_known_vocabulary_is_checked_by_default() -> None:
    data = bank_dict(names=load_vocabulary("voc20")[:3], vocabulary="voc20")
    problems = validate_bank(data)
    assert any(p.startswith("incomplete: 17 of 20") for p in problems), problems


def test_token_length_check_names_the_class() -> None:
    long = "It is " + " ".join(["very"] * 80) + " grey."
    data = bank_dict()
    data["classes"][1]["color"] = long
    problems = validate_bank(data, tokenizer=clip_tokenizer())
    assert len(problems) == 1
    # 2 (start, end) + 8 ("A photo of a bed in the scene") + 1 (".") + 84 ("It is", 80 x
    # "very", "grey", ".") + 6 ("It is long and thin.") + 12 (the two texture sentences)
    assert problems[0].startswith(
        'classes[1] ("bed "): the template with all three descriptions gives a prompt of '
        "113 tokens (limit 77"
    )


def test_version_1_banks_still_load_and_are_written_as_version_2(tmp_path: Path) -> None:
    data = v1_bank_dict()
    assert validate_bank(data) == []
    bank = PromptBank.from_dict(data)
    assert bank.provenance.model == "old-llm"
    assert bank.provenance.prompt_kind == "exact"  # what version 1 documented the field to be
    assert bank.provenance.model_version == "not recorded"
    assert bank.provenance.revisions == []
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    load_bank(path).save(tmp_path / "new.json")
    saved = json.loads((tmp_path / "new.json").read_text(encoding="utf-8"))
    assert saved["schema_version"] == 2
    assert saved["provenance"]["model_version"] == "not recorded"
    assert saved["classes"] == data["classes"]
    # Version-2 fields are unknown keys in a version-1 file.
    data["provenance"]["prompt_kind"] = "exact"
    assert any('unknown key "prompt_kind"' in p for p in validate_bank(data))


def test_revisions_round_trip() -> None:
    data = bank_dict()
    data["provenance"]["revisions"] = [
        {
            "date": "2026-12-01",
            "model": "editor-llm",
            "model_version": "editor-llm-1",
            "prompt": "fix the weak entries",
            "prompt_kind": "summary",
            "changes": "rewrote 3 descriptions",
        }
    ]
    bank = PromptBank.from_dict(data)
    assert bank.provenance.revisions[0].model == "editor-llm"
    assert bank.to_dict() == data


def test_name_free_check() -> None:
    data = bank_dict()
    data["classes"][2]["shape"] = "It is a tall Edifice with windows."
    assert validate_bank(data) == []
    problems = validate_bank(data, name_free=True)
    assert problems == [
        'classes[2] ("building, edifice"): field "shape" names the class (\'edifice\'); '
        "descriptions must be name-free"
    ]


def test_json_schema_constant_lists_the_fields() -> None:
    props = BANK_JSON_SCHEMA["properties"]
    assert props["schema_version"] == {"const": 2}
    assert props["provenance"]["required"] == [
        "model",
        "model_version",
        "prompt",
        "prompt_kind",
        "created",
    ]
    item = props["classes"]["items"]
    assert item["required"] == ["name", "color", "shape", "texture"]
    assert item["additionalProperties"] is False
    json.dumps(BANK_JSON_SCHEMA)  # serialisable as documentation


def test_load_bank_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="no shipped prompt bank"):
        load_bank("no_such_vocabulary")
    with pytest.raises(FileNotFoundError):
        load_bank(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(BankError, match="not valid JSON"):
        load_bank(bad)


def test_find_bank_and_shipped_banks_with_a_stand_in_folder(tmp_path, monkeypatch) -> None:
    names = load_vocabulary("voc20")
    PromptBank.from_dict(bank_dict(names=names, vocabulary="voc20")).save(tmp_path / "voc20.json")
    monkeypatch.setattr(bank_module, "_shipped_dir", lambda: tmp_path)
    assert shipped_banks() == ["voc20"]
    found = find_bank(names)
    assert found is not None and found.vocabulary == "voc20"
    assert find_bank(list(reversed(names))) is None
    assert find_bank(["cat", "dog"]) is None
    assert load_bank("voc20").names == names


# --------------------------------------------------------------------------------------------
# Shipped banks: every present bank must validate, be complete and in label order.


@pytest.mark.parametrize("name", PRESENT_BANKS)
def test_shipped_bank_is_valid_complete_and_ordered(name: str) -> None:
    problems = validate_bank(name, class_names=load_vocabulary(name), tokenizer=clip_tokenizer())
    assert problems == [], f"{name}: " + "\n".join(problems[:20])
    bank = load_bank(name)
    assert bank.vocabulary == name
    assert bank.names == load_vocabulary(name)
    assert find_bank(load_vocabulary(name)) == bank


def test_all_seven_banks_are_shipped() -> None:
    """Fails until every benchmark vocabulary has its bank (written by the data helpers)."""
    missing = [n for n in EXPECTED_BANKS if n not in PRESENT_BANKS]
    assert not missing, f"prompt banks not shipped yet: {', '.join(missing)}"
    assert shipped_banks()[: len(EXPECTED_BANKS)] == list(EXPECTED_BANKS)


def test_parsed_bank_does_not_alias_its_input() -> None:
    data = bank_dict()
    bank = PromptBank.from_dict(data)
    data["classes"][0]["texture"].append("It is wet.")
    assert bank.classes[0].texture == ["It has a rough surface.", "It is made of stone"]
    assert copy.deepcopy(bank) == bank
