"""Encoders by role: the vision-language encoder (CLIP role: dense CLIP on open_clip) and the
spatial encoder (SAM role: the frozen SAM image encoder), with a registry for each."""

from lmseg.encoders.base import (
    SPATIAL_ENCODERS,
    VISION_LANGUAGE_ENCODERS,
    AttentionWeights,
    DenseFeatures,
    SpatialEncoder,
    VisionLanguageEncoder,
)
from lmseg.encoders.clip import CLIPEncoder, CLIPFeatures, build_open_clip_encoder, load_clip_model
from lmseg.encoders.sam import SAMEncoder, build_sam_encoder, load_sam_image_encoder

__all__ = [
    "SPATIAL_ENCODERS",
    "VISION_LANGUAGE_ENCODERS",
    "AttentionWeights",
    "CLIPEncoder",
    "CLIPFeatures",
    "DenseFeatures",
    "SAMEncoder",
    "SpatialEncoder",
    "VisionLanguageEncoder",
    "build_open_clip_encoder",
    "build_sam_encoder",
    "load_clip_model",
    "load_sam_image_encoder",
]
