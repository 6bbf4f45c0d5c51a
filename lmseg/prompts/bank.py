"""Prompt banks: per-class attribute descriptions (LMSeg Sec. 3.1), stored as versioned JSON.

A bank holds, for every class of one vocabulary and in its label order, three short name-free
visual descriptions written by an LLM: ``color``, ``shape`` (shape and size) and ``texture``
(texture and material). Each is a non-empty string or a non-empty list of non-empty strings.

Schema version 1 (see :data:`BANK_JSON_SCHEMA`)::

    {
      "schema": "lmseg.prompt_bank",
      "schema_version": 1,
      "vocabulary": "ade150",
      "provenance": {"model": "...", "prompt": "...", "created": "2026-11-25", "notes": "..."},
      "classes": [
        {"name": "wall", "color": "It is white, beige or pale grey paint.",
         "shape": "It is a large flat vertical surface bounding a room.",
         "texture": "It has smooth matte plaster or painted drywall."}
      ]
    }

Validation is plain Python; unknown keys are errors so that a typo (``"colour"``) cannot pass
silently, and every problem names the class (index and name) and the field at fault.
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
)
from lmseg.vocabularies import list_vocabularies, load_vocabulary

__all__ = [
    "ATTRIBUTES",
    "BANK_JSON_SCHEMA",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "BankError",
    "ClassAttributes",
    "PromptBank",
    "Provenance",
    "bank_path",
    "find_bank",
    "load_bank",
    "shipped_banks",
    "validate_bank",
]

SCHEMA_NAME = "lmseg.prompt_bank"
SCHEMA_VERSION = 1
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "texture")

_TOP_KEYS = ("schema", "schema_version", "vocabulary", "provenance", "classes")
_PROVENANCE_REQUIRED = ("model", "prompt", "created")
_PROVENANCE_KEYS = (*_PROVENANCE_REQUIRED, "notes")
_CLASS_KEYS = ("name", *ATTRIBUTES)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MAX_LISTED = 10

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

BANK_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "lmseg prompt bank, schema version 1",
    "type": "object",
    "additionalProperties": False,
    "required": list(_TOP_KEYS),
    "properties": {
        "schema": {"const": SCHEMA_NAME},
        "schema_version": {"const": SCHEMA_VERSION},
        "vocabulary": {"type": "string", "minLength": 1},
        "provenance": {
            "type": "object",
            "additionalProperties": False,
            "required": list(_PROVENANCE_REQUIRED),
            "properties": {
                "model": {"type": "string", "minLength": 1},
                "prompt": {"type": "string", "minLength": 1},
                "created": {"type": "string", "format": "date"},
                "notes": {"type": "string"},
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
"""JSON Schema (draft 2020-12) of a version-1 bank, for documentation and external tools.
lmseg itself validates with :func:`validate_bank`, which also checks what JSON Schema cannot
(class order against the vocabulary, duplicates, prompt token lengths)."""


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

    def to_dict(self) -> dict[str, Any]:
        return {k: _copy_value(getattr(self, k)) for k in _CLASS_KEYS}


@dataclass
class Provenance:
    """Who wrote a bank and how: the LLM, the exact prompt template, the ISO creation date."""

    model: str
    prompt: str
    created: str
    notes: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"model": self.model, "prompt": self.prompt, "created": self.created}
        if self.notes is not None:
            out["notes"] = self.notes
        return out


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
        """The bank in its JSON schema (key order as documented)."""
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
        """Parse a bank from decoded JSON; raises :class:`BankError` listing every problem."""
        problems = schema_problems(data)
        if problems:
            raise BankError(source, problems)
        prov = data["provenance"]
        return cls(
            vocabulary=data["vocabulary"],
            provenance=Provenance(
                model=prov["model"],
                prompt=prov["prompt"],
                created=prov["created"],
                notes=prov.get("notes"),
            ),
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
    shown = json.dumps(name, ensure_ascii=False) if isinstance(name, str) else "?"
    return f"classes[{index}] ({shown})"


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
            problems.append(f'{label}: unknown key "{key}" (allowed: {", ".join(_CLASS_KEYS)})')
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
    """Every way ``data`` (decoded JSON) breaks schema version 1; empty when it is valid."""
    if not isinstance(data, Mapping):
        return [f"a bank must be a JSON object, got {type(data).__name__}"]
    problems = []
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(f'unknown top-level key "{key}" (allowed: {", ".join(_TOP_KEYS)})')
    for key in _TOP_KEYS:
        if key not in data:
            problems.append(f'top-level field "{key}" is missing')
    if "schema" in data and data["schema"] != SCHEMA_NAME:
        problems.append(f'"schema" must be "{SCHEMA_NAME}", got {data["schema"]!r}')
    if "schema_version" in data:
        version = data["schema_version"]
        if not isinstance(version, int) or isinstance(version, bool) or version != SCHEMA_VERSION:
            problems.append(
                f'unsupported "schema_version" {version!r} (this lmseg reads version '
                f"{SCHEMA_VERSION})"
            )
    if "vocabulary" in data and not (
        isinstance(data["vocabulary"], str) and data["vocabulary"].strip()
    ):
        problems.append('"vocabulary" must be a non-empty string')
    if "provenance" in data:
        problems += _provenance_problems(data["provenance"])
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


def _provenance_problems(prov: Any) -> list[str]:
    if not isinstance(prov, Mapping):
        return [f'"provenance" must be an object, got {type(prov).__name__}']
    problems = []
    for key in prov:
        if key not in _PROVENANCE_KEYS:
            problems.append(
                f'provenance: unknown key "{key}" (allowed: {", ".join(_PROVENANCE_KEYS)})'
            )
    for key in _PROVENANCE_REQUIRED:
        value = prov.get(key)
        if key not in prov:
            problems.append(f'provenance: field "{key}" is missing')
        elif not isinstance(value, str) or not value.strip():
            problems.append(f'provenance: field "{key}" must be a non-empty string')
    created = prov.get("created")
    if isinstance(created, str) and created.strip():
        try:
            ok = bool(_ISO_DATE.match(created)) and _dt.date.fromisoformat(created) is not None
        except ValueError:
            ok = False
        if not ok:
            problems.append(
                f'provenance: "created" must be an ISO date (YYYY-MM-DD), got {created!r}'
            )
    if "notes" in prov and not isinstance(prov["notes"], str):
        problems.append('provenance: field "notes" must be a string')
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
        shown = ", ".join(json.dumps(n, ensure_ascii=False) for n in missing[:_MAX_LISTED])
        more = f", ... ({len(missing) - _MAX_LISTED} more)" if len(missing) > _MAX_LISTED else ""
        problems.append(
            f"incomplete: {len(missing)} of {len(class_names)} classes have no entry: {shown}{more}"
        )
    in_bank = [(i, n) for i, n in enumerate(names) if n in expected]
    in_list = [n for n in class_names if n in present]
    wrong = [(i, n, want) for (i, n), want in zip(in_bank, in_list, strict=True) if n != want]
    for i, n, want in wrong[:5]:
        problems.append(
            f"{_label(i, n)}: out of order, expected {json.dumps(want, ensure_ascii=False)} "
            "here (classes must follow the vocabulary's label order)"
        )
    if len(wrong) > 5:
        problems.append(f"... and {len(wrong) - 5} more classes out of order")
    return problems


def _first_synonym(name: str) -> str:
    return name.split(",")[0].strip() if "," in name else name


def _token_problems(bank: PromptBank, tokenizer: Any, context_length: int) -> list[str]:
    problems = []
    for i, entry in enumerate(bank.classes):
        prefix = render_template(CATSEG_TEMPLATE, _first_synonym(entry.name))
        for attribute in ATTRIBUTES:
            prompt = append_sentences(prefix, [entry.text(attribute)])
            n = count_tokens(prompt, tokenizer)
            if n > context_length:
                problems.append(
                    f'{_label(i, entry.name)}: field "{attribute}" gives a prompt of {n} tokens '
                    f"with the CAT-Seg template (limit {context_length}): {prompt!r}"
                )
    return problems


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
                        f"({syn!r}); descriptions must be name-free"
                    )
                    break
    return problems


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
            see :func:`lmseg.prompts.templates.clip_tokenizer`); when given, every
            ``"attributes"``-mode prompt built with the CAT-Seg template must fit in
            ``context_length`` tokens.
        name_free: also report descriptions that contain the class name or a synonym.

    Returns:
        Human-readable problems, each naming the class (index and name) and field at fault.
    """
    if isinstance(bank, PromptBank):
        data: Any = bank.to_dict()
    elif isinstance(bank, Mapping):
        data = bank
    else:
        try:
            data = json.loads(_read_source(bank)[1])
        except (OSError, KeyError, json.JSONDecodeError) as e:
            return [f"cannot read bank {os.fspath(bank)!r}: {e}"]
    problems = schema_problems(data)
    if problems:
        return problems
    parsed = PromptBank.from_dict(data)
    if class_names is None and parsed.vocabulary in list_vocabularies():
        class_names = load_vocabulary(parsed.vocabulary)
    if class_names is not None:
        problems += _order_problems(parsed.names, class_names)
    if tokenizer is not None:
        problems += _token_problems(parsed, tokenizer, context_length)
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
            f"no shipped prompt bank for {name!r}; shipped banks: "
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
        raise FileNotFoundError(f"no prompt bank file at {text_source!r}")
    return f"{text_source} (shipped)", bank_path(text_source).read_text(encoding="utf-8")


def load_bank(source: PromptBank | str | os.PathLike[str]) -> PromptBank:
    """Load a bank from a JSON file or by shipped vocabulary name (``"ade150"``).

    Only the schema is checked here (a partially generated bank loads); use
    :func:`validate_bank` for completeness, order and token length.

    Raises:
        BankError: the file breaks the schema (every problem is listed).
        KeyError / FileNotFoundError: no such shipped bank / file.
    """
    if isinstance(source, PromptBank):
        return source
    display, text = _read_source(source)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BankError(display, [f"not valid JSON: {e}"]) from e
    return PromptBank.from_dict(data, source=display)


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
