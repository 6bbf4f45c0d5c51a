"""Prompt banks: per-class attribute descriptions (LMSeg Sec. 3.1), stored as versioned JSON.

A bank holds, for every class of one vocabulary and in its label order, three short name-free
visual descriptions written by an LLM: ``color``, ``shape`` (shape and size) and ``texture``
(texture and material). Each is a non-empty string or a non-empty list of non-empty strings.

Schema version 2 (see :data:`BANK_JSON_SCHEMA`)::

    {
      "schema": "lmseg.prompt_bank",
      "schema_version": 2,
      "vocabulary": "ade150",
      "provenance": {
        "model": "gpt-4o-mini", "model_version": "gpt-4o-mini-2024-07-18",
        "prompt": "...", "prompt_kind": "exact", "created": "2026-11-25", "notes": "...",
        "revisions": [{"date": "2026-12-01", "model": "...", "model_version": "...",
                       "prompt": "...", "prompt_kind": "summary", "changes": "..."}]
      },
      "classes": [
        {"name": "wall", "color": "It is white, beige or pale grey paint.",
         "shape": "It is a large flat vertical surface bounding a room.",
         "texture": "It has smooth matte plaster or painted drywall."}
      ]
    }

Version 2 adds to the provenance the exact model version (``model_version``), whether
``prompt`` is the exact prompt sent or a summary of it (``prompt_kind``), and the list of later
edits (``revisions``). Version-1 files still load: they are read as ``prompt_kind: "exact"``
(what version 1 documented), ``model_version: "not recorded"`` and no revisions, and are
written back as version 2.

Validation is plain Python; unknown keys are errors so that a typo (``"colour"``) cannot pass
silently, and every problem names the class (index and name) and the field at fault. Long
values are cut in messages (:func:`short_repr`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from lmseg.io import atomic_write
from lmseg.prompts.templates import (
    CATSEG_TEMPLATE,
    CONTEXT_LENGTH,
    append_sentences,
    count_tokens,
    render_template,
    sentence,
    split_synonyms,
)
from lmseg.vocabularies import list_vocabularies, load_vocabulary

__all__ = [
    "ATTRIBUTES",
    "BANK_JSON_SCHEMA",
    "PROMPT_KINDS",
    "READABLE_SCHEMA_VERSIONS",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "BankError",
    "ClassAttributes",
    "PromptBank",
    "Provenance",
    "Revision",
    "bank_path",
    "class_token_problems",
    "find_bank",
    "load_bank",
    "parse_json",
    "shipped_banks",
    "short_quoted",
    "short_repr",
    "validate_bank",
]

SCHEMA_NAME = "lmseg.prompt_bank"
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2)
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "texture")
PROMPT_KINDS: tuple[str, ...] = ("exact", "summary")
"""``"exact"``: ``prompt`` is the prompt the model was sent, verbatim; ``"summary"``: a
plain-language summary of the instructions (hand-written banks have no single prompt)."""

_TOP_KEYS = ("schema", "schema_version", "vocabulary", "provenance", "classes")
_PROVENANCE_REQUIRED = {
    1: ("model", "prompt", "created"),
    2: ("model", "model_version", "prompt", "prompt_kind", "created"),
}
_PROVENANCE_KEYS = {
    1: (*_PROVENANCE_REQUIRED[1], "notes"),
    2: (*_PROVENANCE_REQUIRED[2], "notes", "revisions"),
}
_REVISION_KEYS = ("date", "model", "model_version", "prompt", "prompt_kind", "changes")
_CLASS_KEYS = ("name", *ATTRIBUTES)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MAX_LISTED = 10
_SHOWN_CHARACTERS = 80
# No description this long fits in 77 tokens (a CLIP BPE token rarely spans more than ~15
# characters), and BPE-encoding megabytes would take minutes: report it without tokenizing.
_MAX_TOKENIZED_CHARACTERS = 2000
NOT_RECORDED = "not recorded"


def short_repr(value: Any, limit: int = _SHOWN_CHARACTERS) -> str:
    """``repr(value)``, cut to its first ``limit`` characters with the full length appended
    (``'aaaa...'... (10000000 characters)``), so that a huge value cannot flood a message."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def short_quoted(name: str, limit: int = _SHOWN_CHARACTERS) -> str:
    """A name in JSON quotes (as in the bank file: ``"bed "``), cut like :func:`short_repr`."""
    if len(name) > limit:
        return f"{json.dumps(name[:limit], ensure_ascii=False)}... ({len(name)} characters)"
    return json.dumps(name, ensure_ascii=False)


def parse_json(text: str, source: str) -> Any:
    """Decode JSON; raises :class:`BankError` naming ``source`` for invalid or too deeply
    nested JSON (Python's decoder recurses once per nesting level)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BankError(source, [f"not valid JSON: {e}"]) from e
    except RecursionError as e:
        raise BankError(
            source, ["JSON nested too deeply to read (a bank is at most 4 levels deep)"]
        ) from e


_ATTRIBUTE_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "string", "minLength": 1, "pattern": r"\S"},
        {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "minLength": 1, "pattern": r"\S"},
        },
    ]
}
_TEXT: dict[str, Any] = {"type": "string", "minLength": 1}
_KIND: dict[str, Any] = {"enum": list(PROMPT_KINDS)}

BANK_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": f"lmseg prompt bank, schema version {SCHEMA_VERSION}",
    "type": "object",
    "additionalProperties": False,
    "required": list(_TOP_KEYS),
    "properties": {
        "schema": {"const": SCHEMA_NAME},
        "schema_version": {"const": SCHEMA_VERSION},
        "vocabulary": _TEXT,
        "provenance": {
            "type": "object",
            "additionalProperties": False,
            "required": list(_PROVENANCE_REQUIRED[2]),
            "properties": {
                "model": {**_TEXT, "description": "The model that wrote the bank."},
                "model_version": {
                    **_TEXT,
                    "description": "Its exact version (as the server reports it), or "
                    f'"{NOT_RECORDED}".',
                },
                "prompt": _TEXT,
                "prompt_kind": {**_KIND, "description": "Whether prompt is verbatim."},
                "created": {"type": "string", "format": "date"},
                "notes": {"type": "string"},
                "revisions": {
                    "type": "array",
                    "description": "Later edits, oldest first.",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": list(_REVISION_KEYS),
                        "properties": {
                            "date": {"type": "string", "format": "date"},
                            "model": _TEXT,
                            "model_version": _TEXT,
                            "prompt": _TEXT,
                            "prompt_kind": _KIND,
                            "changes": _TEXT,
                        },
                    },
                },
            },
        },
        "classes": {
            "type": "array",
            "description": "One entry per class, in the vocabulary's label order.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": list(_CLASS_KEYS),
                "properties": {
                    "name": {
                        "type": "string",
                        "minLength": 1,
                        "description": "The vocabulary entry, byte for byte.",
                    },
                    **{a: _ATTRIBUTE_SCHEMA for a in ATTRIBUTES},
                },
            },
        },
    },
}
"""JSON Schema (draft 2020-12) of a version-2 bank, for documentation and external tools.
lmseg itself validates with :func:`validate_bank`, which also checks what JSON Schema cannot
(class order against the vocabulary, duplicates, prompt token lengths) and reads version 1."""


class BankError(ValueError):
    """A prompt bank that does not satisfy the schema; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:_MAX_LISTED])
        more = len(self.problems) - _MAX_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"invalid prompt bank {source}:\n  {shown}{tail}")


@dataclass
class ClassAttributes:
    """The attribute descriptions of one class; each field is a string or a list of strings."""

    name: str
    color: str | list[str]
    shape: str | list[str]
    texture: str | list[str]

    def text(self, attribute: str) -> str:
        """One attribute as a single string: list items become sentences joined by spaces, so
        that every class yields the same number of prompts."""
        if attribute not in ATTRIBUTES:
            raise KeyError(f"unknown attribute {attribute!r}; attributes: {', '.join(ATTRIBUTES)}")
        value = getattr(self, attribute)
        items = [value] if isinstance(value, str) else list(value)
        return " ".join(s for s in (sentence(v) for v in items) if s)

    def texts(self) -> tuple[str, ...]:
        """The three attributes as single strings, in :data:`ATTRIBUTES` order."""
        return tuple(self.text(a) for a in ATTRIBUTES)

    def to_dict(self) -> dict[str, Any]:
        return {k: _copy_value(getattr(self, k)) for k in _CLASS_KEYS}


@dataclass
class Revision:
    """One later edit of a bank: who made it (model and exact version), with which prompt,
    when, and what changed."""

    date: str
    model: str
    model_version: str
    prompt: str
    prompt_kind: str
    changes: str

    def to_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in _REVISION_KEYS}


@dataclass
class Provenance:
    """Who wrote a bank and how: the LLM and its exact version, the prompt (verbatim, or a
    summary: ``prompt_kind``), the ISO creation date, and later revisions."""

    model: str
    prompt: str
    created: str
    notes: str | None = None
    model_version: str = NOT_RECORDED
    prompt_kind: str = "exact"
    revisions: list[Revision] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "model_version": self.model_version,
            "prompt": self.prompt,
            "prompt_kind": self.prompt_kind,
            "created": self.created,
        }
        if self.notes is not None:
            out["notes"] = self.notes
        if self.revisions:
            out["revisions"] = [r.to_dict() for r in self.revisions]
        return out

    @classmethod
    def from_dict(cls, prov: Mapping[str, Any]) -> Provenance:
        """From a validated provenance object of either schema version."""
        return cls(
            model=prov["model"],
            prompt=prov["prompt"],
            created=prov["created"],
            notes=prov.get("notes"),
            model_version=prov.get("model_version", NOT_RECORDED),
            prompt_kind=prov.get("prompt_kind", "exact"),
            revisions=[
                Revision(**{k: r[k] for k in _REVISION_KEYS}) for r in prov.get("revisions", [])
            ],
        )


@dataclass
class PromptBank:
    """A parsed prompt bank: K classes (in label order) with their attribute descriptions."""

    vocabulary: str
    provenance: Provenance
    classes: list[ClassAttributes] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """The K class names, in bank order."""
        return [c.name for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def get(self, name: str) -> ClassAttributes | None:
        """The entry of a class by exact name, or ``None``."""
        for entry in self.classes:
            if entry.name == name:
                return entry
        return None

    def to_dict(self) -> dict[str, Any]:
        """The bank in its JSON schema (the current version, key order as documented)."""
        return {
            "schema": SCHEMA_NAME,
            "schema_version": SCHEMA_VERSION,
            "vocabulary": self.vocabulary,
            "provenance": self.provenance.to_dict(),
            "classes": [c.to_dict() for c in self.classes],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the bank as UTF-8 JSON, atomically (temporary file + ``os.replace``)."""
        text = self.to_json()
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> PromptBank:
        """Parse a bank (schema version 1 or 2) from decoded JSON; raises :class:`BankError`
        listing every problem."""
        problems = schema_problems(data)
        if problems:
            raise BankError(source, problems)
        return cls(
            vocabulary=data["vocabulary"],
            provenance=Provenance.from_dict(data["provenance"]),
            classes=[
                ClassAttributes(**{k: _copy_value(c[k]) for k in _CLASS_KEYS})
                for c in data["classes"]
            ],
        )


def _copy_value(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


# --------------------------------------------------------------------------------------------
# Validation


def _label(index: int, name: Any) -> str:
    shown = short_quoted(name) if isinstance(name, str) else "?"
    return f"classes[{index}] ({shown})"


def _key(key: Any) -> str:
    return short_quoted(key) if isinstance(key, str) else short_repr(key)


def attribute_problem(value: Any) -> str | None:
    """Why an attribute value is invalid (``"is empty"``, ...), or ``None`` when it is valid."""
    if isinstance(value, str):
        return None if value.strip() else "is empty"
    if isinstance(value, list):
        if not value:
            return "is an empty list"
        for i, item in enumerate(value):
            if not isinstance(item, str):
                return f"[{i}] must be a string, got {type(item).__name__}"
            if not item.strip():
                return f"[{i}] is empty"
        return None
    return f"must be a string or a list of strings, got {type(value).__name__}"


def class_problems(entry: Any, index: int) -> list[str]:
    """Schema problems of one ``classes[index]`` entry (empty list when valid)."""
    if not isinstance(entry, Mapping):
        return [f"classes[{index}]: must be an object, got {type(entry).__name__}"]
    name = entry.get("name")
    label = _label(index, name)
    problems = []
    if "name" not in entry:
        problems.append(f'{label}: field "name" is missing')
    elif not isinstance(name, str):
        problems.append(f'{label}: field "name" must be a string, got {type(name).__name__}')
    elif not name.strip():
        problems.append(f'{label}: field "name" is empty')
    for key in entry:
        if key not in _CLASS_KEYS:
            problems.append(f"{label}: unknown key {_key(key)} (allowed: {', '.join(_CLASS_KEYS)})")
    for attribute in ATTRIBUTES:
        if attribute not in entry:
            problems.append(f'{label}: field "{attribute}" is missing')
            continue
        why = attribute_problem(entry[attribute])
        if why is not None:
            sep = "" if why.startswith("[") else " "
            problems.append(f'{label}: field "{attribute}"{sep}{why}')
    return problems


def schema_problems(data: Any) -> list[str]:
    """Every way ``data`` (decoded JSON) breaks its schema version; empty when it is valid."""
    if not isinstance(data, Mapping):
        return [f"a bank must be a JSON object, got {type(data).__name__}"]
    problems = []
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(f"unknown top-level key {_key(key)} (allowed: {', '.join(_TOP_KEYS)})")
    for key in _TOP_KEYS:
        if key not in data:
            problems.append(f'top-level field "{key}" is missing')
    if "schema" in data and data["schema"] != SCHEMA_NAME:
        problems.append(f'"schema" must be "{SCHEMA_NAME}", got {short_repr(data["schema"])}')
    version = data.get("schema_version", SCHEMA_VERSION)
    if "schema_version" in data and (
        not isinstance(version, int)
        or isinstance(version, bool)
        or version not in READABLE_SCHEMA_VERSIONS
    ):
        problems.append(
            f'unsupported "schema_version" {short_repr(version)} (this lmseg reads versions '
            f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))})"
        )
        version = None  # the provenance of an unknown version cannot be checked
    if "vocabulary" in data and not (
        isinstance(data["vocabulary"], str) and data["vocabulary"].strip()
    ):
        problems.append('"vocabulary" must be a non-empty string')
    if "provenance" in data and version is not None:
        problems += _provenance_problems(data["provenance"], version)
    if "classes" in data:
        classes = data["classes"]
        if not isinstance(classes, list):
            problems.append(f'"classes" must be a list, got {type(classes).__name__}')
        else:
            seen: dict[str, int] = {}
            for i, entry in enumerate(classes):
                problems += class_problems(entry, i)
                name = entry.get("name") if isinstance(entry, Mapping) else None
                if isinstance(name, str):
                    if name in seen:
                        problems.append(f"{_label(i, name)}: duplicate of classes[{seen[name]}]")
                    else:
                        seen[name] = i
    return problems


def _date_problem(where: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None  # reported as a missing or empty field
    try:
        ok = bool(_ISO_DATE.match(value)) and _dt.date.fromisoformat(value) is not None
    except ValueError:
        ok = False
    return None if ok else f"{where} must be an ISO date (YYYY-MM-DD), got {short_repr(value)}"


def _text_fields_problems(where: str, obj: Mapping[str, Any], required: Sequence[str]) -> list[str]:
    problems = []
    for key in required:
        value = obj.get(key)
        if key not in obj:
            problems.append(f'{where}: field "{key}" is missing')
        elif not isinstance(value, str) or not value.strip():
            problems.append(f'{where}: field "{key}" must be a non-empty string')
        elif key == "prompt_kind" and value not in PROMPT_KINDS:
            problems.append(
                f'{where}: "prompt_kind" must be one of {", ".join(PROMPT_KINDS)}, got '
                f"{short_repr(value)}"
            )
    return problems


def _provenance_problems(prov: Any, version: int) -> list[str]:
    if not isinstance(prov, Mapping):
        return [f'"provenance" must be an object, got {type(prov).__name__}']
    allowed = _PROVENANCE_KEYS[version]
    problems = []
    for key in prov:
        if key not in allowed:
            problems.append(
                f"provenance: unknown key {_key(key)} (allowed in schema version {version}: "
                f"{', '.join(allowed)})"
            )
    problems += _text_fields_problems("provenance", prov, _PROVENANCE_REQUIRED[version])
    if (why := _date_problem('provenance: "created"', prov.get("created"))) is not None:
        problems.append(why)
    if "notes" in prov and not isinstance(prov["notes"], str):
        problems.append('provenance: field "notes" must be a string')
    revisions = prov.get("revisions", [])
    if "revisions" in allowed and not isinstance(revisions, list):
        problems.append(f'provenance: "revisions" must be a list, got {type(revisions).__name__}')
    elif "revisions" in allowed:
        for i, rev in enumerate(revisions):
            where = f"provenance: revisions[{i}]"
            if not isinstance(rev, Mapping):
                problems.append(f"{where} must be an object, got {type(rev).__name__}")
                continue
            for key in rev:
                if key not in _REVISION_KEYS:
                    problems.append(
                        f"{where}: unknown key {_key(key)} (allowed: {', '.join(_REVISION_KEYS)})"
                    )
            problems += _text_fields_problems(where, rev, _REVISION_KEYS)
            if (why := _date_problem(f'{where}: "date"', rev.get("date"))) is not None:
                problems.append(why)
    return problems


def _order_problems(names: Sequence[str], class_names: Sequence[str]) -> list[str]:
    """Compare the bank's class list with the expected one (completeness and label order)."""
    if list(names) == list(class_names):
        return []
    problems = []
    expected = set(class_names)
    present = set(names)
    extra = [(i, n) for i, n in enumerate(names) if n not in expected]
    for i, n in extra[:_MAX_LISTED]:
        problems.append(f"{_label(i, n)}: not in the class list")
    if len(extra) > _MAX_LISTED:
        problems.append(f"... and {len(extra) - _MAX_LISTED} more classes not in the class list")
    missing = [n for n in class_names if n not in present]
    if missing:
        shown = ", ".join(short_quoted(n) for n in missing[:_MAX_LISTED])
        more = f", ... ({len(missing) - _MAX_LISTED} more)" if len(missing) > _MAX_LISTED else ""
        problems.append(
            f"incomplete: {len(missing)} of {len(class_names)} classes have no entry: {shown}{more}"
        )
    in_bank = [(i, n) for i, n in enumerate(names) if n in expected]
    in_list = [n for n in class_names if n in present]
    wrong = [(i, n, want) for (i, n), want in zip(in_bank, in_list, strict=True) if n != want]
    for i, n, want in wrong[:5]:
        problems.append(
            f"{_label(i, n)}: out of order, expected {short_quoted(want)} "
            "here (classes must follow the vocabulary's label order)"
        )
    if len(wrong) > 5:
        problems.append(f"... and {len(wrong) - 5} more classes out of order")
    return problems


def class_token_problems(
    entry: ClassAttributes,
    tokenizer: Any,
    *,
    index: int | None = None,
    context_length: int = CONTEXT_LENGTH,
) -> list[str]:
    """Why a class's prompts would not fit the text encoder (empty when they fit).

    The longest prompt any mode builds from an entry with the CAT-Seg template is the
    ``"combined"`` one: the template filled with a synonym, then all three sentences. It must
    fit in ``context_length`` tokens (start and end tokens included) for every synonym, since
    ``synonyms="mean"`` fills the template with each of them; every ``"attributes"`` prompt is a
    part of it and then fits too.
    """
    label = _label(index, entry.name) if index is not None else f"class {short_quoted(entry.name)}"
    texts = entry.texts()
    for attribute, text in zip(ATTRIBUTES, texts, strict=True):
        if len(text) > _MAX_TOKENIZED_CHARACTERS:
            return [
                f'{label}: field "{attribute}" is {len(text)} characters long, far over the '
                f"{context_length}-token limit of a prompt: {short_repr(text)}"
            ]
    for synonym in split_synonyms(entry.name):
        prompt = append_sentences(render_template(CATSEG_TEMPLATE, synonym), list(texts))
        n = count_tokens(prompt, tokenizer)
        if n > context_length:
            return [
                f"{label}: the template with all three descriptions gives a prompt of {n} tokens "
                f"(limit {context_length}, start and end tokens included); shorten the "
                f"descriptions: {short_repr(prompt, 200)}"
            ]
    return []


def _name_problems(bank: PromptBank) -> list[str]:
    problems = []
    for i, entry in enumerate(bank.classes):
        synonyms = [s.strip() for s in entry.name.split(",") if s.strip()]
        for attribute in ATTRIBUTES:
            text = entry.text(attribute)
            for syn in synonyms:
                if re.search(rf"(?<!\w){re.escape(syn)}(?!\w)", text, flags=re.IGNORECASE):
                    problems.append(
                        f'{_label(i, entry.name)}: field "{attribute}" names the class '
                        f"({short_repr(syn)}); descriptions must be name-free"
                    )
                    break
    return problems


def read_bank_data(bank: PromptBank | Mapping[str, Any] | str | os.PathLike[str]) -> Any:
    """Decoded JSON of a bank given as an object, a mapping, a path or a shipped name.

    Raises:
        BankError: unreadable file, invalid or too deeply nested JSON (naming the file).
    """
    if isinstance(bank, PromptBank):
        return bank.to_dict()
    if isinstance(bank, Mapping):
        return bank
    try:
        display, text = _read_source(bank)
    except (OSError, KeyError, UnicodeDecodeError) as e:
        reason = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise BankError(short_repr(os.fspath(bank)), [f"cannot read it: {reason}"]) from e
    return parse_json(text, display)


def validate_bank(
    bank: PromptBank | Mapping[str, Any] | str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    tokenizer: Any = None,
    *,
    context_length: int = CONTEXT_LENGTH,
    name_free: bool = False,
) -> list[str]:
    """Every problem of a bank; an empty list means it is valid.

    Args:
        bank: a :class:`PromptBank`, decoded JSON, a path, or a shipped vocabulary name.
        class_names: the K class names the bank must cover, in order. ``None``: the bank's
            vocabulary when it is a known one (:func:`lmseg.vocabularies.list_vocabularies`),
            otherwise no completeness/order check.
        tokenizer: an object with ``encode(str) -> list[int]`` (open_clip's ``SimpleTokenizer``,
            see :func:`lmseg.prompts.templates.clip_tokenizer`); when given, every class's
            longest prompt (the CAT-Seg template filled with each synonym, then all three
            descriptions) must fit in ``context_length`` tokens (:func:`class_token_problems`).
        name_free: also report descriptions that contain the class name or a synonym.

    Returns:
        Human-readable problems, each naming the class (index and name) and field at fault;
        long values are cut.
    """
    try:
        data = read_bank_data(bank)
    except BankError as e:
        return [f"cannot read bank {short_repr(os.fspath(bank))}: {'; '.join(e.problems)}"]  # type: ignore[arg-type]
    problems = schema_problems(data)
    if problems:
        return problems
    parsed = PromptBank.from_dict(data)
    if class_names is None and parsed.vocabulary in list_vocabularies():
        class_names = load_vocabulary(parsed.vocabulary)
    if class_names is not None:
        problems += _order_problems(parsed.names, class_names)
    if tokenizer is not None:
        for i, entry in enumerate(parsed.classes):
            problems += class_token_problems(
                entry, tokenizer, index=i, context_length=context_length
            )
    if name_free:
        problems += _name_problems(parsed)
    return problems


# --------------------------------------------------------------------------------------------
# Shipped banks and loading


def _shipped_dir() -> Traversable:
    return resources.files("lmseg.prompts").joinpath("banks")


def shipped_banks() -> list[str]:
    """Names of the banks shipped in ``lmseg/prompts/banks/`` (known vocabularies first, in
    :func:`~lmseg.vocabularies.list_vocabularies` order)."""
    root = _shipped_dir()
    if not root.is_dir():
        return []
    names = {p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json")}
    order = {v: i for i, v in enumerate(list_vocabularies())}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def bank_path(name: str) -> Traversable:
    """The shipped bank file of a vocabulary; raises ``KeyError`` when none is shipped."""
    path = _shipped_dir().joinpath(f"{name}.json")
    if not path.is_file():
        raise KeyError(
            f"no shipped prompt bank for {short_repr(name)}; shipped banks: "
            f"{', '.join(shipped_banks()) or '(none)'}. `lmseg prompts generate` can write one."
        )
    return path


def _read_source(source: str | os.PathLike[str]) -> tuple[str, str]:
    """(display name, text) of a bank given as a path or a shipped name."""
    path = Path(source)
    if path.is_file():
        return str(path), path.read_text(encoding="utf-8")
    text_source = os.fspath(source)
    if text_source.endswith(".json") or os.sep in text_source or "/" in text_source:
        raise FileNotFoundError(f"no prompt bank file at {short_repr(text_source)}")
    return f"{text_source} (shipped)", bank_path(text_source).read_text(encoding="utf-8")


def load_bank(source: PromptBank | str | os.PathLike[str]) -> PromptBank:
    """Load a bank from a JSON file or by shipped vocabulary name (``"ade150"``).

    Only the schema is checked here (a partially generated bank loads); use
    :func:`validate_bank` for completeness, order and token length.

    Raises:
        BankError: the file is not valid JSON, is nested too deeply, or breaks the schema
            (every problem is listed, long values cut).
        KeyError / FileNotFoundError: no such shipped bank / file.
    """
    if isinstance(source, PromptBank):
        return source
    display, text = _read_source(source)
    return PromptBank.from_dict(parse_json(text, display), source=display)


def find_bank(classes: Iterable[str]) -> PromptBank | None:
    """The shipped bank whose class list equals ``classes`` exactly (order included), or
    ``None``; this is how ``--vocabulary ade150`` picks its bank."""
    wanted = list(classes)
    known = set(list_vocabularies())
    for name in shipped_banks():
        if name in known:
            if load_vocabulary(name) == wanted:
                return load_bank(name)
        else:
            bank = load_bank(name)
            if bank.names == wanted:
                return bank
    return None
