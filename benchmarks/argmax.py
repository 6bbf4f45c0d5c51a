"""Benchmark: label maps (upsample per-class maps to the image size + arg-max), previous vs tiled.

``previous`` is the implementation before :mod:`lmseg.label_maps` (class chunks of 64 upsampled
to the full image, the previous chunk still referenced while the next is computed); ``tiled`` is
:func:`lmseg.label_maps.upsampled_argmax`. Both run in the same invocation on the same maps, each
configuration in its own subprocess so the peak memory is its own: resident memory above the
process's before the call (VmHWM, reset through /proc/self/clear_refs). Labels of the two are
compared in every row (they must be equal).

Maps: ``model`` are the probabilities of ``lmseg_tiny`` (random weights, K random text
embeddings) for one 480×640 image, whole-image (48×48) or sliding-window (640×640) inference;
``noise`` are i.i.d. uniform maps, the worst case (no class can be skipped anywhere). ``keep``
rows also fill the ``(K, H, W)`` probabilities (``return_probabilities=True``).

    python benchmarks/argmax.py [--quick] [--threads 1] [--repeats 1]
        [--out benchmarks/results/argmax.json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
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

# (maps, K, H, W, keep)
ROWS = [
    ("model-whole", 2000, 3000, 4000, False),
    ("model-whole", 150, 3000, 4000, False),
    ("model-sliding", 150, 3000, 4000, False),
    ("model-whole", 2000, 1000, 1000, False),
    ("model-whole", 150, 1000, 1000, False),
    ("noise", 150, 1000, 1000, False),
    ("model-whole", 150, 1000, 1000, True),
]
QUICK_ROWS = [("model-whole", 150, 1000, 1000, False), ("noise", 20, 500, 500, False)]


def previous_upsampled_argmax(probabilities, size, *, keep=None):  # noqa: ANN001, ANN201
    """The implementation before lmseg.label_maps, verbatim (for the comparison only)."""
    import torch
    import torch.nn.functional as F

    labels = torch.zeros(size, dtype=torch.int64)
    best = torch.full(size, -1.0)
    start = 0
    for part in probabilities:
        up = F.interpolate(part[None], size=size, mode="bilinear", align_corners=False)[0]
        if start == 0:
            labels, best = labels.to(up.device), best.to(up.device)
        value, index = up.max(dim=0)
        better = value > best
        best = torch.where(better, value, best)
        labels = torch.where(better, index + start, labels)
        if keep is not None:
            keep[start : start + part.shape[0]] = up
        start += part.shape[0]
    return labels


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _release_freed_memory() -> None:
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def make_maps(kind: str, num_classes: int):  # noqa: ANN201
    """``(K, h', w')`` float32 maps of the row's kind (seeded)."""
    import warnings

    import torch

    import lmseg
    from lmseg.segmenter import Segmenter

    torch.manual_seed(0)
    if kind == "noise":
        return torch.rand(num_classes, 48, 48)
    warnings.simplefilter("ignore")
    model = lmseg.create_model("lmseg_tiny")
    text = torch.nn.functional.normalize(
        torch.randn(num_classes, model.num_prompts, model.embed_dim), dim=-1
    )
    image = torch.rand(3, 480, 640)
    with torch.no_grad():
        return Segmenter(model)._probabilities(image, text, kind == "model-sliding")


def run_one(kind: str, num_classes: int, height: int, width: int, keep: bool, method: str,
            repeats: int) -> dict:
    import torch

    from lmseg.label_maps import upsampled_argmax

    maps = make_maps(kind, num_classes).contiguous()
    buffer = torch.empty(num_classes, height, width) if keep else None
    if buffer is not None:
        buffer.fill_(0)  # touch its pages now: the buffer is the caller's, not the method's
    _release_freed_memory()

    def call() -> torch.Tensor:
        if method == "previous":
            return previous_upsampled_argmax(maps.split(64), (height, width), keep=buffer)
        return upsampled_argmax(maps, (height, width), keep=buffer)

    rss_before = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        labels = call()
        times.append(time.perf_counter() - start)
        if len(times) < repeats:
            del labels
    peak = _status_mib("VmHWM")
    digest = hashlib.sha256(labels.cpu().numpy().tobytes()).hexdigest()
    return {
        "maps": kind,
        "maps_size": list(maps.shape[1:]),
        "classes": num_classes,
        "size": [height, width],
        "megapixels": height * width / 1e6,
        "keep": keep,
        "method": method,
        "time_s": statistics.median(times),
        "times_s": times,
        "peak_above_start_mb": peak - rss_before,
        "label_map_mb": height * width * 8 / 2**20,
        "labels_digest": digest,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small rows (a smoke run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/argmax.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config, print JSON
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(*json.loads(args.one), repeats=args.repeats)))
        return 0

    results = []
    print(f"{'maps':>13} {'h x w':>9} {'K':>5} {'H x W':>11} {'keep':>5} {'method':>8} "
          f"{'time s':>8} {'+MB':>7} {'labels MB':>9}")
    for kind, k, height, width, keep in QUICK_ROWS if args.quick else ROWS:
        digests = set()
        for method in ("previous", "tiled"):
            config = json.dumps([kind, k, height, width, keep, method])
            cmd = [sys.executable, __file__, "--one", config, "--threads", str(args.threads),
                   "--repeats", str(args.repeats)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                print(done.stderr[-2000:], file=sys.stderr)
                return done.returncode
            row = json.loads(done.stdout.strip().splitlines()[-1])
            digests.add(row.pop("labels_digest"))
            results.append(row)
            h, w = row["maps_size"]
            print(f"{kind:>13} {f'{h}x{w}':>9} {k:>5} {f'{height}x{width}':>11} {str(keep):>5} "
                  f"{method:>8} {row['time_s']:>8.2f} {row['peak_above_start_mb']:>7.0f} "
                  f"{row['label_map_mb']:>9.0f}", flush=True)
        if len(digests) != 1:
            print(f"labels differ between the methods for {kind}, K = {k}", file=sys.stderr)
            return 1
    out = write_report(args.out, "label maps: upsample + arg-max, previous vs tiled", args.threads,
                       results)
    print(f"labels equal in every row; written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
