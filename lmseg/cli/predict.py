"""``lmseg predict``: segment images and write colour overlays."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmseg.cli.common import (
    add_model_arguments,
    add_runtime_arguments,
    model_from_args,
    runtime_from_args,
)

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``predict`` command to an argparse sub-parsers object."""
    p = subparsers.add_parser("predict", help="segment images and write colour overlays")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--classes", help="comma-separated class names")
    p.add_argument("--vocabulary", help="a shipped vocabulary (ade150, ade847, pc59, ...)")
    add_model_arguments(p)
    p.add_argument("--out", default="lmseg_out", help="output folder (default: lmseg_out)")
    p.add_argument("--sliding-window", action="store_true", help="CAT-Seg sliding-window inference")
    add_runtime_arguments(p)
    p.add_argument("--save-labels", action="store_true", help="also write label maps as .npy")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    import sys

    from tqdm import tqdm

    from lmseg.segmenter import Segmenter
    from lmseg.vocabularies import load_vocabulary

    if bool(args.classes) == bool(args.vocabulary):
        print("error: give exactly one of --classes or --vocabulary", file=sys.stderr)
        return 2
    if args.classes:
        classes = [c.strip() for c in args.classes.split(",")]
    else:
        classes = load_vocabulary(args.vocabulary)
    for path in args.images:  # before any download: a typo should not cost one
        if not Path(path).is_file():
            raise FileNotFoundError(f"image not found: {path}")
    model = model_from_args(args)
    segmenter = Segmenter(model, sliding_window=args.sliding_window, runtime=runtime_from_args(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = list(args.images)
    for path in tqdm(images, desc="segmenting", disable=len(images) < 2 or args.quiet):
        result = segmenter.predict(path, classes)
        stem = Path(path).stem
        result.save_overlay(out / f"{stem}_overlay.png", overwrite=True)
        if args.save_labels:
            result.save_labels(out / f"{stem}_labels.npy", overwrite=True)
        if not args.quiet:
            tqdm.write(f"{path}: {len(result.present())} classes -> {out / (stem + '_overlay.png')}")
    return 0
