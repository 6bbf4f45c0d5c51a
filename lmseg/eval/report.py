"""Evaluation reports: metrics, per-class table, most confused classes, confusion-matrix image.

:func:`write_report` writes, for one :class:`~lmseg.eval.evaluate.EvalResult`,
``DATASET_report.json``, ``DATASET_report.md`` and ``DATASET_confusion.png`` (each
atomically). The summary numbers are :class:`~lmseg.eval.metrics.SegmentationMetrics`'
(mIoU, fwIoU, mAcc, pAcc, as percentages); the per-class table adds each class's ground-truth
and predicted pixel counts. The confusion image shows every class when there are at most
``max_image_classes`` of them, else only the classes of the most confused pairs, so it stays
readable for hundreds of classes; each row is the share of that true class's pixels predicted
as each column.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from lmseg.eval.metrics import results_to_json
from lmseg.io import atomic_write

if TYPE_CHECKING:
    from lmseg.eval.evaluate import EvalResult

__all__ = [
    "build_report",
    "confused_pairs",
    "confusion_image",
    "format_markdown",
    "write_report",
]

_SUMMARY = ("mIoU", "fwIoU", "mAcc", "pAcc")


def _as_array(confusion: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.detach().cpu().numpy()
    array = np.asarray(confusion, dtype=np.int64)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"confusion matrix must be (K, K), got {array.shape}")
    return array


def confused_pairs(
    confusion: torch.Tensor | np.ndarray, class_names: Sequence[str], *, top: int = 20
) -> list[dict[str, Any]]:
    """The ``top`` off-diagonal cells with the most pixels, most first.

    Args:
        confusion: ``(K, K)`` pixel counts, ``[truth, prediction]``.
        class_names: the K class names.

    Returns:
        ``{"truth", "predicted", "truth_index", "predicted_index", "pixels",
        "share_of_truth", "share_of_errors"}`` records; shares are percentages of the true
        class's pixels and of all wrongly labelled pixels. Equal counts keep index order.
    """
    conf = _as_array(confusion)
    if len(class_names) != len(conf):
        raise ValueError(f"{len(class_names)} class names for {len(conf)} classes")
    errors = conf.copy()
    np.fill_diagonal(errors, 0)
    total_errors = int(errors.sum())
    flat = errors.ravel()
    # Stable sort on the negated counts: ties stay in (truth, prediction) index order.
    order = np.argsort(-flat, kind="stable")[:top]
    rows = conf.sum(axis=1)
    pairs = []
    for cell in order:
        pixels = int(flat[cell])
        if pixels == 0:
            break
        t, p = divmod(int(cell), len(conf))
        pairs.append(
            {
                "truth": class_names[t],
                "predicted": class_names[p],
                "truth_index": t,
                "predicted_index": p,
                "pixels": pixels,
                "share_of_truth": round(100 * pixels / int(rows[t]), 4),
                "share_of_errors": round(100 * pixels / total_errors, 4),
            }
        )
    return pairs


def _image_classes(conf: np.ndarray, max_classes: int, top_pairs: int) -> list[int]:
    k = len(conf)
    if k <= max_classes:
        return list(range(k))
    chosen: list[int] = []
    for pair in confused_pairs(conf, [str(i) for i in range(k)], top=top_pairs):
        # whole pairs only: a class drawn without the one it is confused with explains nothing
        new = {pair["truth_index"], pair["predicted_index"]} - set(chosen)
        if len(chosen) + len(new) <= max_classes:
            chosen += sorted(new)
    return sorted(chosen)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _blue(share: float) -> tuple[int, int, int]:
    """White (0 %) to dark blue (100 %)."""
    light, dark = np.array([247, 251, 255]), np.array([8, 48, 107])
    return tuple(int(round(c)) for c in light + (dark - light) * min(max(share, 0.0), 1.0))  # type: ignore[return-value]


def confusion_image(
    confusion: torch.Tensor | np.ndarray,
    class_names: Sequence[str],
    *,
    max_classes: int = 30,
    top_pairs: int = 40,
    title: str = "",
) -> Image.Image:
    """A row-normalised confusion matrix as a picture.

    With more than ``max_classes`` classes only those of the ``top_pairs`` most confused
    pairs are drawn (whole pairs, at most ``max_classes`` classes, in index order); rows still
    hold the share of each true class's pixels over all K predictions. Rows of classes absent
    from the ground truth are grey; cells carry their percentage when at most 20 classes are
    drawn.

    Returns:
        An RGB PIL image.
    """
    conf = _as_array(confusion)
    k = len(conf)
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} classes")
    shown = _image_classes(conf, max_classes, top_pairs)
    rows = conf.sum(axis=1)
    cell = 26 if len(shown) <= 20 else 16
    font, small = _font(12), _font(10)
    names = [f"{i} {class_names[i]}"[:32] for i in shown]
    margin = max([int(font.getlength(n)) for n in names] + [40]) + 10
    heading = title or "confusion matrix (rows: truth, share of its pixels)"
    if len(shown) < k:
        heading += f"; {len(shown)} of {k} classes: those most confused"
    top = margin + 40
    side = cell * max(len(shown), 1)
    width = max(margin + side + 20, margin + 250, int(font.getlength(heading)) + 20)
    canvas = Image.new("RGB", (width, top + side + 50), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 8), heading, fill="black", font=font)
    for r, t in enumerate(shown):
        y = top + r * cell
        draw.text((10, y + (cell - 12) // 2), names[r], fill="black", font=font)
        for c, p in enumerate(shown):
            x = margin + c * cell
            share = conf[t, p] / rows[t] if rows[t] else math.nan
            colour = (200, 200, 200) if math.isnan(share) else _blue(share)
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=(230, 230, 230))
            if len(shown) <= 20 and not math.isnan(share) and conf[t, p]:
                text = f"{100 * share:.0f}"
                ink = "white" if share > 0.5 else "black"
                tx = x + (cell - int(small.getlength(text))) // 2
                draw.text((tx, y + (cell - 10) // 2), text, fill=ink, font=small)
    # Column names, written horizontally on a strip that is then turned upright.
    strip = Image.new("RGB", (margin, side), "white")
    strip_draw = ImageDraw.Draw(strip)
    for c, name in enumerate(names):
        strip_draw.text((4, c * cell + (cell - 12) // 2), name, fill="black", font=font)
    canvas.paste(strip.rotate(90, expand=True), (margin, 36))
    draw.text((10, top - 18), "truth \\ predicted", fill="black", font=small)
    y = top + side + 14
    for i in range(101):
        draw.line([margin + i * 2, y, margin + i * 2, y + 10], fill=_blue(i / 100), width=2)
    draw.text((margin - 24, y), "0 %", fill="black", font=small)
    draw.text((margin + 206, y), "100 %", fill="black", font=small)
    return canvas


def build_report(result: EvalResult, *, top_pairs: int = 20) -> dict[str, Any]:
    """The report of one evaluation as JSON-ready data (see :func:`write_report`)."""
    if result.confusion_matrix is None:
        raise ValueError(f"the result of {result.dataset} holds no confusion matrix")
    conf = _as_array(result.confusion_matrix)
    per_class = results_to_json(result.metrics, result.class_names)["per_class"]
    truth, predicted = conf.sum(axis=1), conf.sum(axis=0)
    return {
        "dataset": result.dataset,
        "model": result.model,
        "num_images": result.num_images,
        "num_pixels": int(conf.sum()),
        "metrics": {k: results_to_json(result.metrics, result.class_names)[k] for k in _SUMMARY},
        "per_class": [
            {
                "index": i,
                **row,
                "truth_pixels": int(truth[i]),
                "predicted_pixels": int(predicted[i]),
            }
            for i, row in enumerate(per_class)
        ],
        "confused_pairs": confused_pairs(conf, result.class_names, top=top_pairs),
    }


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _number(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_markdown(report: dict[str, Any], *, image: str | None = None) -> str:
    """The report as a Markdown page (summary, per-class table, confused pairs, image)."""
    m = report["metrics"]
    lines = [
        f"# Evaluation of {_md(report['model'] or 'the model')} on {_md(report['dataset'])}",
        "",
        f"{report['num_images']} images, {report['num_pixels']:,} labelled pixels.",
        "",
        "| " + " | ".join(_SUMMARY) + " |",
        "|" + "---:|" * len(_SUMMARY),
        "| " + " | ".join(_number(m[k]) for k in _SUMMARY) + " |",
        "",
        "## Per class",
        "",
        "| id | class | IoU | Acc | truth pixels | predicted pixels |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['index']} | {_md(r['name'])} | {_number(r['IoU'])} | {_number(r['Acc'])} | "
        f"{r['truth_pixels']:,} | {r['predicted_pixels']:,} |"
        for r in report["per_class"]
    ]
    lines += ["", "## Most confused classes", ""]
    if report["confused_pairs"]:
        lines += [
            "| truth | predicted as | pixels | % of truth | % of all errors |",
            "|---|---|---:|---:|---:|",
        ]
        lines += [
            f"| {_md(p['truth'])} | {_md(p['predicted'])} | {p['pixels']:,} | "
            f"{p['share_of_truth']:.2f} | {p['share_of_errors']:.2f} |"
            for p in report["confused_pairs"]
        ]
    else:
        lines.append("No pixel was labelled wrongly.")
    if image:
        lines += ["", "## Confusion matrix", "", f"![confusion matrix]({image})"]
    return "\n".join(lines) + "\n"


def write_report(
    result: EvalResult,
    out_dir: str | os.PathLike[str],
    *,
    top_pairs: int = 20,
    max_image_classes: int = 30,
) -> dict[str, Path]:
    """Write ``DATASET_report.json``, ``DATASET_report.md`` and ``DATASET_confusion.png``.

    Args:
        result: an evaluation result with its confusion matrix.
        out_dir: the folder (created if needed).
        top_pairs: confused pairs listed.
        max_image_classes: classes drawn in the image (the most confused ones beyond that).

    Returns:
        ``{"json", "markdown", "image"}`` paths.
    """
    out = Path(out_dir)
    report = build_report(result, top_pairs=top_pairs)
    paths = {
        "json": out / f"{result.dataset}_report.json",
        "markdown": out / f"{result.dataset}_report.md",
        "image": out / f"{result.dataset}_confusion.png",
    }
    picture = confusion_image(
        result.confusion_matrix,  # type: ignore[arg-type]  # checked by build_report
        result.class_names,
        max_classes=max_image_classes,
        title=f"{result.dataset}: confusion (rows: truth, share of its pixels)",
    )
    atomic_write(paths["image"], lambda tmp: picture.save(tmp, format="PNG"))
    report["confusion_image"] = paths["image"].name
    text = json.dumps(report, indent=2)
    atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    page = format_markdown(report, image=paths["image"].name)
    atomic_write(paths["markdown"], lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return paths
