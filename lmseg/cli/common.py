"""What every ``lmseg`` sub-command shares."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = [
    "add_device_argument",
    "add_model_arguments",
    "add_runtime_arguments",
    "model_from_args",
    "run_command",
    "runtime_from_args",
]


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed sub-command; user errors print one line and exit with 1, not a traceback."""
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"error: {error_message(error)}", file=sys.stderr)
        return 1


def error_message(error: BaseException) -> str:
    """The message of a user-facing error as a person should read it.

    ``str(KeyError("unknown vocabulary 'x'"))`` is the repr of its argument, quotes included:
    a KeyError with one string argument gives that string. An OSError without a message of its
    own (``PermissionError(13, 'Permission denied')``) names its file.
    """
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        return error.args[0]
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error) or type(error).__name__


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the model runs (checked by :func:`lmseg.runtime.resolve_device`)."""
    parser.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N, mps or auto (default: auto, the first GPU if there is one)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--checkpoint`` and the per-role weights options of every command that
    builds a model."""
    from lmseg.factory import list_models

    parser.add_argument(
        "--model",
        help=f"model variant, optionally NAME:TAG for a weights tag ({', '.join(list_models())})",
    )
    parser.add_argument(
        "--checkpoint",
        help="lmseg .safetensors, released CAT-Seg .pth, or hf-hub:org/name[@revision]",
    )
    parser.add_argument(
        "--random-weights", action="store_true", help="random initialisation (meaningless output)"
    )
    parser.add_argument(
        "--vision-language-weights",
        metavar="TAG_OR_FILE",
        help="weights of the vision-language encoder (CLIP role): open_clip tag or file",
    )
    parser.add_argument(
        "--spatial-weights",
        metavar="FILE",
        help="weights of the spatial encoder (SAM role): official checkpoint file",
    )
    # The names of earlier releases.
    parser.add_argument("--clip-pretrained", dest="vision_language_weights", help=argparse.SUPPRESS)
    parser.add_argument("--sam-checkpoint", dest="spatial_weights", help=argparse.SUPPRESS)


def model_from_args(args: argparse.Namespace) -> Any:
    """The model that :func:`add_model_arguments`' options name: ``--model NAME`` takes the
    variant's default weights from the zoo, ``NAME:TAG`` another tag, ``--checkpoint`` a file or
    Hub id, ``--random-weights`` none."""
    from lmseg.factory import create_model, load_model
    from lmseg.zoo import split_name

    if args.model is None and args.checkpoint is None:
        raise ValueError("give --model NAME and/or --checkpoint PATH")
    name, tag = split_name(args.model) if args.model else (None, None)
    if args.random_weights and (args.checkpoint or tag):
        raise ValueError("--random-weights excludes --checkpoint and a weights tag")
    if name is None:
        return load_model(args.checkpoint)
    return create_model(
        name,
        pretrained=False if args.random_weights else (args.checkpoint or tag or True),
        vision_language_weights=args.vision_language_weights,
        spatial_weights=args.spatial_weights,
    )


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--precision``, ``--exact``, ``--top-k`` and ``--preprocessing``: how the model runs
    (never saved with it)."""
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    filtering = parser.add_mutually_exclusive_group()
    filtering.add_argument("--exact", action="store_true", help="no class filtering (all K classes)")
    filtering.add_argument(
        "--top-k", type=int, metavar="N", help="keep the N classes of highest initial similarity"
    )
    parser.add_argument(
        "--preprocessing",
        default="lmseg",
        choices=["lmseg", "catseg"],
        help="catseg: CAT-Seg's whole-image preprocessing (zero-pad the normalised image to a "
        "multiple of 32 before resizing), to reproduce its outputs exactly",
    )


def runtime_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~lmseg.runtime.RuntimeOptions` of :func:`add_runtime_arguments`' options."""
    from lmseg.runtime import RuntimeOptions

    top_k: Any = "auto"
    if args.exact:
        top_k = None
    elif args.top_k is not None:
        top_k = args.top_k
    return RuntimeOptions(
        precision=args.precision, top_k=top_k, preprocessing=getattr(args, "preprocessing", "lmseg")
    )
