"""``lmseg models`` (the variants and the weights they download) and ``lmseg convert-catseg``."""

from __future__ import annotations

import argparse
from typing import Any

from lmseg.factory import describe_model, get_config, list_models

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
    from lmseg import zoo
    from lmseg.zoo import part_name

    for name in list_models():
        print(f"{name:22s} {describe_model(name)}")
        tag = zoo.default_tag(name)
        if tag is None:
            print(f"{'':22s} weights: none, random by design (no download)")
            continue
        entry = zoo.get_weights(name, tag)
        config = get_config(name)
        random = entry.random_parts(config)
        parts = [part_name(config, "vision_language")]
        if entry.spatial is not None:
            parts.append(part_name(config, "spatial"))
        what = "downloads " + (
            "the released checkpoint" if entry.checkpoint is not None else " + ".join(parts)
        )
        untrained = f"; untrained: {', '.join(random)}" if random else ""
        print(f"{'':22s} weights: {name}:{tag} ({what}{untrained}; lmseg weights list)")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from lmseg.convert import convert_catseg

    convert_catseg(args.input, args.output, model=args.model)
    print(f"wrote {args.output}")
    return 0
