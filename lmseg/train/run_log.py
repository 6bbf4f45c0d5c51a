"""A training run's log: one JSON object per log period in ``log.jsonl``, and optionally the same
scalars as TensorBoard events (``tensorboard/``, imported only when asked for).

Each training line holds ``iteration``, ``loss`` (averaged over the period and over processes),
``grad_norm`` (before clipping, last step of the period), ``lr``, ``lr_vision_language``,
``time`` and ``data_time`` (seconds per iteration), ``eta_seconds``, ``epoch``,
``skipped_samples`` (all processes together) and ``max_mem_mb`` on CUDA. Evaluation lines hold
``iteration`` and ``eval: {dataset: {mIoU, fwIoU, mAcc, pAcc}}``.

A resumed run first drops the lines the killed run wrote after the checkpoint it resumes from
(:meth:`RunLog.drop_after`), so every iteration is logged once; TensorBoard is told the same
with ``purge_step``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmseg.io import atomic_write
from lmseg.train.distributed import mean_over_processes

__all__ = ["RunLog", "period_record", "require_tensorboard"]


def require_tensorboard() -> None:
    """Fail early, with the install line, when TensorBoard is asked for but absent."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "train.tensorboard needs the tensorboard package: pip install 'lmseg[tensorboard]'"
        ) from error


def period_record(
    window: list[dict[str, float]],
    *,
    iteration: int,
    iterations: int,
    epoch: int,
    device: torch.device,
    world_size: int,
) -> dict[str, Any]:
    """The log line of a period from the step statistics of this process.

    Every process must call it: the loss and the skipped samples are reduced over processes.

    Args:
        window: the :meth:`~lmseg.train.trainer.Trainer.step` statistics of the period.
        iteration: the last iteration of the period.
        iterations: the run's total (for the ETA).
        epoch: the data stream's epoch.
        device: the training device (NCCL reduces CUDA tensors only).
        world_size: processes.
    """
    loss = mean_over_processes(torch.tensor([w["loss"] for w in window], device=device).mean())
    last = window[-1]
    skipped = float(sum(w["skipped"] for w in window))
    seconds = float(np.mean([w["time"] for w in window]))
    record: dict[str, Any] = {
        "iteration": iteration,
        "loss": float(loss),
        "grad_norm": last["grad_norm"],
        "lr": last["lr"],
        "lr_vision_language": last["lr_vision_language"],
        "time": round(seconds, 4),
        "data_time": round(float(np.mean([w["data_time"] for w in window])), 4),
        "eta_seconds": round(seconds * (iterations - iteration)),
        "epoch": epoch,
        # bad samples passed over in this period, all processes together
        "skipped_samples": round(
            float(mean_over_processes(torch.tensor(skipped, device=device))) * world_size
        ),
    }
    if device.type == "cuda":
        record["max_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return record


class RunLog:
    """Appends records to ``log.jsonl`` and, with ``tensorboard``, their numbers as scalars.

    Only the main process writes; the TensorBoard writer opens at the first record.

    Args:
        path: the ``log.jsonl`` file.
        tensorboard: the TensorBoard event folder, or None for none.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, tensorboard: str | os.PathLike[str] | None = None
    ) -> None:
        self.path = Path(path)
        self.tensorboard = None if tensorboard is None else Path(tensorboard)
        self._writer: Any = None
        self._purge_step: int | None = None

    def drop_after(self, iteration: int) -> int:
        """Keep only the lines up to ``iteration``: the lines a killed run wrote after the
        checkpoint a resume starts from, and a line cut short by the kill, are dropped (the file
        is rewritten atomically). TensorBoard events after ``iteration`` are purged when its
        writer opens. Returns the number of lines dropped."""
        self._purge_step = iteration + 1
        if not self.path.is_file():
            return 0
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if _logged_by_then(line, iteration)]
        if kept == lines and (not lines or lines[-1].endswith("\n")):
            return 0
        text = "".join(line if line.endswith("\n") else line + "\n" for line in kept)
        atomic_write(self.path, lambda p: Path(p).write_text(text, encoding="utf-8"))
        return len(lines) - len(kept)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (it holds ``iteration``)."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.tensorboard), purge_step=self._purge_step)
            step = record["iteration"]
            for key, value in flatten(record).items():
                if key != "iteration" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()


def _logged_by_then(line: str, iteration: int) -> bool:
    """Whether ``line`` is a whole record of an iteration up to ``iteration``."""
    try:
        record = json.loads(line)
    except ValueError:  # cut short by a kill
        return False
    value = record.get("iteration") if isinstance(record, dict) else None
    return isinstance(value, int) and not isinstance(value, bool) and value <= iteration


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of ``a/b`` keys (TensorBoard's tag names)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out
