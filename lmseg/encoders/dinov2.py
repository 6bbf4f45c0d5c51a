"""DINOv2 (timm's ``vit_*_patch14_dinov2`` models) as the spatial encoder.

The output is DINOv2's normalised patch tokens (``x_norm_patchtokens`` in DINOv2's own code; the
CLS and register tokens are dropped) reshaped to their grid: ``(B, C, s/14, s/14)`` for a square
input of side ``s``, a multiple of the patch size 14. DINOv2 was trained at 518 px (a 37×37 grid).
At another size the model is built for that size and the position embedding of the weights is
resized once when they are loaded, by timm's ``checkpoint_filter_fn`` (bicubic, antialiased), the
path timm takes for its own DINOv2 weights. DINOv2's hub model instead resizes at every call
(bicubic, no antialiasing, a 0.1 offset), so the two agree exactly only at 518 px.

Weights are the official files of ``facebookresearch/dinov2`` (``dinov2_vits14_pretrain.pth``: a
plain state dict with ``cls_token``, ``pos_embed``, ``mask_token``, ``blocks.N.*``...), converted
by timm's ``checkpoint_filter_fn`` (it drops the unused ``mask_token``, renames the SwiGLU layers of
ViT-g and moves the register models' CLS position into the CLS token) and then loaded strictly.
timm's own layout (its ``model.safetensors``) loads the same way. Images are resized to a square
(bilinear, antialiased) and normalised with ImageNet's mean and standard deviation, DINOv2's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import timm
import torch
from einops import rearrange
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from lmseg.encoders.base import SPATIAL_ENCODERS, SpatialEncoder, load_weights_exactly, square_input
from lmseg.encoders.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OfficialWeights,
    check_int,
    find_weights,
)

__all__ = [
    "DINOV2_VARIANTS",
    "DINOV2_WEIGHTS",
    "DINOv2Encoder",
    "build_dinov2_encoder",
    "load_dinov2_weights",
]

PATCH_SIZE = 14

#: lmseg's variant names -> timm's architectures (sizes live in timm's registry).
DINOV2_VARIANTS: dict[str, str] = {
    "vits14": "vit_small_patch14_dinov2",
    "vitb14": "vit_base_patch14_dinov2",
    "vitl14": "vit_large_patch14_dinov2",
    "vitg14": "vit_giant_patch14_dinov2",
    "vits14_reg4": "vit_small_patch14_reg4_dinov2",
    "vitb14_reg4": "vit_base_patch14_reg4_dinov2",
    "vitl14_reg4": "vit_large_patch14_reg4_dinov2",
    "vitg14_reg4": "vit_giant_patch14_reg4_dinov2",
}

_URL = "https://dl.fbaipublicfiles.com/dinov2/"
#: The released backbones per variant (Meta publishes no sizes or checksums), from the model table
#: of facebookresearch/dinov2's README and its hub code (``dinov2/hub/backbones.py``).
DINOV2_WEIGHTS: dict[str, OfficialWeights] = {
    variant: OfficialWeights(
        file=f"dinov2_{variant}_pretrain.pth",
        url=f"{_URL}dinov2_{variant[:6]}/dinov2_{variant}_pretrain.pth",
        licence="Apache-2.0",
        source="facebookresearch/dinov2 README.md, dinov2/hub/backbones.py",
    )
    for variant in DINOV2_VARIANTS
}


class DINOv2Encoder(SpatialEncoder):
    """A DINOv2 ViT's dense patch tokens as the spatial encoder.

    Registered as ``"dinov2"``.

    Args:
        model: a timm ``VisionTransformer`` (a ``vit_*_patch14_dinov2`` architecture) built for
            ``image_size``.
        image_size: square input side, a multiple of the patch size.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, *, model: VisionTransformer, image_size: int) -> None:
        super().__init__()
        patch = model.patch_embed.patch_size[0]
        if image_size % patch or tuple(model.patch_embed.img_size) != (image_size, image_size):
            raise ValueError(
                f"the model is built for {tuple(model.patch_embed.img_size)} px with patch {patch}; "
                f"image_size {image_size} must equal it"
            )
        self.model = model
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def out_channels(self) -> int:
        """C, the ViT's width (384 for ViT-S/14)."""
        return int(self.model.embed_dim)

    @property
    def grid_size(self) -> int:
        """s/14, the side of the output grid."""
        return self.image_size // int(self.model.patch_embed.patch_size[0])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize ``(B, 3, H, W)`` RGB in [0, 1] to ``image_size`` (bilinear, antialiased) and
        normalise with ImageNet's statistics."""
        return square_input(images, self.image_size, self.mean, self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] -> normalised patch tokens ``(B, C, s/14, s/14)``."""
        tokens = self.model.forward_features(self.preprocess(images))  # (B, prefix + h·w, C)
        patches = tokens[:, self.model.num_prefix_tokens :]
        return rearrange(patches, "b (h w) c -> b c h w", h=self.grid_size)


@SPATIAL_ENCODERS.register("dinov2")
def build_dinov2_encoder(
    *,
    variant: str = "vitb14",
    image_size: int = 518,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    cache_dir: str | None = None,
) -> DINOv2Encoder:
    """Build a (frozen) DINOv2 ViT, optionally loading an official backbone file.

    Args:
        variant: one of :data:`DINOV2_VARIANTS` (``"vits14"``, ``"vitb14"``, ``"vitl14"``,
            ``"vitg14"``, and the ``*_reg4`` models with four register tokens); the size keywords
            replace its sizes (tiny test models).
        image_size: square input side, a multiple of 14 (518: DINOv2's training size).
        embed_dim: ViT width.
        depth: number of blocks.
        num_heads: attention heads (must divide ``embed_dim``).
        weights: an official backbone (``dinov2_vitb14_pretrain.pth``) or timm's layout of it; a
            path, or a file name in ``cache_dir`` or ``$LMSEG_CACHE/dinov2``. ``.pth`` files are
            read with ``weights_only=True``; ``.safetensors`` also load. Never downloaded. None:
            random weights (timm is always asked for ``pretrained=False``).
        cache_dir: a folder to look for ``weights`` in.

    Raises:
        ValueError: an unknown variant, or a size out of bounds, named.
    """
    if variant not in DINOV2_VARIANTS:
        raise ValueError(f"unknown DINOv2 variant {variant!r}; choose one of {list(DINOV2_VARIANTS)}")
    check_int("image_size", image_size, PATCH_SIZE, 14 * 256)
    if image_size % PATCH_SIZE:
        raise ValueError(f"DINOv2 image_size must be a multiple of {PATCH_SIZE}, got {image_size}")
    sizes: dict[str, Any] = {}
    if embed_dim is not None:
        sizes["embed_dim"] = check_int("embed_dim", embed_dim, 1, 4096)
    if depth is not None:
        sizes["depth"] = check_int("depth", depth, 1, 64)
    if num_heads is not None:
        sizes["num_heads"] = check_int("num_heads", num_heads, 1, 64)
    model = timm.create_model(
        DINOV2_VARIANTS[variant], pretrained=False, num_classes=0, img_size=image_size, **sizes
    )
    if not isinstance(model, VisionTransformer):  # e.g. TIMM_USE_NAFLEXVIT=true swaps the class
        raise TypeError(f"timm built a {type(model).__name__} for {DINOV2_VARIANTS[variant]}, not a VisionTransformer")
    if weights is not None:
        path = find_weights(weights, kind="dinov2", cache_dir=cache_dir, hint=DINOV2_WEIGHTS[variant].url)
        if path.suffix == ".safetensors":
            state: Mapping[str, Any] = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        load_dinov2_weights(model, state)
    model.requires_grad_(False)
    return DINOv2Encoder(model=model.eval(), image_size=image_size)


def load_dinov2_weights(model: VisionTransformer, state: Mapping[str, Any]) -> None:
    """Convert an official DINOv2 state dict with timm's ``checkpoint_filter_fn`` and load it
    strictly into a timm DINOv2 ViT.

    Raises:
        ValueError: the converted weights do not fit the model; missing, unexpected and
            mis-shaped keys named.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"a DINOv2 weights file must hold a state dict, got {type(state).__name__}")
    # checkpoint_filter_fn pops keys from what it is given: hand it a copy.
    converted = checkpoint_filter_fn(dict(state), model)
    load_weights_exactly(model, converted, "the DINOv2 weights do not fit the model")
