"""What every ``lmseg`` sub-command shares."""

from __future__ import annotations

import argparse
import sys

__all__ = ["run_command"]


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed sub-command; user errors print one line and exit with 1, not a traceback."""
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
