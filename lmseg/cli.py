"""The ``lmseg`` command line: a thin layer over the library.

``lmseg predict IMAGE... --classes "a,b,c" | --vocabulary ade150 --model NAME
[--checkpoint PATH] --out DIR``, ``lmseg models``, ``lmseg convert-catseg IN OUT`` and
``lmseg prompts ...``, ``lmseg train CONFIG [key=value ...]`` and ``lmseg eval ...``.
:func:`main` takes ``argv`` so tests call it in-process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from lmseg.factory import describe_model, list_models


def _predict(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from lmseg.checkpoint import load_model
    from lmseg.factory import create_model
    from lmseg.io import load_image
    from lmseg.segmenter import Segmenter
    from lmseg.visualize import overlay
    from lmseg.vocabularies import load_vocabulary

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
    if args.model is None:
        model = load_model(args.checkpoint)
    else:
        model = create_model(
            args.model,
            pretrained=args.checkpoint,
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


def _models(args: argparse.Namespace) -> int:
    for name in list_models():
        print(f"{name:22s} {describe_model(name)}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from lmseg.convert import convert_catseg

    convert_catseg(args.input, args.output, model=args.model)
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lmseg`` command."""
    parser = argparse.ArgumentParser(prog="lmseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("predict", help="segment images and write colour overlays")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--classes", help="comma-separated class names")
    p.add_argument("--vocabulary", help="a shipped vocabulary (ade150, ade847, pc59, ...)")
    p.add_argument("--model", help=f"model variant ({', '.join(list_models())})")
    p.add_argument("--checkpoint", help="lmseg .safetensors checkpoint")
    p.add_argument("--clip-pretrained", help="CLIP weights: open_clip tag or file")
    p.add_argument("--sam-checkpoint", help="official SAM checkpoint file")
    p.add_argument("--out", default="lmseg_out", help="output folder (default: lmseg_out)")
    p.add_argument("--sliding-window", action="store_true", help="CAT-Seg sliding-window inference")
    p.add_argument("--exact", action="store_true", help="no class filtering (all K classes)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--save-labels", action="store_true", help="also write label maps as .npy")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_predict)

    m = sub.add_parser("models", help="list model variants")
    m.set_defaults(func=_models)

    c = sub.add_parser("convert-catseg", help="convert a released CAT-Seg checkpoint")
    c.add_argument("input", help="CAT-Seg .pth checkpoint")
    c.add_argument("output", help="lmseg .safetensors checkpoint to write")
    c.add_argument("--model", help="target variant (default: detected)")
    c.set_defaults(func=_convert)

    from lmseg.prompts.cli import register as register_prompts
    from lmseg.train.cli import register as register_training

    register_prompts(sub)
    register_training(sub)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed sub-command; user errors print one line and exit with 1, not a traceback."""
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
