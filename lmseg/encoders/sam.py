"""The frozen SAM image encoder (``segment_anything``) as a dense feature extractor.

SAM's ViT (vit_b by default; vit_l, vit_h) runs on the image resized to its input size (1024 by
default). Smaller input sizes are allowed for speed: the absolute positional embedding is resized
bicubically and the relative-position tables of the global-attention blocks linearly (the same
interpolation SAM applies at run time). The output is the neck's ``(B, 256, s/16, s/16)``.

Unlike SAM's predictor, the image is resized to a square without keeping its aspect ratio or
padding, matching how the CLIP branch sees it, so both feature grids cover the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from lmseg.encoders.base import SPATIAL_ENCODERS, SpatialEncoder, load_weights_exactly, square_input
from lmseg.weights import resolve_file

SAM_PIXEL_MEAN = (123.675 / 255, 116.28 / 255, 103.53 / 255)
SAM_PIXEL_STD = (58.395 / 255, 57.12 / 255, 57.375 / 255)

# segment_anything.build_sam's encoder settings per variant, and the official checkpoints.
SAM_VARIANTS: dict[str, dict] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}
SAM_CHECKPOINTS = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
SAM_DOWNLOAD = "https://dl.fbaipublicfiles.com/segment_anything/"


class SAMEncoder(SpatialEncoder):
    """SAM's image encoder as the spatial encoder, with its own resizing and normalisation.

    Registered as ``"sam"``.

    Args:
        encoder: a ``segment_anything`` ``ImageEncoderViT``.
        image_size: square input side (1024 in SAM).
        image_chunk: images encoded together; None: one at a time on CPU (SAM's global
            attention materialises a (heads, 4096, 4096) map per image: batching five 1024-px
            crops ran at half the per-image speed of one), the whole batch on GPUs.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, *, encoder: ImageEncoderViT, image_size: int, image_chunk: int | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.image_size = image_size
        self.image_chunk = image_chunk
        self.register_buffer("mean", torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def out_channels(self) -> int:
        """Channels of the neck output (256 for the official models)."""
        return int(self.encoder.neck[0].out_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] -> SAM features ``(B, 256, s/16, s/16)``."""
        # SAM resizes with antialiasing (ResizeLongestSide.apply_image_torch).
        images = square_input(images, self.image_size, self.mean, self.std)
        step = self.image_chunk or (1 if images.device.type == "cpu" else len(images))
        # A graph traced for any batch size (lmseg.export) encodes the batch at once.
        if isinstance(images.shape[0], torch.SymInt) or len(images) <= step:
            return self.encoder(images)
        return torch.cat([self.encoder(part) for part in images.split(step)])


@SPATIAL_ENCODERS.register("sam")
def _build_sam(
    *,
    variant: str = "vit_b",
    image_size: int = 1024,
    patch_size: int = 16,
    window_size: int = 14,
    out_chans: int = 256,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    global_attn_indexes: Sequence[int] | None = None,
    weights: str | None = None,
) -> SAMEncoder:
    return build_sam_encoder(
        variant,
        image_size=image_size,
        checkpoint=weights,
        patch_size=patch_size,
        window_size=window_size,
        out_chans=out_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        global_attn_indexes=global_attn_indexes,
    )


def build_sam_encoder(
    variant: str = "vit_b",
    *,
    image_size: int = 1024,
    checkpoint: str | None = None,
    patch_size: int = 16,
    window_size: int = 14,
    out_chans: int = 256,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    global_attn_indexes: Sequence[int] | None = None,
) -> SAMEncoder:
    """Build a (frozen) SAM encoder, optionally loading an official SAM checkpoint.

    Args:
        variant: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``; the keyword overrides below replace its
            sizes (used for tiny test models).
        image_size: input side; a multiple of ``patch_size``.
        checkpoint: path of an official checkpoint (``sam_vit_b_01ec64.pth`` and siblings) or
            such a file name in ``$LMSEG_CACHE/sam``; loaded with ``weights_only=True``.
    """
    if variant not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM variant {variant!r}; choose one of {list(SAM_VARIANTS)}")
    if image_size % patch_size:
        raise ValueError(f"SAM image size {image_size} is not a multiple of patch size {patch_size}")
    cfg = dict(SAM_VARIANTS[variant])
    for key, value in dict(
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, global_attn_indexes=global_attn_indexes
    ).items():
        if value is not None:
            cfg[key] = value
    encoder = ImageEncoderViT(
        img_size=image_size,
        patch_size=patch_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        qkv_bias=True,
        use_rel_pos=True,
        window_size=window_size,
        out_chans=out_chans,
        embed_dim=cfg["embed_dim"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        global_attn_indexes=tuple(cfg["global_attn_indexes"]),
    )
    if checkpoint is not None:
        path = resolve_file(checkpoint, "sam", SAM_DOWNLOAD + SAM_CHECKPOINTS[variant])
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated, corrupt or not a PyTorch file
            raise ValueError(f"could not read SAM checkpoint {path}: {error}") from error
        load_sam_image_encoder(encoder, state)
    for p in encoder.parameters():
        p.requires_grad_(False)
    return SAMEncoder(encoder=encoder.eval(), image_size=image_size)


def load_sam_image_encoder(encoder: ImageEncoderViT, state: dict[str, torch.Tensor]) -> None:
    """Load the ``image_encoder.*`` weights of a full SAM state dict, resizing position tables.

    Keys of the prompt encoder and mask decoder are expected and unused; any other unexpected or
    missing key raises with the keys named.
    """
    prefix = "image_encoder."
    unexpected = [k for k in state if not k.startswith((prefix, "prompt_encoder.", "mask_decoder."))]
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        weights = {k: v for k, v in state.items()}  # a bare image-encoder state dict
        unexpected = []
    own = encoder.state_dict()
    for name, target in own.items():
        if name not in weights or weights[name].shape == target.shape:
            continue
        source = weights[name]
        if name == "pos_embed":  # (1, S, S, C) -> (1, s, s, C), bicubic
            resized = F.interpolate(
                source.permute(0, 3, 1, 2).float(), size=target.shape[1:3], mode="bicubic", align_corners=False
            )
            weights[name] = resized.permute(0, 2, 3, 1).to(source.dtype)
        elif name.endswith(("rel_pos_h", "rel_pos_w")):  # (2S-1, C) -> (2s-1, C), linear as SAM
            resized = F.interpolate(source.T[None].float(), size=target.shape[0], mode="linear")
            weights[name] = resized[0].T.to(source.dtype)
    load_weights_exactly(encoder, weights, "the SAM checkpoint does not fit the image encoder", unexpected)
