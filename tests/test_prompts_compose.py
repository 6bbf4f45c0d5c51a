"""Prompt composition: the exact strings of every mode, synonyms, missing entries."""

from __future__ import annotations

import logging

import pytest

from lmseg.prompts import compose as compose_module
from lmseg.prompts.bank import ClassAttributes, PromptBank, Provenance
from lmseg.prompts.compose import (
    compose_prompts,
    num_prompts,
    prompts_for,
    split_synonyms,
)
from lmseg.prompts.templates import (
    CATSEG_TEMPLATE,
    append_sentences,
    imagenet_templates,
    render_template,
)

WALL = ClassAttributes(
    name="wall",
    color="It is white, beige or pale grey paint.",
    shape="It is a large flat vertical surface bounding a room.",
    texture="It has smooth matte plaster or painted drywall.",
)
BED = ClassAttributes(
    name="bed ",
    color=["It is white", "It is often covered in coloured sheets."],
    shape="It is a low rectangular platform",
    texture="It has soft fabric and a padded mattress.",
)
BUILDING = ClassAttributes(
    name="building, edifice",
    color="It is grey concrete, red brick or glass.",
    shape="It is a tall box with rows of windows.",
    texture="It has hard stone, brick or glass walls.",
)


def make_bank(*entries: ClassAttributes) -> PromptBank:
    return PromptBank("custom", Provenance("m", "p", "2026-11-25"), list(entries))


BANK = make_bank(WALL, BED, BUILDING)


def test_catseg_template_is_verbatim() -> None:
    assert CATSEG_TEMPLATE == "A photo of a {} in the scene"
    assert render_template(CATSEG_TEMPLATE, "bed ") == "A photo of a bed  in the scene"


def test_imagenet_templates_come_from_open_clip() -> None:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    templates = imagenet_templates()
    assert len(templates) == len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert templates[0] is OPENAI_IMAGENET_TEMPLATES[0]
    assert render_template(templates[0], "cat") == "a bad photo of a cat."


def test_template_mode_is_catseg() -> None:
    prompts = compose_prompts(["wall", "bed "], BANK, mode="template")
    assert prompts == [["A photo of a wall in the scene"], ["A photo of a bed  in the scene"]]
    assert compose_prompts(["wall"], mode="template") == [["A photo of a wall in the scene"]]


def test_attributes_mode_exact_strings() -> None:
    prompts = compose_prompts(["wall", "bed "], BANK)  # mode defaults to "attributes"
    assert prompts[0] == [
        "A photo of a wall in the scene",
        "A photo of a wall in the scene. It is white, beige or pale grey paint.",
        "A photo of a wall in the scene. It is a large flat vertical surface bounding a room.",
        "A photo of a wall in the scene. It has smooth matte plaster or painted drywall.",
    ]
    # List-valued fields are joined with a space; missing final periods are added.
    assert prompts[1] == [
        "A photo of a bed  in the scene",
        "A photo of a bed  in the scene. It is white. It is often covered in coloured sheets.",
        "A photo of a bed  in the scene. It is a low rectangular platform.",
        "A photo of a bed  in the scene. It has soft fabric and a padded mattress.",
    ]


def test_attributes_only_and_combined() -> None:
    assert compose_prompts(["wall"], BANK, mode="attributes_only") == [
        [
            "It is white, beige or pale grey paint.",
            "It is a large flat vertical surface bounding a room.",
            "It has smooth matte plaster or painted drywall.",
        ]
    ]
    assert compose_prompts(["wall"], BANK, mode="combined") == [
        [
            "A photo of a wall in the scene. It is white, beige or pale grey paint. It is a large "
            "flat vertical surface bounding a room. It has smooth matte plaster or painted drywall."
        ]
    ]


def test_several_templates_are_grouped_by_attribute() -> None:
    templates = ["a photo of a {}.", "a {} in the scene"]
    prompts = compose_prompts(["wall"], BANK, mode="attributes", templates=templates)[0]
    assert num_prompts("attributes", templates) == len(prompts) == 8
    assert prompts[:2] == ["a photo of a wall.", "a wall in the scene"]
    assert prompts[2:4] == [
        "a photo of a wall. It is white, beige or pale grey paint.",
        "a wall in the scene. It is white, beige or pale grey paint.",
    ]
    assert compose_prompts(["wall"], BANK, mode="template", templates=templates)[0] == prompts[:2]


def test_user_formats() -> None:
    formats = ["a photo of a {name}.", "a {name}. {color}", "{shape} {texture}"]
    assert compose_prompts(["wall"], BANK, formats=formats) == [
        [
            "a photo of a wall.",
            "a wall. It is white, beige or pale grey paint.",
            "It is a large flat vertical surface bounding a room. "
            "It has smooth matte plaster or painted drywall.",
        ]
    ]
    assert num_prompts(formats=formats) == 3
    with pytest.raises(ValueError, match="unsupported field"):
        compose_prompts(["wall"], BANK, formats=["a {colour} {name}"])
    with pytest.raises(ValueError, match="mode must be 'formats'"):
        compose_prompts(["wall"], BANK, mode="template", formats=["{name}"])


def test_synonyms_first_and_mean() -> None:
    assert split_synonyms("building, edifice") == ["building", "edifice"]
    assert split_synonyms("bed ") == ["bed "]
    first = compose_prompts(["building, edifice"], BANK, mode="attributes")[0]
    assert first[0] == "A photo of a building in the scene"
    assert (
        first[1] == "A photo of a building in the scene. It is grey concrete, red brick or glass."
    )
    mean = compose_prompts(["building, edifice", "wall"], BANK, synonyms="mean")
    assert mean[0][0] == ("A photo of a building in the scene", "A photo of a edifice in the scene")
    assert mean[0][3] == (
        "A photo of a building in the scene. It has hard stone, brick or glass walls.",
        "A photo of a edifice in the scene. It has hard stone, brick or glass walls.",
    )
    assert mean[1][0] == "A photo of a wall in the scene"  # one synonym: a plain string
    # Name-free prompts have no synonym variants.
    only = compose_prompts(["building, edifice"], BANK, mode="attributes_only", synonyms="mean")
    assert all(isinstance(p, str) for p in only[0])


def test_missing_entries_repeat_the_template(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lmseg.prompts.compose"):
        prompts = compose_prompts(["wall", "zebra"], BANK)
    assert prompts[1] == ["A photo of a zebra in the scene"] * 4
    assert "1 of 2 classes have no entry" in caplog.text
    assert compose_prompts(["zebra"], BANK, mode="combined") == [
        ["A photo of a zebra in the scene"]
    ]
    formats = ["{name}, {color}", "a photo of a {name}."]
    assert compose_prompts(["zebra"], BANK, formats=formats) == [["a photo of a zebra."] * 2]
    with pytest.raises(ValueError, match=r'class 1 \("zebra"\) has no entry in bank "custom"'):
        compose_prompts(["wall", "zebra"], BANK, missing="error")
    with pytest.raises(ValueError, match="no name-only fallback"):
        compose_prompts(["zebra"], BANK, mode="attributes_only")
    with pytest.raises(ValueError, match="no name-only fallback"):
        compose_prompts(["zebra"], BANK, formats=["{name}: {color}"])


def test_append_sentences_rule() -> None:
    assert append_sentences("A photo of a wall in the scene", ["It is white."]) == (
        "A photo of a wall in the scene. It is white."
    )
    assert (
        append_sentences("a photo of a wall. ", ["It is white"])
        == "a photo of a wall. It is white."
    )
    assert append_sentences("a wall", []) == "a wall"


def test_prompts_for_falls_back_once_with_a_notice(monkeypatch, caplog) -> None:
    monkeypatch.setattr(compose_module, "_notified", set())
    with caplog.at_level(logging.WARNING, logger="lmseg.prompts.compose"):
        prompts = prompts_for(["gloopy widget", "unicorn horn polish"])
    assert prompts == [
        ["A photo of a gloopy widget in the scene"] * 4,
        ["A photo of a unicorn horn polish in the scene"] * 4,
    ]
    assert len(caplog.records) == 1 and "lmseg prompts generate" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lmseg.prompts.compose"):
        prompts_for(["gloopy widget", "unicorn horn polish"])  # once per process
        assert prompts_for(["gloopy widget"], mode="template") == [
            ["A photo of a gloopy widget in the scene"]
        ]  # the template mode needs no bank: no notice
    assert caplog.records == []
    assert prompts_for(["wall"], bank=BANK)[0][1].endswith("It is white, beige or pale grey paint.")


def test_prompts_for_picks_the_shipped_bank(monkeypatch) -> None:
    monkeypatch.setattr(
        compose_module, "find_bank", lambda classes: BANK if classes == ["wall"] else None
    )
    assert prompts_for(["wall"])[0][1] == (
        "A photo of a wall in the scene. It is white, beige or pale grey paint."
    )


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown prompt mode"):
        compose_prompts(["wall"], BANK, mode="fancy")  # type: ignore[arg-type]
