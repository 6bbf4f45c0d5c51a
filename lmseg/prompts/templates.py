"""Prompt templates and the text rules shared by prompt banks and prompt composition.

A template turns a class name into a prompt: either a format string with one ``{}`` slot (the
CAT-Seg style) or a callable ``name -> str`` (the open_clip style of its ImageNet ensemble).

Attribute sentences are appended to a rendered template with one fixed rule
(:func:`append_sentences`), so that every mode of :mod:`lmseg.prompts.compose` produces the same
text for the same template and sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, Protocol

__all__ = [
    "CATSEG_TEMPLATE",
    "CONTEXT_LENGTH",
    "Template",
    "append_sentences",
    "clip_tokenizer",
    "count_tokens",
    "imagenet_templates",
    "render_template",
    "sentence",
    "simple_imagenet_templates",
    "split_synonyms",
]

# CAT-Seg's single template, verbatim: no final period (CAT-Seg `PROMPT_ENSEMBLE_TYPE: single`).
CATSEG_TEMPLATE = "A photo of a {} in the scene"

# Context length of every CLIP text tower lmseg supports (start and end tokens included).
CONTEXT_LENGTH = 77

Template = str | Callable[[str], str]
"""A format string with one ``{}`` slot, or a callable ``name -> prompt``."""

_TERMINAL_PUNCTUATION = (".", "!", "?")


def imagenet_templates() -> list[Callable[[str], str]]:
    """open_clip's 80-template ImageNet ensemble (OpenAI's), as callables ``name -> prompt``.

    The list is taken from open_clip itself, never copied, so it stays exactly upstream's.
    """
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


def simple_imagenet_templates() -> list[Callable[[str], str]]:
    """open_clip's short (2-template) ImageNet ensemble, as callables ``name -> prompt``."""
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    return list(SIMPLE_IMAGENET_TEMPLATES)


def render_template(template: Template, name: str) -> str:
    """Fill a template with a class name.

    The name is inserted verbatim (ADE-150's ``"bed "`` keeps its trailing space, as in CAT-Seg;
    CLIP's tokenizer collapses whitespace, so the tokens are the same).
    """
    if callable(template):
        return template(name)
    if template.count("{}") != 1:
        raise ValueError(f"a template string needs exactly one '{{}}' slot, got {template!r}")
    return template.replace("{}", name)


def split_synonyms(name: str) -> list[str]:
    """The synonyms of a vocabulary entry: ``"building, edifice"`` -> ``["building",
    "edifice"]``. An entry without a comma is returned verbatim (``"bed "`` stays ``"bed "``)."""
    if "," not in name:
        return [name]
    parts = [p.strip() for p in name.split(",")]
    return [p for p in parts if p] or [name]


def sentence(text: str) -> str:
    """One attribute sentence, normalised: outer whitespace stripped, a final period added when
    the sentence has no terminal punctuation (so that sentences can be concatenated)."""
    text = " ".join(text.split())
    if text and not text.endswith(_TERMINAL_PUNCTUATION):
        text += "."
    return text


def append_sentences(prefix: str, sentences: Sequence[str]) -> str:
    """Append attribute sentences to a rendered template.

    The rule: the prefix loses trailing whitespace; if it does not already end a sentence
    (``.``, ``!`` or ``?``), ``". "`` closes it, otherwise a single space separates; the
    sentences follow, each normalised by :func:`sentence`, separated by single spaces::

        append_sentences("A photo of a wall in the scene", ["It is white."])
        -> "A photo of a wall in the scene. It is white."
        append_sentences("a photo of a wall.", ["It is white"])
        -> "a photo of a wall. It is white."
    """
    body = " ".join(s for s in (sentence(t) for t in sentences) if s)
    head = prefix.rstrip()
    if not body:
        return head
    if not head:
        return body
    separator = " " if head.endswith(_TERMINAL_PUNCTUATION) else ". "
    return head + separator + body


class _Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


@cache
def clip_tokenizer() -> Any:
    """open_clip's BPE ``SimpleTokenizer`` (shared by every CLIP text tower lmseg supports)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def count_tokens(text: str, tokenizer: _Encoder | None = None) -> int:
    """Number of tokens CLIP's text tower sees for ``text``, start and end tokens included.

    open_clip's ``tokenize`` silently truncates to the context length, so prompt lengths are
    counted with the BPE ``encode`` (+2 for the start and end tokens) instead.
    """
    tok = tokenizer if tokenizer is not None else clip_tokenizer()
    return len(tok.encode(text)) + 2
