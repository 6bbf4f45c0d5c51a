"""``lmseg models`` (the variants) and ``lmseg convert-catseg`` (released CAT-Seg weights)."""

from __future__ import annotations

import argparse
from typing import Any

from lmseg.factory import describe_model, list_models

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``models`` and ``convert-catseg`` commands to an argparse sub-parsers object."""
    m = subparsers.add_parser("models", help="list model variants")
    m.set_defaults(func=_models)

    c = subparsers.add_parser("convert-catseg", help="convert a released CAT-Seg checkpoint")
    c.add_argument("input", help="CAT-Seg .pth checkpoint")
    c.add_argument("output", help="lmseg .safetensors checkpoint to write")
    c.add_argument("--model", help="target variant (default: detected)")
    c.set_defaults(func=_convert)


def _models(args: argparse.Namespace) -> int:
    for name in list_models():
        print(f"{name:22s} {describe_model(name)}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from lmseg.convert import convert_catseg

    convert_catseg(args.input, args.output, model=args.model)
    print(f"wrote {args.output}")
    return 0
