"""Running the demo's (configuration, seed) jobs, in parallel processes or in-process.

The models are too small for intra-op parallelism to pay on a CPU, so each job runs with
``settings.threads`` torch threads (1 by default) and ``settings.workers`` jobs run at once in
spawned processes. A job's result depends only on its settings, row, overrides and seed, not on
the worker that ran it or on the order of the jobs.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmseg.synthetic.evaluation import eval_sets, evaluate
from lmseg.synthetic.settings import ROWS, DemoSettings, make_world
from lmseg.synthetic.training import train_row

__all__ = ["Job", "demo_jobs", "run_job", "run_jobs"]


@dataclass(frozen=True)
class Job:
    """One model to train and evaluate.

    Attributes:
        key: the name its results carry (``"row"`` in the results).
        row: the :data:`~lmseg.synthetic.settings.ROWS` key giving prompts and fusion on/off.
        seed: the training seed.
        overrides: model config overrides on top of the row's (``{"class_attention":
            "softmax"}``, ``{"fusion": {"mode": "pixel"}}``).
    """

    key: str
    row: str
    seed: int
    overrides: Mapping[str, Any] = field(default_factory=dict)


def demo_jobs(settings: DemoSettings) -> list[Job]:
    """The demo's jobs: every row of ``settings.rows`` for every seed, seed-major."""
    return [Job(key, key, seed) for seed in settings.seeds for key in settings.rows]


def run_job(
    settings: DemoSettings, job: Job, progress: Callable[[int], Any] | None = None
) -> dict[str, Any]:
    """Train and evaluate one job: JSON-ready results plus ``_predictions``, the first
    ``settings.figure_images`` unseen label maps ``(n, S, S)`` int16.

    Args:
        progress: called with a number of steps done, every 5 steps and after the last.
    """
    torch.set_num_threads(settings.threads)
    world = make_world(settings)
    row = ROWS[job.row]
    pending = [0]

    def report(step: int, loss: float) -> None:
        pending[0] += 1
        if progress is not None and (pending[0] >= 5 or step == settings.steps - 1):
            progress(pending[0])
            pending[0] = 0

    start = time.perf_counter()
    model, losses = train_row(
        world, row, settings, job.seed, on_step=report, overrides=dict(job.overrides)
    )
    train_time = time.perf_counter() - start
    result: dict[str, Any] = {"row": job.key, "seed": job.seed}
    predictions = torch.zeros(0)
    for split, (ids, images, labels) in eval_sets(settings, world).items():
        scores = evaluate(model, world, ids, images, labels, row.prompts)
        result[f"{split}_mIoU"] = scores["mIoU"]
        result[f"{split}_background_IoU"] = scores["background_IoU"]
        result[f"{split}_per_class"] = scores["per_class"]
        if split == "unseen":
            predictions = scores["predictions"][: settings.figure_images]
    weight = None
    logit = getattr(model.fusion, "weight_logit", None)
    if isinstance(logit, torch.Tensor):
        weight = float(torch.sigmoid(logit.detach()).mean())
    result.update(
        clip_fusion_weight=weight,
        final_loss=float(np.mean(losses[-20:])),
        loss_every_25_steps=losses[::25],
        train_seconds=train_time,
        eval_seconds=time.perf_counter() - start - train_time,
        _predictions=predictions.to(torch.int16).numpy(),
    )
    return result


# The progress queue of a worker process, set by the pool's initializer.
_PROGRESS: Any = None


def _init_worker(progress_queue: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress_queue


def _worker_job(settings: DemoSettings, job: Job) -> dict[str, Any]:
    return run_job(settings, job, _PROGRESS.put if _PROGRESS is not None else None)


def run_jobs(
    settings: DemoSettings,
    jobs: Sequence[Job],
    *,
    show_progress: bool = True,
    on_result: Callable[[dict[str, Any]], Any] | None = None,
    longest_first: bool = True,
) -> list[dict[str, Any]]:
    """Run ``jobs`` in ``settings.workers`` spawned processes (in-process for 1).

    With several workers, call this from under ``if __name__ == "__main__":`` in scripts.

    Args:
        show_progress: a progress bar over the training steps of all jobs.
        on_result: called in this process with each job's result as soon as it is done (to
            save results as they come).
        longest_first: with several workers, start the jobs with a spatial encoder first so
            that the workers finish together; False: start them in the order given.

    Returns:
        The results, in the order of ``jobs``.
    """
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(jobs) * settings.steps,
        desc="training",
        unit="step",
        disable=not show_progress,
        mininterval=1.0,
    )
    if settings.workers <= 1:
        results = []
        for job in jobs:
            results.append(run_job(settings, job, bar.update))
            if on_result is not None:
                on_result(results[-1])
        bar.close()
        return results
    ctx = mp.get_context("spawn")  # fork after torch has started threads is unsafe
    progress_queue = ctx.Queue()
    with ProcessPoolExecutor(
        settings.workers, mp_context=ctx, initializer=_init_worker, initargs=(progress_queue,)
    ) as pool:
        order = list(range(len(jobs)))
        if longest_first:
            order.sort(key=lambda i: not ROWS[jobs[i].row].fusion)
        futures: dict[int, Future[dict[str, Any]]] = {
            i: pool.submit(_worker_job, settings, jobs[i]) for i in order
        }
        reported: set[int] = set()
        while len(reported) < len(futures) or not progress_queue.empty():
            with contextlib.suppress(queue.Empty):
                bar.update(progress_queue.get(timeout=0.2))
            for i, future in futures.items():
                if i not in reported and future.done():
                    reported.add(i)
                    if on_result is not None:
                        on_result(future.result())
        results = [futures[i].result() for i in range(len(jobs))]
    bar.close()
    return results
