"""Model checkpoints: safetensors files that carry their config.

A checkpoint reloads with no architecture name (:func:`lmseg.load_model`), is written atomically
(temporary file + rename, so a crash never leaves a truncated file), and loading never unpickles
anything. Reading is defensive: the header (tensor names, dtypes, shapes) and the metadata are
read and checked before any tensor is allocated, and the weights must be finite.

Format versions: ``"2"`` (this release: config sections by role, ``{"type": ..., **options}``)
and ``"1"`` (earlier releases: ``clip`` / ``sam`` sections and weight names), which loads
through :func:`migrate_config` and :func:`migrate_state_keys`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lmseg.io import atomic_write

CONFIG_KEY = "lmseg_config"
FORMAT_KEY = "lmseg_format"
FORMAT_VERSION = "2"
SUPPORTED_FORMATS = ("1", "2")

# Format 1 named the modules after the libraries they came from.
_V1_PREFIXES = (("clip.", "vision_language_encoder."), ("sam_adapter.", "spatial_adapter."), ("sam.", "spatial_encoder."))
# Format 1 aggregator fields that were runtime or training settings, not architecture.
_V1_RUNTIME_FIELDS = ("class_chunk", "token_chunk", "train_pool_size")


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not fit the model."""


@dataclass
class CheckpointHeader:
    """What a checkpoint file declares, read without loading any tensor.

    Attributes:
        path: the file.
        metadata: its string metadata.
        shapes: tensor name -> shape.
        format: the lmseg format version.
        config: the model config (migrated to the current format), a plain dict.
    """

    path: Path
    metadata: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    format: str
    config: dict[str, Any]


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # clone() breaks storage sharing (safetensors refuses shared tensors) and detaches.
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_model(
    model: nn.Module, path: str | os.PathLike[str], extra: dict[str, str] | None = None
) -> None:
    """Save weights and config to a ``.safetensors`` file, atomically.

    Args:
        model: a model built by :func:`lmseg.create_model` (it carries ``model.config``).
        path: destination file.
        extra: additional string metadata.
    """
    config = getattr(model, "config", None)
    if not config:
        raise CheckpointError("the model has no config; build it with lmseg.create_model/build_model")
    metadata = {CONFIG_KEY: json.dumps(config), FORMAT_KEY: FORMAT_VERSION, **(extra or {})}
    state = _model_state(model)
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def migrate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A format-1 model config in the current format (format-2 configs pass unchanged).

    Format 1 had ``clip`` / ``sam`` sections, a fusion ``mode`` without a type, runtime fields
    in the aggregator section and a ``top_k``; they become typed role sections and the runtime
    fields are dropped (they are :class:`~lmseg.runtime.RuntimeOptions` now).
    """
    data = dict(config)
    if "clip" not in data and "sam" not in data:
        return data
    out: dict[str, Any] = {"name": data.get("name")}
    clip = data.get("clip")
    out["vision_language_encoder"] = {"type": "open_clip", **clip} if isinstance(clip, Mapping) else clip
    sam = data.get("sam")
    if isinstance(sam, Mapping):
        sam = dict(sam)
        overrides = sam.pop("overrides", None) or {}
        out["spatial_encoder"] = {"type": "sam", **sam, **(overrides if isinstance(overrides, Mapping) else {})}
        fusion = data.get("fusion")
        out["fusion"] = {"type": "weighted", **(fusion if isinstance(fusion, Mapping) else {})}
    else:
        out["spatial_encoder"] = sam
        out["fusion"] = None
    aggregator = data.get("aggregator")
    if isinstance(aggregator, Mapping):
        aggregator = {k: v for k, v in aggregator.items() if k not in _V1_RUNTIME_FIELDS}
    out["aggregator"] = aggregator
    for key, value in data.items():
        if key not in ("name", "clip", "sam", "fusion", "aggregator", "top_k"):
            out[key] = value
    return out


def migrate_state_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """Format-1 weight names (``clip.``, ``sam.``, ``sam_adapter.``) renamed to the roles'."""
    out = {}
    for key, value in state.items():
        for old, new in _V1_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def read_header(path: str | os.PathLike[str]) -> CheckpointHeader:
    """Read a checkpoint's metadata and tensor shapes without loading tensors.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a readable safetensors file, no lmseg config, or a config that is
            not a JSON object; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {error}") from error
    if CONFIG_KEY not in metadata:
        raise CheckpointError(
            f"{path} carries no lmseg config; is it an lmseg checkpoint? (CAT-Seg checkpoints "
            "must be converted first: lmseg convert-catseg IN OUT)"
        )
    version = metadata.get(FORMAT_KEY, "1")
    if version not in SUPPORTED_FORMATS:
        raise CheckpointError(
            f"{path} has lmseg checkpoint format {version!r}; this lmseg reads {SUPPORTED_FORMATS} "
            "(a newer lmseg wrote it?)"
        )
    try:
        config = json.loads(metadata[CONFIG_KEY])
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"{path}: its lmseg config is not valid JSON ({error})") from error
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: its lmseg config must be a JSON object, got {type(config).__name__}"
        )
    if version == "1":
        config = migrate_config(config)
        shapes = migrate_state_keys(shapes)
    return CheckpointHeader(path=path, metadata=metadata, shapes=shapes, format=version, config=config)


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model config stored in a checkpoint (in the current format)."""
    return read_header(path).config


def check_shapes(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    *,
    source: str,
    model_name: str = "",
    strict: bool = True,
) -> None:
    """Compare a model's parameter shapes with a checkpoint's, naming every difference.

    Raises:
        CheckpointError: misshapen keys, and missing or unexpected ones when ``strict``.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(found[k])} vs model {tuple(v)}"
        for k, v in expected.items()
        if k in found and tuple(found[k]) != tuple(v)
    ]
    if mismatched or (strict and (missing or unexpected)):

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")

        raise CheckpointError(
            f"checkpoint {source} does not fit the model {model_name!r}: missing [{show(missing)}], "
            f"unexpected [{show(unexpected)}], mismatched [{show(mismatched)}]"
        )


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights with NaN or infinite values (a corrupt or diverged checkpoint)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"checkpoint {source} has NaN or infinite values in {len(bad)} tensor(s), e.g. "
            f"{', '.join(bad[:5])}; the file is corrupt or the training diverged"
        )


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> None:
    """Load a checkpoint into an existing model, checking every key, shape and value.

    Shapes are compared from the file's header before any tensor is read.

    Raises:
        CheckpointError: naming missing, unexpected and misshapen keys, or non-finite weights.
    """
    header = read_header(path)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    name = str(getattr(model, "config", {}).get("name", ""))
    check_shapes(own, header.shapes, source=str(header.path), model_name=name, strict=strict)
    state = load_file(str(header.path))
    if header.format == "1":
        state = migrate_state_keys(state)
    check_finite(state, str(header.path))
    model.load_state_dict(state, strict=strict)
