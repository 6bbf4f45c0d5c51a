"""``lmseg data ...``: check a dataset (a registered benchmark, a folder or a COCO file).

``lmseg.cli`` calls :func:`register` on its sub-command parsers; every command sets
``func(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``data`` command (``check``) to an argparse sub-parsers object."""
    data = subparsers.add_parser(
        "data",
        help="check a dataset (folder, COCO file or benchmark) before evaluating or training",
        description="Datasets of your own: folders with images/, labels/ and classes.txt, or "
        "COCO instance/panoptic files (docs/your-own-data.md).",
    )
    data.set_defaults(func=lambda args: _usage(data))
    sub = data.add_subparsers(dest="data_command", metavar="{check}")

    check = sub.add_parser(
        "check",
        help="list every bad file (missing partners, unreadable, wrong size, bad values) and "
        "the class frequencies; exit status 1 on any error",
    )
    check.add_argument("dataset", metavar="PATH", help="dataset folder, COCO .json or name")
    check.add_argument("--split", help="check this split only (default: every split)")
    check.add_argument("--root", help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)")
    check.add_argument("--json", metavar="FILE", help="also write the reports as JSON")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=_check)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _check(args: argparse.Namespace) -> int:
    from lmseg.data.check import check_dataset
    from lmseg.io import atomic_write

    reports = check_dataset(
        args.dataset, split=args.split, root=args.root, progress=False if args.quiet else None
    )
    for i, report in enumerate(reports):
        print(("\n" if i else "") + report.format())
    if args.json:
        text = json.dumps([r.to_json() for r in reports], indent=2)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return 0 if all(r.ok for r in reports) else 1
