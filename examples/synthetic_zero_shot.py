"""Zero-shot segmentation of made-up classes: attribute prompts and CLIP+SAM fusion, no download.

Trains small LMSeg models from scratch on the seen classes of a procedural world and evaluates
them on unseen classes (docs/synthetic.md). The default run takes about four minutes on two
CPU cores, ``--quick`` under a minute.

    python examples/synthetic_zero_shot.py [--quick | --smoke] [--steps N] [--seeds 0,1,2] [--out DIR]
    python examples/synthetic_zero_shot.py --set alignment_weight=0 --set hard_negatives=false
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

# Before torch is imported (and inherited by the worker processes): OpenMP's spin-waiting made
# small CPU ops up to 16x slower with 2 threads (shared/notes/synthetic-world-findings.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lmseg.synthetic.demo import DemoSettings, run_demo, select_rows  # noqa: E402

QUICK: dict[str, Any] = {"steps": 120, "seeds": (0,), "eval_unseen": 48, "eval_seen": 24}
# End to end in seconds, in-process: checks that everything runs, says nothing about accuracy.
SMOKE: dict[str, Any] = {
    "steps": 2,
    "seeds": (0,),
    "batch_size": 2,
    "eval_unseen": 4,
    "eval_seen": 4,
    "figure_images": 2,
    "workers": 1,
}


def _setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` for a :class:`DemoSettings` field; VALUE is JSON (bare words as strings)."""
    key, sep, value = text.partition("=")
    fields = {f.name for f in dataclasses.fields(DemoSettings)}
    if not sep or key not in fields:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY in {sorted(fields)}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key, tuple(parsed) if isinstance(parsed, list) else parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="training steps per model (default 200)")
    parser.add_argument("--seeds", help="comma-separated training seeds (default 0,1,2)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['steps']} steps, seed 0, smaller evaluation sets (CI)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="2 steps in-process, tiny evaluation: a seconds-long smoke test",
    )
    parser.add_argument(
        "--configs",
        default="default",
        help="'default' (3 rows), 'all' (the 2x2) or comma-separated keys: "
        "template+clip, template+fusion, attributes+clip, attributes+fusion",
    )
    parser.add_argument("--workers", type=int, help="parallel processes (default 2)")
    parser.add_argument("--threads", type=int, help="torch threads per process (default 1)")
    parser.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other DemoSettings field, e.g. seen_textures=2",
    )
    parser.add_argument("--out", default="outputs/synthetic", help="results folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    values: dict[str, Any] = dict(SMOKE) if args.smoke else dict(QUICK) if args.quick else {}
    values.update(args.set)
    for key in ("steps", "workers", "threads"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.seeds is not None:
        values["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    values["rows"] = select_rows(args.configs)
    if args.smoke:
        print("smoke run: 2 training steps, so the numbers below mean nothing")
    run_demo(DemoSettings(**values), args.out, show_progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
