"""Bank generation against a real HTTP server on 127.0.0.1 (no network), and the CLI."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lmseg.cli.prompts import register
from lmseg.prompts.bank import load_bank, validate_bank
from lmseg.prompts.generate import (
    SYSTEM_PROMPT,
    ChatClient,
    GenerationError,
    chat_completions_url,
    generate_bank,
    parse_answer,
)

CLASSES = ["wall", "bed ", "building, edifice", "sky", "tree"]


def describe(name: str) -> dict[str, str]:
    return {
        "name": name.strip(),  # like an LLM: drops ADE-150's trailing space
        "color": f"It is the colour of a {len(name)}.",
        "shape": "It is shaped like itself.",
        "texture": ["It is smooth.", "It is hard."],
    }


REPORTED_MODEL = "fake-llm-2026-01-01"


class FakeLLM:
    """A scripted OpenAI-compatible server. ``script`` holds one action per request; when it
    runs out, every request gets a good answer. Actions: ``"ok"``, ``("status", code)``,
    ``("status", code, body)``, ``("sleep", seconds)`` (then a good answer),
    ``("content", text)``, ``("partial", n)`` (answer only the first n asked classes),
    ``("trickle", seconds)`` (one byte of a never-ending body every ``seconds``),
    ``("endless", length)`` (a body streamed as fast as possible, never ending, announced with
    a ``Content-Length`` of ``length`` or none), ``("redirect", url, code)``.
    Endless bodies stop when the server shuts down."""

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.gets: list[dict] = []  # headers of GET requests (a followed redirect)
        self.stop = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                fake.gets.append(dict(self.headers))
                self._send(404, {"error": {"message": "no"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                fake.headers.append(dict(self.headers))
                action = fake.script.pop(0) if fake.script else "ok"
                asked = fake.asked(body)
                if isinstance(action, tuple) and action[0] == "status":
                    message = action[2] if len(action) > 2 else "boom"
                    self._send(action[1], {"error": {"message": message}})
                    return
                if isinstance(action, tuple) and action[0] in ("trickle", "endless"):
                    self._endless(*action)
                    return
                if isinstance(action, tuple) and action[0] == "redirect":
                    self.send_response(action[2])
                    self.send_header("Location", action[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                    action = "ok"
                if isinstance(action, tuple) and action[0] == "content":
                    content = action[1]
                elif isinstance(action, tuple) and action[0] == "partial":
                    content = json.dumps({"classes": [describe(n) for n in asked[: action[1]]]})
                else:
                    content = json.dumps({"classes": [describe(n) for n in asked]})
                self._send(
                    200,
                    {
                        "model": REPORTED_MODEL,
                        "choices": [{"message": {"role": "assistant", "content": content}}],
                    },
                )

            def _endless(self, kind: str, arg: float | None) -> None:
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    if kind == "trickle":
                        self.send_header("Content-Length", "100000")  # plausible, never sent
                    elif arg is not None:
                        self.send_header("Content-Length", str(int(arg)))
                    self.end_headers()
                    chunk = b" " * 65536
                    while not fake.stop.is_set():
                        if kind == "trickle":
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(float(arg or 0.05))
                        else:
                            self.wfile.write(chunk)
                except OSError:  # the client gave up
                    pass

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @staticmethod
    def asked(body: dict) -> list[str]:
        user = body["messages"][1]["content"]
        start = user.index("[")
        names, _ = json.JSONDecoder().raw_decode(user, start)
        return names

    def asked_per_request(self) -> list[list[str]]:
        return [self.asked(b) for b in self.requests]


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    fake.stop.set()
    fake.server.shutdown()
    fake.server.server_close()


def run(llm: FakeLLM, out: Path, classes=CLASSES, **kw: Any):
    kw.setdefault("batch_size", 2)
    kw.setdefault("retries", 3)
    kw.setdefault("timeout", 5.0)
    return generate_bank(
        classes,
        out,
        vocabulary="custom",
        base_url=llm.url,
        model="fake-llm",
        progress=False,
        backoff=0.01,
        **kw,
    )


def cli_generate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def check_complete(out: Path, classes=CLASSES) -> None:
    bank = load_bank(out)
    assert bank.names == classes  # stored byte for byte, "bed " included
    assert validate_bank(out, class_names=classes) == []


def test_good_answers(llm: FakeLLM, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out = tmp_path / "bank.json"
    bank = run(llm, out)
    check_complete(out)
    assert llm.asked_per_request() == [CLASSES[0:2], CLASSES[2:4], CLASSES[4:5]]
    assert llm.requests[0]["model"] == "fake-llm"
    assert llm.requests[0]["response_format"] == {"type": "json_object"}
    assert llm.headers[0]["Authorization"] == "Bearer sk-test"
    assert bank.provenance.model == "fake-llm"
    assert "[system]" in bank.provenance.prompt and "{classes}" in bank.provenance.prompt
    assert "127.0.0.1" in (bank.provenance.notes or "")
    assert bank.get("bed ").texture == ["It is smooth.", "It is hard."]


def test_no_key_sends_no_authorization(llm: FakeLLM, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LMSEG_TEST_KEY", raising=False)
    run(llm, tmp_path / "bank.json", classes=["sky"], api_key_env="LMSEG_TEST_KEY")
    assert "Authorization" not in llm.headers[0]


def test_malformed_then_good(llm: FakeLLM, tmp_path: Path) -> None:
    llm.script = [("content", "Sure! Here you go: {classes: oops"), ("content", '{"nothing": 1}')]
    run(llm, tmp_path / "bank.json")
    check_complete(tmp_path / "bank.json")
    assert llm.asked_per_request()[:3] == [CLASSES[0:2]] * 3


def test_fenced_answer_and_partial_batch(llm: FakeLLM, tmp_path: Path) -> None:
    fenced = "```json\n" + json.dumps({"classes": [describe("wall")]}) + "\n```"
    llm.script = [("content", fenced), ("partial", 0)]
    run(llm, tmp_path / "bank.json", batch_size=3)
    check_complete(tmp_path / "bank.json")
    # "wall" came back alone; only the rest of the batch is asked again.
    assert llm.asked_per_request()[:3] == [CLASSES[0:3], CLASSES[1:3], CLASSES[1:3]]


def test_server_error_then_success(llm: FakeLLM, tmp_path: Path) -> None:
    llm.script = [("status", 500), ("status", 503)]
    run(llm, tmp_path / "bank.json")
    check_complete(tmp_path / "bank.json")
    assert len(llm.requests) == 5


def test_timeout_then_success(llm: FakeLLM, tmp_path: Path) -> None:
    llm.script = [("sleep", 1.0)]
    start = time.monotonic()
    run(llm, tmp_path / "bank.json", timeout=0.2)
    assert time.monotonic() - start < 5
    check_complete(tmp_path / "bank.json")


def test_client_errors_are_not_retried(llm: FakeLLM, tmp_path: Path) -> None:
    llm.script = [("status", 401)]
    with pytest.raises(GenerationError, match="HTTP 401"):
        run(llm, tmp_path / "bank.json")
    assert len(llm.requests) == 1


def test_resume_after_interruption(llm: FakeLLM, tmp_path: Path) -> None:
    out = tmp_path / "bank.json"
    llm.script = ["ok", ("status", 500), ("status", 500), ("status", 500)]
    with pytest.raises(GenerationError, match="run again to resume"):
        run(llm, out, retries=2)
    partial = load_bank(out)
    assert partial.names == CLASSES[:2]  # the first batch was saved
    created = partial.provenance.created

    # Damage one saved entry: resume regenerates it and skips the valid one.
    data = json.loads(out.read_text(encoding="utf-8"))
    data["classes"][1]["color"] = ""
    out.write_text(json.dumps(data), encoding="utf-8")
    llm.requests.clear()
    run(llm, out)
    check_complete(out)
    assert llm.asked_per_request() == [CLASSES[1:3], CLASSES[3:5]]
    assert load_bank(out).provenance.created == created


def test_resume_refuses_another_model_or_vocabulary(llm: FakeLLM, tmp_path: Path) -> None:
    out = tmp_path / "bank.json"
    run(llm, out, classes=["sky"])
    with pytest.raises(GenerationError, match="written with model"):
        generate_bank(
            ["sky"], out, vocabulary="custom", base_url=llm.url, model="other", progress=False
        )
    with pytest.raises(GenerationError, match="not 'other'"):
        generate_bank(
            ["sky"], out, vocabulary="other", base_url=llm.url, model="fake-llm", progress=False
        )


def test_parse_answer_matching() -> None:
    asked = ["bed ", "Wall"]
    answer = json.dumps([describe("bed "), describe("wall"), describe("lamp")])
    found, problems = parse_answer(answer, asked)
    assert sorted(found) == ["Wall", "bed "]
    assert problems == ["answer item 2: 'lamp' is not one of the asked classes"]
    bad = json.dumps({"classes": [{"name": "bed", "color": "", "shape": "x", "texture": "y"}]})
    found, problems = parse_answer(bad, asked)
    assert found == {} and problems == ['classes[0] ("bed "): field "color" is empty']
    think = "<think>hmm {</think>" + json.dumps({"classes": [describe("Wall")]})
    assert list(parse_answer(think, asked)[0]) == ["Wall"]


def test_chat_completions_url() -> None:
    assert chat_completions_url("http://h:8080") == "http://h:8080/v1/chat/completions"
    assert chat_completions_url("http://h:11434/v1/") == "http://h:11434/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


def test_cli_generate(llm: FakeLLM, tmp_path: Path, capsys) -> None:
    classes = tmp_path / "mine.txt"
    classes.write_text("cat\ndog\n\nbird\n", encoding="utf-8")
    out = tmp_path / "mine.json"
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "prompts",
            "generate",
            "--classes",
            str(classes),
            "--out",
            str(out),
            "--base-url",
            llm.url,
            "--model",
            "fake-llm",
            "--batch-size",
            "2",
            "--quiet",
        ]
    )
    assert args.func(args) == 0
    bank = load_bank(out)
    assert bank.vocabulary == "mine" and bank.names == ["cat", "dog", "bird"]
    assert "wrote" in capsys.readouterr().out

    args = parser.parse_args(
        [
            "prompts",
            "generate",
            "--vocabulary",
            "voc20",
            "--out",
            str(tmp_path / "v.json"),
            "--base-url",
            llm.url,
            "--model",
            "fake-llm",
            "--batch-size",
            "10",
            "--quiet",
        ]
    )
    assert args.func(args) == 0
    assert validate_bank(tmp_path / "v.json") == []


# --------------------------------------------------------------------------------------------
# Credentials, URLs and bounded requests


def run_bounded(seconds: float, call) -> Any:
    """Run ``call`` in a thread; fail (instead of hanging) if it takes over ``seconds``."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = call()
        except BaseException as e:  # handed to the test below
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    result["seconds"] = time.monotonic() - start
    return result


def test_malformed_key_is_never_printed(llm: FakeLLM, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-SECRET-123\n")  # a pasted line break
    with pytest.raises(GenerationError) as caught:
        run(llm, tmp_path / "bank.json")
    message = str(caught.value)
    assert "SECRET" not in message and "$OPENAI_API_KEY" in message
    assert "not shown" in message
    assert llm.requests == []
    classes = tmp_path / "c.txt"
    classes.write_text("sky\n", encoding="utf-8")
    argv = ["prompts", "generate", "--classes", str(classes), "--out", str(tmp_path / "o.json")]
    assert cli_generate(argv + ["--base-url", llm.url, "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "SECRET" not in captured.out + captured.err
    assert captured.err.startswith("error: ")


def test_a_key_echoed_by_the_server_is_redacted(llm: FakeLLM, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-SECRET-123")
    llm.script = [("status", 401, "Incorrect API key provided: sk-SECRET-123")]
    with pytest.raises(GenerationError) as caught:
        run(llm, tmp_path / "bank.json")
    assert "SECRET" not in str(caught.value) and "[redacted]" in str(caught.value)
    llm.script = [("status", 500, "no such key sk-SECRET-123")] * 10
    with pytest.raises(GenerationError) as caught:
        run(llm, tmp_path / "bank.json", retries=1)
    assert "SECRET" not in str(caught.value) and "[redacted]" in str(caught.value)


def test_url_credentials_are_used_but_never_stored_or_printed(
    llm: FakeLLM, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("LMSEG_TEST_KEY", raising=False)
    url = llm.url.replace("http://", "http://alice:s3cr%40t@")
    out = tmp_path / "bank.json"
    bank = generate_bank(
        ["sky"], out, vocabulary="c", base_url=url, api_key_env="LMSEG_TEST_KEY", progress=False
    )
    assert llm.headers[0]["Authorization"] == "Basic " + base64.b64encode(b"alice:s3cr@t").decode()
    stored = out.read_text(encoding="utf-8")
    for secret in ("s3cr", "alice"):
        assert secret not in stored
    assert "127.0.0.1:" in (bank.provenance.notes or "")
    llm.script = [("status", 403, "user alice:s3cr@t is not allowed")]
    with pytest.raises(GenerationError) as caught:
        generate_bank(["tree"], tmp_path / "b2.json", vocabulary="c", base_url=url, progress=False)
    assert "s3cr" not in str(caught.value) and "alice" not in str(caught.value)


@pytest.mark.parametrize("url", ["file://{file}", "ftp://127.0.0.1/v1", "127.0.0.1:8080"])
def test_only_http_urls_are_accepted(url: str, tmp_path: Path) -> None:
    secret = tmp_path / "chat" / "completions"  # a URL ending so is used as it is
    secret.parent.mkdir()
    secret.write_text("FILE-CONTENT-42", encoding="utf-8")
    url = url.format(file=secret)
    with pytest.raises(GenerationError, match="must start with http:// or https://") as caught:
        generate_bank(["sky"], tmp_path / "b.json", vocabulary="c", base_url=url, progress=False)
    assert "FILE-CONTENT-42" not in str(caught.value)
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("code", [302, 307])
def test_a_redirect_is_not_followed(llm: FakeLLM, tmp_path: Path, monkeypatch, code: int) -> None:
    other = FakeLLM()
    thread = threading.Thread(target=other.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-SECRET-123")
        llm.script = [("redirect", other.url + "/chat/completions", code)]
        with pytest.raises(GenerationError, match=f"HTTP {code} .*redirects are not followed"):
            run(llm, tmp_path / "bank.json")
        assert other.requests == [] and other.gets == []  # the key never reached it
    finally:
        other.server.shutdown()
        other.server.server_close()


@pytest.mark.parametrize(
    ("url", "key", "warned"),
    [
        ("http://llm.example.com/v1", "sk-x", True),
        ("http://user:pw@llm.example.com/v1", None, True),
        ("https://llm.example.com/v1", "sk-x", False),
        ("http://127.0.0.1:8080/v1", "sk-x", False),
        ("http://localhost:8080/v1", "sk-x", False),
        ("http://[::1]:8080/v1", "sk-x", False),
        ("http://llm.example.com/v1", None, False),
    ],
)
def test_plain_http_with_credentials_warns(url: str, key: str | None, warned: bool, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lmseg.prompts.generate"):
        ChatClient(base_url=url, api_key=key)  # builds no connection
    assert ("sent unencrypted over plain http" in caplog.text) == warned
    assert "sk-x" not in caplog.text and "pw" not in caplog.text


def test_a_trickling_reply_is_cut_off_at_the_timeout(llm: FakeLLM, tmp_path: Path) -> None:
    llm.script = [("trickle", 0.05)] * 3
    result = run_bounded(15, lambda: run(llm, tmp_path / "bank.json", timeout=0.5, retries=1))
    assert isinstance(result.get("error"), GenerationError), result
    assert "no complete reply within 0.5 s" in str(result["error"])
    assert result["seconds"] < 5  # two attempts of 0.5 s and a short backoff


@pytest.mark.parametrize("length", [None, 10**12])
def test_an_endless_reply_is_refused_at_the_size_limit(
    llm: FakeLLM, tmp_path: Path, length: int | None
) -> None:
    llm.script = [("endless", length)] * 3
    call = partial(run, llm, tmp_path / "bank.json", max_reply_bytes=1 << 20, timeout=30.0)
    result = run_bounded(15, call)
    assert isinstance(result.get("error"), GenerationError), result
    assert "larger than 1048576 bytes (max_reply_bytes" in str(result["error"])
    assert len(llm.requests) == 1  # not retried


def test_over_long_descriptions_are_rejected_at_generation(llm: FakeLLM, tmp_path: Path) -> None:
    long = {
        "name": "wall",
        "color": "It is " + " ".join(["white"] * 80) + ".",
        "shape": "It is flat.",
        "texture": "It is hard.",
    }
    answer = ("content", json.dumps({"classes": [long]}))
    llm.script = [answer] * 3
    with pytest.raises(GenerationError) as caught:
        run(llm, tmp_path / "bank.json", classes=["wall"], retries=2)
    assert '"wall"' in str(caught.value) and "tokens (limit 77" in str(caught.value)
    llm.script = [answer]  # then good answers: the class is asked again and kept
    run(llm, tmp_path / "bank.json", classes=["wall"])
    check_complete(tmp_path / "bank.json", classes=["wall"])


def test_provenance_records_the_reported_model_version(llm: FakeLLM, tmp_path: Path) -> None:
    bank = run(llm, tmp_path / "bank.json", classes=["sky"])
    assert bank.provenance.model == "fake-llm"
    assert bank.provenance.model_version == REPORTED_MODEL
    assert bank.provenance.prompt_kind == "exact"
    assert bank.provenance.prompt.startswith("[system]\n" + SYSTEM_PROMPT)
