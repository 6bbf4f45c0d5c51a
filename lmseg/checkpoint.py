"""Model checkpoints: safetensors files that carry their config.

A checkpoint reloads with no architecture name (:func:`load_model`), is written atomically
(temporary file + rename, so a crash never leaves a truncated file), and loading never unpickles
anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lmseg.io import atomic_write
from lmseg.model import LMSeg

CONFIG_KEY = "lmseg_config"
FORMAT_KEY = "lmseg_format"
FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not fit the model."""


def _model_state(model: LMSeg) -> dict[str, torch.Tensor]:
    # clone() breaks storage sharing (safetensors refuses shared tensors) and detaches.
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_model(model: LMSeg, path: str | os.PathLike[str], extra: dict[str, str] | None = None) -> None:
    """Save weights and config to a ``.safetensors`` file, atomically.

    Args:
        model: a model built by :func:`lmseg.create_model` (it carries ``model.config``).
        path: destination file.
        extra: additional string metadata.
    """
    if not model.config:
        raise CheckpointError("the model has no config; build it with lmseg.create_model/build_model")
    metadata = {CONFIG_KEY: json.dumps(model.config), FORMAT_KEY: FORMAT_VERSION, **(extra or {})}
    state = _model_state(model)
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model config stored in a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {error}") from error
    if CONFIG_KEY not in metadata:
        raise CheckpointError(
            f"{path} carries no lmseg config; is it an lmseg checkpoint? (CAT-Seg checkpoints "
            "must be converted first: lmseg convert-catseg IN OUT)"
        )
    return json.loads(metadata[CONFIG_KEY])


def load_weights(model: LMSeg, path: str | os.PathLike[str], *, strict: bool = True) -> None:
    """Load a checkpoint into an existing model, checking every key and shape.

    Raises:
        CheckpointError: naming missing, unexpected and misshapen keys.
    """
    path = Path(path)
    read_config(path)  # fails early, with a clear message, on foreign files
    state = load_file(str(path))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if mismatched or (strict and (missing or unexpected)):
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")

        raise CheckpointError(
            f"checkpoint {path} does not fit the model "
            f"{model.config.get('name', '')!r}: missing [{show(missing)}], "
            f"unexpected [{show(unexpected)}], mismatched [{show(mismatched)}]"
        )
    model.load_state_dict(state, strict=strict)


def load_model(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> LMSeg:
    """Rebuild a model from a checkpoint alone (its config is inside) and load its weights.

    ``path`` is an lmseg ``.safetensors`` file, a released CAT-Seg ``.pth`` (converted once and
    cached) or ``"hf-hub:org/name[@revision]"`` (see :func:`lmseg.zoo.locate_checkpoint`).
    """
    from lmseg.factory import build_model
    from lmseg.zoo import locate_checkpoint

    path = locate_checkpoint(path)

    model = build_model(read_config(path))
    load_weights(model, path)
    return model.to(device).eval()
