"""Benchmark: does bf16 autocast change the segmentation of a *trained* model?

Random weights give near-tied logits, so their arg-max agreement says little. This trains the
synthetic world's LMSeg (``lmseg.synthetic``: the README's demo model, ``attributes + fusion``,
every weight trained from scratch, about a minute and a half on two cores), then segments its
fixed evaluation scenes in fp32 and under bf16 autocast and reports the share of pixels whose
arg-max agrees, the largest logit difference and both mIoUs. Prints a table and writes JSON.

    python benchmarks/bf16_agreement.py [--steps 200] [--seeds 0 1] [--out benchmarks/results/bf16_agreement.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from report import write_report  # noqa: E402  (benchmarks/report.py, beside this script)


def agreement(seed: int, steps: int) -> list[dict]:
    """Train one demo model and compare fp32 and bf16 on both evaluation sets."""
    import torch

    from lmseg.synthetic import demo

    settings = demo.DemoSettings(steps=steps, seeds=(seed,))
    world = demo.make_world(settings)
    row = demo.ROWS["attributes+fusion"]
    model, _ = demo.train_row(world, row, settings, seed)
    rows = []
    for name, (ids, images, labels) in demo.eval_sets(settings, world).items():
        vocab = [0, *ids]
        with torch.no_grad():
            text = demo.text_embeddings(model, world, vocab, row.prompts)
            full = model(images, text, demo.EXACT)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = model(images, text, demo.EXACT).float()
        # The demo's own evaluation (upsampling, arg-max, mIoU) in both precisions.
        fp32 = demo.evaluate(model, world, ids, images, labels, row.prompts)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = demo.evaluate(model, world, ids, images, labels, row.prompts)
        same = fp32["predictions"] == bf16["predictions"]
        rows.append({
            "seed": seed,
            "set": name,
            "classes": len(vocab),
            "pixels": same.numel(),
            "argmax_agreement": same.float().mean().item(),
            "max_abs_logit_difference": (full - low).abs().max().item(),
            "logit_range": (full.max() - full.min()).item(),
            "mIoU_fp32": fp32["mIoU"],  # percent
            "mIoU_bf16": bf16["mIoU"],
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/bf16_agreement.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows = [r for seed in args.seeds for r in agreement(seed, args.steps)]
    print(f"{'seed':>4} {'set':>7} {'K':>3} {'pixels':>8} {'agree %':>8} {'max |dlogit|':>12} "
          f"{'logit range':>11} {'mIoU fp32':>9} {'mIoU bf16':>9}")
    for r in rows:
        print(f"{r['seed']:>4} {r['set']:>7} {r['classes']:>3} {r['pixels']:>8} "
              f"{100 * r['argmax_agreement']:>8.3f} {r['max_abs_logit_difference']:>12.4f} "
              f"{r['logit_range']:>11.2f} {r['mIoU_fp32']:>9.2f} {r['mIoU_bf16']:>9.2f}")
    out = write_report(
        args.out,
        "fp32 vs bf16 autocast on the trained synthetic-world LMSeg",
        args.threads,
        rows,
        steps=args.steps,
    )
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
