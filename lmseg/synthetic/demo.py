"""Zero-shot demo on the synthetic world: attribute prompts and CLIP+SAM fusion vs baselines.

A small LMSeg (``lmseg_tiny`` resized for 64 px scenes, every weight random-init and trained)
learns the seen classes of a :class:`~lmseg.synthetic.world.SyntheticWorld` and is evaluated on
scenes of its unseen classes, whose colour+shape pairs never occur in training. Rows:

- ``template + fusion``: CAT-Seg's single template with the made-up name (P = 1);
- ``attributes + CLIP only``: the three name-free attribute sentences (P = 3), no SAM branch;
- ``attributes + fusion``: the same prompts with the SAM role fused in (LMSeg).

The fourth cell of the 2×2 (template + CLIP only) is off by default to stay within five minutes
on two CPU cores: a template model is at chance on unseen classes whatever its image encoder, so
the cell costs a fifth of the time and adds no information (``rows=tuple(ROWS)`` runs it).

The parts read on their own: :mod:`~lmseg.synthetic.settings` (rows and settings),
:mod:`~lmseg.synthetic.model` (the model and prompts), :mod:`~lmseg.synthetic.training`,
:mod:`~lmseg.synthetic.evaluation`, :mod:`~lmseg.synthetic.runner` (jobs, parallel processes)
and :mod:`~lmseg.synthetic.report` (table, claims) and :mod:`~lmseg.synthetic.figure`. This module runs them end to end
(:func:`run_demo`) and re-exports their public names.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmseg.io import atomic_write
from lmseg.synthetic.evaluation import eval_sets, evaluate, reference_levels
from lmseg.synthetic.figure import save_figure
from lmseg.synthetic.model import (
    build_demo_model,
    class_prompts,
    model_overrides,
    prompt_ids,
    text_embeddings,
)
from lmseg.synthetic.report import (
    format_claims,
    format_table,
    summarise,
    targets,
)
from lmseg.synthetic.runner import demo_jobs, run_jobs
from lmseg.synthetic.settings import (
    DEFAULT_ROWS,
    EXACT,
    ROWS,
    DemoRow,
    DemoSettings,
    make_world,
    select_rows,
)
from lmseg.synthetic.training import alignment_loss, batch_loss, train_row, training_vocabulary

__all__ = [
    "DEFAULT_ROWS",
    "EXACT",
    "ROWS",
    "DemoRow",
    "DemoSettings",
    "alignment_loss",
    "batch_loss",
    "build_demo_model",
    "class_prompts",
    "eval_sets",
    "evaluate",
    "format_table",
    "make_world",
    "model_overrides",
    "prompt_ids",
    "reference_levels",
    "run_demo",
    "select_rows",
    "text_embeddings",
    "train_row",
    "training_vocabulary",
]


def run_demo(
    settings: DemoSettings,
    out_dir: str | os.PathLike[str] | None = "outputs/synthetic",
    *,
    show_progress: bool = True,
    echo: Callable[[str], Any] | None = print,
) -> dict[str, Any]:
    """Train and evaluate every (row, seed), print the table, write ``results.json`` and
    ``unseen_predictions.png`` under ``out_dir`` (nothing written when None).

    With ``settings.workers > 1`` jobs run in spawned processes: call this from under
    ``if __name__ == "__main__":`` in scripts.

    Returns:
        The results: ``settings``, ``world`` (the split), ``loss``, ``metric``, ``reference``
        (chance and texture-blind oracle), ``summary`` (per row), ``targets``, ``runs`` (per
        row and seed, with per-class IoU), ``threads`` and ``wall_seconds``.
    """
    start = time.perf_counter()
    world = make_world(settings)
    runs = run_jobs(settings, demo_jobs(settings), show_progress=show_progress)
    sets = eval_sets(settings, world)
    reference = {
        split: reference_levels(world, ids, labels) for split, (ids, _, labels) in sets.items()
    }
    summary = summarise(runs, settings.rows)
    predictions = {
        ROWS[r["row"]].name: r["_predictions"] for r in runs if r["seed"] == settings.seeds[0]
    }
    runs = [{k: v for k, v in r.items() if k != "_predictions"} for r in runs]
    record = {"name": "", "color": "", "shape": "", "texture": ""}
    results: dict[str, Any] = {
        "settings": asdict(settings),
        "world": {
            split: [{key: getattr(world.classes[k], key) for key in record} for k in ids]
            for split, ids in (("seen", world.seen_ids), ("unseen", world.unseen_ids))
        },
        "loss": "segmentation_ce_loss (softmax CE over each image's vocabulary) + "
        "alignment_weight x alignment_loss (object pixels)",
        "metric": "mIoU over object classes present, background excluded, percent",
        "reference": reference,
        "summary": summary,
        "targets": targets(summary),
        "runs": runs,
        "threads": {
            "workers": settings.workers,
            "torch_threads": settings.threads,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        },
    }
    if out_dir is not None:
        out = Path(out_dir)
        _, images, labels = sets["unseen"]
        n = settings.figure_images
        save_figure(out / "unseen_predictions.png", world, images[:n], labels[:n], predictions)
    results["wall_seconds"] = time.perf_counter() - start
    if out_dir is not None:
        text = json.dumps(results, indent=2) + "\n"
        atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(text))
    if echo is not None:
        echo(format_table(results))
        for line in format_claims(results["targets"]):
            echo(line)
        echo(
            f"wall-clock {results['wall_seconds']:.0f} s"
            + (f"; wrote {out_dir}/results.json and unseen_predictions.png" if out_dir else "")
        )
    return results
