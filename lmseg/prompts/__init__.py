"""Attribute prompts (LMSeg Sec. 3.1): prompt banks, prompt composition, cached text embeddings.

Typical use::

    from lmseg.prompts import compose_prompts, embed_prompts, load_bank

    bank = load_bank("ade150")                                  # shipped bank
    prompts = compose_prompts(bank.names, bank, mode="attributes")  # K lists of P = 4 strings
    text = embed_prompts(text_encoder, prompts)                 # (K, P, D), L2-normalised

A class list that is not a shipped vocabulary gets its descriptions class by class from the
shipped banks (:mod:`lmseg.prompts.lookup`, used by :func:`prompts_for`); the quality checks of
``lmseg prompts validate`` are in :mod:`lmseg.prompts.quality`. The LLM client that writes banks
(:mod:`lmseg.prompts.generate`) is optional tooling and is not imported here.
"""

from lmseg.prompts.bank import (
    ATTRIBUTES,
    BANK_JSON_SCHEMA,
    PROMPT_KINDS,
    SCHEMA_VERSION,
    BankError,
    ClassAttributes,
    PromptBank,
    Provenance,
    Revision,
    bank_path,
    find_bank,
    load_bank,
    shipped_banks,
    validate_bank,
)
from lmseg.prompts.compose import (
    MODES,
    MissingBankWarning,
    PromptSlot,
    compose_prompts,
    num_prompts,
    prompts_for,
    split_synonyms,
)
from lmseg.prompts.embedding import (
    PromptTooLongError,
    TextEncoder,
    default_cache_dir,
    embed_prompts,
    encode_prompts,
    text_weights_digest,
)
from lmseg.prompts.lookup import ClassMatch, lookup_classes
from lmseg.prompts.quality import (
    SENSES_THAT_DIFFER,
    bank_warnings,
    cross_bank_differences,
)
from lmseg.prompts.templates import (
    CATSEG_TEMPLATE,
    append_sentences,
    count_tokens,
    imagenet_templates,
    render_template,
)

__all__ = [
    "ATTRIBUTES",
    "BANK_JSON_SCHEMA",
    "CATSEG_TEMPLATE",
    "MODES",
    "PROMPT_KINDS",
    "SCHEMA_VERSION",
    "SENSES_THAT_DIFFER",
    "BankError",
    "ClassAttributes",
    "ClassMatch",
    "MissingBankWarning",
    "PromptBank",
    "PromptSlot",
    "PromptTooLongError",
    "Provenance",
    "Revision",
    "TextEncoder",
    "append_sentences",
    "bank_path",
    "bank_warnings",
    "compose_prompts",
    "count_tokens",
    "cross_bank_differences",
    "default_cache_dir",
    "embed_prompts",
    "encode_prompts",
    "find_bank",
    "imagenet_templates",
    "load_bank",
    "lookup_classes",
    "num_prompts",
    "prompts_for",
    "render_template",
    "shipped_banks",
    "split_synonyms",
    "text_weights_digest",
    "validate_bank",
]
