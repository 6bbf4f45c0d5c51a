#!/usr/bin/env python3
"""Prepare PASCAL VOC 2012 labels for VOC-20 and VOC-20b in CAT-Seg's layout.

Input (``VOCtrainval_11-May-2012.tar`` and ``SegmentationClassAug.zip`` under ``<root>``)::

    VOCdevkit/VOC2012/JPEGImages/*.jpg
    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt
    VOCdevkit/VOC2012/SegmentationClassAug/*.png   # 0 = background, 1..20, 255 = boundary

Output::

    VOCdevkit/VOC2012/annotations_detectron2/val/*.png      # VOC-20: background -> 255
    VOCdevkit/VOC2012/annotations_detectron2_bg/val/*.png   # VOC-20b: background -> 20

Classes 1..20 become 0..19, as CAT-Seg's ``datasets/prepare_voc.py``; a label that would be all
ignore is not written (such images drop out of the benchmark, as upstream). Without
``SegmentationClassAug`` the palette PNGs of ``SegmentationClass`` are used: for validation images
they hold the same indices.

Usage: ``python tools/prepare_voc.py [--root DIR] [--splits val]``
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from lmseg.data.datasets import dataset_root, preparation_parser

IGNORE_VALUE = 255
BACKGROUND_INDEX = 20


def voc_lut(*, background: bool) -> np.ndarray:
    """A 256-entry ``uint8`` table: 1..20 -> 0..19; 0 -> 20 (VOC-20b) or 255; the rest -> 255."""
    lut = np.full(256, IGNORE_VALUE, dtype=np.uint8)
    lut[1:21] = np.arange(20, dtype=np.uint8)
    if background:
        lut[0] = BACKGROUND_INDEX
    return lut


_LUTS = {False: voc_lut(background=False), True: voc_lut(background=True)}


def convert_voc_label(mask: np.ndarray, *, background: bool) -> np.ndarray:
    """Map a (H, W) VOC class-index mask to VOC-20 (``background=False``) or VOC-20b ids."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"expected a (H, W) uint8 index mask, got {mask.dtype} {mask.shape}")
    return _LUTS[background][mask]


def main(argv: list[str] | None = None) -> int:
    parser = preparation_parser(__doc__)
    parser.add_argument("--splits", nargs="+", default=["val"], choices=["val", "train"])
    parser.add_argument(
        "--mask-dir",
        default=None,
        help="mask folder under VOC2012 (default: SegmentationClassAug, else SegmentationClass)",
    )
    args = parser.parse_args(argv)

    voc = dataset_root(args.root) / "VOCdevkit" / "VOC2012"
    if args.mask_dir is not None:
        mask_dir = voc / args.mask_dir
    elif (voc / "SegmentationClassAug").is_dir():
        mask_dir = voc / "SegmentationClassAug"
    else:
        mask_dir = voc / "SegmentationClass"
    if not mask_dir.is_dir():
        raise SystemExit(
            f"error: VOC 2012 masks not found: {mask_dir}\n"
            "Unpack VOCtrainval_11-May-2012.tar (and SegmentationClassAug.zip) under "
            f"{voc.parent.parent} (see docs/datasets.md)."
        )
    for split in args.splits:
        id_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not id_file.is_file():
            raise SystemExit(f"error: VOC 2012 split list not found: {id_file}")
        ids = id_file.read_text().split()
        outputs = {
            False: voc / "annotations_detectron2" / split,
            True: voc / "annotations_detectron2_bg" / split,
        }
        for out in outputs.values():
            out.mkdir(parents=True, exist_ok=True)
        written = {False: 0, True: 0}
        for image_id in ids:
            src = mask_dir / f"{image_id}.png"
            if not src.is_file():
                raise SystemExit(f"error: mask of {split} image {image_id} not found: {src}")
            with Image.open(src) as img:
                mask = np.array(img)  # palette PNGs give indices: no colour conversion
            for background, out in outputs.items():
                label = convert_voc_label(mask, background=background)
                if (label == IGNORE_VALUE).all():
                    continue  # as upstream: an all-ignore label is not written
                Image.fromarray(label).save(out / f"{image_id}.png")
                written[background] += 1
        print(
            f"{split}: {len(ids)} images from {mask_dir.name}; wrote {written[False]} VOC-20 "
            f"labels to {outputs[False]} and {written[True]} VOC-20b labels to {outputs[True]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
