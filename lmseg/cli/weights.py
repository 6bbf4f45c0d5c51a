"""``lmseg weights list | download NAME[:TAG] | path NAME[:TAG]``: the model zoo."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``weights`` command (with ``list``, ``download``, ``path``)."""
    w = subparsers.add_parser("weights", help="the model zoo: list, download, locate weights")
    sub = w.add_subparsers(dest="weights_command", required=True)
    ls = sub.add_parser("list", help="variants x weights tags: cached or not, size, licence, source")
    ls.add_argument("--variant", help="only this variant")
    ls.set_defaults(func=_list)
    dl = sub.add_parser("download", help="fetch (and convert) weights now, e.g. for an offline cluster")
    dl.add_argument("names", nargs="+", metavar="NAME[:TAG]", help="variant, optionally with a tag")
    dl.set_defaults(func=_download)
    pa = sub.add_parser("path", help="where a variant's weights are cached")
    pa.add_argument("name", metavar="NAME[:TAG]")
    pa.set_defaults(func=_path)


def _entry(spec: str) -> Any:
    from lmseg import zoo
    from lmseg.factory import list_models

    name, tag = zoo.split_name(spec)
    if name not in list_models():
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    tag = tag or zoo.default_tag(name)
    if tag is None:
        raise ValueError(f"{name} has no weights in the zoo (random by design)")
    try:
        return zoo.get_weights(name, tag)
    except KeyError as error:
        raise ValueError(error.args[0]) from None


def _size(entry: Any, config: Any) -> str:
    from lmseg import zoo

    cached = zoo.cached_files(entry, config)
    total, unknown = 0, False
    for part, source in zoo.sources(entry, config).items():
        path = cached.get(part)
        if path is not None:  # what is on disk (for CAT-Seg: the converted file)
            total += path.stat().st_size
        elif source.size is not None:
            total += source.size
        else:
            unknown = True  # not published: known once downloaded
    if unknown:
        return f"{_human(total)}+?" if total else "?"
    return _human(total)


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit in ("B", "KB") else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _list(args: argparse.Namespace) -> int:
    from lmseg import zoo
    from lmseg.factory import get_config, list_models

    variants = [args.variant] if args.variant else list_models()
    rows = [("variant:tag", "default", "cached", "size", "licence", "source")]
    notes = []
    for name in variants:
        config = get_config(name)
        entries = zoo.list_weights(name)
        if not entries:
            rows.append((name, "", "-", "-", "-", "no weights: random by design"))
            continue
        for entry in entries:
            cached = zoo.cached_files(entry, config)
            state = "yes" if cached and all(cached.values()) else ("part" if any(cached.values()) else "no")
            where = "; ".join(f"{part}: {s.address}" for part, s in zoo.sources(entry, config).items())
            random = entry.random_parts(config)
            if random:
                where += f" (random: {', '.join(random)})"
            rows.append((
                f"{name}:{entry.tag}", "*" if entry.default else "", state, _size(entry, config),
                entry.license, where,
            ))
            if entry.metrics:
                scores = ", ".join(f"{k} {v}" for k, v in entry.metrics.items())
                notes.append(f"{name}:{entry.tag}: published mIoU {scores}")
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)) + "  " + row[5])
    if notes:
        print()
        print("\n".join(notes))
    print("\nNo trained LMSeg weights have been released: lmseg_* variants load CLIP and SAM and an "
          "untrained aggregator.")
    return 0


def _download(args: argparse.Namespace) -> int:
    from lmseg import zoo
    from lmseg.factory import get_config

    for spec in args.names:
        entry = _entry(spec)
        config = get_config(entry.variant)
        plan = zoo.resolve(config, entry.tag)
        for part, path in _plan_files(plan, config).items():
            print(f"{entry.variant}:{entry.tag} {part}: {path}")
    return 0


def _plan_files(plan: Any, config: Any) -> dict[str, str]:
    from lmseg.zoo import part_name

    files = {
        "checkpoint": plan.checkpoint,
        part_name(config, "vision_language"): plan.vision_language,
        part_name(config, "spatial"): plan.spatial,
    }
    return {part: str(Path(p).resolve()) for part, p in files.items() if p is not None}


def _path(args: argparse.Namespace) -> int:
    from lmseg import zoo
    from lmseg.factory import get_config

    entry = _entry(args.name)
    config = get_config(entry.variant)
    cached = zoo.cached_files(entry, config)
    missing = []
    for part, path in cached.items():
        if path is None:
            missing.append(part)
            print(f"{part}: not cached")
        else:
            print(f"{part}: {path.resolve()}")
    if missing:
        print(f"(lmseg weights download {entry.variant}:{entry.tag} fetches {', '.join(missing)})")
        return 1
    return 0
