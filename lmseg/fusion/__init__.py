"""Weighted fusion of CLIP and SAM image features (LMSeg)."""

from lmseg.fusion.sam_adapter import SAMAdapter
from lmseg.fusion.weighted_fusion import FUSION_MODES, WeightedFusion

__all__ = ["FUSION_MODES", "SAMAdapter", "WeightedFusion"]
