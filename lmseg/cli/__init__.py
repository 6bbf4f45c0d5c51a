"""The ``lmseg`` command line: a thin layer over the library.

``lmseg predict IMAGE|FOLDER|GLOB... --classes "a,b,c" | --classes-file FILE | --vocabulary
ade150 --model NAME[:TAG] [--checkpoint PATH] --out DIR``, ``lmseg models``,
``lmseg weights list|download|path``, ``lmseg convert-catseg IN OUT``, ``lmseg prompts ...``,
``lmseg data ...``, ``lmseg train CONFIG [key=value ...]``, ``lmseg eval ...`` and
``lmseg demo`` and ``lmseg export MODEL --format onnx --out DIR``. :func:`main` takes ``argv`` so tests call it in-process.

Each sub-command lives in a module of this package with a ``register(subparsers)`` function;
every command sets ``func(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from lmseg.cli.common import run_command

__all__ = ["build_parser", "main", "run_command"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lmseg`` command."""
    from lmseg import __version__
    from lmseg.cli import data, demo, export, models, predict, prompts, train, weights

    parser = argparse.ArgumentParser(
        prog="lmseg",
        description="Open-vocabulary semantic segmentation (LMSeg, CAT-Seg). "
        "Every command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"lmseg {__version__}")
    sub = parser.add_subparsers(dest="command")
    for module in (predict, models, prompts, data, train, weights, demo, export):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with one_line_warnings():
        return run_command(args)


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _one_line_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    # A command-line user needs the message, not the library line that raised it.
    print(f"warning: {_one_line(message)}", file=sys.stderr)


class _OneLineHandler(logging.Handler):
    """lmseg's logged warnings and errors as ``warning: ...`` / ``error: ...`` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "warning" if record.levelno < logging.ERROR else "error"
            print(f"{level}: {_one_line(record.getMessage())}", file=sys.stderr)
        except Exception:  # a logging call must never break the command
            self.handleError(record)


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """While a command runs, print each warning of :mod:`warnings` and each warning lmseg
    logs as one line on stderr (the library stays silent about how it is shown otherwise)."""
    root = logging.getLogger("lmseg")
    handler = _OneLineHandler(logging.WARNING)
    root.addHandler(handler)
    propagate, root.propagate = root.propagate, False  # once, not again through the root logger
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            yield
    finally:
        root.removeHandler(handler)
        root.propagate = propagate


if __name__ == "__main__":
    raise SystemExit(main())
