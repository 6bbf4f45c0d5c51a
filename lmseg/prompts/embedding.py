"""Text embeddings of composed prompts, ``(K, P, D)``, with an on-disk cache.

Each prompt is encoded by the CLIP text tower and L2-normalised on its own (CAT-Seg normalises
per template). A prompt slot holding several synonym variants (``synonyms="mean"``) is the mean
of its variants' normalised embeddings, renormalised (CAT-Seg's synonym averaging).

Cache: one safetensors file per (text-tower weights, prompts) under ``cache_dir`` (default
``$LMSEG_CACHE/text``, else ``~/.cache/lmseg/text``). The key is a sha256 over every text-tower
tensor (names, shapes, dtypes and bytes, in sorted name order), the context length and the exact
prompt strings with their synonym grouping, so any change of a weight or a prompt misses. Files
are written atomically (temporary file + ``os.replace``); an unreadable entry is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from einops import rearrange

from lmseg.io import atomic_write
from lmseg.prompts.compose import PromptSlot
from lmseg.prompts.templates import clip_tokenizer, count_tokens

__all__ = [
    "CACHE_FORMAT",
    "PromptTooLongError",
    "TextEncoder",
    "check_prompt_lengths",
    "default_cache_dir",
    "embed_prompts",
    "encode_prompts",
    "text_weights_digest",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached layout or the embedding recipe changes


@runtime_checkable
class TextEncoder(Protocol):
    """What prompt embedding needs from a CLIP text tower (see ``lmseg.encoders.clip``)."""

    @property
    def context_length(self) -> int:
        """Token positions of the text tower (77 for CLIP)."""
        ...

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``(N, context_length)`` int64 tokens (open_clip tokenizer)."""
        ...

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` unnormalised text embeddings."""
        ...

    def text_state_dict(self) -> dict[str, torch.Tensor]:
        """The text-tower weights (the cache key is computed over them)."""
        ...


class PromptTooLongError(ValueError):
    """A prompt does not fit in the text encoder's context length."""


def default_cache_dir() -> Path:
    """``$LMSEG_CACHE/text`` if ``LMSEG_CACHE`` is set, else ``~/.cache/lmseg/text``."""
    root = os.environ.get("LMSEG_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "lmseg"
    return base / "text"


def _shape(prompts: Sequence[Sequence[PromptSlot]]) -> tuple[int, int]:
    if not prompts:
        raise ValueError("no classes: prompts must hold K >= 1 lists of prompts")
    counts = {len(p) for p in prompts}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(
            f"every class needs the same number P >= 1 of prompts, got {sorted(counts)}"
        )
    for k, slots in enumerate(prompts):
        for slot in slots:
            variants = (slot,) if isinstance(slot, str) else tuple(slot)
            if not variants or not all(isinstance(v, str) for v in variants):
                raise TypeError(f"class {k}: a prompt must be a string or a tuple of strings")
    return len(prompts), counts.pop()


def _variants(slot: PromptSlot) -> tuple[str, ...]:
    return (slot,) if isinstance(slot, str) else tuple(slot)


def check_prompt_lengths(
    prompts: Sequence[Sequence[PromptSlot]],
    context_length: int,
) -> list[tuple[int, str, int]]:
    """``(class index, prompt, tokens)`` of every prompt longer than ``context_length`` tokens
    (start and end tokens included), counted with open_clip's BPE, which never truncates."""
    tok = clip_tokenizer()
    seen: dict[str, int] = {}
    too_long = []
    for k, slots in enumerate(prompts):
        for slot in slots:
            for text in _variants(slot):
                if text not in seen:
                    seen[text] = count_tokens(text, tok)
                if seen[text] > context_length:
                    too_long.append((k, text, seen[text]))
    return too_long


def _too_long_error(
    item: tuple[int, str, int], n_total: int, context_length: int, class_names: Sequence[str] | None
) -> PromptTooLongError:
    k, text, n = item
    who = f'class {k} ("{class_names[k]}")' if class_names is not None else f"class {k}"
    more = f" ({n_total - 1} more prompts are too long)" if n_total > 1 else ""
    return PromptTooLongError(
        f"{who}: prompt of {n} tokens exceeds the text encoder's context length "
        f"{context_length}: {text!r}{more}; shorten it or pass truncate=True"
    )


def text_weights_digest(text_encoder: TextEncoder) -> str:
    """sha256 over the text-tower weights: names, shapes, dtypes and raw bytes, sorted by name."""
    h = hashlib.sha256()
    # The activation is not in the weights: the same weights under GELU and QuickGELU differ.
    h.update(f"architecture|{getattr(text_encoder, 'text_architecture', '')}\n".encode())
    state = text_encoder.text_state_dict()
    for name in sorted(state):
        t = state[name].detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        flat = t.to("cpu").contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def _cache_key(weights: str, prompts: Sequence[Sequence[PromptSlot]], context_length: int) -> str:
    # A str slot and a tuple slot serialise differently, so the synonym mode is part of the key.
    payload = json.dumps(
        {
            "format": CACHE_FORMAT,
            "weights": weights,
            "context_length": context_length,
            "prompts": [
                [s if isinstance(s, str) else {"mean": list(s)} for s in p] for p in prompts
            ],
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _encoder_device(text_encoder: TextEncoder) -> torch.device:
    device = getattr(text_encoder, "device", None)
    if isinstance(device, torch.device | str):
        return torch.device(device)
    for t in text_encoder.text_state_dict().values():
        return t.device
    return torch.device("cpu")


def encode_prompts(
    text_encoder: TextEncoder,
    prompts: Sequence[Sequence[PromptSlot]],
    *,
    batch_size: int = 256,
    truncate: bool = False,
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Encode prompts without any cache; autograd is left as the caller set it (use this when
    the text tower trains).

    Args:
        text_encoder: a :class:`TextEncoder`.
        prompts: K lists of P prompt slots (:func:`~lmseg.prompts.compose.compose_prompts`).
        batch_size: prompts per ``encode_text`` call.
        truncate: cut prompts longer than the context length (open_clip keeps the end token)
            instead of raising :class:`PromptTooLongError`.
        class_names: K names, used only to name the class in errors.

    Returns:
        ``(K, P, D)`` float32 embeddings, unit L2 norm along D, on the encoder's device.
    """
    _shape(prompts)
    _check_lengths(prompts, int(text_encoder.context_length), truncate, class_names)
    return _encode(text_encoder, prompts, batch_size)


def _check_lengths(
    prompts: Sequence[Sequence[PromptSlot]],
    context_length: int,
    truncate: bool,
    class_names: Sequence[str] | None,
) -> None:
    too_long = check_prompt_lengths(prompts, context_length)
    if too_long and not truncate:
        raise _too_long_error(too_long[0], len(too_long), context_length, class_names)
    if too_long:
        logger.warning(
            "%d prompts are longer than %d tokens and are truncated", len(too_long), context_length
        )


def _encode(
    text_encoder: TextEncoder, prompts: Sequence[Sequence[PromptSlot]], batch_size: int
) -> torch.Tensor:
    n_classes, n_prompts = _shape(prompts)
    unique: dict[str, int] = {}
    for slots in prompts:
        for slot in slots:
            for text in _variants(slot):
                unique.setdefault(text, len(unique))
    texts = list(unique)
    device = _encoder_device(text_encoder)
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = text_encoder.tokenize(texts[start : start + batch_size]).to(device)
        chunks.append(F.normalize(text_encoder.encode_text(tokens).float(), dim=-1))
    table = torch.cat(chunks)  # (N unique, D)

    flat = []
    for slots in prompts:
        for slot in slots:
            idx = [unique[t] for t in _variants(slot)]
            if len(idx) == 1:
                flat.append(table[idx[0]])
            else:
                flat.append(F.normalize(table[idx].mean(dim=0), dim=-1))
    return rearrange(torch.stack(flat), "(k p) d -> k p d", k=n_classes, p=n_prompts)


def embed_prompts(
    text_encoder: TextEncoder,
    prompts: Sequence[Sequence[PromptSlot]],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    truncate: bool = False,
    use_cache: bool = True,
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Text embeddings of K x P prompts, computed once and cached on disk.

    Args:
        text_encoder: a :class:`TextEncoder` (frozen use: encoding runs under ``no_grad``).
        prompts: K lists of P prompt slots.
        cache_dir: cache folder; ``None`` means :func:`default_cache_dir`.
        batch_size: prompts per ``encode_text`` call.
        truncate: cut over-long prompts instead of raising :class:`PromptTooLongError`.
        use_cache: ``False`` neither reads nor writes the cache.
        class_names: K names, used only to name the class in errors.

    Returns:
        ``(K, P, D)`` float32 embeddings on the CPU, each prompt L2-normalised along D.
    """
    n_classes, n_prompts = _shape(prompts)
    context_length = int(text_encoder.context_length)
    _check_lengths(prompts, context_length, truncate, class_names)

    path = None
    if use_cache:
        key = _cache_key(text_weights_digest(text_encoder), prompts, context_length)
        path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / (
            f"{key}.safetensors"
        )
        cached = _read_cache(path, n_classes, n_prompts)
        if cached is not None:
            return cached

    with torch.no_grad():
        emb = _encode(text_encoder, prompts, batch_size)
    emb = emb.detach().to("cpu", torch.float32).contiguous()
    if path is not None:
        _write_cache(path, emb, n_classes, n_prompts)
    return emb


def _read_cache(path: Path, n_classes: int, n_prompts: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        emb = load_file(str(path))["embeddings"]
    except Exception as e:  # a damaged file is recomputed, never fatal
        logger.warning("ignoring unreadable text-embedding cache %s: %s", path, e)
        return None
    if emb.ndim != 3 or tuple(emb.shape[:2]) != (n_classes, n_prompts):
        logger.warning("ignoring text-embedding cache %s with shape %s", path, tuple(emb.shape))
        return None
    return emb


def _write_cache(path: Path, emb: torch.Tensor, n_classes: int, n_prompts: int) -> None:
    from safetensors.torch import save_file

    meta = {"format": str(CACHE_FORMAT), "K": str(n_classes), "P": str(n_prompts)}
    try:
        atomic_write(path, lambda tmp: save_file({"embeddings": emb}, tmp, metadata=meta))
    except OSError as e:  # a read-only cache must not break inference
        logger.warning("could not write text-embedding cache %s: %s", path, e)
