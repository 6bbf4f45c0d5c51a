"""Write a prompt bank with an LLM behind any OpenAI-compatible chat endpoint (optional).

Works with OpenAI, vLLM, llama.cpp's server and Ollama's ``/v1`` endpoint, through the standard
library only (``urllib.request`` + ``json``). Model code never imports this module.

The API key is read from an environment variable only (``OPENAI_API_KEY`` by default); without
one no ``Authorization`` header is sent, which local servers accept.

Classes are asked for in batches; the answer is parsed as data (``json.loads`` of the message
content, a Markdown code fence tolerated), and each class is checked against the bank schema.
HTTP 5xx/429, timeouts, connection errors and malformed answers are retried with exponential
backoff; classes a reply got right are kept even if others in the batch must be asked again.
The bank is written atomically after every batch, and an existing bank at the output path is
resumed: its valid classes are skipped.
"""

from __future__ import annotations

import datetime as _dt
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmseg.prompts.bank import (
    ATTRIBUTES,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    ClassAttributes,
    PromptBank,
    Provenance,
    class_problems,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "SYSTEM_PROMPT",
    "USER_PROMPT",
    "ChatClient",
    "GenerationError",
    "generate_bank",
    "parse_answer",
    "read_class_file",
]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"

SYSTEM_PROMPT = (
    "You write short visual descriptions of object and stuff categories for an open-vocabulary "
    "semantic segmentation model. For every category, describe three visual attributes: "
    '"color" (its typical colors), "shape" (its shape and size) and "texture" (its texture and '
    "material). Each description is one short sentence of at most 20 words that starts with "
    '"It" and never names the category or any of its synonyms. A category given as '
    "comma-separated words is one category with synonyms. Answer with JSON only."
)

# ``{count}`` and ``{classes}`` (a JSON list of the category names) are filled per batch.
USER_PROMPT = (
    "Describe these {count} categories:\n{classes}\n\n"
    'Answer with one JSON object {"classes": [{"name": ..., "color": ..., "shape": ..., '
    '"texture": ...}]} holding one entry per category, in the same order, with each "name" '
    "copied exactly as given."
)

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


class GenerationError(RuntimeError):
    """Generation stopped; the bank written so far is kept and a rerun resumes it."""


class _Retryable(Exception):
    """A failure worth retrying (server error, timeout, malformed answer)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def chat_completions_url(base_url: str) -> str:
    """``.../chat/completions`` as given; ``.../v1`` (or any path) + ``/chat/completions``; a
    bare host + ``/v1/chat/completions``."""
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    path = urllib.parse.urlsplit(url).path
    return url + ("/chat/completions" if path not in ("", "/") else "/v1/chat/completions")


@dataclass
class ChatClient:
    """A minimal client for ``POST /v1/chat/completions`` (stdlib only)."""

    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    api_key: str | None = None
    timeout: float = 60.0
    temperature: float = 0.2
    json_mode: bool = True

    def complete(self, system: str, user: str) -> str:
        """The assistant message content for one system + user turn.

        Raises:
            _Retryable: 5xx, 408, 429, timeouts, connection errors, unreadable responses.
            GenerationError: other HTTP errors (bad key, unknown model, ...).
        """
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": self.temperature,
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            chat_completions_url(self.base_url),
            data=json.dumps(body).encode("utf-8"),
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = _error_detail(e)
            if e.code >= 500 or e.code in (408, 429):
                raise _Retryable(f"HTTP {e.code}: {detail}", _retry_after(e)) from e
            if e.code == 400 and self.json_mode and "response_format" in detail:
                # Some servers reject response_format; ask again without it.
                logger.warning("the server rejects response_format; retrying without JSON mode")
                self.json_mode = False
                raise _Retryable(f"HTTP 400: {detail}", 0.0) from e
            raise GenerationError(f"HTTP {e.code} from {request.full_url}: {detail}") from e
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from e
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Retryable(f"unreadable chat completion response: {raw[:200]!r}") from e
        if not isinstance(content, str):
            raise _Retryable("the chat completion has no text content")
        return content


def _error_detail(error: urllib.error.HTTPError) -> str:
    try:
        return error.read().decode("utf-8", errors="replace")[:500] or str(error.reason)
    except OSError:
        return str(error.reason)


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    value = error.headers.get("Retry-After") if error.headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _normalise_name(name: str) -> str:
    return " ".join(name.split()).casefold()


def parse_answer(
    content: str, asked: Sequence[str]
) -> tuple[dict[str, ClassAttributes], list[str]]:
    """Parse an LLM answer into bank entries for the asked class names.

    The content must be JSON (a Markdown code fence and a ``<think>`` block are tolerated):
    ``{"classes": [...]}`` or a bare list. Names are matched exactly, else after collapsing
    whitespace and case if that is unambiguous (LLMs drop ADE-150's trailing space in
    ``"bed "``); the stored name is always the asked one, byte for byte. Keys other than the
    schema's are ignored. Invalid entries are reported, not raised.

    Returns:
        (valid entries by asked name, problems).
    """
    text = _THINK.sub("", content).strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return {}, [f"the answer is not JSON ({e}): {content[:200]!r}"]
    items = data.get("classes") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return {}, ['the answer has no "classes" list']

    by_norm: dict[str, list[str]] = {}
    for name in asked:
        by_norm.setdefault(_normalise_name(name), []).append(name)
    found: dict[str, ClassAttributes] = {}
    problems = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"answer item {i}: not an object")
            continue
        got = item.get("name")
        if not isinstance(got, str):
            problems.append(f'answer item {i}: no "name"')
            continue
        if got in asked:
            name = got
        else:
            candidates = by_norm.get(_normalise_name(got), [])
            if len(candidates) != 1:
                problems.append(f"answer item {i}: {got!r} is not one of the asked classes")
                continue
            name = candidates[0]
        entry = {"name": name, **{a: item.get(a) for a in ATTRIBUTES if a in item}}
        entry_problems = class_problems(entry, i)
        if entry_problems:
            problems += entry_problems
            continue
        if name not in found:
            found[name] = ClassAttributes(
                name=name,
                color=_clean(entry["color"]),
                shape=_clean(entry["shape"]),
                texture=_clean(entry["texture"]),
            )
    return found, problems


def _clean(value: Any) -> str | list[str]:
    return value.strip() if isinstance(value, str) else [v.strip() for v in value]


def _provenance(
    model: str, base_url: str, batch_size: int, temperature: float, system: str, user: str
) -> Provenance:
    host = urllib.parse.urlsplit(chat_completions_url(base_url)).netloc
    return Provenance(
        model=model,
        prompt=f"[system]\n{system}\n\n[user]\n{user}",
        created=_dt.date.today().isoformat(),
        notes=(
            f"written by `lmseg prompts generate` via {host} (OpenAI-compatible chat "
            f"completions), batches of {batch_size}, temperature {temperature}"
        ),
    )


def _resume(
    out: Path, vocabulary: str, class_names: Sequence[str], provenance: Provenance
) -> tuple[dict[str, ClassAttributes], Provenance]:
    """Valid entries of an existing (possibly partial) bank at ``out``, and its provenance."""
    if not out.exists():
        return {}, provenance
    try:
        data = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GenerationError(f"{out} exists and is not a readable JSON bank ({e}); move it") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
        raise GenerationError(f"{out} exists and is not an lmseg prompt bank; move it")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise GenerationError(f"{out} has schema_version {data.get('schema_version')!r}")
    if data.get("vocabulary") != vocabulary:
        raise GenerationError(
            f"{out} is a bank for {data.get('vocabulary')!r}, not {vocabulary!r}; use another --out"
        )
    prov = data.get("provenance") or {}
    if prov.get("model") not in (None, provenance.model) or prov.get("prompt") not in (
        None,
        provenance.prompt,
    ):
        raise GenerationError(
            f"{out} was written with model {prov.get('model')!r} and another prompt; resume it "
            "with the same model and prompt, or use another --out"
        )
    if isinstance(prov.get("created"), str):
        provenance.created = prov["created"]
    wanted = set(class_names)
    kept: dict[str, ClassAttributes] = {}
    dropped = 0
    for i, entry in enumerate(data.get("classes") or []):
        if class_problems(entry, i) or entry["name"] not in wanted or entry["name"] in kept:
            dropped += 1
            continue
        kept[entry["name"]] = ClassAttributes(**{k: entry[k] for k in ("name", *ATTRIBUTES)})
    if dropped:
        logger.warning("%s: %d invalid or unknown entries will be regenerated", out, dropped)
    return kept, provenance


def generate_bank(
    class_names: Sequence[str],
    out: str | os.PathLike[str],
    *,
    vocabulary: str,
    base_url: str = DEFAULT_BASE_URL,
    model: str = DEFAULT_MODEL,
    api_key_env: str = "OPENAI_API_KEY",
    batch_size: int = 20,
    retries: int = 5,
    timeout: float = 60.0,
    temperature: float = 0.2,
    json_mode: bool = True,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    progress: bool = True,
    system_prompt: str = SYSTEM_PROMPT,
    user_prompt: str = USER_PROMPT,
    sleep: Callable[[float], None] = time.sleep,
) -> PromptBank:
    """Ask an LLM for the attribute descriptions of K classes and write the bank to ``out``.

    Args:
        class_names: K class names, in label order (stored byte for byte).
        out: bank path; an existing bank there is resumed (its valid classes are skipped).
        vocabulary: the bank's ``vocabulary`` field.
        base_url: OpenAI-compatible endpoint (``http://127.0.0.1:8080/v1`` for llama.cpp,
            ``http://127.0.0.1:11434/v1`` for Ollama).
        model: model name sent to the endpoint and recorded in the provenance.
        api_key_env: environment variable holding the API key; unset means no key.
        batch_size: classes per request.
        retries: retries per batch after the first attempt (reset whenever a reply is used).
        timeout: seconds per HTTP request.
        backoff: first retry delay in seconds, doubled at every retry up to ``max_backoff``.
        progress: show a tqdm progress bar.

    Returns:
        The complete bank (also written to ``out``).

    Raises:
        GenerationError: a batch still failed after ``retries`` retries, or the server refused
            the request; the bank written so far stays at ``out`` for a resume.
    """
    if batch_size < 1 or retries < 0:
        raise ValueError("batch_size must be >= 1 and retries >= 0")
    if len(set(class_names)) != len(class_names):
        raise ValueError("class names must be unique")
    out_path = Path(out)
    provenance = _provenance(model, base_url, batch_size, temperature, system_prompt, user_prompt)
    done, provenance = _resume(out_path, vocabulary, class_names, provenance)
    client = ChatClient(
        base_url=base_url,
        model=model,
        api_key=os.environ.get(api_key_env) or None,
        timeout=timeout,
        temperature=temperature,
        json_mode=json_mode,
    )

    def bank() -> PromptBank:
        return PromptBank(vocabulary, provenance, [done[n] for n in class_names if n in done])

    pending = [n for n in class_names if n not in done]
    from tqdm import tqdm

    with tqdm(total=len(class_names), initial=len(done), disable=not progress, unit="class") as bar:
        for start in range(0, len(pending), batch_size):
            remaining = pending[start : start + batch_size]
            failures = 0
            while remaining:
                user = user_prompt.replace("{count}", str(len(remaining))).replace(
                    "{classes}", json.dumps(remaining, ensure_ascii=False)
                )
                retry_after = None
                try:
                    found, problems = parse_answer(client.complete(system_prompt, user), remaining)
                except _Retryable as e:
                    found, problems, retry_after = {}, [str(e)], e.retry_after
                except GenerationError:
                    bank().save(out_path)
                    raise
                if found:
                    done.update(found)
                    remaining = [n for n in remaining if n not in found]
                    bank().save(out_path)
                    bar.update(len(found))
                    failures = 0
                if not remaining:
                    break
                if not found:
                    failures += 1
                if failures > retries:
                    bank().save(out_path)
                    raise GenerationError(
                        f"gave up on {len(remaining)} classes after {retries} retries "
                        f"({', '.join(map(repr, remaining[:5]))}"
                        f"{', ...' if len(remaining) > 5 else ''}); last problem: {problems[0]}. "
                        f"{len(done)} of {len(class_names)} classes are saved in {out_path}; "
                        "run again to resume."
                    )
                logger.info("retrying %d classes: %s", len(remaining), "; ".join(problems[:3]))
                if not found:
                    delay = min(max_backoff, backoff * 2 ** max(failures - 1, 0))
                    sleep(max(delay, min(retry_after or 0.0, max_backoff)))
    final = bank()
    final.save(out_path)
    return final


def read_class_file(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a file: a JSON list of strings (``.json``, names kept byte for byte),
    or one name per line (line breaks removed, blank lines skipped)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        names = json.loads(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{p}: a .json class file must hold a list of strings")
        return names
    return [line for line in text.splitlines() if line.strip()]
