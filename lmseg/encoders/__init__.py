"""Encoders by role, with a registry for each: vision-language encoders (the CLIP role: dense
CLIP and dense SigLIP on open_clip) and spatial encoders (the SAM role: SAM's and SAM 2's image
encoders, DINOv2). Importing this package registers them all; optional dependencies (``sam2``)
are imported only when their encoder is built."""

from lmseg.encoders.base import (
    SPATIAL_ENCODERS,
    VISION_LANGUAGE_ENCODERS,
    AttentionWeights,
    DenseFeatures,
    SpatialEncoder,
    VisionLanguageEncoder,
)
from lmseg.encoders.clip import CLIPEncoder, CLIPFeatures, build_open_clip_encoder, load_clip_model
from lmseg.encoders.common import OfficialWeights
from lmseg.encoders.dinov2 import DINOv2Encoder, build_dinov2_encoder
from lmseg.encoders.sam import SAMEncoder, build_sam_encoder, load_sam_image_encoder
from lmseg.encoders.sam2 import SAM2Encoder, build_sam2_encoder
from lmseg.encoders.siglip import SigLIPEncoder, build_siglip_encoder

__all__ = [
    "SPATIAL_ENCODERS",
    "VISION_LANGUAGE_ENCODERS",
    "AttentionWeights",
    "CLIPEncoder",
    "CLIPFeatures",
    "DINOv2Encoder",
    "DenseFeatures",
    "OfficialWeights",
    "SAM2Encoder",
    "SAMEncoder",
    "SigLIPEncoder",
    "SpatialEncoder",
    "VisionLanguageEncoder",
    "build_dinov2_encoder",
    "build_open_clip_encoder",
    "build_sam2_encoder",
    "build_sam_encoder",
    "build_siglip_encoder",
    "load_clip_model",
    "load_sam_image_encoder",
]
