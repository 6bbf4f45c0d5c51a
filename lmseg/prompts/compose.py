"""Prompt composition: K class names (+ a prompt bank) -> K lists of P prompt strings.

Modes (T = number of templates, CAT-Seg's single template by default, so T = 1):

``"template"``
    ``[t(name) for t in templates]``; P = T. With the default template this is exactly CAT-Seg:
    ``"A photo of a wall in the scene"``.
``"attributes"`` (default; LMSeg)
    The template prompts, then each template followed by each attribute sentence, attribute by
    attribute; P = 4T. With the default template, P = 4::

        "A photo of a wall in the scene"
        "A photo of a wall in the scene. It is white, beige or pale grey paint."
        "A photo of a wall in the scene. It is a large flat vertical surface bounding a room."
        "A photo of a wall in the scene. It has smooth matte plaster or painted drywall."

    The first T prompts are exactly the ``"template"`` mode's.
``"attributes_only"``
    The three attribute sentences alone, name-free; P = 3. Used where names carry no meaning
    (the synthetic demo's made-up words). Templates are ignored.
``"combined"``
    Each template followed by all three sentences in one string; P = T (1 by default)::

        "A photo of a wall in the scene. It is white, ... paint. It is a large ... room. It has ..."

``"formats"`` (implied by ``formats=[...]``)
    User format strings with the fields ``{name}``, ``{color}``, ``{shape}``, ``{texture}``,
    e.g. ``["a photo of a {name}.", "a {name}. {color}"]``; P = len(formats).

Joining (:func:`lmseg.prompts.templates.append_sentences`): the rendered template loses trailing
whitespace, ``". "`` closes it unless it already ends with ``.``, ``!`` or ``?`` (then one space),
and the sentences follow, each stripped and given a final period if it has none. A list-valued
attribute becomes its sentences joined by single spaces, so P is the same for every class.

Classes without a bank entry (``missing="repeat"``, the default): every prompt that needs an
attribute is replaced by the same prompt without it, i.e. the template prompt is repeated to fill
P. The class then gets CAT-Seg's embedding in every slot: P stays what the model was built for
(the P -> 128 cost-embedding conv), the mean prompt embedding used as text guidance equals the
template embedding, and no invented text enters. For ``"formats"``, the first format that uses
only ``{name}`` stands in; without one, and always for ``"attributes_only"``, a missing entry
raises, as it does with ``missing="error"``.

Synonyms (ADE-847's ``"building, edifice"``): ``synonyms="first"`` (default, CAT-Seg's released
behaviour) uses the first synonym; ``synonyms="mean"`` gives, for each name-dependent prompt of a
class with several synonyms, a tuple of one prompt per synonym, whose normalised embeddings
:func:`lmseg.prompts.embedding.embed_prompts` averages (and renormalises), as one CAT-Seg version
does. Names are inserted verbatim (ADE-150's ``"bed "`` keeps its space; tokens are unchanged).
"""

from __future__ import annotations

import logging
import os
import string
from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

from lmseg.prompts.bank import (
    ATTRIBUTES,
    ClassAttributes,
    PromptBank,
    find_bank,
    load_bank,
    short_quoted,
    short_repr,
)
from lmseg.prompts.lookup import ClassMatch, lookup_classes
from lmseg.prompts.templates import (
    CATSEG_TEMPLATE,
    Template,
    append_sentences,
    render_template,
    split_synonyms,
)

__all__ = [
    "MODES",
    "MissingBankWarning",
    "PromptMode",
    "PromptSlot",
    "compose_prompts",
    "num_prompts",
    "prompts_for",
    "split_synonyms",
]

logger = logging.getLogger(__name__)

PromptMode = Literal["template", "attributes", "attributes_only", "combined", "formats"]
SynonymMode = Literal["first", "mean"]
MissingPolicy = Literal["repeat", "error"]
PromptSlot = str | tuple[str, ...]
"""One of a class's P prompts: a string, or (``synonyms="mean"``) one string per synonym."""

MODES: tuple[str, ...] = ("template", "attributes", "attributes_only", "combined", "formats")
_NEEDS_BANK = ("attributes", "attributes_only", "combined")
_FORMAT_FIELDS = ("name", *ATTRIBUTES)


class MissingBankWarning(UserWarning):
    """Kept so that existing ``filterwarnings`` lines still import; no longer emitted. The
    notice about classes without a bank entry is a log record of the ``lmseg.prompts.compose``
    logger (see :func:`prompts_for`)."""


_MAX_NAMED = 10
_NAME_CHARACTERS = 40


def _named(names: Sequence[str]) -> str:
    """``'zebra', 'unicorn'``, at most 10 names of at most 40 characters, then a count."""
    shown = ", ".join(short_repr(n, _NAME_CHARACTERS) for n in names[:_MAX_NAMED])
    more = len(names) - _MAX_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


def num_prompts(
    mode: str | None = None,
    templates: Sequence[Template] | None = None,
    formats: Sequence[str] | None = None,
) -> int:
    """P, the number of prompts per class a mode produces (the model's cost-embedding input
    channels)."""
    mode = _resolve_mode(mode, formats)
    n_templates = len(templates) if templates is not None else 1
    if mode == "template" or mode == "combined":
        return n_templates
    if mode == "attributes":
        return n_templates * (1 + len(ATTRIBUTES))
    if mode == "attributes_only":
        return len(ATTRIBUTES)
    assert formats is not None
    return len(formats)


def _resolve_mode(mode: str | None, formats: Sequence[str] | None) -> str:
    if mode is None:
        mode = "formats" if formats is not None else "attributes"
    if mode not in MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; modes: {', '.join(MODES)}")
    if mode == "formats" and not formats:
        raise ValueError('mode "formats" needs a non-empty list of format strings (formats=)')
    if formats is not None and mode != "formats":
        raise ValueError(f"formats= is given, so mode must be 'formats' or None, not {mode!r}")
    return mode


def _format_fields(fmt: str) -> set[str]:
    fields = set()
    for _, field_name, spec, conversion in string.Formatter().parse(fmt):
        if field_name is None:
            continue
        if field_name not in _FORMAT_FIELDS or spec or conversion:
            raise ValueError(
                f"format {fmt!r}: unsupported field {{{field_name}}}; use only "
                + ", ".join(f"{{{f}}}" for f in _FORMAT_FIELDS)
            )
        fields.add(field_name)
    return fields


def compose_prompts(
    class_names: Sequence[str],
    bank: PromptBank | str | os.PathLike[str] | None = None,
    mode: PromptMode | None = None,
    templates: Sequence[Template] | None = None,
    formats: Sequence[str] | None = None,
    synonyms: SynonymMode = "first",
    *,
    missing: MissingPolicy = "repeat",
) -> list[list[PromptSlot]]:
    """Build P prompts for each of K classes (see the module docstring for the exact strings).

    Args:
        class_names: K vocabulary entries, in label order.
        bank: attribute descriptions (a :class:`PromptBank`, a bank path or a shipped name);
            entries are matched by exact name. ``None``: every class is treated as missing.
        mode: one of :data:`MODES`; ``None`` means ``"formats"`` if ``formats`` is given,
            else ``"attributes"``.
        templates: T templates (format strings with ``{}`` or callables); default
            ``[CATSEG_TEMPLATE]``. :func:`~lmseg.prompts.templates.imagenet_templates` gives
            open_clip's 80-template ensemble.
        formats: user format strings with ``{name}``, ``{color}``, ``{shape}``, ``{texture}``.
        synonyms: ``"first"`` or ``"mean"`` (see the module docstring).
        missing: ``"repeat"`` (fill with the template prompt) or ``"error"`` for classes the
            bank does not cover.

    Returns:
        K lists of P prompt slots (strings; tuples of per-synonym strings with
        ``synonyms="mean"``).
    """
    loaded = load_bank(bank) if bank is not None else None
    entries = {e.name: e for e in loaded.classes} if loaded is not None else {}
    bank_name = f'bank "{loaded.vocabulary}"' if loaded is not None else "no bank"
    prompts, missing_names = _compose(
        class_names, entries, bank_name, mode, templates, formats, synonyms, missing
    )
    if loaded is not None and missing_names:
        logger.warning(
            "%d of %d classes have no entry in %s (%s); their attribute prompts repeat the "
            "template",
            len(missing_names),
            len(class_names),
            bank_name,
            _named(missing_names),
        )
    return prompts


def _compose(
    class_names: Sequence[str],
    entries: dict[str, ClassAttributes],
    bank_name: str,
    mode: str | None,
    templates: Sequence[Template] | None,
    formats: Sequence[str] | None,
    synonyms: str,
    missing: str,
) -> tuple[list[list[PromptSlot]], list[str]]:
    """The prompts, and the classes that needed an entry and had none."""
    mode = _resolve_mode(mode, formats)
    if synonyms not in ("first", "mean"):
        raise ValueError(f"synonyms must be 'first' or 'mean', got {synonyms!r}")
    if missing not in ("repeat", "error"):
        raise ValueError(f"missing must be 'repeat' or 'error', got {missing!r}")
    templates = list(templates) if templates is not None else [CATSEG_TEMPLATE]
    if not templates:
        raise ValueError("templates must not be empty")

    format_fields = [_format_fields(f) for f in formats] if formats is not None else []
    name_only = next((i for i, f in enumerate(format_fields) if not f & set(ATTRIBUTES)), None)
    needs_entry = mode in _NEEDS_BANK or any(f & set(ATTRIBUTES) for f in format_fields)

    out: list[list[PromptSlot]] = []
    missing_names = []
    for k, class_name in enumerate(class_names):
        entry = entries.get(class_name)
        if entry is None and needs_entry:
            missing_names.append(class_name)
            if (
                missing == "error"
                or mode == "attributes_only"
                or (mode == "formats" and name_only is None)
            ):
                why = "" if missing == "error" else f" and mode {mode!r} has no name-only fallback"
                raise ValueError(
                    f"class {k} ({short_quoted(class_name)}) has no entry in {bank_name}{why}; "
                    "`lmseg prompts generate` can write a bank for these classes"
                )
        names = split_synonyms(class_name)
        if synonyms == "first":
            names = names[:1]
        out.append(_class_prompts(names, entry, mode, templates, formats, format_fields, name_only))
    return out, missing_names


def _class_prompts(
    names: list[str],
    entry: ClassAttributes | None,
    mode: str,
    templates: list[Template],
    formats: Sequence[str] | None,
    format_fields: list[set[str]],
    name_only: int | None,
) -> list[PromptSlot]:
    """The P prompt slots of one class; ``names`` holds one synonym, or all of them."""

    def per_name(build: Callable[[str], str]) -> PromptSlot:
        variants = tuple(build(n) for n in names)
        return variants[0] if len(variants) == 1 else variants

    if mode == "attributes_only":
        assert entry is not None
        return [entry.text(a) for a in ATTRIBUTES]
    if mode == "formats":
        assert formats is not None
        slots: list[PromptSlot] = []
        for fmt, fields in zip(formats, format_fields, strict=True):
            if entry is None and fields & set(ATTRIBUTES):
                assert name_only is not None
                fmt = formats[name_only]
            slots.append(per_name(partial(_render_format, fmt, entry)))
        return slots

    plain = [per_name(partial(render_template, t)) for t in templates]
    if mode == "template":
        return plain
    if mode == "combined":
        if entry is None:
            return plain
        texts = [entry.text(a) for a in ATTRIBUTES]
        return [per_name(partial(_with_sentences, t, texts)) for t in templates]
    # "attributes": template prompts first, then one group of T per attribute.
    slots = list(plain)
    for attribute in ATTRIBUTES:
        if entry is None:
            slots += plain
            continue
        text = entry.text(attribute)
        slots += [per_name(partial(_with_sentences, t, [text])) for t in templates]
    return slots


def _with_sentences(template: Template, sentences: list[str], name: str) -> str:
    return append_sentences(render_template(template, name), sentences)


def _render_format(fmt: str, entry: ClassAttributes | None, name: str) -> str:
    values = {"name": name}
    if entry is not None:
        values.update({a: entry.text(a) for a in ATTRIBUTES})
    return fmt.format_map(values)


_notified: set[tuple[str, ...]] = set()


def prompts_for(
    classes: Sequence[str],
    bank: PromptBank | str | os.PathLike[str] | None = None,
    mode: PromptMode | None = None,
    templates: Sequence[Template] | None = None,
    formats: Sequence[str] | None = None,
    synonyms: SynonymMode = "first",
) -> list[list[PromptSlot]]:
    """Prompts for any class list, the way the segmenter asks for them.

    With ``bank=None`` the descriptions come from the shipped banks: the bank of the shipped
    vocabulary equal to ``classes`` (:func:`~lmseg.prompts.bank.find_bank`; prompts identical
    to ``compose_prompts(classes, that_bank)``), else the bank holding every class under its
    exact name, else each class looked up on its own (exact name, then case and whitespace
    normalised, then first synonym; :mod:`lmseg.prompts.lookup`). Classes found nowhere, or
    described differently by two shipped banks, get the template prompt in every slot (P
    unchanged, see :func:`compose_prompts`); one log record (logger
    ``lmseg.prompts.compose``, level WARNING, once per process for the same classes) names
    them and says that ``lmseg prompts generate`` can write a bank. ``"attributes_only"``
    cannot fall back and raises. With a ``bank``, that bank alone is used.

    Returns:
        K lists of P prompt slots, as :func:`compose_prompts`.
    """
    resolved = _resolve_mode(mode, formats)
    needs = resolved in _NEEDS_BANK or (
        formats is not None and any(_format_fields(f) & set(ATTRIBUTES) for f in formats)
    )
    if bank is not None or not needs:
        return compose_prompts(classes, bank, resolved, templates, formats, synonyms)  # type: ignore[arg-type]
    shipped = find_bank(classes)
    if shipped is not None:
        return compose_prompts(classes, shipped, resolved, templates, formats, synonyms)  # type: ignore[arg-type]
    matches = lookup_classes(classes)
    entries = {m.name: m.entry for m in matches if m.entry is not None}
    prompts, _ = _compose(
        classes, entries, "the shipped banks", resolved, templates, formats, synonyms, "repeat"
    )
    _notify(matches)
    return prompts


def _notify(matches: Sequence[ClassMatch]) -> None:
    unknown = [m.name for m in matches if m.kind == "unknown"]
    ambiguous = [m.name for m in matches if m.kind == "ambiguous"]
    key = (*unknown, "\0", *ambiguous)
    if not (unknown or ambiguous) or key in _notified:
        return
    _notified.add(key)
    parts = []
    if unknown:
        parts.append(
            f"{len(unknown)} of {len(matches)} classes are in no shipped prompt bank "
            f"({_named(unknown)})"
        )
    if ambiguous:
        parts.append(
            f"{len(ambiguous)} {'means' if len(ambiguous) == 1 else 'mean'} different things "
            "in different shipped banks "
            f"({_named(ambiguous)})"
        )
    logger.warning(
        "%s: their attribute prompts repeat the template. `lmseg prompts generate --classes "
        "FILE --out BANK.json` can write a bank, to pass as bank=BANK.json",
        "; ".join(parts),
    )
