"""Ablation on the synthetic world: every registered class attention × every fusion mode.

Each variant is the demo's ``attributes`` model (``lmseg.synthetic``: name-free attribute prompts,
every weight trained from scratch, the same steps, seeds and data as the demo's attributes rows),
built through the factory's overrides: ``class_attention=`` one of
``lmseg.aggregation.CLASS_ATTENTIONS`` and ``fusion={"mode": ...}`` one of the weighted fusion's
modes, or no spatial encoder and no fusion ("none", the demo's ``attributes + CLIP only``). It
reports unseen and seen mIoU (mean ± std over seeds, and per seed) and the time per run, as JSON
(``benchmarks/report.py``) and as a Markdown table.

It is resumable: runs already in the results file (same settings) are skipped, and every run is
saved as soon as it ends, so it can be stopped and restarted, or run in chunks (``--max-jobs``):

    nohup python benchmarks/ablation.py > ablation.log 2>&1 &
    python benchmarks/ablation.py [--steps 200] [--seeds 0,1,2] [--attentions linear,softmax]
        [--fusions none,scalar,channel,pixel,adaptive] [--workers 2] [--max-jobs N]
        [--out benchmarks/results/ablation.json] [--markdown benchmarks/results/ablation.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

# Before torch is imported (and inherited by the worker processes), as the demo does.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # run from a checkout, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import write_report  # noqa: E402  (benchmarks/report.py, beside this script)

from lmseg.aggregation import CLASS_ATTENTIONS  # noqa: E402
from lmseg.fusion.weighted_fusion import FUSION_MODES  # noqa: E402
from lmseg.io import atomic_write  # noqa: E402
from lmseg.synthetic.report import stats  # noqa: E402
from lmseg.synthetic.runner import Job, run_jobs  # noqa: E402
from lmseg.synthetic.settings import DemoSettings  # noqa: E402

BENCHMARK = "class attention x fusion ablation on the synthetic world"
NO_FUSION = "none"
# End to end in seconds: checks that everything runs, says nothing about accuracy.
SMOKE: dict[str, Any] = {
    "steps": 1,
    "seeds": (0,),
    "batch_size": 2,
    "eval_unseen": 2,
    "eval_seen": 2,
    "workers": 1,
}
# Settings that do not change a run's numbers (how many jobs run at once, the demo's figure).
_NOT_RESULTS = ("rows", "workers", "figure_images")


def variant_key(attention: str, fusion: str) -> str:
    """``"linear/scalar"``, ``"softmax/none"``."""
    return f"{attention}/{fusion}"


def variants(attentions: list[str], fusions: list[str]) -> list[tuple[str, str]]:
    """(class attention, fusion) pairs, most informative first, so that an interrupted run has
    the demo's own model, each single change from it, and then the rest of the grid."""
    base = (attentions[0], "scalar" if "scalar" in fusions else fusions[0])
    grid = [(a, f) for a in attentions for f in fusions]
    one_change = [v for v in grid if (v[0] == base[0]) != (v[1] == base[1])]
    return [base, *one_change, *(v for v in grid if v != base and v not in one_change)]


def job(attention: str, fusion: str, seed: int) -> Job:
    """The demo's attributes model with this class attention and fusion, through factory
    overrides (``class_attention=``, ``fusion=``)."""
    overrides: dict[str, Any] = {"class_attention": attention}
    if fusion != NO_FUSION:
        overrides["fusion"] = {"mode": fusion}
    row = "attributes+clip" if fusion == NO_FUSION else "attributes+fusion"
    return Job(variant_key(attention, fusion), row, seed, overrides)


def _fingerprint(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's numbers (JSON form, tuples as lists)."""
    return {k: v for k, v in json.loads(json.dumps(settings)).items() if k not in _NOT_RESULTS}


def load_runs(path: Path, settings: DemoSettings) -> list[dict[str, Any]]:
    """The runs already in the results file; none if it does not exist.

    Raises:
        SystemExit: the file was made with other settings (it is never overwritten then).
    """
    if not path.exists():
        return []
    report = json.loads(path.read_text())
    theirs, mine = _fingerprint(report.get("settings", {})), _fingerprint(asdict(settings))
    if theirs != mine:
        changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        raise SystemExit(
            f"error: {path} holds runs with other settings ({', '.join(changed)}); "
            "pass another --out to start a new table"
        )
    return list(report.get("runs", []))


def summary_rows(
    runs: list[dict[str, Any]], grid: list[tuple[str, str]], seeds: tuple[int, ...]
) -> list[dict[str, Any]]:
    """Per (class attention, fusion) of ``grid``: unseen/seen mIoU over the finished seeds and the time per run."""
    rows = []
    for attention, fusion in grid:
        key = variant_key(attention, fusion)
        mine = sorted((r for r in runs if r["variant"] == key), key=lambda r: r["seed"])
        mine = [r for r in mine if r["seed"] in seeds]
        row: dict[str, Any] = {
            "variant": key,
            "class_attention": attention,
            "fusion": fusion,
            "seeds_done": [r["seed"] for r in mine],
            "seeds_missing": [s for s in seeds if s not in {r["seed"] for r in mine}],
        }
        if mine:
            row.update(
                unseen_mIoU=stats([r["unseen_mIoU"] for r in mine]),
                seen_mIoU=stats([r["seen_mIoU"] for r in mine]),
                unseen_by_seed={str(r["seed"]): r["unseen_mIoU"] for r in mine},
                seen_by_seed={str(r["seed"]): r["seen_mIoU"] for r in mine},
                seconds_per_run=stats([r["seconds"] for r in mine])["mean"],
            )
        rows.append(row)
    return rows


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """The table: mean ± std over seeds, unseen mIoU per seed, seconds per run."""
    lines = [
        "| class attention | fusion | unseen mIoU | seen mIoU | unseen mIoU per seed | s / run |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row["seeds_done"]:
            lines.append(f"| {row['class_attention']} | {row['fusion']} | not run | | | |")
            continue
        u, s = row["unseen_mIoU"], row["seen_mIoU"]
        seeds = ", ".join(f"{v:.1f}" for v in row["unseen_by_seed"].values())
        if row["seeds_missing"]:
            missing = row["seeds_missing"]
            seeds += f" (seed{'s' * (len(missing) > 1)} {', '.join(map(str, missing))} not run)"
        lines.append(
            f"| {row['class_attention']} | {row['fusion']} | {u['mean']:.1f} ± {u['std']:.1f} | "
            f"{s['mean']:.1f} ± {s['std']:.1f} | {seeds} | {row['seconds_per_run']:.0f} |"
        )
    return "\n".join(lines)


def _record(result: dict[str, Any], attention: str, fusion: str) -> dict[str, Any]:
    """What the results file keeps of one run (per-class IoU included)."""
    keep = {k: v for k, v in result.items() if not k.startswith("_") and k != "row"}
    return {
        "variant": result["row"],
        "class_attention": attention,
        "fusion": fusion,
        **keep,
        "seconds": result["train_seconds"] + result["eval_seconds"],
    }


def _setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` for a :class:`DemoSettings` field; VALUE is JSON (bare words as strings)."""
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="training steps per run (default: the demo's)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the demo's, 0,1,2)")
    parser.add_argument("--attentions", default=",".join(CLASS_ATTENTIONS.names()))
    parser.add_argument("--fusions", default=",".join((NO_FUSION, *FUSION_MODES)))
    parser.add_argument("--workers", type=int, default=2, help="parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--max-jobs", type=int, help="run at most this many runs, then stop")
    parser.add_argument("--smoke", action="store_true", help="1 step, tiny evaluation (tests)")
    parser.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="benchmarks/results/ablation.json")
    parser.add_argument("--markdown", default="benchmarks/results/ablation.md")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    attentions = [a for a in args.attentions.split(",") if a]
    fusions = [f for f in args.fusions.split(",") if f]
    unknown = [a for a in attentions if a not in CLASS_ATTENTIONS] + [
        f for f in fusions if f not in (NO_FUSION, *FUSION_MODES)
    ]
    if unknown or not attentions or not fusions:
        parser.error(f"unknown class attention or fusion {unknown}")
    values: dict[str, Any] = dict(SMOKE) if args.smoke else {}
    values.update(args.set)
    values.update(workers=args.workers, threads=args.threads)
    if args.steps is not None:
        values["steps"] = args.steps
    if args.seeds is not None:
        values["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if "seeds" in values:
        values["seeds"] = tuple(values["seeds"])
    settings = replace(DemoSettings(**values), rows=())

    out, markdown = Path(args.out), Path(args.markdown)
    runs = load_runs(out, settings)
    plan = variants(attentions, fusions)  # the order the runs go in
    grid = [(a, f) for a in attentions for f in fusions]  # the order of the table
    done = {(r["variant"], r["seed"]) for r in runs}
    todo = [
        (a, f, seed)
        for a, f in plan
        for seed in settings.seeds
        if (variant_key(a, f), seed) not in done
    ]
    if args.max_jobs is not None:
        todo = todo[: args.max_jobs]
    print(f"{len(done)} runs in {out}; running {len(todo)} of {len(plan) * len(settings.seeds)}")

    def save() -> list[dict[str, Any]]:
        rows = summary_rows(runs, grid, settings.seeds)
        missing = [
            {"variant": r["variant"], "seeds": r["seeds_missing"]}
            for r in rows
            if r["seeds_missing"]
        ]
        atomic_write(
            out,
            lambda tmp: write_report(
                tmp,
                BENCHMARK,
                settings.threads,
                rows,
                settings=asdict(settings),
                workers=settings.workers,
                metric="mIoU over object classes present, background excluded, percent",
                seconds="train + evaluation seconds per run, one torch thread, "
                f"{settings.workers} runs at a time",
                missing=missing,
                runs=sorted(runs, key=lambda r: (r["variant"], r["seed"])),
            ),
        )
        table = format_markdown(rows)
        atomic_write(markdown, lambda tmp: Path(tmp).write_text(table + "\n"))
        return rows

    by_key = {variant_key(a, f): (a, f) for a, f, _ in todo}

    def finished(result: dict[str, Any]) -> None:
        runs.append(_record(result, *by_key[result["row"]]))
        save()
        print(
            f"{result['row']} seed {result['seed']}: unseen {result['unseen_mIoU']:.1f}, "
            f"seen {result['seen_mIoU']:.1f} mIoU, {runs[-1]['seconds']:.0f} s",
            flush=True,
        )

    start = time.perf_counter()
    jobs = [job(a, f, seed) for a, f, seed in todo]
    run_jobs(
        settings,
        jobs,
        show_progress=not args.no_progress,
        on_result=finished,
        longest_first=False,  # the most informative variants first
    )
    rows = save()
    print(format_markdown(rows))
    print(f"wall-clock {time.perf_counter() - start:.0f} s; wrote {out} and {markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
