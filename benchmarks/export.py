"""Benchmark: the exported ONNX pair in onnxruntime (CPU) against PyTorch eager, same run.

For each model (random weights; ViT-B sizes without pretrained weights): export with
``lmseg.export.export_model``, then on the same inputs (one random 480×640 image, random text
embeddings ``(K, P, D)``) time

- the image half: ``model.encode_image`` vs ``image_encoder.onnx``;
- the class half per K: PyTorch eager as users run it (exact, default chunking), PyTorch eager
  with the export's runtime (exact, unchunked: what the graph computes), and
  ``class_decoder.onnx``;

and report the largest logit difference of the ONNX pair (its own image features fed to its class
graph) against eager PyTorch, the median of ``--repeats`` calls after a warm-up, and the peak
resident memory of the first call above the process's memory before it (VmHWM, reset through
/proc/self/clear_refs). ``--synthetic-steps N`` also trains the synthetic world's
``attributes+fusion`` model (as ``benchmarks/bf16_agreement.py``) and reports the arg-max
agreement of its evaluation scenes between onnxruntime and PyTorch. Prints tables, writes JSON.

    python benchmarks/export.py [--models lmseg_tiny catseg_tiny catseg_vitb16 lmseg_vitb16_samb]
        [--classes 5 150 847] [--vitb-classes 150] [--repeats 2] [--threads 2]
        [--out benchmarks/results/export.json]
    python benchmarks/export.py --models --synthetic-steps 200 --synthetic-seeds 0 1 \
        --out benchmarks/results/export_synthetic.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from report import write_report  # noqa: E402  (benchmarks/report.py, beside this script)

IMAGE_SIZE = (480, 640)


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _first_call(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, +MiB of peak RSS above the RSS before the call)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    before = _rss_mib("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, _rss_mib("VmHWM") - before


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float, float, float]:
    """(result, median seconds of ``repeats`` calls after the first, first-call seconds, +MiB)."""
    result, first, peak = _first_call(fn)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times) if times else first, first, peak


def bench_model(name: str, classes: list[int], repeats: int, threads: int) -> list[dict]:
    import numpy as np
    import onnxruntime as ort
    import torch

    from lmseg import create_model
    from lmseg.export import EXPORT_RUNTIME, FEATURES, export_model
    from lmseg.runtime import RuntimeOptions

    torch.manual_seed(0)
    model = create_model(name).eval()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lmseg_export_") as folder:
        start = time.perf_counter()
        manifest = export_model(model, folder)
        export_s = time.perf_counter() - start
        sizes = {k: (Path(folder) / g["file"]).stat().st_size / 2**20 for k, g in manifest["graphs"].items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        sessions = {
            key: ort.InferenceSession(str(Path(folder) / g["file"]), options, providers=["CPUExecutionProvider"])
            for key, g in manifest["graphs"].items()
        }
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(1, 3, *IMAGE_SIZE, generator=generator)
        exact = RuntimeOptions(top_k=None)
        with torch.no_grad():
            features, torch_s, torch_first, torch_mb = _timed(lambda: model.encode_image(images, exact), repeats)
            exported, ort_s, ort_first, ort_mb = _timed(
                lambda: sessions["image_encoder"].run(None, {"images": images.numpy()}), repeats
            )
            expected = [features.embedding, *features.decoder_guidance]
            feature_difference = max(float(np.abs(e.numpy() - x).max()) for e, x in zip(expected, exported, strict=True))
            rows.append({
                "model": name, "half": "image", "classes": None, "export_s": export_s,
                "onnx_mb": sizes["image_encoder"], "torch_s": torch_s, "torch_mb": torch_mb,
                "torch_unchunked_s": None, "torch_unchunked_mb": None,
                "onnxruntime_s": ort_s, "onnxruntime_mb": ort_mb,
                "torch_first_s": torch_first, "onnxruntime_first_s": ort_first,
                "max_abs_difference": feature_difference,
            })
            print(_format(rows[-1]), flush=True)
            inputs = dict(zip(FEATURES, exported, strict=True))
            for k in classes:
                text = torch.randn(k, model.num_prompts, model.embed_dim, generator=generator)
                feeds = {**inputs, "text_embeddings": text.numpy()}
                logits, torch_s, torch_first, torch_mb = _timed(
                    lambda t=text: model.decode(features, t, exact), repeats
                )
                _, plain_s, _, plain_mb = _timed(
                    lambda t=text: model.decode(features, t, EXPORT_RUNTIME), repeats
                )
                out, ort_s, ort_first, ort_mb = _timed(
                    lambda f=feeds: sessions["class_decoder"].run(None, f)[0], repeats
                )
                rows.append({
                    "model": name, "half": "class", "classes": k, "export_s": export_s,
                    "onnx_mb": sizes["class_decoder"], "torch_s": torch_s, "torch_mb": torch_mb,
                    "torch_unchunked_s": plain_s, "torch_unchunked_mb": plain_mb,
                    "onnxruntime_s": ort_s, "onnxruntime_mb": ort_mb,
                    "torch_first_s": torch_first, "onnxruntime_first_s": ort_first,
                    "max_abs_difference": float(np.abs(out - logits.numpy()).max()),
                    "max_abs_logit": float(logits.abs().max()),
                    "argmax_agreement": float((out.argmax(1) == logits.numpy().argmax(1)).mean()),
                })
                print(_format(rows[-1]), flush=True)
                del logits, out
    return rows


def synthetic_agreement(steps: int, seed: int) -> list[dict]:
    """Train the demo's attributes+fusion model, export it, compare both runtimes' labels."""
    import numpy as np
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    from lmseg.eval.metrics import SegmentationMetrics
    from lmseg.export import FEATURES, export_model
    from lmseg.synthetic import demo
    from lmseg.synthetic.world import IGNORE_VALUE

    settings = demo.DemoSettings(steps=steps, seeds=(seed,))
    world = demo.make_world(settings)
    row = demo.ROWS["attributes+fusion"]
    model, _ = demo.train_row(world, row, settings, seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lmseg_export_") as folder:
        manifest = export_model(model, folder)
        sessions = {
            key: ort.InferenceSession(str(Path(folder) / g["file"]), providers=["CPUExecutionProvider"])
            for key, g in manifest["graphs"].items()
        }
        for set_name, (ids, images, labels) in demo.eval_sets(settings, world).items():
            vocab = [0, *ids]
            lookup = torch.full((len(world.classes),), IGNORE_VALUE, dtype=torch.int64)
            lookup[torch.tensor(vocab)] = torch.arange(len(vocab))
            metrics = {"torch": SegmentationMetrics(len(vocab), IGNORE_VALUE),
                       "onnxruntime": SegmentationMetrics(len(vocab), IGNORE_VALUE)}
            agree = total = 0
            difference, low, high = 0.0, float("inf"), float("-inf")
            with torch.no_grad():
                text = demo.text_embeddings(model, world, vocab, row.prompts)
                for start in range(0, len(images), 16):
                    x = images[start : start + 16]
                    reference = model(x, text, demo.EXACT)
                    features = sessions["image_encoder"].run(None, {"images": x.numpy()})
                    feeds = {**dict(zip(FEATURES, features, strict=True)), "text_embeddings": text.numpy()}
                    exported = torch.from_numpy(sessions["class_decoder"].run(None, feeds)[0])
                    difference = max(difference, float((exported - reference).abs().max()))
                    low, high = min(low, float(reference.min())), max(high, float(reference.max()))
                    target = lookup[labels[start : start + 16]]
                    predictions = {}
                    for key, logits in (("torch", reference), ("onnxruntime", exported)):
                        up = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
                        predictions[key] = up.argmax(dim=1)
                        metrics[key].update(predictions[key], target)
                    agree += int((predictions["torch"] == predictions["onnxruntime"]).sum())
                    total += predictions["torch"].numel()
            miou = {key: float(np.nanmean(m.compute()["IoU"][1:])) for key, m in metrics.items()}
            rows.append({
                "seed": seed, "steps": steps, "set": set_name, "classes": len(vocab), "pixels": total,
                "argmax_agreement": agree / total, "max_abs_logit_difference": difference,
                "logit_range": high - low,
                "mIoU_torch": miou["torch"], "mIoU_onnxruntime": miou["onnxruntime"],
            })
            print(f"synthetic seed {seed} {set_name}: K={len(vocab)} agreement "
                  f"{100 * agree / total:.3f}% max |dlogit| {difference:.2e} (range {high - low:.1f}) "
                  f"mIoU {miou['torch']:.2f} / {miou['onnxruntime']:.2f}", flush=True)
    return rows


def _format(r: dict) -> str:
    def num(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    return (f"{r['model']:>18} {r['half']:>5} {num(r['classes'], 'd') if r['classes'] else '-':>4} "
            f"{num(r['torch_s'], '.3f'):>8} {num(r['torch_unchunked_s'], '.3f'):>8} "
            f"{num(r['onnxruntime_s'], '.3f'):>8} {num(r['torch_mb'], '.0f'):>7} "
            f"{num(r['torch_unchunked_mb'], '.0f'):>7} {num(r['onnxruntime_mb'], '.0f'):>7} "
            f"{r['max_abs_difference']:>10.2e}")


HEADER = (f"{'model':>18} {'half':>5} {'K':>4} {'torch s':>8} {'unchunk':>8} {'ort s':>8} "
          f"{'torch+MB':>7} {'unch+MB':>7} {'ort+MB':>7} {'max|diff|':>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["lmseg_tiny", "catseg_tiny", "catseg_vitb16",
                                                        "lmseg_vitb16_samb"])
    parser.add_argument("--classes", type=int, nargs="+", default=[5, 150, 847],
                        help="K for the tiny models")
    parser.add_argument("--vitb-classes", type=int, nargs="+", default=[150], help="K for ViT-B models")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--synthetic-steps", type=int, default=0, help="0: skip the trained model")
    parser.add_argument("--synthetic-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="benchmarks/results/export.json")
    args = parser.parse_args(argv)

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    print(HEADER, flush=True)
    rows: list[dict] = []
    synthetic: list[dict] = []

    def report() -> Path:  # after every model: a long run that is stopped keeps what it measured
        return write_report(
            args.out,
            "exported ONNX pair in onnxruntime (CPU) vs PyTorch eager",
            args.threads,
            rows,
            image_size=list(IMAGE_SIZE),
            repeats=args.repeats,
            onnxruntime=onnxruntime.__version__,
            synthetic=synthetic,
        )

    for name in args.models:
        classes = args.classes if name.endswith("_tiny") else args.vitb_classes
        rows += bench_model(name, classes, args.repeats, args.threads)
        report()
    for seed in args.synthetic_seeds if args.synthetic_steps else []:
        synthetic += synthetic_agreement(args.synthetic_steps, seed)
    print(f"written {report()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
