"""The ``lmseg`` command line: a thin layer over the library.

``lmseg predict IMAGE... --classes "a,b,c" | --vocabulary ade150 --model NAME
[--checkpoint PATH] --out DIR``, ``lmseg models``, ``lmseg convert-catseg IN OUT`` and
``lmseg prompts ...``, ``lmseg train CONFIG [key=value ...]``, ``lmseg eval ...`` and
``lmseg export MODEL --format onnx --out DIR``.
:func:`main` takes ``argv`` so tests call it in-process.

Each sub-command lives in a module of this package with a ``register(subparsers)`` function;
every command sets ``func(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lmseg.cli.common import run_command

__all__ = ["build_parser", "main", "run_command"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lmseg`` command."""
    from lmseg.cli import demo, export, models, predict, prompts, train

    parser = argparse.ArgumentParser(
        prog="lmseg", description="Open-vocabulary semantic segmentation (LMSeg, CAT-Seg)."
    )
    sub = parser.add_subparsers(dest="command")
    for module in (predict, models, prompts, train, demo, export):
        module.register(sub)
    return parser


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
