"""A training run's log: one JSON object per log period in ``log.jsonl``, and optionally the same
scalars as TensorBoard events (``tensorboard/``, imported only when asked for).

Each training line holds ``iteration``, ``loss`` (averaged over the period and over processes),
``grad_norm`` (before clipping, last step of the period), ``lr``, ``lr_vision_language``,
``time`` and ``data_time`` (seconds per iteration), ``eta_seconds``, ``epoch``,
``skipped_samples`` (all processes together) and ``max_mem_mb`` on CUDA. Evaluation lines hold
``iteration`` and ``eval: {dataset: {mIoU, fwIoU, mAcc, pAcc}}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

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

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (it holds ``iteration``)."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.tensorboard))
            step = record["iteration"]
            for key, value in flatten(record).items():
                if key != "iteration" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of ``a/b`` keys (TensorBoard's tag names)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out
