"""Reporting a demo run: per-row statistics over seeds, the two claims and the results table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from lmseg.synthetic.settings import ROWS

__all__ = ["format_claims", "format_table", "stats", "summarise", "targets"]


def stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, (population) standard deviation, min and max of per-seed values."""
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def summarise(runs: Sequence[dict[str, Any]], rows: Sequence[str]) -> dict[str, Any]:
    """Per row: mean/std/min/max over seeds of unseen and seen mIoU, and unseen per seed."""
    summary = {}
    for key in rows:
        mine = [r for r in runs if r["row"] == key]
        summary[key] = {
            **asdict(ROWS[key]),
            "unseen_mIoU": stats([r["unseen_mIoU"] for r in mine]),
            "seen_mIoU": stats([r["seen_mIoU"] for r in mine]),
            "unseen_by_seed": {str(r["seed"]): r["unseen_mIoU"] for r in mine},
        }
    return summary


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The demo's two claims, on mean unseen mIoU: attributes beat the template by ≥ 15 and
    fusion beats CLIP only (rows missing from the run are skipped)."""
    unseen = {k: v["unseen_mIoU"]["mean"] for k, v in summary.items()}
    out: dict[str, Any] = {}
    if "attributes+fusion" in unseen and "template+fusion" in unseen:
        out["attributes_minus_template"] = unseen["attributes+fusion"] - unseen["template+fusion"]
        out["attributes_beat_template_by_15"] = out["attributes_minus_template"] >= 15
    if "attributes+fusion" in unseen and "attributes+clip" in unseen:
        out["fusion_minus_clip_only"] = unseen["attributes+fusion"] - unseen["attributes+clip"]
        out["fusion_beats_clip_only"] = out["fusion_minus_clip_only"] > 0
    return out


def format_claims(claims: dict[str, Any]) -> list[str]:
    """One line per claim of :func:`targets` present: the difference and whether it is met."""
    lines = []
    for key, claim, target, met in (
        (
            "attributes_minus_template",
            "attributes - template",
            ">= +15",
            "attributes_beat_template_by_15",
        ),
        ("fusion_minus_clip_only", "fusion - CLIP only", "> 0", "fusion_beats_clip_only"),
    ):
        if key in claims:
            lines.append(
                f"{claim} (unseen mIoU): {claims[key]:+.1f} "
                f"(target {target}: {'met' if claims[met] else 'MISSED'})"
            )
    return lines


def format_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table: mean ± std over seeds, then unseen mIoU per seed."""
    ref = results["reference"]
    lines = [
        "| configuration | unseen mIoU | seen mIoU | unseen mIoU per seed |",
        "|---|---|---|---|",
    ]
    for row in results["summary"].values():
        u, s = row["unseen_mIoU"], row["seen_mIoU"]
        seeds = ", ".join(f"{v:.1f}" for v in row["unseen_by_seed"].values())
        lines.append(
            f"| {row['name']} | {u['mean']:.1f} ± {u['std']:.1f} | "
            f"{s['mean']:.1f} ± {s['std']:.1f} | {seeds} |"
        )
    for key, name in (
        ("chance", "chance (perfect masks, random class)"),
        ("texture_blind", "texture-blind oracle (perfect masks)"),
    ):
        lines.append(f"| {name} | {ref['unseen'][key]:.1f} | {ref['seen'][key]:.1f} | |")
    return "\n".join(lines)
