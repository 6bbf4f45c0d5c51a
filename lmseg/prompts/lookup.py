"""Per-class lookup of attribute descriptions in the shipped prompt banks.

A class list that is not a shipped vocabulary still gets attribute prompts for every class some
shipped bank describes. The rule, first match wins:

1. the list equals a shipped vocabulary: that vocabulary's bank (:func:`~lmseg.prompts.bank.
   find_bank`);
2. every class is in one shipped bank under exactly its name: that bank (the first such in
   :func:`~lmseg.prompts.bank.shipped_banks` order), so a subset of ADE-150 reads ADE-150's
   descriptions;
3. otherwise class by class, in three steps, the first step that finds an entry deciding:

   a. *exact*: an entry with the same name, byte for byte;
   b. *normalised*: the same name after case folding and removing whitespace
      (``"Traffic  Light"`` finds ``"traffic light"``, ``"swimming pool"`` finds PASCAL
      Context's ``"swimmingpool"``, ``"bed"`` finds ADE-150's ``"bed "``);
   c. *first synonym*: the name's first synonym, normalised, equals an entry's lookup key
      (``"camera"`` finds ADE-847's ``"camera, photographic camera"``).

An entry's lookup key (:func:`entry_keys`) is its first synonym, normalised, unless another entry
of its bank has the same first synonym (ADE-847 has ``"bag"``, ``"bag, handbag, pocketbook,
purse"`` and ``"bag, traveling bag, ..."``): then each of them is keyed by its whole normalised
name, except an entry whose whole name is that one word, which keeps it (``"bag"`` finds the
plain bag).

When a step finds entries in several banks with different descriptions (a word two benchmarks use
for different things, see :data:`lmseg.prompts.quality.SENSES_THAT_DIFFER`), the class is
*ambiguous* and, like an unknown class, gets the template prompt alone. ``lmseg prompts validate``
checks that the shipped banks describe every other shared class identically, so the answer
never depends on the order in which banks are searched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lmseg.prompts.bank import ClassAttributes, PromptBank, load_bank, shipped_banks
from lmseg.prompts.templates import split_synonyms

__all__ = [
    "ClassMatch",
    "entry_keys",
    "lookup_classes",
    "lookup_key",
    "normalise_name",
]

MatchKind = Literal["exact", "normalised", "first synonym", "ambiguous", "unknown"]


def normalise_name(name: str) -> str:
    """Case-folded, with all whitespace removed: ``" Traffic  Light "``, ``"traffic light"``
    and PASCAL Context's ``"trafficlight"`` all become ``"trafficlight"``."""
    return "".join(name.split()).casefold()


def lookup_key(name: str) -> str:
    """The normalised first synonym of a class name: ``"Camera, photographic camera"`` ->
    ``"camera"``."""
    return normalise_name(split_synonyms(name)[0])


def entry_keys(bank: PromptBank) -> list[str]:
    """The lookup key of every entry of a bank, in bank order (see the module docstring)."""
    firsts = [lookup_key(e.name) for e in bank.classes]
    counts = Counter(firsts)
    return [
        first if counts[first] == 1 or normalise_name(e.name) == first else normalise_name(e.name)
        for e, first in zip(bank.classes, firsts, strict=True)
    ]


@dataclass(frozen=True)
class ClassMatch:
    """What the lookup found for one class.

    Attributes:
        name: the class name asked for.
        entry: the descriptions, under ``name`` (``None`` when ``kind`` is ``"ambiguous"`` or
            ``"unknown"``).
        kind: ``"exact"``, ``"normalised"``, ``"first synonym"``, ``"ambiguous"``, ``"unknown"``.
        sources: ``"bank:name"`` of every shipped entry the deciding step found.
    """

    name: str
    entry: ClassAttributes | None
    kind: MatchKind
    sources: tuple[str, ...] = ()


def _descriptions(entry: ClassAttributes) -> tuple[str, ...]:
    return entry.texts()


def _decide(name: str, kind: MatchKind, found: list[tuple[str, ClassAttributes]]) -> ClassMatch:
    sources = tuple(f"{bank}:{entry.name}" for bank, entry in found)
    if len({_descriptions(entry) for _, entry in found}) > 1:
        return ClassMatch(name, None, "ambiguous", sources)
    first = found[0][1]
    entry = ClassAttributes(name, first.color, first.shape, first.texture)
    return ClassMatch(name, entry, kind, sources)


def lookup_classes(
    classes: Sequence[str], banks: Sequence[PromptBank] | None = None
) -> list[ClassMatch]:
    """Look up each class in ``banks`` (default: every shipped bank), by rules 2 and 3 of the
    module docstring (rule 1 is the caller's :func:`~lmseg.prompts.bank.find_bank`).

    Returns:
        One :class:`ClassMatch` per class, in order.
    """
    if banks is None:
        banks = [load_bank(name) for name in shipped_banks()]
    wanted = list(classes)
    for bank in banks:  # rule 2: one bank holds every class under its exact name
        by_name = {e.name: e for e in bank.classes}
        if wanted and all(n in by_name for n in wanted):
            return [_decide(n, "exact", [(bank.vocabulary, by_name[n])]) for n in wanted]

    exact: dict[str, list[tuple[str, ClassAttributes]]] = {}
    normalised: dict[str, list[tuple[str, ClassAttributes]]] = {}
    keyed: dict[str, list[tuple[str, ClassAttributes]]] = {}
    for bank in banks:
        for entry, key in zip(bank.classes, entry_keys(bank), strict=True):
            exact.setdefault(entry.name, []).append((bank.vocabulary, entry))
            normalised.setdefault(normalise_name(entry.name), []).append((bank.vocabulary, entry))
            keyed.setdefault(key, []).append((bank.vocabulary, entry))
    matches = []
    for name in wanted:
        steps: list[tuple[MatchKind, list[tuple[str, ClassAttributes]]]] = [
            ("exact", exact.get(name, [])),
            ("normalised", normalised.get(normalise_name(name), [])),
            ("first synonym", keyed.get(lookup_key(name), [])),
        ]
        found = next(((kind, hits) for kind, hits in steps if hits), None)
        matches.append(_decide(name, *found) if found else ClassMatch(name, None, "unknown"))
    return matches
