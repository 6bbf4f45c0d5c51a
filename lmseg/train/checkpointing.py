"""A training run's folder: checkpoints written atomically, pruned, and read back to resume.

A run folder holds ``config.yaml`` (the resolved config), ``log.jsonl``
(:mod:`lmseg.train.run_log`), ``checkpoints/iter_XXXXXXX/`` with ``model.safetensors``
(:func:`lmseg.checkpoint.save_model`) and ``state.pt`` (:func:`training_state`),
``checkpoints/last`` (the name of the newest checkpoint) and ``model_final.safetensors``.

A checkpoint folder is written under a temporary name and renamed, and ``last`` is replaced
atomically after the rename, so a killed run never leaves a half-written checkpoint.
``state.pt`` holds only tensors, numbers, strings and plain containers and is read with
``torch.load(..., weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmseg.checkpoint import save_model
from lmseg.io import atomic_write
from lmseg.train.data_stream import DataPosition

__all__ = [
    "STATE_FORMAT",
    "RunFolder",
    "capture_rng_state",
    "read_training_state",
    "restore_rng_state",
    "restore_training_state",
    "seed_everything",
    "training_state",
]

STATE_FORMAT = 1


# -- RNG state --------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors and numbers."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "python": {
            "version": version,
            "state": torch.tensor(state, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "kind": str(kind),
            "state": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if (
        state["cuda"]
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- training state -----------------------------------------------------------------------------
def training_state(
    *,
    iteration: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler | None,
    rng: list[dict[str, Any]],
    position: DataPosition,
    dataset_size: int,
    world_size: int,
    batch_size: int,
) -> dict[str, Any]:
    """What ``state.pt`` holds besides the weights, as plain containers.

    Args:
        rng: :func:`capture_rng_state` of every process, by rank.
        position: where the data stream stands after ``iteration``.
    """
    return {
        "format": STATE_FORMAT,
        "iteration": iteration,
        "optimizer": optimizer.state_dict(),
        # The schedule's shape comes from the config on resume (a run may be extended).
        "scheduler": {
            **scheduler.state_dict(),
            "lr_lambdas": [None] * len(scheduler.lr_lambdas),
        },
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": rng,
        "data": {
            "epoch": position.epoch,
            "index": position.index,
            "dataset_size": dataset_size,
        },
        "world_size": world_size,
        "batch_size": batch_size,
    }


def read_training_state(folder: Path) -> dict[str, Any]:
    """``folder/state.pt``, read without unpickling, of this release's format."""
    state: dict[str, Any] = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT:
        raise ValueError(
            f"{folder}/state.pt has format {state.get('format')}, expected {STATE_FORMAT}"
        )
    return state


def restore_training_state(
    state: dict[str, Any],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """Load the optimizer, LR scheduler and grad scaler states of :func:`training_state`.

    The learning rates are recomputed from this run's schedule at the checkpoint's step, so a
    resumed run with more ``solver.iterations`` follows the stretched schedule from there on.
    """
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for group, base, fn in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * fn(scheduler.last_epoch)
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])


# -- the run folder ---------------------------------------------------------------------------
class RunFolder:
    """The files of one training run under ``root``.

    Args:
        root: the run folder (``train.output_dir``).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def pointer(self) -> Path:
        """``checkpoints/last``: the name of the newest checkpoint folder."""
        return self.checkpoints / "last"

    @property
    def final_model(self) -> Path:
        return self.root / "model_final.safetensors"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def evaluation(self, iteration: int) -> Path:
        """The folder of the evaluation results after ``iteration``."""
        return self.root / "eval" / f"iter_{iteration:07d}"

    def checkpoint(self, iteration: int) -> Path:
        """The checkpoint folder of ``iteration``."""
        return self.checkpoints / f"iter_{iteration:07d}"

    def write_checkpoint(self, model: nn.Module, state: dict[str, Any], iteration: int) -> Path:
        """Write the checkpoint of ``iteration`` under a temporary name, rename it into place,
        then point ``last`` at it; returns its folder."""
        final = self.checkpoint(iteration)
        tmp = self.checkpoints / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(model, tmp / "model.safetensors", extra={"iteration": str(iteration)})
        torch.save(state, tmp / "state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write(self.pointer, lambda p: Path(p).write_text(final.name + "\n", encoding="utf-8"))
        return final

    def prune(self, keep: int) -> None:
        """Delete all but the newest ``keep`` checkpoints (0 keeps all)."""
        if keep <= 0:
            return
        folders = sorted(p for p in self.checkpoints.glob("iter_*") if p.is_dir())
        for old in folders[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def last_checkpoint(self) -> Path | None:
        """The checkpoint folder ``last`` names, if it holds a state; else None."""
        if not self.pointer.is_file():
            return None
        folder = self.checkpoints / self.pointer.read_text(encoding="utf-8").strip()
        return folder if (folder / "state.pt").is_file() else None

    def write_final_model(self, model: nn.Module, iteration: int) -> None:
        """``model_final.safetensors``: the trained model, reloadable by :func:`lmseg.load_model`."""
        save_model(model, self.final_model, extra={"iteration": str(iteration)})
