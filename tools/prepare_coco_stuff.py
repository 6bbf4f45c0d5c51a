#!/usr/bin/env python3
"""Prepare COCO-Stuff (171 classes) labels in CAT-Seg's layout.

Input (the official downloads, unzipped under ``<root>/coco-stuff/``)::

    coco-stuff/images/{train2017,val2017}/*.jpg        # COCO 2017 images
    coco-stuff/annotations/{train2017,val2017}/*.png   # stuffthingmaps_trainval2017.zip

Output::

    coco-stuff/annotations_detectron2/{train2017,val2017}/*.png

The stuffthingmaps hold 0-based COCO category ids (0..181, 255 = unlabeled). COCO's 182 ids
include 11 thing ids that were never annotated; the remaining 171 are renumbered 0..170 in id
order and everything else becomes 255, as CAT-Seg's ``datasets/prepare_coco_stuff.py``.

Usage: ``python tools/prepare_coco_stuff.py [--root DIR] [--splits val2017] [--workers 8]``
"""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from lmseg.data.datasets import dataset_root, preparation_parser

# 0-based ids of COCO's unused thing categories (1-based 12, 26, 29, 30, 45, 66, 68, 69, 71, 83,
# 91: "street sign", "hat", "shoe", ...), absent from COCO-Stuff's 171-class label space.
UNUSED_COCO_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
NUM_CLASSES = 171
IGNORE_VALUE = 255
SPLITS = ("train2017", "val2017")


def coco_stuff_lut() -> np.ndarray:
    """A 256-entry ``uint8`` table mapping stuffthingmap ids to 171-class train ids (else 255)."""
    used = [i for i in range(182) if i not in UNUSED_COCO_IDS]
    assert len(used) == NUM_CLASSES
    lut = np.full(256, IGNORE_VALUE, dtype=np.uint8)
    lut[used] = np.arange(NUM_CLASSES, dtype=np.uint8)
    return lut


_LUT = coco_stuff_lut()


def convert_coco_stuff_label(label: np.ndarray) -> np.ndarray:
    """Map a (H, W) ``uint8`` stuffthingmap to 171-class train ids (255 = ignore)."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"expected a (H, W) uint8 label, got {label.dtype} {label.shape}")
    return _LUT[label]


def convert_file(src: Path, dst: Path) -> None:
    with Image.open(src) as img:
        label = np.array(img)
    Image.fromarray(convert_coco_stuff_label(label)).save(dst)


def _convert_pair(pair: tuple[Path, Path]) -> None:
    convert_file(*pair)


def main(argv: list[str] | None = None) -> int:
    parser = preparation_parser(__doc__)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    args = parser.parse_args(argv)

    base = dataset_root(args.root) / "coco-stuff"
    for split in args.splits:
        src_dir = base / "annotations" / split
        if not src_dir.is_dir():
            raise SystemExit(
                f"error: COCO-Stuff annotations not found: {src_dir}\n"
                "Download stuffthingmaps_trainval2017.zip from https://github.com/nightrome/cocostuff"
                f" and unzip it so that {src_dir} holds the PNG maps (see docs/datasets.md)."
            )
        if not (base / "images" / split).is_dir():
            print(
                f"warning: {base / 'images' / split} is missing; the labels alone are not loadable",
                file=sys.stderr,
            )
        dst_dir = base / "annotations_detectron2" / split
        dst_dir.mkdir(parents=True, exist_ok=True)
        pairs = [(p, dst_dir / p.name) for p in sorted(src_dir.glob("*.png"))]
        if args.workers > 1:
            with ProcessPoolExecutor(args.workers) as pool:
                list(pool.map(_convert_pair, pairs, chunksize=64))
        else:
            for pair in pairs:
                _convert_pair(pair)
        print(f"{split}: wrote {len(pairs)} labels to {dst_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
