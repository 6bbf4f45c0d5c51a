#!/usr/bin/env python3
"""Prepare ADE20K-150 (SceneParsing, ADEChallengeData2016) labels in CAT-Seg's layout.

Input (``ADEChallengeData2016.zip`` unzipped under ``<root>``)::

    ADEChallengeData2016/images/validation/*.jpg
    ADEChallengeData2016/annotations/validation/*.png   # 0 = other, 1..150 = classes

Output::

    ADEChallengeData2016/annotations_detectron2/validation/*.png   # 0..149, 255 = ignore

Every value is shifted down by one in 8 bits, so 0 ("other") wraps to 255, as CAT-Seg's
``datasets/prepare_ade20k_150.py``.

Usage: ``python tools/prepare_ade20k_150.py [--root DIR] [--splits validation training]``
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from lmseg.data.datasets import dataset_root, preparation_parser

SPLITS = ("validation", "training")


def convert_ade150_label(label: np.ndarray) -> np.ndarray:
    """Map a (H, W) ``uint8`` SceneParsing label (0..150) to 0..149 with 0 -> 255."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"expected a (H, W) uint8 label, got {label.dtype} {label.shape}")
    return label - np.uint8(1)  # uint8 arithmetic wraps 0 to 255


def main(argv: list[str] | None = None) -> int:
    parser = preparation_parser(__doc__)
    parser.add_argument("--splits", nargs="+", default=["validation"], choices=SPLITS)
    args = parser.parse_args(argv)

    base = dataset_root(args.root) / "ADEChallengeData2016"
    for split in args.splits:
        src_dir = base / "annotations" / split
        if not src_dir.is_dir():
            raise SystemExit(
                f"error: ADE20K-150 annotations not found: {src_dir}\n"
                "Download http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip "
                f"and unzip it into {base.parent} (see docs/datasets.md)."
            )
        dst_dir = base / "annotations_detectron2" / split
        dst_dir.mkdir(parents=True, exist_ok=True)
        files = sorted(src_dir.glob("*.png"))
        for src in files:
            with Image.open(src) as img:
                label = np.array(img)
            Image.fromarray(convert_ade150_label(label)).save(dst_dir / src.name)
        print(f"{split}: wrote {len(files)} labels to {dst_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
