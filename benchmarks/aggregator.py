"""Benchmark: cost volume + aggregator + decoder (the class-dependent part) at ViT-B sizes.

Batch 1, 24×24 grid, 2 layers, test mode, random weights, the setting in which CAT-Seg's
own code was timed. Each configuration runs in its own subprocess so peak memory is its own.
Prints a table and writes JSON.

    python benchmarks/aggregator.py [--classes 20 150 847] [--repeats 3] [--precision fp32 bf16]
        [--compile] [--threads 2] [--out benchmarks/results/aggregator.json]

Columns: time (median of repeats, after one warm-up), FLOPs (torch's FlopCounterMode: matmuls
and convolutions), achieved GFLOP/s, the FLOP floor (FLOPs / the matmul rate measured in the
same run and precision) and time / floor; peak RSS of the process and the peak above the RSS
before the call (VmHWM, reset through /proc/self/clear_refs). ``--compile`` adds rows with
``lmseg.aggregation.compile_blocks`` (torch.compile of the per-chunk kernels); the JSON's
``compile_s`` is the first, compiling call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from report import write_report  # noqa: E402  (benchmarks/report.py, beside this script)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc keeps them otherwise), so RSS starts honest."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def matmul_rate(dtype_name: str, size: int = 2048, repeats: int = 5) -> float:
    """Measured GFLOP/s of a large square matmul in this precision (the machine's floor)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def run_one(num_classes: int, exact: bool, precision: str, repeats: int, compile_: bool) -> dict:
    """Time one configuration in this process."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lmseg.aggregation import compile_blocks
    from lmseg.factory import build_model, get_config
    from lmseg.model import ImageFeatures
    from lmseg.runtime import RuntimeOptions

    torch.manual_seed(0)
    model = build_model(get_config("catseg_vitb16")).eval()
    runtime = RuntimeOptions(top_k=None if exact else 256)
    # The benchmark starts from image features: keep the encoder's weights out of RSS.
    del model.vision_language_encoder
    _release_freed_memory()
    width = 768
    with torch.no_grad():
        taps = [torch.randn(1, width, 24, 24), torch.randn(1, width, 24, 24)]
        features = ImageFeatures(
            embedding=torch.randn(1, 512, 24, 24),
            decoder_guidance=model.decoder.prepare_guidance(taps),
            vision_language_embedding=torch.empty(0),
        )
    text = torch.randn(num_classes, 1, 512)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def call() -> torch.Tensor:
        with torch.no_grad(), autocast:
            return model.decode(features, text, runtime)

    with FlopCounterMode(display=False) as counter:  # eager: compiled code is not dispatched
        call()
    flops = counter.get_total_flops()
    compile_s = None
    if compile_:
        compile_blocks(model)
        start = time.perf_counter()
        call()  # compilation
        compile_s = time.perf_counter() - start
    call()  # warm-up
    rss_before = _rss_kib("VmRSS")
    peak_reset = _reset_peak()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    peak = _rss_kib("VmHWM")
    del out
    return {
        "classes": num_classes,
        "mode": "exact" if exact or num_classes <= 256 else "top-256",
        "precision": precision,
        "compiled": compile_,
        "compile_s": compile_s,
        "time_s": statistics.median(times),
        "times_s": times,
        "gflop": flops / 1e9,
        "peak_rss_mb": peak / 1024 if peak_reset else None,
        "peak_above_start_mb": (peak - rss_before) / 1024 if peak_reset else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[20, 150, 847])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true",
                        help="also run with lmseg.aggregation.compile_blocks (torch.compile)")
    parser.add_argument("--out", default="benchmarks/results/aggregator.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config, print JSON
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.one:
        k, exact, precision, compile_ = json.loads(args.one)
        print(json.dumps(run_one(k, exact, precision, args.repeats, compile_)))
        return 0

    configs = []
    for precision in args.precision:
        for k in args.classes:
            for exact in ([False, True] if k > 256 else [True]):
                for compile_ in ([False, True] if args.compile else [False]):
                    configs.append((k, exact, precision, compile_))
    rates = {p: matmul_rate(p) for p in args.precision}
    rows = []
    for config in configs:
        cmd = [sys.executable, __file__, "--one", json.dumps(config), "--repeats", str(args.repeats),
               "--threads", str(args.threads)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode:
            print(result.stderr[-2000:], file=sys.stderr)
            return result.returncode
        row = json.loads(result.stdout.strip().splitlines()[-1])
        row["gflops_per_s"] = row["gflop"] / row["time_s"]
        row["floor_s"] = row["gflop"] / rates[row["precision"]]
        row["time_over_floor"] = row["time_s"] / row["floor_s"]
        rows.append(row)
        print(_format(row), flush=True)
    out = write_report(
        args.out,
        "cost volume + aggregator + decoder, ViT-B sizes, batch 1, 24x24, test mode",
        args.threads,
        rows,
        matmul_gflops_per_s=rates,
    )
    print(f"matmul floor rates (GFLOP/s): {rates}; written {out}")
    return 0


HEADER = (f"{'K':>5} {'mode':>8} {'prec':>5} {'comp':>5} {'time s':>8} {'GFLOP':>8} "
          f"{'GFLOP/s':>8} {'floor s':>8} {'x floor':>7} {'peak MB':>8} {'+MB':>7}")


def _format(row: dict) -> str:
    if not hasattr(_format, "printed"):
        print(HEADER)
        _format.printed = True  # type: ignore[attr-defined]
    nan = float("nan")
    peak = nan if row["peak_rss_mb"] is None else row["peak_rss_mb"]
    above = nan if row["peak_above_start_mb"] is None else row["peak_above_start_mb"]
    return (f"{row['classes']:>5} {row['mode']:>8} {row['precision']:>5} {str(row['compiled']):>5} "
            f"{row['time_s']:>8.2f} {row['gflop']:>8.1f} {row['gflops_per_s']:>8.1f} "
            f"{row['floor_s']:>8.2f} {row['time_over_floor']:>7.2f} {peak:>8.0f} {above:>7.0f}")


if __name__ == "__main__":
    raise SystemExit(main())
