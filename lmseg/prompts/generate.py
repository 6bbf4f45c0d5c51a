"""Write a prompt bank with an LLM behind any OpenAI-compatible chat endpoint (optional).

Works with OpenAI, vLLM, llama.cpp's server and Ollama's ``/v1`` endpoint, through the standard
library only (``urllib.request`` + ``json``). Model code never imports this module.

Credentials: the API key is read from an environment variable only (``OPENAI_API_KEY`` by
default); without one no ``Authorization`` header is sent, which local servers accept. A
``user:password@`` in the base URL is removed from the address and sent as HTTP Basic
credentials instead (only when no API key is set). Neither is ever printed, logged or stored:
every error message is redacted, and the bank records the endpoint's host and port only.

Safety of the connection: only ``http://`` and ``https://`` base URLs are accepted; redirects are
not followed (the key would go to another address); a warning is logged when credentials would
travel over plain ``http`` to a host other than this machine. Every request is bounded: the whole
request (connecting, sending, the reply) is cut off after ``timeout`` seconds, and a reply larger
than ``max_reply_bytes`` is refused, so an endless or trickling reply cannot hang the client or
fill its memory.

Classes are asked for in batches; the answer is parsed as data (``json.loads`` of the message
content, a Markdown code fence tolerated), and each class is checked against the bank schema and
the 77-token limit of its prompts. HTTP 5xx/429, timeouts, connection errors and malformed or
over-long answers are retried with exponential backoff; classes a reply got right are kept even
if others in the batch must be asked again. The bank is written atomically after every batch,
and an existing bank at the output path is resumed: its valid classes are skipped.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import http.client
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from lmseg.prompts.bank import (
    ATTRIBUTES,
    NOT_RECORDED,
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_NAME,
    BankError,
    ClassAttributes,
    PromptBank,
    Provenance,
    class_problems,
    class_token_problems,
    parse_json,
    short_repr,
)
from lmseg.prompts.templates import clip_tokenizer

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_REPLY_BYTES",
    "DEFAULT_MODEL",
    "SYSTEM_PROMPT",
    "USER_PROMPT",
    "ChatClient",
    "GenerationError",
    "generate_bank",
    "parse_answer",
    "public_url",
    "read_class_file",
]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_MAX_REPLY_BYTES = 4 * 1024 * 1024  # a reply for 20 classes is about 10 kB
NOT_REPORTED = "not reported by the server"

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
# What an HTTP header value can carry: visible ASCII (a key with a line break or a space is a
# copy-paste accident, and http.client's error would print it whole).
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
_REDACTED = "[redacted]"
_ERROR_BODY_BYTES = 2000


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


def _split_userinfo(base_url: str) -> tuple[urllib.parse.SplitResult, str | None]:
    parts = urllib.parse.urlsplit(base_url.strip())
    userinfo, at, hostport = parts.netloc.rpartition("@")
    return parts._replace(netloc=hostport), (userinfo if at else None)


def public_url(base_url: str) -> str:
    """The base URL without its ``user:password@`` part: what may be printed or stored."""
    parts, _ = _split_userinfo(base_url)
    return urllib.parse.urlunsplit(parts)


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Deadline:
    """Cuts off one request ``seconds`` after it starts, whatever it is waiting for.

    A socket timeout bounds each read only: a server that sends one byte every few seconds
    never trips it. So a timer shuts down every socket the request opened (a duplicate handle
    is kept for it; shutting down a duplicate ends the connection itself, TLS included), which
    makes the blocked read return, and the request reports the limit.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            handle = sock.dup()
            self._sockets.append(handle)
            if self.expired:
                self._shutdown(handle)
        return sock

    @staticmethod
    def _shutdown(handle: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed by the other side
            handle.shutdown(socket.SHUT_RDWR)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for handle in self._sockets:
                self._shutdown(handle)

    def __enter__(self) -> _Deadline:
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._timer is not None
        self._timer.cancel()
        with self._lock:
            for handle in self._sockets:
                handle.close()
            self._sockets.clear()


def _watch_connections(connection: http.client.HTTPConnection, deadline: _Deadline) -> None:
    # http.client opens every socket through this attribute (also through a proxy, and before
    # TLS wraps it), so the deadline sees the connection from its start.
    create: Callable[..., socket.socket] = connection._create_connection  # type: ignore[attr-defined]
    connection._create_connection = lambda *a, **k: deadline.watch(create(*a, **k))  # type: ignore[attr-defined]


class _WatchedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _watch_connections(self, deadline)


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _watch_connections(self, deadline)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(partial(_WatchedHTTPConnection, deadline=self._deadline), req)  # type: ignore[arg-type]


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(  # type: ignore[arg-type]
            partial(_WatchedHTTPSConnection, deadline=self._deadline),
            req,
            context=self._context,  # type: ignore[attr-defined]
        )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects become HTTP errors: following one would send the key to another address."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class ChatClient:
    """A minimal client for ``POST /v1/chat/completions`` (stdlib only).

    Args:
        base_url: ``http://`` or ``https://`` endpoint; a ``user:password@`` part is removed
            and sent as HTTP Basic credentials when there is no ``api_key``.
        api_key: sent as ``Authorization: Bearer``; never printed (every message is redacted).
        timeout: seconds for a whole request, the reply included.
        max_reply_bytes: larger replies are refused.
        key_name: how messages refer to the key (``"$OPENAI_API_KEY"``).
    """

    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    api_key: str | None = None
    timeout: float = 60.0
    temperature: float = 0.2
    json_mode: bool = True
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    key_name: str = "the API key"
    reported_models: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        parts, userinfo = _split_userinfo(self.base_url)
        shown = short_repr(urllib.parse.urlunsplit(parts))
        if parts.scheme.lower() not in ("http", "https"):
            raise GenerationError(f"the base URL must start with http:// or https://, got {shown}")
        if not parts.hostname:
            raise GenerationError(f"the base URL {shown} has no host")
        if self.timeout <= 0 or self.max_reply_bytes <= 0:
            raise ValueError("timeout and max_reply_bytes must be positive")
        self._secrets = [s for s in (self.api_key, userinfo) if s]
        if userinfo:
            password = userinfo.partition(":")[2]
            self._secrets += [urllib.parse.unquote(userinfo), password]
            self._secrets += [urllib.parse.unquote(password)]
            self._secrets = [s for s in self._secrets if s]
        if self.api_key is not None and not _HEADER_SAFE.fullmatch(self.api_key):
            raise GenerationError(
                f"{self.key_name} holds characters an HTTP header cannot carry (a space, a line "
                "break or a non-ASCII character; it is not shown here): set it to the key alone"
            )
        self._url = chat_completions_url(urllib.parse.urlunsplit(parts))
        self._host = parts.netloc
        self._auth: str | None = None
        if self.api_key:
            self._auth = f"Bearer {self.api_key}"
        elif userinfo:
            token = base64.b64encode(urllib.parse.unquote(userinfo).encode()).decode("ascii")
            self._auth = f"Basic {token}"
            self._secrets.append(token)
        if self._auth and parts.scheme.lower() == "http" and not _is_loopback(parts.hostname):
            logger.warning(
                "credentials are sent unencrypted over plain http to %s; use https, or a server "
                "on this machine",
                self._host,
            )

    @property
    def host(self) -> str:
        """``host:port`` of the endpoint, without credentials."""
        return self._host

    def redact(self, text: str) -> str:
        """``text`` with the key and any URL credentials replaced by ``[redacted]``."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, _REDACTED)
        return text

    def complete(self, system: str, user: str) -> str:
        """The assistant message content for one system + user turn.

        Raises:
            _Retryable: 5xx, 408, 429, timeouts (``timeout`` for the whole request), connection
                errors, unreadable responses.
            GenerationError: other HTTP errors (bad key, unknown model, a redirect, ...) and a
                reply over ``max_reply_bytes``.
        """
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": self.temperature,
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._auth:
            headers["Authorization"] = self._auth
        request = urllib.request.Request(
            self._url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        with _Deadline(self.timeout) as deadline:
            raw = self._send(request, deadline)
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):
            raise _Retryable(
                self.redact(f"unreadable chat completion response: {short_repr(raw, 200)}")
            ) from None
        reported = data.get("model") if isinstance(data, dict) else None
        if isinstance(reported, str) and reported and reported not in self.reported_models:
            self.reported_models.append(reported[:200])
        if not isinstance(content, str):
            raise _Retryable("the chat completion has no text content")
        return content

    def _timed_out(self) -> _Retryable:
        return _Retryable(
            f"no complete reply within {self.timeout:g} s (the limit for a whole request, "
            "--timeout / timeout=)"
        )

    def _send(self, request: urllib.request.Request, deadline: _Deadline) -> bytes:
        opener = urllib.request.build_opener(
            _NoRedirect(), _HTTPHandler(deadline), _HTTPSHandler(deadline)
        )
        try:
            with opener.open(request, timeout=self.timeout) as response:
                raw = self._read(response)
        except urllib.error.HTTPError as e:
            if deadline.expired:
                raise self._timed_out() from None
            raise self._http_error(e) from None
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as e:
            if deadline.expired:
                raise self._timed_out() from None
            raise _Retryable(self.redact(f"{type(e).__name__}: {e}")) from None
        except ValueError as e:  # a malformed URL or header, found by http.client
            raise GenerationError(self.redact(f"cannot send the request: {e}")) from None
        if deadline.expired:
            raise self._timed_out()
        return raw

    def _read(self, response: http.client.HTTPResponse) -> bytes:
        limit = self.max_reply_bytes
        too_big = GenerationError(
            f"the reply from {self._host} is larger than {limit} bytes (max_reply_bytes / "
            "--max-reply-bytes); is the base URL an OpenAI-compatible chat endpoint?"
        )
        length = response.headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            raise too_big
        chunks = []
        total = 0
        while chunk := response.read1(65536):
            total += len(chunk)
            if total > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    def _http_error(self, error: urllib.error.HTTPError) -> Exception:
        detail = self.redact(_error_detail(error))
        where = self.redact(self._url)
        if 300 <= error.code < 400:
            target = self.redact(str(error.headers.get("Location", "?")))
            return GenerationError(
                f"HTTP {error.code} from {where}: redirects are not followed, so that "
                f"credentials go only to the address given; use the address it points to "
                f"({short_repr(target)})"
            )
        if error.code >= 500 or error.code in (408, 429):
            return _Retryable(f"HTTP {error.code}: {detail}", _retry_after(error))
        if error.code == 400 and self.json_mode and "response_format" in detail:
            # Some servers reject response_format; ask again without it.
            logger.warning("the server rejects response_format; retrying without JSON mode")
            self.json_mode = False
            return _Retryable(f"HTTP 400: {detail}", 0.0)
        return GenerationError(f"HTTP {error.code} from {where}: {detail}")


def _error_detail(error: urllib.error.HTTPError) -> str:
    try:
        body = error.read(_ERROR_BODY_BYTES).decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException):
        body = ""
    if len(body) > 500:
        body = body[:500] + "... (cut)"
    return body or str(error.reason)


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    value = error.headers.get("Retry-After") if error.headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _normalise_name(name: str) -> str:
    return " ".join(name.split()).casefold()


def parse_answer(
    content: str, asked: Sequence[str], tokenizer: Any = None
) -> tuple[dict[str, ClassAttributes], list[str]]:
    """Parse an LLM answer into bank entries for the asked class names.

    The content must be JSON (a Markdown code fence and a ``<think>`` block are tolerated):
    ``{"classes": [...]}`` or a bare list. Names are matched exactly, else after collapsing
    whitespace and case if that is unambiguous (LLMs drop ADE-150's trailing space in
    ``"bed "``); the stored name is always the asked one, byte for byte. Keys other than the
    schema's are ignored. Invalid entries are reported, not raised: those that break the schema,
    and those whose longest prompt (the CAT-Seg template with all three descriptions) would not
    fit in 77 tokens (:func:`~lmseg.prompts.bank.class_token_problems`; ``tokenizer`` defaults
    to CLIP's).

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
        return {}, [f"the answer is not JSON ({e}): {short_repr(content, 200)}"]
    except RecursionError:
        return {}, [f"the answer is JSON nested too deeply to read: {short_repr(content, 200)}"]
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
                problems.append(
                    f"answer item {i}: {short_repr(got)} is not one of the asked classes"
                )
                continue
            name = candidates[0]
        entry = {"name": name, **{a: item.get(a) for a in ATTRIBUTES if a in item}}
        entry_problems = class_problems(entry, i)
        if entry_problems:
            problems += entry_problems
            continue
        if name in found:
            continue
        attributes = ClassAttributes(
            name=name,
            color=_clean(entry["color"]),
            shape=_clean(entry["shape"]),
            texture=_clean(entry["texture"]),
        )
        if tokenizer is None:
            tokenizer = clip_tokenizer()
        too_long = class_token_problems(attributes, tokenizer, index=i)
        if too_long:
            problems += too_long
            continue
        found[name] = attributes
    return found, problems


def _clean(value: Any) -> str | list[str]:
    return value.strip() if isinstance(value, str) else [v.strip() for v in value]


def _provenance(
    model: str, host: str, batch_size: int, temperature: float, system: str, user: str
) -> Provenance:
    return Provenance(
        model=model,
        model_version=NOT_REPORTED,
        prompt=f"[system]\n{system}\n\n[user]\n{user}",
        prompt_kind="exact",
        created=_dt.date.today().isoformat(),
        notes=(
            f"written by `lmseg prompts generate` via {host} (OpenAI-compatible chat "
            f"completions), batches of {batch_size}, temperature {temperature}; the prompt is "
            "verbatim, with {count} and {classes} filled per batch; model_version lists the "
            "model names the server reported in its replies"
        ),
    )


def _versions(text: str) -> list[str]:
    if text in (NOT_REPORTED, NOT_RECORDED):
        return []
    return [v for v in (v.strip() for v in text.split(",")) if v]


def _resume(
    out: Path, vocabulary: str, class_names: Sequence[str], provenance: Provenance
) -> tuple[dict[str, ClassAttributes], Provenance]:
    """Valid entries of an existing (possibly partial) bank at ``out``, and its provenance."""
    if not out.exists():
        return {}, provenance
    try:
        data = parse_json(out.read_text(encoding="utf-8"), str(out))
    except (OSError, UnicodeDecodeError, BankError) as e:
        raise GenerationError(f"{out} exists and is not a readable JSON bank ({e}); move it") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
        raise GenerationError(f"{out} exists and is not an lmseg prompt bank; move it")
    if data.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        raise GenerationError(f"{out} has schema_version {short_repr(data.get('schema_version'))}")
    if data.get("vocabulary") != vocabulary:
        raise GenerationError(
            f"{out} is a bank for {short_repr(data.get('vocabulary'))}, not {vocabulary!r}; use "
            "another --out"
        )
    prov = data.get("provenance") or {}
    if prov.get("model") not in (None, provenance.model) or prov.get("prompt") not in (
        None,
        provenance.prompt,
    ):
        raise GenerationError(
            f"{out} was written with model {short_repr(prov.get('model'))} and another prompt; "
            "resume it with the same model and prompt, or use another --out"
        )
    if isinstance(prov.get("created"), str):
        provenance.created = prov["created"]
    if isinstance(prov.get("model_version"), str) and _versions(prov["model_version"]):
        provenance.model_version = prov["model_version"]
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
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
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
        base_url: ``http(s)://`` OpenAI-compatible endpoint (``http://127.0.0.1:8080/v1`` for
            llama.cpp, ``http://127.0.0.1:11434/v1`` for Ollama); credentials in it are used but
            never stored or printed.
        model: model name sent to the endpoint and recorded in the provenance (the exact
            version the server reports goes to ``model_version``).
        api_key_env: environment variable holding the API key; unset means no key.
        batch_size: classes per request.
        retries: retries per batch after the first attempt (reset whenever a reply is used).
        timeout: seconds for one whole request, the reply included.
        max_reply_bytes: the largest reply accepted.
        backoff: first retry delay in seconds, doubled at every retry up to ``max_backoff``.
        progress: show a tqdm progress bar.

    Returns:
        The complete bank (also written to ``out``).

    Raises:
        GenerationError: a batch still failed after ``retries`` retries, the server refused
            the request, or the base URL or key is unusable; the bank written so far stays at
            ``out`` for a resume. Messages never contain the key or URL credentials.
    """
    if batch_size < 1 or retries < 0:
        raise ValueError("batch_size must be >= 1 and retries >= 0")
    if len(set(class_names)) != len(class_names):
        raise ValueError("class names must be unique")
    client = ChatClient(
        base_url=base_url,
        model=model,
        api_key=os.environ.get(api_key_env) or None,
        timeout=timeout,
        temperature=temperature,
        json_mode=json_mode,
        max_reply_bytes=max_reply_bytes,
        key_name=f"${api_key_env}",
    )
    out_path = Path(out)
    provenance = _provenance(
        model, client.host, batch_size, temperature, system_prompt, user_prompt
    )
    done, provenance = _resume(out_path, vocabulary, class_names, provenance)
    earlier_versions = _versions(provenance.model_version)
    tokenizer = clip_tokenizer()

    def bank() -> PromptBank:
        versions = list(dict.fromkeys(earlier_versions + client.reported_models))
        provenance.model_version = ", ".join(versions) if versions else NOT_REPORTED
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
                    content = client.complete(system_prompt, user)
                    found, problems = parse_answer(content, remaining, tokenizer)
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
                problems = [client.redact(p) for p in problems]
                if failures > retries:
                    bank().save(out_path)
                    shown = ", ".join(short_repr(n, 40) for n in remaining[:5])
                    raise GenerationError(
                        f"gave up on {len(remaining)} classes after {retries} retries "
                        f"({shown}{', ...' if len(remaining) > 5 else ''}); last problem: "
                        f"{problems[0]}. {len(done)} of {len(class_names)} classes are saved in "
                        f"{out_path}; run again to resume."
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
    or one name per line (line breaks removed, blank lines skipped).

    Raises:
        ValueError: unreadable file, invalid or too deeply nested JSON, or not a list of strings.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the class file {p}: {e}") from e
    if p.suffix.lower() == ".json":
        try:
            names = parse_json(text, str(p))
        except BankError as e:
            raise ValueError(f"{p}: {'; '.join(e.problems)}") from e
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{p}: a .json class file must hold a list of strings")
        return names
    return [line for line in text.splitlines() if line.strip()]
