"""``lmseg export``: write a model as two graphs (ONNX or ``torch.export``) and text embeddings.

``lmseg export MODEL --format onnx --out DIR [--checkpoint PATH] [--vocabulary NAME ...]
[--classes "a,b,c"] [--overwrite] [--verify]``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lmseg.cli.common import add_model_arguments, model_from_args

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``export`` command to an argparse sub-parsers object."""
    from lmseg.export import DEFAULT_OPSET, FORMATS

    p = subparsers.add_parser(
        "export",
        help="export a model as two graphs (image half, class half) for ONNX or torch.export",
        description="Export the image half (images -> features) and the class half (features + "
        "text embeddings -> logits, any number of classes, exact mode) of a model, with a "
        "manifest and optional text embeddings per vocabulary.",
    )
    p.add_argument("name", nargs="?", metavar="MODEL", help="model variant (same as --model)")
    add_model_arguments(p)
    p.add_argument("--format", default="onnx", choices=FORMATS, help="graph format (default: onnx)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--vocabulary",
        action="append",
        default=[],
        metavar="NAME",
        help="also export the text embeddings of a shipped vocabulary (repeatable)",
    )
    p.add_argument(
        "--classes", help="also export the text embeddings of these comma-separated classes"
    )
    p.add_argument(
        "--classes-name",
        default="classes",
        metavar="NAME",
        help="file name (text/NAME.npz) of the --classes embeddings (default: classes)",
    )
    p.add_argument("--prompt-mode", help="how class names become prompts (the model's default)")
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier export")
    p.add_argument(
        "--verify",
        action="store_true",
        help="run the exported graphs against PyTorch on random inputs and print the differences",
    )
    p.add_argument(
        "--verify-classes",
        type=int,
        nargs="+",
        default=[5, 150, 847],
        metavar="K",
        help="vocabulary sizes --verify checks (default 5 150 847; the graphs' memory grows with K)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from lmseg.export import export_model, verify_export
    from lmseg.vocabularies import load_vocabulary

    if args.name is not None:
        if args.model is not None and args.model != args.name:
            raise ValueError(f"two models named: {args.name!r} and --model {args.model!r}")
        args.model = args.name
    vocabularies = {name: load_vocabulary(name) for name in args.vocabulary}
    if args.classes is not None:
        if args.classes_name in vocabularies:
            raise ValueError(f"--classes-name {args.classes_name!r} is also a --vocabulary")
        vocabularies[args.classes_name] = [c.strip() for c in args.classes.split(",")]
    model = model_from_args(args)
    try:
        manifest = export_model(
            model,
            args.out,
            format=args.format,
            vocabularies=vocabularies,
            prompt_mode=args.prompt_mode,
            opset=args.opset,
            overwrite=args.overwrite,
        )
    except (FileExistsError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not args.quiet:
        graphs = manifest["graphs"]
        opset = f", opset {manifest['opset']}" if manifest["opset"] is not None else ""
        print(f"exported {args.format}{opset} to {args.out}: "
              f"{graphs['image_encoder']['file']}, {graphs['class_decoder']['file']}, manifest.json")
        for name, entry in manifest["text_embeddings"].items():
            print(f"  text embeddings {name}: {entry['file']} {tuple(entry['shape'])}")
    if args.verify:
        rows = verify_export(args.out, model, classes=args.verify_classes)
        print(f"{'K':>5} {'batch':>5} {'max |d features|':>16} {'max |d logits|':>14} {'arg-max agree':>13}")
        for row in rows:
            print(f"{row['classes']:>5} {row['batch']:>5} {row['max_abs_feature_difference']:>16.2e} "
                  f"{row['max_abs_logit_difference']:>14.2e} {100 * row['argmax_agreement']:>12.3f}%")
    return 0
