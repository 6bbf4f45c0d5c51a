"""Training utilities: losses on per-class logits."""

from lmseg.train.loss import segmentation_bce_loss, segmentation_ce_loss

__all__ = ["segmentation_bce_loss", "segmentation_ce_loss"]
