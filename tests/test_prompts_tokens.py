"""The 77-token limit, checked on both sides of the boundary.

The expected counts are derived independently of lmseg's counter: by hand (CLIP's BPE makes one
token of each word and each "." here), and by open_clip's ``tokenize``, which adds the start and
end tokens itself: with a wide context it shows how many positions a text needs, and with the
real 77 positions it silently cuts what does not fit.
"""

from __future__ import annotations

import pytest
from open_clip import tokenize

from lmseg.prompts.bank import ClassAttributes, PromptBank, Provenance, validate_bank
from lmseg.prompts.embedding import check_prompt_lengths
from lmseg.prompts.templates import CONTEXT_LENGTH, clip_tokenizer, count_tokens

A = clip_tokenizer().encode("a")[0]  # the id of the one token "a" is


def kept_a_tokens(text: str) -> int:
    """How many "a" tokens open_clip's 77-position tokenization keeps."""
    return int((tokenize([text])[0] == A).sum())


def needed(text: str) -> int:
    """Positions open_clip's tokenizer fills for ``text`` when nothing is cut."""
    return int((tokenize([text], context_length=300)[0] != 0).sum())


def a_words(n: int) -> str:
    return " ".join(["a"] * n)


@pytest.mark.parametrize("n", [74, 75, 76, 77])
def test_count_tokens_includes_start_and_end_tokens(n: int) -> None:
    text = a_words(n)
    assert count_tokens(text) == n + 2 == needed(text)
    fits = count_tokens(text) <= CONTEXT_LENGTH
    assert fits == (kept_a_tokens(text) == n)  # fits exactly when tokenize drops nothing


def test_count_tokens_boundary() -> None:
    assert CONTEXT_LENGTH == 77
    assert count_tokens(a_words(75)) == 77 and kept_a_tokens(a_words(75)) == 75  # fits
    assert count_tokens(a_words(76)) == 78 and kept_a_tokens(a_words(76)) == 75  # cut by one


def test_embedding_length_check_boundary() -> None:
    fits, too_long = a_words(75), a_words(76)
    assert check_prompt_lengths([[fits]], CONTEXT_LENGTH) == []
    assert check_prompt_lengths([[too_long]], CONTEXT_LENGTH) == [(0, too_long, 78)]


def wall_bank(n: int, name: str = "wall") -> PromptBank:
    entry = ClassAttributes(name, f"It is {a_words(n)}.", "It is flat.", "It is hard.")
    return PromptBank("custom", Provenance("m", "p", "2026-12-01"), [entry])


def combined_prompt(n: int, name: str = "wall") -> str:
    """The longest prompt a bank entry yields, written out by hand: the CAT-Seg template, then
    the three descriptions (2 + 8 + 1 + (n + 3) + 4 + 4 = n + 22 tokens for "wall")."""
    return f"A photo of a {name} in the scene. It is {a_words(n)}. It is flat. It is hard."


def test_bank_check_counts_the_template_and_all_three_descriptions() -> None:
    assert count_tokens(combined_prompt(55)) == needed(combined_prompt(55)) == 77
    assert count_tokens(combined_prompt(56)) == needed(combined_prompt(56)) == 78
    tokenizer = clip_tokenizer()
    assert validate_bank(wall_bank(55), tokenizer=tokenizer) == []
    problems = validate_bank(wall_bank(56), tokenizer=tokenizer)
    assert len(problems) == 1
    assert "gives a prompt of 78 tokens (limit 77" in problems[0]
    # Without the template prefix, or per description, the 78-token bank would pass: the
    # colour prompt alone is 2 + 8 + 1 + 59 = 70 tokens.
    assert count_tokens(f"A photo of a wall in the scene. It is {a_words(56)}.") == 70


def test_bank_check_uses_every_synonym() -> None:
    """With synonyms="mean" each synonym fills the template: the longest one must fit."""
    tokenizer = clip_tokenizer()
    assert needed(combined_prompt(55, "brick wall")) == 78
    problems = validate_bank(wall_bank(55, "wall, brick wall"), tokenizer=tokenizer)
    assert len(problems) == 1 and "78 tokens" in problems[0]
    assert validate_bank(wall_bank(54, "wall, brick wall"), tokenizer=tokenizer) == []
