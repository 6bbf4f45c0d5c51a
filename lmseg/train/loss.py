"""Segmentation losses on per-class logits.

The model returns low-resolution logits ``(B, K, h, w)``; both losses first upsample them
bilinearly (``align_corners=False``) to the label size ``(H, W)``, as CAT-Seg's training step
does, so the loss is computed at label resolution.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["segmentation_bce_loss", "segmentation_ce_loss"]

IgnoreMode = Literal["negative", "exclude"]


def _upsample_and_check(
    logits: torch.Tensor, target: torch.Tensor, ignore_value: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() != 4 or target.dim() != 3 or logits.shape[0] != target.shape[0]:
        raise ValueError(
            f"expected logits (B, K, h, w) and target (B, H, W), "
            f"got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if target.dtype != torch.int64:
        raise ValueError(f"target must be int64 class indices, got {target.dtype}")
    num_classes = logits.shape[1]
    valid = target != ignore_value
    if valid.any():
        low, high = int(target[valid].min()), int(target[valid].max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"target values must lie in [0, {num_classes}) or equal ignore_value="
                f"{ignore_value}; found range [{low}, {high}]"
            )
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return logits, valid


def segmentation_bce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_value: int,
    ignore_mode: IgnoreMode = "negative",
) -> torch.Tensor:
    """Per-class binary cross-entropy with logits against one-hot targets (CAT-Seg's loss).

    Args:
        logits: (B, K, h, w) class logits.
        target: (B, H, W) int64 class indices in [0, K) or ``ignore_value``.
        ignore_value: label value of unlabelled pixels.
        ignore_mode: ``"negative"`` (CAT-Seg): an ignored pixel is a negative for every class
            and the mean runs over all B·H·W·K entries. ``"exclude"``: ignored pixels contribute
            nothing and the mean runs over the N·K entries of the N labelled pixels.

    Returns:
        Scalar loss. With ``"exclude"`` and no labelled pixel, a zero that keeps the graph.
    """
    logits, valid = _upsample_and_check(logits, target, ignore_value)
    num_classes = logits.shape[1]
    # Same arithmetic as CAT-Seg's CATSeg.forward: channels-last logits, a zero target tensor
    # with one-hot rows written at labelled pixels only, then a plain mean.
    logits = logits.permute(0, 2, 3, 1)  # (B, H, W, K)
    onehot = torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device)
    onehot[valid] = F.one_hot(target[valid], num_classes=num_classes).to(logits.dtype)
    if ignore_mode == "negative":
        return F.binary_cross_entropy_with_logits(logits, onehot)
    if ignore_mode == "exclude":
        if not valid.any():
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[valid], onehot[valid])
    raise ValueError(f"ignore_mode must be 'negative' or 'exclude', got {ignore_mode!r}")


def segmentation_ce_loss(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_value: int
) -> torch.Tensor:
    """Softmax cross-entropy over the K classes, averaged over labelled pixels.

    Not CAT-Seg's loss: classes compete through the softmax, which trains small models much
    faster than per-class BCE (useful for demos and smoke tests).

    Args:
        logits: (B, K, h, w) class logits.
        target: (B, H, W) int64 class indices in [0, K) or ``ignore_value``.
        ignore_value: label value excluded from the mean.

    Returns:
        Scalar loss; a zero that keeps the graph when no pixel is labelled.
    """
    logits, valid = _upsample_and_check(logits, target, ignore_value)
    if not valid.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=ignore_value)
