"""``lmseg predict``: segment images and write colour overlays."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, cast

from lmseg.factory import list_models

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``predict`` command to an argparse sub-parsers object."""
    p = subparsers.add_parser("predict", help="segment images and write colour overlays")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--classes", help="comma-separated class names")
    p.add_argument("--vocabulary", help="a shipped vocabulary (ade150, ade847, pc59, ...)")
    p.add_argument(
        "--model", help=f"model variant, optionally NAME:TAG for a weights tag ({', '.join(list_models())})"
    )
    p.add_argument(
        "--checkpoint", help="lmseg .safetensors, released CAT-Seg .pth, or hf-hub:org/name[@revision]"
    )
    p.add_argument(
        "--random-weights", action="store_true", help="random initialisation (meaningless output)"
    )
    p.add_argument("--clip-pretrained", help="CLIP weights: open_clip tag or file")
    p.add_argument("--sam-checkpoint", help="official SAM checkpoint file")
    p.add_argument("--out", default="lmseg_out", help="output folder (default: lmseg_out)")
    p.add_argument("--sliding-window", action="store_true", help="CAT-Seg sliding-window inference")
    p.add_argument("--exact", action="store_true", help="no class filtering (all K classes)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--save-labels", action="store_true", help="also write label maps as .npy")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    import sys

    import numpy as np
    from tqdm import tqdm

    from lmseg.checkpoint import load_model
    from lmseg.factory import create_model
    from lmseg.io import load_image
    from lmseg.segmenter import Segmenter
    from lmseg.visualize import overlay
    from lmseg.vocabularies import load_vocabulary
    from lmseg.zoo import split_name

    if bool(args.classes) == bool(args.vocabulary):
        print("error: give exactly one of --classes or --vocabulary", file=sys.stderr)
        return 2
    if args.classes:
        classes = [c.strip() for c in args.classes.split(",")]
    else:
        classes = load_vocabulary(args.vocabulary)
    if args.model is None and args.checkpoint is None:
        print("error: give --model NAME and/or --checkpoint PATH", file=sys.stderr)
        return 2
    name, tag = split_name(args.model) if args.model else (None, None)
    if args.random_weights and (args.checkpoint or tag):
        print("error: --random-weights excludes --checkpoint and a weights tag", file=sys.stderr)
        return 2
    for path in args.images:  # before any download: a typo should not cost one
        if not Path(path).is_file():
            raise FileNotFoundError(f"image not found: {path}")
    if name is None:
        model = load_model(args.checkpoint)
    else:
        model = create_model(
            name,
            pretrained=False if args.random_weights else (args.checkpoint or tag or True),
            clip_pretrained=args.clip_pretrained,
            sam_checkpoint=args.sam_checkpoint,
        )
    if args.exact:
        model.top_k = None
    segmenter = Segmenter(model, sliding_window=args.sliding_window, precision=args.precision)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = list(args.images)
    for path in tqdm(images, desc="segmenting", disable=len(images) < 2 or args.quiet):
        labels = cast(np.ndarray, segmenter.predict(path, classes))
        pixels = (load_image(path).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        stem = Path(path).stem
        overlay(pixels, labels, classes).save(out / f"{stem}_overlay.png")
        if args.save_labels:
            np.save(out / f"{stem}_labels.npy", labels)
        if not args.quiet:
            present = np.unique(labels)
            tqdm.write(f"{path}: {len(present)} classes -> {out / (stem + '_overlay.png')}")
    return 0
