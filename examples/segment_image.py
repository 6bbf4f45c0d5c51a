"""Segment an image with any class list, offline.

Without arguments it draws a small sample scene, builds the tiny random-weight LMSeg and writes
a colour overlay with a legend. Random weights give meaningless labels: this shows the API and
the output format. With real weights (``--model lmseg_vitb16_samb --clip-pretrained openai
--sam-checkpoint sam_vit_b_01ec64.pth`` or a converted CAT-Seg checkpoint) the same lines
segment for real.

    python examples/segment_image.py [IMAGE] [--classes "sky,grass,ball"] [--model lmseg_tiny]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see docs/performance.md

import numpy as np
from PIL import Image, ImageDraw

import lmseg
from lmseg.segmenter import Segmenter
from lmseg.visualize import overlay


def sample_scene(path: Path) -> Path:
    """Draw a 320x240 scene: sky, grass, a red ball and a grey road."""
    image = Image.new("RGB", (320, 240), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 150, 320, 240], fill=(70, 150, 60))
    draw.polygon([(130, 240), (190, 240), (170, 150), (150, 150)], fill=(120, 120, 120))
    draw.ellipse([40, 160, 100, 220], fill=(210, 30, 40))
    image.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", help="image file (default: a drawn sample scene)")
    parser.add_argument("--classes", default="sky,grass,ball,road")
    parser.add_argument("--model", default="lmseg_tiny", help=", ".join(lmseg.list_models()))
    parser.add_argument("--checkpoint", help="lmseg .safetensors checkpoint")
    parser.add_argument("--out", default="outputs/segment_image")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = Path(args.image) if args.image else sample_scene(out / "sample.png")
    classes = [c.strip() for c in args.classes.split(",")]

    # The three-line API.
    model = lmseg.create_model(args.model, pretrained=args.checkpoint)
    segmenter = Segmenter(model)
    start = time.perf_counter()
    labels = segmenter.predict(image, classes).labels
    elapsed = time.perf_counter() - start

    pixels = np.asarray(Image.open(image).convert("RGB"))
    overlay(pixels, labels, classes).save(out / "overlay.png")
    areas = {classes[i]: int((labels == i).sum()) for i in range(len(classes))}
    print(f"model {args.model}: {labels.shape[1]}x{labels.shape[0]} label map in {elapsed:.2f} s")
    print("pixels per class:", areas)
    print(f"overlay written to {out / 'overlay.png'}")
    if args.checkpoint is None and args.model.endswith("_tiny"):
        print("note: random weights -- the labels are meaningless until real weights are loaded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
