"""Benchmark: the full model per image (CLIP + SAM + fusion + aggregator + decoder), by block.

Whole-image and sliding-window inference (CAT-Seg's 640 px, 384-px windows, overlap 1/3, plus a
global view, all five crops in one batch), random weights, batch 1. Prints a table with the time
per image and where it goes (forward hooks on each block), and writes JSON.

    python benchmarks/model.py [--models lmseg_tiny catseg_tiny lmseg_vitb16_samb catseg_vitb16]
        [--classes 20 150] [--repeats 2] [--precision fp32] [--out benchmarks/results/model.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from report import write_report  # noqa: E402  (benchmarks/report.py, beside this script)

BLOCKS = (
    "vision_language_encoder",
    "spatial_encoder",
    "spatial_adapter",
    "fusion",
    "cost_volume",
    "aggregator",
    "decoder",
)


def profile_model(name: str, classes: int, sliding: bool, repeats: int, precision: str) -> dict:
    import torch

    import lmseg
    from lmseg.segmenter import Segmenter

    torch.manual_seed(0)
    model = lmseg.create_model(name, pretrained=False)
    times: dict[str, float] = defaultdict(float)
    for block in BLOCKS:
        module = getattr(model, block, None)
        if module is None:
            continue

        def pre(mod, args, block=block):  # noqa: ANN001
            mod._lmseg_start = time.perf_counter()

        def post(mod, args, out, block=block):  # noqa: ANN001
            times[block] += time.perf_counter() - mod._lmseg_start

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)
    segmenter = Segmenter(model, precision=precision)
    text = torch.randn(classes, model.num_prompts, model.embed_dim)
    image = torch.rand(3, 480, 640)
    def probabilities() -> list[torch.Tensor]:
        """Per-class probabilities at model resolution (before resizing to the image)."""
        logits = segmenter._logits([image], text, sliding)[0]
        return list(segmenter._probability_chunks(logits, (480, 640), sliding))

    with torch.no_grad():
        probabilities()  # warm-up
    times.clear()
    totals = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            probabilities()
        totals.append(time.perf_counter() - start)
    per_block = {k: v / repeats for k, v in times.items()}
    return {
        "model": name,
        "classes": classes,
        "mode": "sliding" if sliding else "whole",
        "precision": precision,
        "time_s": statistics.median(totals),
        "blocks_s": per_block,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lmseg_tiny", "catseg_tiny", "lmseg_vitb16_samb", "catseg_vitb16"])
    parser.add_argument("--classes", type=int, nargs="+", default=[20, 150])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--out", default="benchmarks/results/model.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    header = f"{'model':18s} {'K':>4} {'mode':>7} {'time s':>7}  " + " ".join(f"{b:>11s}" for b in BLOCKS)
    print(header)
    for name in args.models:
        for k in args.classes:
            for sliding in (False, True):
                row = profile_model(name, k, sliding, args.repeats, args.precision)
                rows.append(row)
                cells = " ".join(f"{row['blocks_s'].get(b, float('nan')):>11.3f}" for b in BLOCKS)
                print(f"{name:18s} {k:>4} {row['mode']:>7} {row['time_s']:>7.2f}  {cells}", flush=True)
    out = write_report(
        args.out,
        "full model per 640x480 image, random weights, batch 1 (sliding: 5 crops)",
        args.threads,
        rows,
    )
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
