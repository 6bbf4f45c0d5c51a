"""Semantic segmentation metrics with detectron2's ``SemSegEvaluator`` rules.

A K×K confusion matrix of non-ignored pixels is accumulated on any device; :meth:`compute` turns it
into the four numbers every open-vocabulary segmentation paper reports, as percentages:

- mIoU: mean over valid classes of TP / (TP + FP + FN);
- fwIoU: IoU weighted by each class's share of ground-truth pixels;
- mAcc: mean over valid classes of TP / ground-truth pixels;
- pAcc: correctly labelled pixels / all non-ignored pixels.

A class is *valid* when it occurs in the ground truth. Predicting a class absent from the ground
truth lowers the IoU of the true classes (as false positives) but adds no term of its own to the
mean: that is detectron2's rule since 2022, in the version CAT-Seg installs (git HEAD).
detectron2 v0.6 and older repos instead counted such a class as IoU 0 in the mean
(``count_pred_only_classes=True``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["SegmentationMetrics", "format_table", "results_to_json"]


def _as_index_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """An int64 tensor of class indices; floats (logits, probabilities) are rejected."""
    is_float = x.is_floating_point() if isinstance(x, torch.Tensor) else x.dtype.kind == "f"
    if is_float:
        raise ValueError("pred and label must hold integer class indices (argmax the logits)")
    if isinstance(x, np.ndarray):
        # numpy uint16 labels (ADE-847) go through int64: torch's uint16 support is partial.
        return torch.from_numpy(x.astype(np.int64, copy=False))
    return x.long()


class SegmentationMetrics:
    """Confusion-matrix accumulator for semantic segmentation.

    Args:
        num_classes: K, the number of evaluation classes.
        ignore_value: ground-truth value excluded from every count (255 for most benchmarks,
            65535 for ADE-847, 459 for PC-459, where it never occurs).
        background_index: if set, predictions ``>= background_index`` are mapped to it before
            counting: CAT-Seg's VOC-20b rule, where the 39 extra background prompts and the
            background class all score as class 20.
        count_pred_only_classes: use detectron2 v0.6's mIoU denominator (classes present in the
            ground truth *or* the prediction) instead of the current one (ground truth only).
        device: where the confusion matrix lives (inputs are moved there).

    ``confusion_matrix[t, p]`` counts pixels of ground-truth class t predicted as p.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_value: int,
        *,
        background_index: int | None = None,
        count_pred_only_classes: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if background_index is not None and not 0 <= background_index < num_classes:
            raise ValueError(
                f"background_index {background_index} must be a class index in [0, {num_classes})"
            )
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.background_index = background_index
        self.count_pred_only_classes = count_pred_only_classes
        self.confusion_matrix = torch.zeros(
            num_classes, num_classes, dtype=torch.int64, device=device
        )

    @classmethod
    def for_dataset(cls, spec: Any, **kwargs: Any) -> SegmentationMetrics:
        """Build from a :class:`lmseg.data.DatasetSpec` (its K, ignore value, background rule)."""
        return cls(
            spec.num_classes,
            spec.ignore_value,
            background_index=spec.background_index,
            **kwargs,
        )

    def reset(self) -> None:
        """Zero the confusion matrix."""
        self.confusion_matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray) -> None:
        """Add a batch.

        Args:
            pred: predicted class indices, (B, H, W) or (H, W), any integer dtype (an argmax over
                the K or more logits, e.g. VOC-20b's 59 prompts).
            label: ground truth of the same shape; ``ignore_value`` pixels are skipped.

        Raises:
            ValueError: on a shape mismatch, or a non-ignored label / a prediction on a
                non-ignored pixel outside [0, K) (after the background rule).
        """
        pred, label = _as_index_tensor(pred), _as_index_tensor(label)
        if pred.shape != label.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != label {tuple(label.shape)}")
        device = self.confusion_matrix.device
        pred, label = pred.to(device).reshape(-1), label.to(device).reshape(-1)
        if self.background_index is not None:
            # CAT-Seg's VOCbEvaluator: pred[pred >= 20] = 20.
            pred = pred.clamp(max=self.background_index)
        valid = label != self.ignore_value
        pred, label = pred[valid], label[valid]
        k = self.num_classes
        if label.numel() == 0:
            return
        for what, values in (("label", label), ("prediction", pred)):
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= k:
                raise ValueError(
                    f"{what} values must lie in [0, {k}) on non-ignored pixels "
                    f"(ignore_value={self.ignore_value}); found range [{low}, {high}]"
                )
        counts = torch.bincount(label * k + pred, minlength=k * k)
        self.confusion_matrix += counts.view(k, k)

    def _check_compatible(self, other: SegmentationMetrics) -> None:
        mine = (self.num_classes, self.ignore_value, self.background_index)
        theirs = (other.num_classes, other.ignore_value, other.background_index)
        if mine != theirs:
            raise ValueError(
                f"cannot merge metrics with (K, ignore, background) {theirs} into {mine}"
            )

    def merge(self, other: SegmentationMetrics) -> SegmentationMetrics:
        """Add another accumulator's counts into this one (same K and rules); returns self."""
        self._check_compatible(other)
        self.confusion_matrix += other.confusion_matrix.to(self.confusion_matrix.device)
        return self

    def all_reduce(self, group: Any = None) -> None:
        """Sum the confusion matrix over all processes of ``torch.distributed`` (no-op if unused).

        The matrix must sit on a device the backend supports (CUDA for NCCL).
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.confusion_matrix, op=dist.ReduceOp.SUM, group=group)

    def compute(self) -> dict[str, Any]:
        """The metrics of everything accumulated so far.

        Returns:
            ``{"mIoU", "fwIoU", "mAcc", "pAcc"}`` as percentages (NaN with no valid pixel),
            ``"IoU"`` and ``"Acc"``: per-class percentage lists (NaN for classes not in the
            ground truth, as detectron2), ``"valid"``: per-class bools, ``"num_pixels"``: the
            number of non-ignored pixels.
        """
        conf = self.confusion_matrix.detach().cpu().to(torch.float64)
        tp = conf.diagonal()
        pos_gt = conf.sum(dim=1)
        pos_pred = conf.sum(dim=0)
        union = pos_gt + pos_pred - tp
        valid = pos_gt > 0
        nan = torch.full_like(tp, math.nan)
        iou = torch.where(valid, tp / union.clamp(min=1), nan)
        acc = torch.where(valid, tp / pos_gt.clamp(min=1), nan)
        total = pos_gt.sum()
        if valid.any():
            if self.count_pred_only_classes:
                miou = iou[valid].sum() / (union > 0).sum()
            else:
                miou = iou[valid].mean()
            macc = acc[valid].mean()
            fwiou = (iou[valid] * pos_gt[valid] / total).sum()
            pacc = tp.sum() / total
            summary = [100 * float(x) for x in (miou, fwiou, macc, pacc)]
        else:
            summary = [math.nan] * 4
        return {
            "mIoU": summary[0],
            "fwIoU": summary[1],
            "mAcc": summary[2],
            "pAcc": summary[3],
            "IoU": (100 * iou).tolist(),
            "Acc": (100 * acc).tolist(),
            "valid": valid.tolist(),
            "num_pixels": int(total),
        }


def _json_number(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


def results_to_json(
    results: dict[str, Any], class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """A JSON-ready copy of :meth:`SegmentationMetrics.compute`'s output.

    NaN becomes ``None``; per-class values become a list of ``{"name", "IoU", "Acc"}`` records
    (a list, since some vocabularies repeat a name).
    """
    iou, acc = results["IoU"], results["Acc"]
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(iou))]
    if len(names) != len(iou):
        raise ValueError(f"{len(names)} class names for {len(iou)} classes")
    return {
        **{key: _json_number(results[key]) for key in ("mIoU", "fwIoU", "mAcc", "pAcc")},
        "num_pixels": results["num_pixels"],
        "per_class": [
            {"name": name, "IoU": _json_number(i), "Acc": _json_number(a)}
            for name, i, a in zip(names, iou, acc, strict=True)
        ],
    }


def format_table(
    results: dict[str, Any], class_names: Sequence[str] | None = None, *, digits: int = 2
) -> str:
    """A plain-text table: the summary line, then one row per class ("-" for absent classes)."""
    rows = results_to_json(results, class_names)["per_class"]

    def fmt(x: float | None) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"

    summary = "  ".join(f"{k} {fmt(results[k])}" for k in ("mIoU", "fwIoU", "mAcc", "pAcc"))
    width = max([5, *(len(r["name"]) for r in rows)])
    lines = [summary, f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}", "-" * (width + 18)]
    lines += [f"{r['name']:<{width}}  {fmt(r['IoU']):>7}  {fmt(r['Acc']):>7}" for r in rows]
    return "\n".join(lines)
