"""Bank generation against a real HTTP server on 127.0.0.1 (no network), and the CLI."""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lmseg.cli.prompts import register
from lmseg.prompts.bank import load_bank, validate_bank
from lmseg.prompts.generate import (
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


class FakeLLM:
    """A scripted OpenAI-compatible server. ``script`` holds one action per request; when it
    runs out, every request gets a good answer. Actions: ``"ok"``, ``("status", code)``,
    ``("sleep", seconds)`` (then a good answer), ``("content", text)``, ``("partial", n)``
    (answer only the first n asked classes)."""

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                fake.headers.append(dict(self.headers))
                action = fake.script.pop(0) if fake.script else "ok"
                asked = fake.asked(body)
                if isinstance(action, tuple) and action[0] == "status":
                    self._send(action[1], {"error": {"message": "boom"}})
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
                    200, {"choices": [{"message": {"role": "assistant", "content": content}}]}
                )

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
