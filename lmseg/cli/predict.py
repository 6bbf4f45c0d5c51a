"""``lmseg predict``: segment images, folders and glob patterns; write overlays, label maps,
probabilities and summaries (see docs/predict.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmseg.cli.common import (
    add_device_argument,
    add_model_arguments,
    add_runtime_arguments,
    model_from_args,
    runtime_from_args,
)

if TYPE_CHECKING:
    from lmseg.batch import InputImage

__all__ = ["register"]

_DESCRIPTION = """\
Segment images with any list of class names. Inputs are image files, folders (searched
recursively for .bmp, .jpeg, .jpg, .png, .tif, .tiff and .webp files; hidden files skipped) and
glob patterns such as "photos/**/*.jpg". Outputs mirror the input folders under --out and keep
the input's suffix in their names: photos/a/x.jpg gives OUT/a/x.jpg_overlay.png and
OUT/a/x.jpg_labels.png. Finished outputs are kept, so running the same command again resumes an
interrupted run; --overwrite replaces them. A broken image is reported and skipped; the exit
status is 1 if any image failed. Under torchrun the images are shared out between the
processes."""


def register(subparsers: Any) -> None:
    """Add the ``predict`` command to an argparse sub-parsers object."""
    from lmseg.batch import DEFAULT_OUTPUTS, OUTPUTS
    from lmseg.io import DEFAULT_MAX_PIXELS

    p = subparsers.add_parser(
        "predict",
        help="segment images or folders; write overlays, label maps, probabilities, summaries",
        description=_DESCRIPTION,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE|FOLDER|GLOB", help="what to segment")
    p.add_argument(
        "--classes",
        metavar="NAMES",
        help='comma-separated class names ("cat,dog,sky"), or @FILE for a class file',
    )
    p.add_argument(
        "--classes-file",
        metavar="FILE",
        help="class names, one per line (# starts a comment), or a .json list",
    )
    p.add_argument("--vocabulary", help="a shipped vocabulary (ade150, ade847, pc59, ...)")
    add_model_arguments(p)
    p.add_argument("--out", default="lmseg_out", help="output folder (default: lmseg_out)")
    p.add_argument(
        "--outputs",
        default=",".join(DEFAULT_OUTPUTS),
        metavar="LIST",
        help=f"comma-separated, from {', '.join(OUTPUTS)}, or all "
        f"(default: {','.join(DEFAULT_OUTPUTS)})",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs (default: keep them)"
    )
    p.add_argument("--sliding-window", action="store_true", help="CAT-Seg sliding-window inference")
    p.add_argument(
        "--test-size",
        type=int,
        default=0,
        metavar="N",
        help="resize images so their short side is N before inference, as lmseg eval does "
        "(CAT-Seg: 640; antialiased, which large photos gain from); outputs keep the image's "
        "size (default: 0, the image as it is, as Segmenter.predict)",
    )
    p.add_argument(
        "--batch-size", type=int, default=4, metavar="N", help="images per forward pass (default: 4)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="processes that decode images while the model runs (default: 2; 0: none)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"refuse images with more pixels (default: {DEFAULT_MAX_PIXELS:,})",
    )
    add_device_argument(p)
    add_runtime_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    # The option of earlier releases: label maps as well as overlays.
    p.add_argument("--save-labels", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_predict)


def _classes(args: argparse.Namespace) -> list[str] | None:
    """The class list of ``--classes``, ``--classes-file`` or ``--vocabulary`` (None: none or
    several given)."""
    from lmseg.data import read_classes
    from lmseg.io import validate_classes
    from lmseg.vocabularies import load_vocabulary

    if sum(x is not None for x in (args.classes, args.classes_file, args.vocabulary)) != 1:
        return None
    file = args.classes_file
    if args.classes is not None and args.classes.startswith("@"):
        file = args.classes[1:]
    if file is not None:
        if not Path(file).expanduser().exists():
            raise FileNotFoundError(f"class file not found: {file}")
        return read_classes(file)
    if args.vocabulary is not None:
        return load_vocabulary(args.vocabulary)
    if "," not in args.classes and Path(args.classes).expanduser().is_file():
        raise ValueError(
            f"--classes {args.classes} is read as one class named {args.classes!r}, but it is "
            f"also a file; to read class names from it use --classes-file {args.classes} "
            f"(or --classes @{args.classes})"
        )
    return validate_classes([c.strip() for c in args.classes.split(",")])


def _run_settings(args: argparse.Namespace, classes: list[str]) -> dict[str, Any]:
    """What a folder's outputs depend on: a resumed run must use the same."""
    return {
        "model": args.model,
        "checkpoint": args.checkpoint,
        "random_weights": bool(args.random_weights),
        "classes": classes,
        "sliding_window": bool(args.sliding_window),
        "test_size": args.test_size or None,
        "precision": args.precision,
        "top_k": None if args.exact else (args.top_k if args.top_k is not None else "auto"),
        "preprocessing": args.preprocessing,
    }


def _predict(args: argparse.Namespace) -> int:
    from lmseg.batch import check_output_folder, find_images, parse_outputs
    from lmseg.runtime import resolve_device

    # Everything a user can get wrong is checked before the model is built (or downloaded).
    classes = _classes(args)
    if classes is None:
        print("error: give exactly one of --classes, --classes-file or --vocabulary", file=sys.stderr)
        return 2
    outputs = parse_outputs(args.outputs)
    if args.save_labels and "labels" not in outputs:
        outputs = parse_outputs([*outputs, "labels"])
    for name, value in (("--batch-size", args.batch_size), ("--max-pixels", args.max_pixels)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if args.workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {args.workers}")
    if args.test_size < 0:
        raise ValueError(f"--test-size must be 0 (keep the size) or more, got {args.test_size}")
    images = find_images(args.inputs, exclude=args.out if Path(args.out).is_dir() else None)
    out = check_output_folder(args.out)
    device = resolve_device(args.device)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        from lmseg.train.distributed import cleanup_distributed, init_distributed

        device = init_distributed(device if args.device not in (None, "auto") else None).device
    try:
        return _segment(args, images, classes, outputs, out, device)
    finally:
        if distributed:
            cleanup_distributed()


def _segment(
    args: argparse.Namespace,
    images: list[InputImage],
    classes: list[str],
    outputs: tuple[str, ...],
    out: Path,
    device: Any,
) -> int:
    from tqdm import tqdm

    from lmseg.batch import check_output_folder, predict_images
    from lmseg.segmenter import Segmenter

    def report_failure(path: str, reason: str) -> None:
        # The message of lmseg.io names the file; other reasons get it in front.
        tqdm.write(f"error: {reason if path in reason else f'{path}: {reason}'}", file=sys.stderr)

    model = model_from_args(args)  # its own errors first: a bad checkpoint is not a resume
    run = _run_settings(args, classes)
    check_output_folder(out, run, overwrite=args.overwrite)
    segmenter = Segmenter(
        model,
        sliding_window=args.sliding_window,
        runtime=runtime_from_args(args),
        device=device,
        max_pixels=args.max_pixels,
    )
    try:
        report = predict_images(
            segmenter,
            images,
            classes,
            out,
            outputs=outputs,
            batch_size=args.batch_size,
            workers=args.workers,
            test_size=args.test_size or None,
            max_pixels=args.max_pixels,
            overwrite=args.overwrite,
            run=run,
            progress=False if args.quiet else None,
            on_failure=report_failure,
        )
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished outputs are kept; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    from lmseg.train.distributed import get_dist_info

    if get_dist_info().is_main:
        speed = ""
        if report.written and report.seconds > 0:
            speed = f" in {report.seconds:.1f} s ({report.written / report.seconds:.2f} images/s)"
        print(f"{report.line()}{speed}; outputs in {out}")
    return 0 if report.ok else 1
