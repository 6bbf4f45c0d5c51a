"""Quality checks of prompt banks beyond the schema: the warnings of ``lmseg prompts validate``.

A bank can satisfy the schema and still describe its classes badly. Three things are flagged:

*Stock sentences* (:func:`shared_sentences`): one sentence (an attribute value or list item,
compared after :func:`~lmseg.prompts.templates.sentence` and case folding) used by more than
:data:`MAX_CLASSES_PER_SENTENCE` classes of one bank. A sentence that fits that many classes
("It is black or silver.") tells CLIP nothing about any of them.

*Generic colours* (:func:`generic_colors`): a ``color`` description that says the colour varies
instead of naming one ("various", "any colour", "many colours", ...; :data:`GENERIC_COLOR`).

*Differences between banks* (:func:`cross_bank_differences`): two banks describing the same class
differently. Two entries count as the same class when the per-class lookup
(:mod:`lmseg.prompts.lookup`) could find either for one name: the same normalised name, or the
same lookup key (first synonym). Words that two benchmarks really use for different things are
listed, with the reason and which bank means which, in :data:`SENSES_THAT_DIFFER`; the lookup
treats those as ambiguous.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lmseg.prompts.bank import ATTRIBUTES, PromptBank, short_repr
from lmseg.prompts.lookup import entry_keys, normalise_name
from lmseg.prompts.templates import sentence

__all__ = [
    "GENERIC_COLOR",
    "MAX_CLASSES_PER_SENTENCE",
    "SENSES_THAT_DIFFER",
    "Senses",
    "bank_warnings",
    "cross_bank_differences",
    "generic_colors",
    "shared_sentences",
]

MAX_CLASSES_PER_SENTENCE = 5

GENERIC_COLOR = re.compile(
    r"\b(various|varied|variety|assorted|any colou?rs?|any shades?|any hues?|all colou?rs|"
    r"every colou?r|many colou?rs|different colou?rs|mixed colou?rs|range of colou?rs|"
    r"muted (tones|colou?rs)|multi-?colou?r(ed)?)\b",
    re.IGNORECASE,
)
"""Phrases of a ``color`` description that name no colour."""


@dataclass(frozen=True)
class Senses:
    """The senses of one word in the shipped banks: ``by_bank`` maps a bank's vocabulary to a
    short sense label (banks not listed share the label ``""``); entries of one sense must
    still be described alike."""

    reason: str
    by_bank: dict[str, str]


SENSES_THAT_DIFFER: dict[str, Senses] = {
    "track": Senses(
        "ADE20K's 'track' is a running track (its rails are 'tracks' and 'railway'); PASCAL "
        "Context's 'track' is railway track.",
        {"ade847": "running track", "pc59": "railway", "pc459": "railway", "voc20b": "railway"},
    ),
    "tank": Senses(
        "ADE20K's 'tank' is a storage tank ('tank, storage tank'); PASCAL Context's is the "
        "armoured military vehicle.",
        {"ade150": "storage tank", "ade847": "storage tank", "pc459": "armoured vehicle"},
    ),
    "case": Senses(
        "ADE20K's 'case' is a display case ('case, display case, showcase, vitrine'); PASCAL "
        "Context's is a carrying case.",
        {"ade150": "display case", "ade847": "display case", "pc459": "carrying case"},
    ),
    "pot": Senses(
        "ADE-150's 'pot' is ADE20K's 'pot, flowerpot'; ADE-847's plain 'pot' and PASCAL "
        "Context's are cooking pots.",
        {"ade150": "flowerpot", "ade847": "cooking pot", "pc459": "cooking pot"},
    ),
    "board": Senses(
        "ADE20K's 'board, plank' is a plank of timber; PASCAL Context's 'board' is a flat panel "
        "on or against a wall.",
        {"ade847": "plank", "pc459": "panel"},
    ),
    "iron": Senses(
        "ADE20K's 'iron' is a clothes iron; PASCAL Context's 'iron' is the metal (its clothes "
        "iron is 'electriciron').",
        {"ade847": "clothes iron", "pc459": "metal"},
    ),
    "cooker": Senses(
        "ADE20K's 'cooker' is a kitchen range; PASCAL Context's 'cooker' is a countertop "
        "electric cooker (its ranges are 'stove' and 'gasstove').",
        {"ade847": "range", "pc459": "electric cooker"},
    ),
    "pier": Senses(
        "ADE-150's 'pier' is ADE20K's 'pier, wharf, wharfage, dock'; ADE-847 also has a plain "
        "'pier', a narrow jetty on posts.",
        {"ade150": "wharf", "ade847": "jetty"},
    ),
}
"""Words that two shipped benchmarks use for different things: why, and which bank means
which. :func:`cross_bank_differences` checks these words sense by sense; the per-class lookup
treats them as ambiguous (template prompt alone, named in its notice) unless the whole class
list belongs to one shipped bank."""


def _where(bank: PromptBank, index: int) -> str:
    return f"{bank.vocabulary} classes[{index}] ({short_repr(bank.classes[index].name, 40)})"


def shared_sentences(bank: PromptBank, max_classes: int = MAX_CLASSES_PER_SENTENCE) -> list[str]:
    """One warning per sentence used by more than ``max_classes`` classes of ``bank``."""
    users: dict[str, list[int]] = {}
    shown: dict[str, str] = {}
    for i, entry in enumerate(bank.classes):
        for attribute in ATTRIBUTES:
            value = getattr(entry, attribute)
            for item in [value] if isinstance(value, str) else value:
                text = sentence(item)
                key = text.casefold()
                shown.setdefault(key, text)
                if i not in users.setdefault(key, []):
                    users[key].append(i)
    warnings = []
    for key, indices in users.items():
        if len(indices) > max_classes:
            names = ", ".join(short_repr(bank.classes[i].name, 40) for i in indices[:8])
            more = f" and {len(indices) - 8} more" if len(indices) > 8 else ""
            warnings.append(
                f"{short_repr(shown[key])} is used by {len(indices)} classes (more than "
                f"{max_classes}): {names}{more}; describe each class on its own"
            )
    return warnings


def generic_colors(bank: PromptBank) -> list[str]:
    """One warning per ``color`` description that says the colour varies instead of naming
    one."""
    warnings = []
    for i, entry in enumerate(bank.classes):
        text = entry.text("color")
        found = GENERIC_COLOR.search(text)
        if found:
            warnings.append(
                f'{_where(bank, i)}: field "color" is generic ({found.group(0)!r}): '
                f"{short_repr(text)}; name the colours the class typically has"
            )
    return warnings


def _same_class_groups(
    banks: Sequence[PromptBank],
) -> dict[str, list[tuple[int, int]]]:
    """Word -> (bank index, entry index) of every entry the lookup could find for it."""
    groups: dict[str, list[tuple[int, int]]] = {}
    for b, bank in enumerate(banks):
        for i, (entry, key) in enumerate(zip(bank.classes, entry_keys(bank), strict=True)):
            for word in dict.fromkeys((normalise_name(entry.name), key)):
                groups.setdefault(word, []).append((b, i))
    return groups


def cross_bank_differences(
    banks: Sequence[PromptBank], senses: Mapping[str, Senses] | None = None
) -> list[str]:
    """One warning per word that two of ``banks`` describe differently (see the module
    docstring); a word in ``senses`` (default :data:`SENSES_THAT_DIFFER`) may differ between
    its senses, not within one."""
    senses = SENSES_THAT_DIFFER if senses is None else senses
    warnings = []
    for word, members in _same_class_groups(banks).items():
        if len({b for b, _ in members}) < 2:
            continue
        by_sense: dict[str, list[tuple[int, int]]] = {}
        for b, i in members:
            sense = senses[word].by_bank.get(banks[b].vocabulary, "") if word in senses else ""
            by_sense.setdefault(sense, []).append((b, i))
        for sense, group in by_sense.items():
            variants: dict[tuple[str, ...], list[str]] = {}
            for b, i in group:
                variants.setdefault(banks[b].classes[i].texts(), []).append(_where(banks[b], i))
            if len(variants) > 1:
                listed = " | ".join(", ".join(places[:4]) for places in variants.values())
                label = f" (sense {sense!r})" if sense else ""
                warnings.append(
                    f"{short_repr(word, 40)}{label} is described in {len(variants)} different "
                    f"ways: {listed}; describe one class the same way in every bank, or list "
                    "the word in SENSES_THAT_DIFFER with the reason"
                )
    return warnings


def bank_warnings(bank: PromptBank) -> list[str]:
    """The single-bank warnings: stock sentences and generic colours."""
    return shared_sentences(bank) + generic_colors(bank)
