"""``lmseg demo``: serve the web demo on this machine (needs the ``demo`` extra)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lmseg.factory import list_models

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``demo`` command to an argparse sub-parsers object."""
    p = subparsers.add_parser(
        "demo", help="web page to segment images interactively (pip install 'lmseg[demo]')"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument(
        "--share", action="store_true", help="also open a public Gradio link (reaches the internet)"
    )
    p.add_argument(
        "--model",
        default="lmseg_tiny",
        help=f"variant selected at start ({', '.join(list_models())})",
    )
    p.add_argument("--checkpoint", help="lmseg .safetensors checkpoint filled in at start")
    p.add_argument("--device", help="where models run (default: cuda when available, else cpu)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    try:
        from lmseg.demo.app import build_app, launch
    except ImportError as error:
        print(
            f"error: the demo needs Gradio ({error}); install it with pip install 'lmseg[demo]'",
            file=sys.stderr,
        )
        return 1
    from lmseg.demo.logic import ModelCache

    app = build_app(ModelCache(device=args.device), model=args.model, weights=args.checkpoint)
    print(f"lmseg demo on http://{args.host}:{args.port}/ (Ctrl+C stops it)", flush=True)
    launch(app, host=args.host, port=args.port, share=args.share)
    return 0
