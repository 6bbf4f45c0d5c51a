"""Fusion of the vision-language (CLIP) and spatial (SAM) features (LMSeg's weighted fusion),
the spatial adapter, and the registry of fusions."""

from lmseg.fusion.spatial_adapter import SAMAdapter, SpatialAdapter
from lmseg.fusion.weighted_fusion import FUSION_MODES, FUSIONS, WeightedFusion

__all__ = ["FUSIONS", "FUSION_MODES", "SAMAdapter", "SpatialAdapter", "WeightedFusion"]
