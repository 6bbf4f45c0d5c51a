"""A loopback stand-in for the Hugging Face Hub and plain download hosts, for offline tests.

:class:`StandIn` is a real HTTP server on 127.0.0.1 (a free port, daemon threads, stopped by the
fixtures below) that speaks enough of two protocols:

- **plain files** under ``/<host>/<path>`` (the ``LMSEG_MIRROR`` layout of
  ``https://<host>/<path>``), with ``Range`` requests answered ``206``;
- **the Hub's file resolution**, at the root and under ``/huggingface.co`` (what lmseg's mirror
  endpoint is): ``HEAD``/``GET`` of ``/<org>/<name>/resolve/<rev>/<file>`` (models) and
  ``/spaces/...``, ``/datasets/...``, with ``X-Repo-Commit``, ``ETag`` (the file's sha256, as
  the Hub reports for large files), ``Content-Length`` and ``Range``; ``404`` with the Hub's
  ``X-Error-Code`` for a missing repository or file;
- **the Hub's upload endpoints** that ``HfApi.create_repo``, ``create_branch`` and
  ``create_commit`` use for small files (every file is declared "regular", so it travels base64
  in the commit): ``/api/repos/create``, ``/api/validate-yaml``,
  ``/api/<type>s/<repo>/preupload/<rev>``, ``/api/<type>s/<repo>/commit/<rev>``,
  ``/api/<type>s/<repo>/branch/<name>``. Any other ``/api/...`` path answers ``404``.

Fault injection (:meth:`StandIn.fail`): per method and path, a queue of ``"cut"`` (send the
headers and half the body, then drop the connection) and ``"500"`` actions, consumed one per
request. Every request is logged (:attr:`StandIn.requests`) with its headers.

Also here: tiny files in each official format (CAT-Seg's ``{"model": state_dict}`` ``.pth``
built through the inverse of lmseg's rename table, SAM's ``.pth``, open_clip's safetensors,
lmseg's safetensors) and the ``standin``/``mirror``/``zoo_sandbox`` fixtures.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch

_HUB_PREFIXES = {"spaces": "space", "datasets": "dataset"}
_REFERENCE = Path(__file__).parent / "data" / "catseg_aggregator_keys.txt"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class _Repo:
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> files


class StandIn:
    """The server; ``base`` is its ``http://127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.faults: dict[tuple[str, str], list[str]] = {}
        self.requests: list[Request] = []
        self._commits = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- content --------------------------------------------------------------------------------
    def add_url(self, url: str, data: bytes) -> str:
        """Serve ``data`` as the mirror copy of ``url``; returns the path it is served at."""
        parts = urlsplit(url)
        path = f"/{parts.netloc}{parts.path}"
        self.files[path] = data
        return path

    def add_repo_file(
        self, repo_id: str, filename: str, data: bytes, *, repo_type: str = "model", branch: str = "main"
    ) -> str:
        """Commit one file to a repository branch; returns the new commit id."""
        repo = self.repos.setdefault((repo_type, repo_id), _Repo())
        parent = repo.commits.get(repo.branches.get(branch, ""), {})
        return self._commit(repo, branch, {**parent, filename: data})

    def _commit(self, repo: _Repo, branch: str, files: dict[str, bytes]) -> str:
        with self._lock:
            self._commits += 1
            commit = hashlib.sha1(f"commit {self._commits}".encode()).hexdigest()
        repo.commits[commit] = files
        repo.branches[branch] = commit
        return commit

    def fail(self, method: str, path: str, *actions: str) -> None:
        """Queue faults (``"cut"``, ``"500"``) for the next requests of ``method path``."""
        self.faults.setdefault((method, path), []).extend(actions)

    def hub_path(self, repo_id: str, filename: str, *, repo_type: str = "model", revision: str = "main") -> str:
        """The path the Hub client requests for a file through lmseg's mirror endpoint."""
        prefix = {"model": "", "space": "spaces/", "dataset": "datasets/"}[repo_type]
        return f"/huggingface.co/{prefix}{repo_id}/resolve/{revision}/{filename}"

    def requests_for(self, path: str, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    # -- life -----------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StandIn:
        standin = self

        class Handler(_Handler):
            server_state = standin

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Shut down: the port then refuses connections (the 'server gone' case)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    server_state: StandIn

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    # -- dispatch -------------------------------------------------------------------------------
    def _handle(self, method: str) -> None:
        state = self.server_state
        path = unquote(urlsplit(self.path).path)
        state.requests.append(Request(method, path, dict(self.headers.items())))
        queue = state.faults.get((method, path))
        action = queue.pop(0) if queue else None
        if action == "500":
            self._reply(500, b"injected failure")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)) if method == "POST" else b""
        prefix = "/huggingface.co" if path.startswith("/huggingface.co/") else ""
        hub = path[len(prefix) :]
        if hub.startswith("/api/"):
            self._api(method, hub, body, self._endpoint() + prefix)
        elif "/resolve/" in hub:
            self._resolve(method, hub, action)
        elif path in state.files:
            self._send(method, state.files[path], {}, action)
        else:
            self._reply(404, b"not found")

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: object) -> None:
        self._reply(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _send(self, method: str, data: bytes, headers: dict[str, str], action: str | None) -> None:
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and method == "GET":
            start = int(match.group(1))
            if start >= len(data):
                self._reply(416, b"", headers)
                return
        chunk = data[start:]
        self.send_response(206 if start else 200)
        for key, value in {**headers, "Accept-Ranges": "bytes"}.items():
            self.send_header(key, value)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if method == "HEAD":
            return
        if action == "cut":  # half the body, then the connection drops
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(chunk)

    # -- the Hub --------------------------------------------------------------------------------
    def _repo_of(self, parts: list[str]) -> tuple[str, str, list[str]]:
        repo_type = _HUB_PREFIXES.get(parts[0], "model")
        if parts[0] in _HUB_PREFIXES:
            parts = parts[1:]
        return repo_type, "/".join(parts[:2]), parts[2:]

    def _resolve(self, method: str, path: str, action: str | None) -> None:
        repo_type, repo_id, rest = self._repo_of(path.strip("/").split("/"))
        repo = self.server_state.repos.get((repo_type, repo_id))
        if repo is None or len(rest) < 3 or rest[0] != "resolve":
            self._reply(404, b"repository not found", {"X-Error-Code": "RepoNotFound"})
            return
        revision, filename = rest[1], "/".join(rest[2:])
        commit = repo.branches.get(revision, revision if revision in repo.commits else None)
        if commit is None:
            self._reply(404, b"revision not found", {"X-Error-Code": "RevisionNotFound"})
            return
        files = repo.commits[commit]
        if filename not in files:
            self._reply(404, b"entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
            return
        data = files[filename]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        self._send(method, data, headers, action)

    def _api(self, method: str, path: str, body: bytes, endpoint: str) -> None:
        state = self.server_state
        parts = path.strip("/").split("/")[1:]  # drop "api"
        if method == "POST" and parts == ["repos", "create"]:
            data = json.loads(body)
            repo_type = data.get("type") or "model"
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            if (repo_type, repo_id) in state.repos:
                self._json(409, {"error": "You already created this model repo", "url": f"{endpoint}/{repo_id}"})
                return
            state.repos[(repo_type, repo_id)] = _Repo()
            self._json(200, {"url": f"{endpoint}/{repo_id}"})
            return
        if method == "POST" and parts == ["validate-yaml"]:
            self._json(200, {"errors": [], "warnings": []})
            return
        if method == "POST" and len(parts) >= 5 and parts[0] in ("models", "spaces", "datasets"):
            repo_type = parts[0][:-1]
            repo_id = f"{parts[1]}/{parts[2]}"
            repo = state.repos.get((repo_type, repo_id))
            action, revision = parts[3], unquote("/".join(parts[4:]))
            if repo is None:
                self._reply(404, b"repository not found", {"X-Error-Code": "RepoNotFound"})
                return
            if action == "preupload":
                files = json.loads(body)["files"]
                self._json(200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                ]})
                return
            if action == "branch":
                if revision not in repo.branches:
                    repo.branches[revision] = repo.branches.get("main") or self._empty(repo)
                self._json(200, {})
                return
            if action == "commit":
                files = dict(repo.commits.get(repo.branches.get(revision, ""), {}))
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                commit = state._commit(repo, revision, files)
                url = f"{endpoint}/{repo_id}/commit/{commit}"
                self._json(200, {"commitUrl": url, "commitOid": commit})
                return
        self._reply(404, b"not implemented by the stand-in")

    def _empty(self, repo: _Repo) -> str:
        return self.server_state._commit(repo, "main", {})

    def _endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


# -- tiny files in the official formats ---------------------------------------------------------
CATSEG_CLIP = "sem_seg_head.predictor.clip_model."
CATSEG_AGG = "sem_seg_head.predictor.transformer."


def catseg_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under the names of CAT-Seg's released checkpoints.

    The inverse of :mod:`lmseg.convert`'s table: the aggregator names are CAT-Seg's (the key list
    of its real checkpoints, ``tests/data/catseg_aggregator_keys.txt``) mapped forward and the
    map inverted; CLIP keeps OpenAI's names under CAT-Seg's prefix with each packed
    ``in_proj_weight`` split into ``q/k/v_proj_weight`` rows.
    """
    from lmseg.convert import _rename

    sources = [CATSEG_AGG + line.split(" ", 1)[0] for line in _REFERENCE.read_text().splitlines()]
    sources += [f"upsample{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
    inverse = {_rename(s): s for s in sources}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        if key.startswith("vision_language_encoder.model."):
            name = CATSEG_CLIP + key[len("vision_language_encoder.model.") :]
            if name.endswith("attn.in_proj_weight"):
                for part, rows in zip("qkv", value.chunk(3), strict=True):
                    out[name.replace("in_proj_weight", f"{part}_proj_weight")] = rows.clone()
            else:
                out[name] = value
            continue
        out[inverse[key]] = value  # KeyError: a key the converter's table cannot produce
    # A buffer the real checkpoints carry and the converter drops on purpose.
    out[CATSEG_AGG + "layers.0.swin_block.block_2.attn_mask"] = torch.zeros(4, 36, 36)
    return out


def to_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def catseg_pth(model: torch.nn.Module) -> bytes:
    """A released-format CAT-Seg checkpoint (detectron2's ``{"model": ..., "iteration": ...}``)."""
    return to_bytes({"model": catseg_state_dict(model), "iteration": 79999})


def sam_pth(model: torch.nn.Module) -> bytes:
    """An official-format SAM checkpoint (a full ``Sam`` state dict) whose image encoder is
    ``model.spatial_encoder.encoder``, with a tiny prompt encoder and mask decoder."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    encoder = copy.deepcopy(model.spatial_encoder.encoder)
    dim, size = encoder.neck[0].out_channels, encoder.img_size
    grid = size // encoder.patch_embed.proj.kernel_size[0]
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(size, size), mask_in_chans=8
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=32, num_heads=2),
            iou_head_hidden_dim=16,
        ),
    )
    return to_bytes(sam.state_dict())


def open_clip_safetensors(model: torch.nn.Module) -> bytes:
    """The CLIP tower in the layout of open_clip's ``open_clip_model.safetensors``."""
    from safetensors.torch import save

    return save({k: v.detach().clone().contiguous() for k, v in model.vision_language_encoder.model.state_dict().items()})


def lmseg_safetensors(model: torch.nn.Module, tmp: Path) -> bytes:
    from lmseg.checkpoint import save_model

    path = tmp / "model.safetensors"
    save_model(model, path)
    return path.read_bytes()


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture
def standin():
    server = StandIn().start()
    yield server
    server.stop()


@pytest.fixture
def mirror(standin, monkeypatch, tmp_path):
    """Network on (to the stand-in only), every lmseg download through ``LMSEG_MIRROR``, an empty
    Hub cache, and fast retries."""
    from huggingface_hub import constants

    import lmseg.download

    monkeypatch.setenv("LMSEG_MIRROR", standin.base)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("LMSEG_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(lmseg.download, "BACKOFF_S", 0.01)
    return standin


@pytest.fixture
def zoo_sandbox():
    """Entries registered by a test are removed afterwards."""
    from lmseg import zoo

    saved = {variant: dict(tags) for variant, tags in zoo._TABLE.items()}
    yield zoo
    zoo._TABLE.clear()
    zoo._TABLE.update(saved)
