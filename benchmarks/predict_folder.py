"""Benchmark: ``lmseg.batch.predict_images`` over a folder, by worker count and batch size.

Writes a folder of random JPEGs (decoding real JPEGs is part of the cost), then times a full run
(listing excluded, model built beforehand, text embedding included) for each configuration into
a fresh output folder, and reports images per second. Prints a table and writes JSON.

    python benchmarks/predict_folder.py [--model lmseg_tiny] [--images 48] [--size 480 640]
        [--workers 0 2] [--batch-size 1 4] [--outputs overlay,labels] [--threads 2]
        [--device auto] [--out benchmarks/results/predict_folder.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from report import write_report  # noqa: E402  (benchmarks/report.py, beside this script)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lmseg_tiny")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--outputs", default="overlay,labels")
    parser.add_argument("--classes", type=int, default=20, help="K (names class0, class1, ...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results/predict_folder.json")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    import lmseg
    from lmseg.batch import find_images, parse_outputs, predict_images

    torch.set_num_threads(args.threads)
    segmenter = lmseg.Segmenter(lmseg.create_model(args.model), device=args.device)
    classes = [f"class{i}" for i in range(args.classes)]
    outputs = parse_outputs(args.outputs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.images):
            pixels = rng.integers(0, 256, (*args.size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
        images = find_images([folder])
        segmenter.text_embeddings(classes)  # the embedding cache is not what is measured
        for workers in args.workers:
            for batch_size in args.batch_size:
                out = Path(tmp) / f"out_w{workers}_b{batch_size}"
                start = time.perf_counter()
                report = predict_images(segmenter, images, classes, out, outputs=outputs,
                                        batch_size=batch_size, workers=workers, progress=False)
                seconds = time.perf_counter() - start
                assert report.written == args.images and report.ok
                rows.append({"workers": workers, "batch_size": batch_size, "seconds": seconds,
                             "images_per_s": args.images / seconds})

    print(f"{args.model}, {args.images} images of {args.size[0]}x{args.size[1]}, K={args.classes}, "
          f"outputs {','.join(outputs)}, {args.threads} threads, device {segmenter.device}")
    print(f"{'workers':>8} {'batch':>6} {'seconds':>8} {'images/s':>9}")
    for row in rows:
        print(f"{row['workers']:>8} {row['batch_size']:>6} {row['seconds']:>8.2f} "
              f"{row['images_per_s']:>9.2f}")
    path = write_report(args.out, "predict_folder", args.threads, rows, model=args.model,
                        images=args.images, size=args.size, classes=args.classes,
                        outputs=list(outputs), device=str(segmenter.device))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
