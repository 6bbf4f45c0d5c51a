"""A training run's folder: checkpoints written atomically, pruned, and read back to resume.

A run folder holds ``config.yaml`` (the resolved config), ``log.jsonl``
(:mod:`lmseg.train.run_log`), ``checkpoints/iter_XXXXXXX/`` with ``model.safetensors``
(:func:`lmseg.checkpoint.save_model`) and ``state.pt`` (:func:`training_state`),
``checkpoints/last`` (the name of the newest checkpoint) and ``model_final.safetensors``.

A checkpoint folder is written under a temporary name and renamed, and ``last`` is replaced
atomically after the rename, so a killed run never leaves a half-written checkpoint.
``state.pt`` holds only tensors, numbers, strings and plain containers and is read with
``torch.load(..., weights_only=True)``: nothing is unpickled.

The rules that keep a run's outputs (:class:`RunFolder`):

- resuming takes the newest *complete* checkpoint (:func:`read_checkpoint`), whatever ``last``
  says: ``last`` may name a folder that was deleted, or an older one when the run was killed
  between the rename and the pointer update; with checkpoint folders but none complete, resuming
  is refused;
- a fresh start in a folder that holds an earlier run's checkpoints or final model is refused
  unless the run is asked to overwrite it, which then removes that run's outputs first;
- temporary files and folders of interrupted writes are removed when a run starts or resumes.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmseg.checkpoint import CheckpointError, read_header, save_model
from lmseg.io import atomic_write
from lmseg.train.data_stream import DataPosition

__all__ = [
    "STATE_FORMAT",
    "ResumeWarning",
    "RunFolder",
    "RunFolderError",
    "capture_rng_state",
    "read_checkpoint",
    "read_training_state",
    "restore_rng_state",
    "restore_training_state",
    "seed_everything",
    "training_state",
]

STATE_FORMAT = 1
_CHECKPOINT_NAME = re.compile(r"iter_(\d+)")

logger = logging.getLogger(__name__)


class RunFolderError(ValueError):
    """A run folder cannot be started or resumed as asked; the message says what to pass."""


class ResumeWarning(UserWarning):
    """A resume took another checkpoint than ``checkpoints/last`` names, or has nothing to train."""


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


def _short(error: BaseException) -> str:
    text = str(error.__cause__ or error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 120 else line[:117] + "..."


def read_checkpoint(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Check that a checkpoint folder is complete and return its training state.

    Complete: ``model.safetensors`` has a readable header that covers the whole file and
    carries an lmseg config, ``state.pt`` loads (``weights_only``) in this release's format, and
    both name the folder's iteration. The weights themselves are read later, by
    :func:`lmseg.checkpoint.load_weights`, which also checks them against the model.

    Raises:
        CheckpointError: the folder is incomplete; the one-line message says what is wrong.
    """
    folder = Path(folder)
    weights, state_file = folder / "model.safetensors", folder / "state.pt"
    for file in (weights, state_file):
        if not file.is_file():
            raise CheckpointError(f"{folder.name}: {file.name} is missing")
    try:
        header = read_header(weights)
    except CheckpointError as error:
        raise CheckpointError(f"{folder.name}: model.safetensors is unreadable ({_short(error)})") from None
    try:
        state = read_training_state(folder)
    except ValueError as error:
        raise CheckpointError(f"{folder.name}: {_short(error)}") from None
    except Exception as error:  # torch.load's errors for a truncated or foreign file vary
        raise CheckpointError(f"{folder.name}: state.pt is unreadable ({_short(error)})") from None
    match = _CHECKPOINT_NAME.fullmatch(folder.name)
    iterations = {str(state.get("iteration")), header.metadata.get("iteration")}
    if match is not None and iterations != {str(int(match.group(1)))}:
        raise CheckpointError(
            f"{folder.name}: its files are of iterations {sorted(map(str, iterations))}"
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

    def checkpoint_folders(self) -> list[tuple[int, Path]]:
        """``(iteration, folder)`` of every ``iter_XXXXXXX`` folder, complete or not, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for path in self.checkpoints.iterdir():
            match = _CHECKPOINT_NAME.fullmatch(path.name)
            if match is not None and path.is_dir():
                found.append((int(match.group(1)), path))
        return sorted(found)

    # -- starting and resuming ----------------------------------------------------------------
    def earlier_outputs(self) -> list[str]:
        """What of an earlier run the folder holds: checkpoints, ``last``, the final model."""
        found = [str(p.relative_to(self.root)) for _, p in self.checkpoint_folders()]
        if len(found) > 2:
            found = [found[0], "...", found[-1]]
        for path in (self.pointer, self.final_model):
            if path.exists():
                found.append(str(path.relative_to(self.root)))
        return found

    def check_fresh_start(self, *, overwrite: bool, resume_asked: bool = False) -> None:
        """Refuse to start a new run over an earlier run's outputs unless ``overwrite``.

        Args:
            overwrite: the run may replace them (``--overwrite``, ``train.overwrite``).
            resume_asked: a resume was asked for and found no checkpoint (for the message).

        Raises:
            RunFolderError: naming the folder, what it holds, and the options.
        """
        if overwrite:
            return
        found = self.earlier_outputs()
        if not found:
            return
        held = ", ".join(found)
        if resume_asked:
            raise RunFolderError(
                f"{self.root} holds {held} but no checkpoint to resume from: pass --overwrite "
                "(train.overwrite=true) to start the run again, or choose another train.output_dir"
            )
        raise RunFolderError(
            f"{self.root} already holds an earlier run's outputs ({held}): pass --resume to "
            "continue that run or --overwrite (train.overwrite=true) to replace it, or choose "
            "another train.output_dir"
        )

    def clear(self) -> list[Path]:
        """Remove an earlier run's outputs (checkpoints, final model, log, evaluations,
        TensorBoard events, resume configs); returns what was removed. Other files stay."""
        targets = [p for _, p in self.checkpoint_folders()]
        targets += [self.pointer, self.final_model, self.log, self.tensorboard, self.root / "eval"]
        targets += sorted(self.root.glob("config_resume_*.yaml"))
        removed = [p for p in targets if p.exists()]
        for path in removed:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return removed

    def remove_temporary(self) -> list[Path]:
        """Remove what interrupted writes left: ``checkpoints/.iter_*.tmp`` folders and the
        ``.NAME.*.tmp`` files :func:`lmseg.io.atomic_write` makes beside the run's own files
        (other files, even hidden ones, stay); returns what was removed."""
        patterns = [
            (self.root, ".config.yaml.*.tmp"),
            (self.root, ".config_resume_*.yaml.*.tmp"),
            (self.root, f".{self.log.name}.*.tmp"),
            (self.root, f".{self.final_model.name}.*.tmp"),
            (self.checkpoints, ".iter_*.tmp"),
            (self.checkpoints, f".{self.pointer.name}.*.tmp"),
            (self.root / "eval", "iter_*/.*.tmp"),
        ]
        removed = [p for folder, pattern in patterns if folder.is_dir() for p in folder.glob(pattern)]
        for path in removed:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return removed

    def newest_checkpoint(self, *, report: bool = True) -> tuple[Path, dict[str, Any]] | None:
        """The newest complete checkpoint and its training state; None when there is none.

        ``last`` is not trusted: it may name a deleted folder, or an older one when the run was
        killed between renaming a checkpoint into place and replacing ``last``.

        Args:
            report: warn (:class:`ResumeWarning`, one line) when the checkpoint taken is not
                the one ``last`` names because that one is missing or incomplete.

        Raises:
            RunFolderError: there are checkpoint folders but none is complete.
        """
        folders = self.checkpoint_folders()
        if not folders:
            return None
        named = None
        if self.pointer.is_file():
            lines = self.pointer.read_text(encoding="utf-8", errors="replace").splitlines()
            named = lines[0].strip() if lines else ""
        dangling = named is not None and named not in {p.name for _, p in folders}
        problems = []
        for _, folder in reversed(folders):
            try:
                state = read_checkpoint(folder)
            except CheckpointError as error:
                problems.append(str(error))
                continue
            if problems or dangling:
                notes = [f"skipped incomplete {p}" for p in problems]
                if dangling:
                    notes.insert(0, f"checkpoints/last names {named}, which does not exist")
                if report:
                    warnings.warn(
                        f"{'; '.join(notes)}: resuming from the newest complete checkpoint, "
                        f"{folder.name}",
                        ResumeWarning,
                        stacklevel=2,
                    )
            elif named != folder.name:  # killed between the rename and the pointer update
                logger.info("resuming from %s, newer than checkpoints/last (%s)", folder.name, named)
            return folder, state
        raise RunFolderError(
            f"no complete checkpoint in {self.checkpoints} to resume from ({'; '.join(problems)}): "
            "pass --overwrite (train.overwrite=true) to start the run again, or choose another "
            "train.output_dir"
        )

    # -- writing --------------------------------------------------------------------------------
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
            # Training over an iteration again (resumed from an older checkpoint, or replacing
            # an incomplete folder): a rename cannot replace a folder, so the old one moves
            # aside first. A kill in between leaves both under temporary names, removed at the
            # next start; the run then resumes from the checkpoint before.
            old = self.checkpoints / f".{final.name}.old.tmp"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        atomic_write(self.pointer, lambda p: Path(p).write_text(final.name + "\n", encoding="utf-8"))
        return final

    def prune(self, keep: int, *, upto: int) -> None:
        """Delete all but the newest ``keep`` checkpoints up to iteration ``upto`` (0 keeps all).

        Only folders holding both files count; folders of later iterations (left by a run that
        went further before a resume from an earlier checkpoint) are replaced when training
        reaches them, not deleted.
        """
        if keep <= 0:
            return
        folders = [
            p
            for it, p in self.checkpoint_folders()
            if it <= upto and (p / "model.safetensors").is_file() and (p / "state.pt").is_file()
        ]
        for old in folders[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def write_final_model(self, model: nn.Module, iteration: int) -> None:
        """``model_final.safetensors``: the trained model, reloadable by :func:`lmseg.load_model`."""
        save_model(model, self.final_model, extra={"iteration": str(iteration)})
