"""Segment an image with a benchmark vocabulary and its shipped attribute prompts.

    python examples/segment_vocabulary.py [IMAGE] [--vocabulary ade150] [--sliding-window]

Uses the tiny random-weight model (meaningless labels) unless ``--checkpoint`` is given.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
from PIL import Image

import lmseg
from lmseg.visualize import overlay
from lmseg.vocabularies import list_vocabularies, load_vocabulary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?")
    parser.add_argument("--vocabulary", default="ade150", choices=list_vocabularies())
    parser.add_argument("--model", default="lmseg_tiny")
    parser.add_argument("--checkpoint")
    parser.add_argument("--sliding-window", action="store_true")
    parser.add_argument("--out", default="outputs/segment_vocabulary")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.image is None:
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (180, 240, 3), dtype=np.uint8)).save(out / "noise.png")
        args.image = str(out / "noise.png")
    classes = load_vocabulary(args.vocabulary)
    segmenter = lmseg.Segmenter(lmseg.create_model(args.model, pretrained=args.checkpoint),
                                sliding_window=args.sliding_window)
    labels = segmenter.predict(args.image, classes).labels
    pixels = np.asarray(Image.open(args.image).convert("RGB"))
    overlay(pixels, labels, classes).save(out / "overlay.png")
    present = [classes[i] for i in np.unique(labels)]
    print(f"{args.vocabulary}: {len(classes)} classes, prompts from the shipped bank "
          f"(P={segmenter.model.num_prompts}); {len(present)} present; overlay in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
