"""Bank quality: the warnings of `lmseg prompts validate`, and the shipped banks' contents."""

from __future__ import annotations

import itertools
import re

import pytest

from lmseg.prompts.bank import (
    ClassAttributes,
    PromptBank,
    Provenance,
    load_bank,
    shipped_banks,
    validate_bank,
)
from lmseg.prompts.lookup import entry_keys, normalise_name
from lmseg.prompts.quality import (
    SENSES_THAT_DIFFER,
    Senses,
    bank_warnings,
    cross_bank_differences,
    generic_colors,
    shared_sentences,
)
from lmseg.prompts.templates import split_synonyms


def bank(vocabulary: str, *entries: tuple[str, str, str, str]) -> PromptBank:
    return PromptBank(
        vocabulary,
        Provenance("m", "p", "2026-12-01"),
        [ClassAttributes(*e) for e in entries],
    )


def numbered(n: int, shape: str) -> PromptBank:
    return bank(
        "b", *[(f"thing {i}", f"It is shade {i}.", shape, f"It is texture {i}.") for i in range(n)]
    )


def test_a_sentence_used_by_more_than_five_classes_is_flagged() -> None:
    assert shared_sentences(numbered(5, "It is black or silver.")) == []
    (warning,) = shared_sentences(numbered(6, "It is black or silver"))  # period added
    assert warning.startswith("'It is black or silver.' is used by 6 classes (more than 5)")
    # Case and list items count too; one class using it twice counts once.
    entries = [
        (f"c{i}", f"It is hue {i}.", ["It is round.", "it is ROUND"], f"x{i}") for i in range(6)
    ]
    assert len(shared_sentences(bank("b", *entries))) == 1


def test_generic_colours_are_flagged() -> None:
    b = bank(
        "b",
        ("a", "It comes in various colours.", "s", "t"),
        ("b", "It is red, or any colour.", "s", "t"),
        ("c", "It is multicoloured.", "s", "t"),
        ("d", "It is red, white or navy.", "s", "t"),
    )
    flagged = generic_colors(b)
    assert [w.split(":")[0] for w in flagged] == [
        "b classes[0] ('a')",
        "b classes[1] ('b')",
        "b classes[2] ('c')",
    ]


def test_one_class_described_differently_by_two_banks_is_flagged() -> None:
    cat = ("cat", "It is tabby.", "It is small.", "It is furry.")
    one = bank("one", cat, ("camera, photo camera", "It is black.", "It is boxy.", "It is hard."))
    same = bank("two", cat, ("camera", "It is black.", "It is boxy.", "It is hard."))
    assert cross_bank_differences([one, same]) == []
    other = bank(
        "two",
        ("Cat", "It is ginger.", "It is small.", "It is furry."),  # normalised name
        ("camera", "It is silver.", "It is boxy.", "It is hard."),  # first synonym
    )
    warnings = cross_bank_differences([one, other])
    assert len(warnings) == 2
    assert warnings[0].startswith("'cat' is described in 2 different ways: one classes[0]")
    assert warnings[1].startswith("'camera' is described in 2 different ways")
    # PASCAL Context writes compound names without spaces.
    pool = ("swimming pool", "It is blue.", "It is big.", "It is wet.")
    pascal = bank("pc", ("swimmingpool", "It is green.", "It is big.", "It is wet."))
    assert len(cross_bank_differences([bank("ade", pool), pascal])) == 1


def test_words_with_two_senses_are_checked_sense_by_sense() -> None:
    senses = {"tank": Senses("why", {"ade": "store", "ade2": "store", "pc": "vehicle"})}
    store = ("tank", "It is white.", "It is round.", "It is steel.")
    vehicle = ("tank", "It is olive.", "It is tracked.", "It is armoured.")
    banks = [bank("ade", store), bank("ade2", store), bank("pc", vehicle)]
    assert cross_bank_differences(banks, senses) == []
    assert len(cross_bank_differences(banks, {})) == 1
    banks[1] = bank("ade2", ("tank", "It is grey.", "It is round.", "It is steel."))
    (warning,) = cross_bank_differences(banks, senses)
    assert warning.startswith("'tank' (sense 'store') is described in 2 different ways")


@pytest.mark.parametrize("word", sorted(SENSES_THAT_DIFFER))
def test_every_listed_sense_difference_is_real(word: str) -> None:
    """The list stays minimal: each word is in every bank it names, and its senses differ."""
    senses = SENSES_THAT_DIFFER[word]
    texts: dict[str, set[tuple[str, ...]]] = {}
    for vocabulary, sense in senses.by_bank.items():
        shipped = load_bank(vocabulary)
        found = [
            e
            for e, key in zip(shipped.classes, entry_keys(shipped), strict=True)
            if word in (key, normalise_name(e.name))
        ]
        assert found, f"{word!r} is not in {vocabulary}"
        texts.setdefault(sense, set()).update(e.texts() for e in found)
    assert len(texts) >= 2 and all(len(t) == 1 for t in texts.values())
    assert len(set.union(*texts.values())) == len(texts)  # one description per sense


# --------------------------------------------------------------------------------------------
# The shipped banks


def all_banks() -> list[PromptBank]:
    return [load_bank(name) for name in shipped_banks()]


@pytest.mark.parametrize("name", shipped_banks())
def test_shipped_bank_has_no_warnings_and_is_name_free(name: str) -> None:
    bank = load_bank(name)
    assert bank_warnings(bank) == []
    assert validate_bank(name, name_free=True) == []


def test_shipped_banks_describe_each_class_alike() -> None:
    assert cross_bank_differences(all_banks()) == []


@pytest.mark.parametrize("name", shipped_banks())
def test_shipped_bank_provenance_says_who_wrote_it(name: str) -> None:
    prov = load_bank(name).provenance
    assert prov.model == "Claude (Anthropic)"
    assert prov.model_version == "not recorded"
    assert prov.prompt_kind == "summary"  # written by hand: no single prompt was sent
    (revision,) = prov.revisions
    assert revision.model == "Claude (Anthropic)" and revision.date == "2026-12-01"
    assert revision.prompt_kind == "summary"
    assert re.match(r"\d+ of \d+ classes changed", revision.changes)


def descriptions(vocabulary: str, name: str) -> tuple[str, ...]:
    entry = load_bank(vocabulary).get(name)
    assert entry is not None, (vocabulary, name)
    return entry.texts()


def content_words(texts: tuple[str, ...]) -> set[str]:
    stop = {"it", "is", "has", "they", "are", "have", "a", "an", "the", "or", "and", "of"}
    stop |= {"with", "on", "in", "to", "by", "often", "usually", "sometimes", "its", "at"}
    return set(re.findall(r"[a-z]+", " ".join(texts).lower())) - stop


def overlap(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    wa, wb = content_words(a), content_words(b)
    return len(wa & wb) / len(wa | wb)


def test_patty_is_minced_food_not_a_dessert() -> None:
    text = " ".join(descriptions("ade847", "patty, cake")).lower()
    assert "minced" in text
    assert not re.search(r"dessert|frost|icing|sponge|sweet", text)


def test_straw_is_the_dried_stalks_in_every_bank() -> None:
    coco = descriptions("coco", "straw")
    assert descriptions("pc459", "straw") == coco == descriptions("ade847", "straw")
    assert "stalks" in " ".join(coco) and not re.search(r"drink|tube|plastic", " ".join(coco))
    assert descriptions("pc459", "hay") != coco  # and hay is not described as straw


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("pool", "swimming pool, swimming bath, natatorium"),
        ("club", "golf club"),
        ("track", "tracks"),
    ],
)
def test_named_near_duplicates_are_distinct(first: str, second: str) -> None:
    a, b = descriptions("ade847", first), descriptions("ade847", second)
    assert all(x != y for x, y in zip(a, b, strict=True))
    assert overlap(a, b) < 0.3


def near_duplicate(a: str, b: str) -> bool:
    """Two names of one bank that a reader could confuse: equal synonyms (spaces ignored), a
    plural, or one contained in the other as a whole word at either end."""
    for x in (normalise_name(s) for s in split_synonyms(a)):
        for y in (normalise_name(s) for s in split_synonyms(b)):
            if x == y or x + "s" == y or y + "s" == x or x + "es" == y or y + "es" == x:
                return True
    for x in (" ".join(s.split()).casefold() for s in split_synonyms(a)):
        for y in (" ".join(s.split()).casefold() for s in split_synonyms(b)):
            if y.endswith(" " + x) or x.endswith(" " + y):
                return True
            if y.startswith(x + " ") or x.startswith(y + " "):
                return True
    return False


@pytest.mark.parametrize("name", shipped_banks())
def test_near_duplicate_names_are_described_distinctly(name: str) -> None:
    bank = load_bank(name)
    too_close = []
    for a, b in itertools.combinations(bank.classes, 2):
        if not near_duplicate(a.name, b.name):
            continue
        same_field = any(x == y for x, y in zip(a.texts(), b.texts(), strict=True))
        plural = normalise_name(a.name).rstrip("s") == normalise_name(b.name).rstrip("s")
        if same_field or (not plural and overlap(a.texts(), b.texts()) > 0.5):
            too_close.append((a.name, b.name))
    assert too_close == []
