"""``lmseg train`` and ``lmseg eval``: thin commands over :mod:`lmseg.train` and
:mod:`lmseg.eval.evaluate`.

``lmseg.cli`` calls :func:`register` on its sub-command parsers; every command sets
``func(args) -> int`` (the exit status). ``python -m lmseg.cli.train`` runs the two commands on
their own (also under ``torchrun``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from lmseg.cli.common import (
    add_model_arguments,
    add_runtime_arguments,
    model_from_args,
    run_command,
    runtime_from_args,
)

__all__ = ["main", "register"]


def register(subparsers: Any) -> None:
    """Add the ``train`` and ``eval`` commands to an argparse sub-parsers object."""
    t = subparsers.add_parser(
        "train",
        help="train a model (CAT-Seg recipe; multi-GPU with torchrun)",
        description="Train from a YAML config (a file or a shipped name such as "
        "catseg_vitb16_coco / lmseg_vitb16_coco) with dotted key=value overrides, e.g. "
        "solver.iterations=1000 train.output_dir=runs/a. Multi-GPU: "
        "torchrun --nproc_per_node=N -m lmseg.cli train CONFIG ...",
    )
    t.add_argument("config", nargs="?", help="YAML config file or shipped config name")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    t.add_argument("--output-dir", help="run folder (same as train.output_dir=...)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run folder's newest complete checkpoint (starts fresh if the "
        "folder holds no earlier run)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh even if the run folder holds an earlier run, removing its "
        "checkpoints, final model and log (same as train.overwrite=true); with --resume, only "
        "when there is no checkpoint to continue from",
    )
    t.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.add_argument("--list-configs", action="store_true", help="list shipped configs and exit")
    t.set_defaults(func=_train)

    e = subparsers.add_parser(
        "eval",
        help="evaluate on a benchmark, or the six-benchmark sweep",
        description="Evaluate a model (mIoU, fwIoU, mAcc, pAcc, per-class IoU) on prepared "
        "datasets under --root / $DETECTRON2_DATASETS (docs/datasets.md).",
    )
    add_model_arguments(e)
    target = e.add_mutually_exclusive_group(required=True)
    target.add_argument("--dataset", action="append", help="dataset name (repeatable)")
    target.add_argument(
        "--sweep", action="store_true", help="A-847, PC-459, A-150, PC-59, VOC-20, VOC-20b"
    )
    e.add_argument("--root", help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)")
    e.add_argument("--out", help="folder for per-dataset JSON/tables and the summary")
    mode = e.add_mutually_exclusive_group()
    mode.add_argument(
        "--sliding-window",
        dest="sliding",
        action="store_true",
        default=True,
        help="CAT-Seg's sliding-window inference (default)",
    )
    mode.add_argument("--whole", dest="sliding", action="store_false", help="whole-image inference")
    add_runtime_arguments(e)
    e.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    e.add_argument("--num-workers", type=int, default=2)
    e.add_argument("--limit", type=int, help="only the first N images of each dataset")
    e.add_argument("--prompt-mode", help="prompt mode (default from the model's P)")
    e.add_argument("--prompt-bank", help="prompt bank name or path for every dataset")
    e.add_argument(
        "--test-size",
        type=int,
        default=640,
        help="resize images to this short side first (CAT-Seg: 640; 0 keeps the size)",
    )
    e.add_argument(
        "--device", help="cpu, cuda, cuda:N or auto (default: auto, the first GPU if there is one)"
    )
    e.add_argument("--quiet", action="store_true", help="no progress bar and no class tables")
    e.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from lmseg.train.config import config_to_yaml, list_configs, load_config

    if args.list_configs:
        print("\n".join(list_configs()))
        return 0
    if args.config is None:
        raise ValueError("give a config: a YAML file or one of " + ", ".join(list_configs()))
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.overwrite:
        overrides.append("train.overwrite=true")
    config = load_config(args.config, overrides)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    from lmseg.train.trainer import run_training

    trainer = run_training(config, resume=args.resume)
    if trainer.dist.is_main:
        print(f"finished {trainer.iteration} iterations; run folder: {trainer.output_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from lmseg.eval.evaluate import (
        SWEEP_DATASETS,
        EvalOptions,
        evaluate_sweep,
        format_summary,
    )
    from lmseg.runtime import resolve_device
    from lmseg.train.distributed import cleanup_distributed, init_distributed

    if args.device not in (None, "auto"):
        resolve_device(args.device)  # one clear line for a device this machine lacks
    info = init_distributed(None if args.device == "auto" else args.device)
    try:
        model = model_from_args(args).to(info.device)
        options = EvalOptions(
            sliding_window=args.sliding,
            batch_size=args.batch_size,
            runtime=runtime_from_args(args),
            test_short_edge=args.test_size or None,
            num_workers=args.num_workers,
            limit=args.limit,
            prompt_mode=args.prompt_mode,
            prompt_bank=args.prompt_bank,
            progress=not args.quiet,
        )
        names = list(SWEEP_DATASETS) if args.sweep else list(args.dataset)
        results = evaluate_sweep(
            model,
            names,
            root=args.root,
            options=options,
            out_dir=args.out if info.is_main else None,
            skip_missing=args.sweep,
        )
        if info.is_main:
            for result in results.values():
                if result is not None and not args.quiet:
                    print(result.table(), end="\n\n")
            for name, result in results.items():
                if result is None:
                    print(f"{name}: not found under the dataset root (see docs/datasets.md)")
            print(format_summary(results, model=str(model.config.get("name", ""))))
        return 0 if any(r is not None for r in results.values()) else 1
    finally:
        cleanup_distributed()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``train`` or ``eval`` on their own (``python -m lmseg.cli.train``)."""
    parser = argparse.ArgumentParser(prog="lmseg", description=__doc__.splitlines()[0])
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
