"""Per-class lookup of attribute descriptions for class lists that are not a shipped vocabulary."""

from __future__ import annotations

import logging

import pytest

from lmseg.prompts import compose as compose_module
from lmseg.prompts.bank import ClassAttributes, PromptBank, Provenance, load_bank, shipped_banks
from lmseg.prompts.compose import compose_prompts, prompts_for
from lmseg.prompts.lookup import entry_keys, lookup_classes, lookup_key, normalise_name
from lmseg.vocabularies import load_vocabulary


def bank(vocabulary: str, *entries: tuple[str, str]) -> PromptBank:
    """A bank whose classes are (name, colour) pairs; shape and texture are fixed."""
    return PromptBank(
        vocabulary,
        Provenance("m", "p", "2026-12-01"),
        [ClassAttributes(n, c, "It is round.", "It is soft.") for n, c in entries],
    )


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch) -> None:
    monkeypatch.setattr(compose_module, "_notified", set())


def test_a_custom_list_gets_each_class_from_the_shipped_banks(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lmseg.prompts.compose"):
        prompts = prompts_for(["cat", "dog"])
    assert prompts == compose_prompts(["cat", "dog"], load_bank("voc20"))
    assert prompts[0][1].startswith("A photo of a cat in the scene. It ")
    assert caplog.records == []  # every class was found: no notice


def test_unknown_classes_fall_back_to_the_template_with_one_notice(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lmseg.prompts.compose"):
        prompts = prompts_for(["cat", "gloopy widget", "dog"])
    assert prompts[1] == ["A photo of a gloopy widget in the scene"] * 4
    assert prompts[0] == compose_prompts(["cat"], load_bank("voc20"))[0]
    assert prompts[2] == compose_prompts(["dog"], load_bank("voc20"))[0]
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "1 of 3 classes are in no shipped prompt bank ('gloopy widget')" in message
    assert "lmseg prompts generate" in message
    with caplog.at_level(logging.WARNING, logger="lmseg.prompts.compose"):
        prompts_for(["cat", "gloopy widget", "dog"])  # the same classes: no second notice
        prompts_for(["zzyzx"])  # other unknown classes: a new notice
    assert [r.getMessage().count("zzyzx") for r in caplog.records[1:]] == [1]


def test_the_notice_names_at_most_ten_classes(caplog) -> None:
    names = [f"made-up thing {i}" for i in range(30)]
    with caplog.at_level(logging.WARNING, logger="lmseg.prompts.compose"):
        prompts_for(names)
    message = caplog.records[0].getMessage()
    assert "30 of 30 classes" in message and "'made-up thing 9' and 20 more" in message
    assert "made-up thing 10'" not in message


def test_the_notice_is_a_plain_log_line(monkeypatch, capsys, recwarn) -> None:
    """What a script that configures no logging prints: the message alone (Python's last-resort
    handler), not a warning whose output shows the library's own source line."""
    monkeypatch.setattr(logging.root, "handlers", [])
    prompts_for(["gloopy widget"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'gloopy widget'" in err
    assert "compose.py" not in err and "Warning" not in err
    assert len(recwarn) == 0


@pytest.mark.parametrize("vocabulary", shipped_banks())
def test_a_shipped_vocabulary_uses_its_own_bank_unchanged(vocabulary: str) -> None:
    names = load_vocabulary(vocabulary)
    assert prompts_for(names) == compose_prompts(names, load_bank(vocabulary))


def test_lookup_steps() -> None:
    coco = bank("coco", ("traffic light", "It is red."), ("bed", "It is white."))
    ade = bank("ade", ("camera, photographic camera", "It is black."), ("bed ", "It is white."))
    found = lookup_classes(
        ["traffic light", "Traffic  Light", "camera", "Camera, cam", "photographic camera"],
        banks=[coco, ade],
    )
    assert [m.kind for m in found] == [
        "exact",
        "normalised",
        "first synonym",
        "first synonym",
        "unknown",  # only the first synonym is a key
    ]
    assert found[1].entry == ClassAttributes(
        "Traffic  Light", "It is red.", "It is round.", "It is soft."
    )
    assert found[2].sources == ("ade:camera, photographic camera",)
    pascal = bank("pc", ("swimmingpool", "It is turquoise."))
    assert lookup_classes(["Swimming Pool"], [pascal])[0].kind == "normalised"
    assert normalise_name(" Traffic  Light ") == normalise_name("trafficlight") == "trafficlight"
    assert lookup_key("Camera, photographic camera") == "camera"


def test_a_first_synonym_shared_inside_a_bank_keys_by_the_whole_name() -> None:
    ade = bank(
        "ade",
        ("bag", "It is brown."),
        ("bag, handbag, pocketbook, purse", "It is red."),
        ("bag, traveling bag", "It is black."),
    )
    assert entry_keys(ade) == ["bag", "bag,handbag,pocketbook,purse", "bag,travelingbag"]
    found = lookup_classes(["bag", "Bag, suitcase", "bag, handbag, pocketbook, purse"], [ade])
    assert [m.entry.color if m.entry else None for m in found] == [
        "It is brown.",
        "It is brown.",
        "It is red.",
    ]


def test_a_word_two_banks_describe_differently_is_ambiguous(caplog) -> None:
    one = bank("one", ("tank", "It is olive green."), ("jeep", "It is khaki."))
    two = bank("two", ("tank", "It is white steel."), ("silo", "It is grey."))
    found = lookup_classes(["tank", "silo"], [one, two])
    assert [m.kind for m in found] == ["exact", "exact"]  # both in bank two: bank two decides
    assert found[0].entry is not None and found[0].entry.color == "It is white steel."
    found = lookup_classes(["tank", "jeep", "silo"], [one, two])
    assert [m.kind for m in found] == ["ambiguous", "exact", "exact"]
    assert found[0].sources == ("one:tank", "two:tank")
    # The shipped banks: ADE's storage tank and PASCAL Context's armoured vehicle.
    with caplog.at_level(logging.WARNING, logger="lmseg.prompts.compose"):
        prompts = prompts_for(["tank", "gloopy widget"])
    assert prompts[0] == ["A photo of a tank in the scene"] * 4
    assert "1 means different things in different shipped banks ('tank')" in caplog.text


def test_an_explicit_bank_is_used_alone(caplog) -> None:
    mine = bank("mine", ("cat", "It is purple."))
    with caplog.at_level(logging.WARNING, logger="lmseg.prompts.compose"):
        prompts = prompts_for(["cat", "dog"], bank=mine)
    assert prompts[0][1] == "A photo of a cat in the scene. It is purple."
    assert prompts[1] == ["A photo of a dog in the scene"] * 4
    assert "1 of 2 classes have no entry in bank \"mine\" ('dog')" in caplog.text


def test_the_segmenter_looks_classes_up(monkeypatch) -> None:
    import lmseg
    from lmseg import segmenter as segmenter_module

    seen = []

    def fake_embed(text_encoder, prompts, **kwargs):
        seen.append(prompts)
        import torch

        return torch.zeros(len(prompts), len(prompts[0]), 8)

    monkeypatch.setattr(segmenter_module, "embed_prompts", fake_embed)
    predictor = lmseg.Segmenter(lmseg.create_model("lmseg_tiny"))
    predictor.text_embeddings(["cat", "dog"])
    assert seen == [compose_prompts(["cat", "dog"], load_bank("voc20"))]
