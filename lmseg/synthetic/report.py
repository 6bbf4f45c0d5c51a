"""Reporting a demo run: per-row statistics over seeds, the two claims, the table and the figure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmseg.synthetic.settings import ROWS
from lmseg.synthetic.world import COLORS, SyntheticWorld

__all__ = ["format_claims", "format_table", "save_figure", "stats", "summarise", "targets"]


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


def save_figure(
    path: Path,
    world: SyntheticWorld,
    images: torch.Tensor,
    labels: torch.Tensor,
    predictions: dict[str, np.ndarray],
    scale: int = 3,
) -> None:
    """One line per unseen scene: the image, the ground truth, then each row's prediction.

    Regions are filled with their class's colour (black background) and named; a predicted name
    is white where it matches the ground truth under most of the region, red otherwise.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    palette = np.full((len(world.classes), 3), 25, np.uint8)
    for k, c in enumerate(world.classes[1:], start=1):
        palette[k] = (np.asarray(COLORS[c.color]) * 200).round().astype(np.uint8)
    s, pad, header = world.image_size * scale, 6, 24
    titles = ["image", "ground truth", *predictions]
    canvas = Image.new(
        "RGB", (pad + len(titles) * (s + pad), header + len(images) * (s + pad)), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(titles):
        draw.text((pad + j * (s + pad), 6), title, fill="black", font=font)

    def tile(label: np.ndarray, truth: np.ndarray) -> Image.Image:
        up = np.kron(label, np.ones((scale, scale), np.int64))
        out = Image.fromarray(palette[up])
        pen = ImageDraw.Draw(out)
        for k in (k for k in np.unique(label) if k):
            ys, xs = np.nonzero(label == k)
            if len(ys) < 12:
                continue
            right = np.bincount(truth[ys, xs]).argmax() == k
            name = world.classes[int(k)].name
            pen.text(
                (xs.mean() * scale - font.getlength(name) / 2, ys.mean() * scale - 5),
                name,
                fill="white" if right else (255, 90, 90),
                font=font,
            )
        return out

    for i in range(len(images)):
        y0 = header + i * (s + pad)
        truth = labels[i].numpy()
        rgb = (images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        canvas.paste(Image.fromarray(rgb).resize((s, s), Image.Resampling.NEAREST), (pad, y0))
        canvas.paste(tile(truth, truth), (pad + (s + pad), y0))
        for j, pred in enumerate(predictions.values(), start=2):
            canvas.paste(tile(pred[i].astype(np.int64), truth), (pad + j * (s + pad), y0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
