"""Image and text encoders: dense CLIP (open_clip) and the frozen SAM image encoder."""

from lmseg.encoders.clip import CLIPEncoder, CLIPFeatures, load_clip_model
from lmseg.encoders.sam import SAMEncoder, build_sam_encoder, load_sam_image_encoder

__all__ = [
    "CLIPEncoder",
    "CLIPFeatures",
    "SAMEncoder",
    "build_sam_encoder",
    "load_clip_model",
    "load_sam_image_encoder",
]
