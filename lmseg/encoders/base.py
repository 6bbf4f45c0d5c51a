"""The two encoder roles of the model, and a registry of implementations for each.

- The **vision-language encoder** (the CLIP role) gives the dense image embedding ``F_c`` in the
  joint image-text space, the intermediate features that guide the decoder, and the text tower
  that embeds the class prompts. It also names its attention projections, so that a fine-tuning
  policy (CAT-Seg trains the query and value projections) needs no knowledge of its layout.
- The **spatial encoder** (the SAM role) gives dense features at its own grid, which the
  spatial adapter resizes and projects into the joint space before fusion.

Each role is a small ``nn.Module`` interface; implementations register a builder in
:data:`VISION_LANGUAGE_ENCODERS` or :data:`SPATIAL_ENCODERS` and are then selected by a config
section ``{"type": name, **options}``. Builders receive the options and, from the factory, the
weights source (``weights``: a file, or a tag the implementation knows) and ``cache_dir``;
weights sources are never part of a config, so a saved checkpoint cannot point the loader at a
file or a server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lmseg.registry import Registry

__all__ = [
    "SPATIAL_ENCODERS",
    "VISION_LANGUAGE_ENCODERS",
    "AttentionWeights",
    "DenseFeatures",
    "load_weights_exactly",
    "SpatialEncoder",
    "VisionLanguageEncoder",
    "needs_resize",
    "square_input",
]


@dataclass
class DenseFeatures:
    """Dense output of a vision-language encoder.

    Attributes:
        embedding: dense joint-space embedding ``F_c`` ``(B, D, h, w)``.
        guidance: intermediate features that guide the decoder, each ``(B, width, h, w)``.
    """

    embedding: torch.Tensor
    guidance: list[torch.Tensor]


@dataclass
class AttentionWeights:
    """One attention block's projection weights, as a fine-tuning policy sees them.

    Attributes:
        name: the parameter's name relative to the encoder (``model.transformer.resblocks.0
            .attn.in_proj_weight``).
        weight: the parameter; packed projections share one tensor.
        rows: ``"q"``, ``"k"``, ``"v"`` → the rows of ``weight`` holding that projection.
        unused: projections the encoder's forward never uses (CAT-Seg's dense last block uses
            only the value path), which a policy must leave frozen.
    """

    name: str
    weight: nn.Parameter
    rows: dict[str, slice]
    unused: frozenset[str] = field(default_factory=frozenset)


class VisionLanguageEncoder(nn.Module):
    """The CLIP role: dense image embedding, decoder guidance and text tower.

    Images are RGB float tensors ``(B, 3, H, W)`` in [0, 1]; the encoder owns resizing and
    normalisation. Implementations define the properties and methods below.
    """

    #: (H, W) the dense path resizes images to.
    image_size: tuple[int, int]

    @property
    def embed_dim(self) -> int:
        """D, the joint embedding width."""
        raise NotImplementedError

    @property
    def width(self) -> int:
        """Channels of the decoder-guidance features."""
        raise NotImplementedError

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the dense feature grid."""
        raise NotImplementedError

    @property
    def pixel_mean(self) -> tuple[float, float, float]:
        """The RGB colour in [0, 1] that the encoder's normalisation maps to zero (the padding
        colour of CAT-Seg's whole-image preprocessing)."""
        return (0.0, 0.0, 0.0)

    def forward(self, images: torch.Tensor) -> DenseFeatures:
        """``(B, 3, H, W)`` RGB in [0, 1] -> :class:`DenseFeatures`."""
        raise NotImplementedError

    # -- text tower (the TextEncoder protocol of lmseg.prompts) -----------------------------
    @property
    def context_length(self) -> int:
        """Token sequence length of the text tower."""
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``N`` strings -> ``(N, context_length)`` token ids."""
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, context_length)`` token ids -> unnormalised text embeddings ``(N, D)``."""
        raise NotImplementedError

    def text_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the text tower, for text-embedding cache keys."""
        raise NotImplementedError

    @property
    def text_architecture(self) -> str:
        """What the text weights alone do not say (e.g. the activation), for cache keys."""
        return type(self).__name__

    # -- fine-tuning -----------------------------------------------------------------------
    def attention_weights(self) -> Sequence[AttentionWeights]:
        """The attention projections of both towers, for fine-tuning policies.

        Raises:
            NotImplementedError: the encoder does not expose them (then only "none" and "full"
                fine-tuning apply).
        """
        raise NotImplementedError(f"{type(self).__name__} does not expose its attention weights")


class SpatialEncoder(nn.Module):
    """The SAM role: dense features ``(B, C, s, s)`` of ``(B, 3, H, W)`` RGB images in [0, 1].

    The encoder owns resizing and normalisation; it is frozen by the training recipe.
    """

    @property
    def out_channels(self) -> int:
        """C, the channels of the features."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] -> ``(B, C, s, s)``."""
        raise NotImplementedError


def needs_resize(images: torch.Tensor, size: tuple[int, int]) -> bool:
    """Whether ``(B, 3, H, W)`` images must be resized to ``size`` (H, W).

    A graph traced for any image size (:mod:`lmseg.export`) always resizes: bilinear resizing to
    the size an image already has is the identity, so the graph agrees with the eager skip.
    """
    h, w = images.shape[-2:]
    if isinstance(h, torch.SymInt) or isinstance(w, torch.SymInt):
        return True
    return (int(h), int(w)) != tuple(size)


def square_input(
    images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] resized to a ``size`` square (bilinear, antialiased, as SAM,
    SAM 2 and DINOv2 resize) and normalised with ``mean`` and ``std`` (``(1, 3, 1, 1)``).

    Raises:
        ValueError: the images are not ``(B, 3, H, W)``.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
    if needs_resize(images, (size, size)):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (images - mean.to(images.dtype)) / std.to(images.dtype)


def load_weights_exactly(
    module: nn.Module,
    weights: Mapping[str, torch.Tensor],
    what: str,
    unexpected: Sequence[str] = (),
) -> None:
    """Load ``weights`` into ``module`` only if they are exactly its parameters and buffers.

    Args:
        module: the encoder (or its inner network) to fill.
        weights: its state dict, already in the module's own key names.
        what: how the error names the source and target, e.g. ``"SAM checkpoint ... image
            encoder"`` is given as ``"the SAM checkpoint does not fit the image encoder"``.
        unexpected: keys of the source file the caller already found unusable.

    Raises:
        ValueError: keys missing, unexpected or of another shape, the first ten of each named.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [*unexpected, *(k for k in weights if k not in own)]
    mismatched = [
        f"{k}: file {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{what}: missing {missing[:10]}, unexpected {unexpected[:10]}, mismatched {mismatched[:10]}"
        )
    module.load_state_dict(dict(weights), strict=True)


VISION_LANGUAGE_ENCODERS: Registry[VisionLanguageEncoder] = Registry(
    "vision-language encoder", context=("weights", "cache_dir")
)
SPATIAL_ENCODERS: Registry[SpatialEncoder] = Registry(
    "spatial encoder", context=("weights", "cache_dir")
)
