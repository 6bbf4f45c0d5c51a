"""The Hugging Face Hub, both ways: fetch files (released weights, lmseg checkpoints), push models.

Downloads go through ``huggingface_hub`` (its cache, ``HF_HOME``/``HF_HUB_CACHE``,
``HF_ENDPOINT``, revisions and ``HF_HUB_OFFLINE``) with three additions:

- ``LMSEG_MIRROR`` redirects the endpoint to ``$LMSEG_MIRROR/huggingface.co``
  (:func:`lmseg.weights.hub_endpoint`);
- an unreachable Hub costs one quick request and one clear error line, instead of
  huggingface_hub's minute of retries when nothing is cached;
- every file is verified before use: against a recorded sha256 when there is one, otherwise
  against the sha256 the Hub itself reports for large (LFS) files, which names the blob in the
  cache; a corrupt cached copy is deleted and fetched again.

A model pushed with :func:`push_to_hub` (``model.safetensors`` with its config, ``config.json``
and a model card) loads back with ``lmseg.load_model("hf-hub:org/name")`` or
``lmseg.create_model(variant, pretrained="hf-hub:org/name@revision")``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from lmseg.download import forget, verify_file
from lmseg.weights import (
    HUB_HOST,
    OFFLINE_HINT,
    ChecksumError,
    WeightsNotFoundError,
    hub_endpoint,
    is_offline,
)

__all__ = [
    "CHECKPOINT_FILE",
    "HUB_PREFIX",
    "hub_download",
    "hub_url",
    "is_hub_id",
    "model_card",
    "parse_hub_id",
    "push_to_hub",
]

HUB_PREFIX = "hf-hub:"
CHECKPOINT_FILE = "model.safetensors"
PROBE_TIMEOUT_S = 10.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


def is_hub_id(value: object) -> bool:
    """True for strings of the form ``hf-hub:org/name[@revision]``."""
    return isinstance(value, str) and value.startswith(HUB_PREFIX)


def parse_hub_id(spec: str) -> tuple[str, str | None]:
    """``"hf-hub:org/name@rev"`` -> ``("org/name", "rev")`` (revision None when absent)."""
    body = spec[len(HUB_PREFIX) :] if spec.startswith(HUB_PREFIX) else spec
    repo_id, _, revision = body.partition("@")
    if not _REPO_ID.fullmatch(repo_id):
        raise ValueError(f"{spec!r} is not a Hub model id; expected hf-hub:org/name[@revision]")
    return repo_id, revision or None


def hub_url(repo_id: str, filename: str, *, repo_type: str = "model", revision: str | None = None) -> str:
    """The canonical ``https://huggingface.co/...`` address of a Hub file (for messages, tables)."""
    prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[repo_type]
    return f"https://{HUB_HOST}/{prefix}{repo_id}/resolve/{revision or 'main'}/{filename}"


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> str:
    from huggingface_hub import constants

    return os.fspath(cache_dir) if cache_dir else str(constants.HF_HUB_CACHE)


def _cached(repo_id: str, filename: str, repo_type: str, revision: str, cache_dir: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        repo_id, filename, cache_dir=cache_dir, revision=revision, repo_type=repo_type
    )
    return Path(found) if isinstance(found, str) else None


def _probe(url: str) -> str | None:
    """One quick HEAD request: None if the file is there (or the Hub is only busy: 5xx, which
    huggingface_hub retries), else a short reason."""
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(url, timeout=PROBE_TIMEOUT_S)
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status is not None and status >= 500:
            return None
        return f"HTTP {status}: not found or not accessible"
    except Exception as error:  # connection refused, DNS failure, timeout: the Hub is unreachable
        return f"unreachable ({type(error).__name__})"
    return None


def hub_download(
    repo_id: str,
    filename: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Fetch one file from the Hub (or its cache), verified; returns its local path.

    Args:
        repo_id: ``org/name``.
        filename: file in the repository.
        repo_type: ``"model"``, ``"dataset"`` or ``"space"``.
        revision: branch, tag or commit (``"main"`` when None).
        sha256: the file's expected sha256; None: the Hub's own LFS digest is checked.
        size: expected size in bytes, or None.
        cache_dir: huggingface_hub cache folder (its default when None).

    Raises:
        WeightsNotFoundError: offline and not cached, unreachable, or not on the Hub; one line
            naming the file's address and the cache folder.
        ChecksumError: the file does not match ``sha256``/``size``; it is deleted from the cache.
    """
    from huggingface_hub import hf_hub_url

    revision = revision or "main"
    cache = _cache_root(cache_dir)
    address = hub_url(repo_id, filename, repo_type=repo_type, revision=revision)
    endpoint = hub_endpoint()
    source = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=endpoint)
    cached = _cached(repo_id, filename, repo_type, revision, cache)
    if is_offline() and cached is None:
        raise WeightsNotFoundError(
            f"{address} is not in the Hugging Face cache ({cache}) and offline mode "
            f"({OFFLINE_HINT}) forbids downloading it; fetch it on a machine with internet "
            "(lmseg weights download) and copy the cache folder"
        )
    if is_offline() or (cached is not None and re.fullmatch(r"[0-9a-f]{40}", revision)):
        path = cached
    else:
        problem = _probe(source)
        if problem is not None and cached is None:
            raise WeightsNotFoundError(
                f"could not download {source}: {problem}; cache folder {cache}; if this machine "
                f"is offline, set {OFFLINE_HINT} and copy the file into the cache"
            )
        path = cached if problem is not None else None
    if path is None:
        path = _download(repo_id, filename, repo_type, revision, endpoint, cache, source, False)
    try:
        _verify(path, sha256=sha256, size=size)
    except ChecksumError:
        _delete(path)
        if cached is None or is_offline():
            raise
        # A corrupt copy in the cache: fetched again, once.
        path = _download(repo_id, filename, repo_type, revision, endpoint, cache, source, True)
        try:
            _verify(path, sha256=sha256, size=size)
        except ChecksumError:
            _delete(path)
            raise
    return path


def _download(
    repo_id: str, filename: str, repo_type: str, revision: str, endpoint: str | None,
    cache: str, source: str, force: bool,
) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(
                repo_id, filename, repo_type=repo_type, revision=revision, endpoint=endpoint,
                cache_dir=cache, force_download=force, local_files_only=is_offline(),
            )
        )
    except Exception as error:  # one line, whatever huggingface_hub raised
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsNotFoundError(f"could not download {source}: {reason}; cache folder {cache}") from error


def _verify(path: Path, *, sha256: str | None, size: int | None) -> None:
    blob = path.resolve()
    # Large (LFS) files are stored under their sha256, which the Hub reported as the ETag.
    lfs = blob.name if _SHA256.fullmatch(blob.name) else None
    verify_file(blob, sha256=sha256 or lfs, size=size)


def _delete(path: Path) -> None:
    blob = path.resolve()
    forget(blob)
    path.unlink(missing_ok=True)  # the snapshot's pointer to the blob


# -- pushing ------------------------------------------------------------------------------------
def model_card(
    model: Any,
    repo_id: str,
    *,
    training: str | dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    license: str | None = None,
) -> str:
    """The ``README.md`` pushed with a model: variant, how to load it, config, data and metrics."""
    config = dict(model.config)
    name = config.get("name", "lmseg model")
    front = ["---", "library_name: lmseg", "pipeline_tag: image-segmentation"]
    if license:
        front.append(f"license: {license}")
    front += ["tags:", "- lmseg", "- open-vocabulary-semantic-segmentation", "---", ""]
    lines = [
        *front,
        f"# {repo_id}",
        "",
        f"An [lmseg](https://pypi.org/project/lmseg/) `{name}` model for open-vocabulary semantic "
        "segmentation: give it an image and any list of class names, it labels every pixel.",
        "",
        "```python",
        "import lmseg",
        "",
        f'model = lmseg.load_model("hf-hub:{repo_id}")',
        "labels = lmseg.Segmenter(model).predict(\"photo.jpg\", [\"cat\", \"sofa\", \"wall\"])",
        "```",
        "",
        "## Training data",
        "",
    ]
    if training is None:
        lines.append("Not recorded.")
    elif isinstance(training, str):
        lines.append(training)
    else:
        lines += [f"- {key}: {value}" for key, value in training.items()]
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| benchmark | mIoU |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in metrics.items()]
    else:
        lines.append("Not measured.")
    lines += ["", "## Config", "", "```json", json.dumps(config, indent=2), "```", ""]
    return "\n".join(lines)


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    training: str | dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    license: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload a model to a Hub repository (created if needed) as one commit.

    The commit holds ``model.safetensors`` (weights with the config inside: what
    ``lmseg.load_model`` reads), ``config.json`` and a generated model card (``README.md``).

    Args:
        model: a model built by :func:`lmseg.create_model` (it carries ``model.config``).
        repo_id: ``org/name``.
        revision: branch to push to (created from the default branch if missing); None: main.
        private: visibility of a newly created repository.
        token: Hub token (huggingface_hub's saved token when None).
        commit_message: defaults to "Upload <variant> with lmseg".
        training: training data (a sentence or key/value pairs) for the model card.
        metrics: benchmark -> mIoU, for the model card.
        license: licence identifier for the model card's metadata.
        endpoint: Hub endpoint; defaults to the mirror (``LMSEG_MIRROR``) or huggingface_hub's
            default (``HF_ENDPOINT``).

    Returns:
        The id of the commit, usable as ``hf-hub:org/name@<commit>``.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    from lmseg.checkpoint import save_model

    if is_offline():
        raise ValueError(f"push_to_hub needs the network, but offline mode ({OFFLINE_HINT}) is set")
    parse_hub_id(repo_id)  # validates the form
    api = HfApi(endpoint=endpoint or hub_endpoint(), token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    name = model.config.get("name", "model") if model.config else "model"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_model(model, folder / CHECKPOINT_FILE)
        (folder / "config.json").write_text(json.dumps(model.config, indent=2))
        card = model_card(model, repo_id, training=training, metrics=metrics, license=license)
        (folder / "README.md").write_text(card)
        operations = [
            CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f))
            for f in (CHECKPOINT_FILE, "config.json", "README.md")
        ]
        info = api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message or f"Upload {name} with lmseg",
            revision=revision,
        )
    return str(info.oid)
