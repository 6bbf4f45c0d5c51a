"""The reference LMSeg model, composed from lmseg's blocks by role.

``image → vision-language encoder (dense CLIP) [+ spatial encoder (SAM) → spatial adapter →
fusion] → cosine cost volume with the class prompts → [class filtering] → 7×7 cost embedding →
num_layers × (spatial, class) aggregation → upsampling decoder → logits (B, K, 4h, 4w)``.

Without a spatial encoder and fusion the model is exactly CAT-Seg. The model returns logits;
losses, freezing policy and the training loop live in :mod:`lmseg.train`. How it runs (chunk
sizes, attention backend, class filtering, pooling, preprocessing) is a
:class:`~lmseg.runtime.RuntimeOptions` passed per call, never part of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmseg.aggregation.aggregator import CostAggregator
from lmseg.aggregation.upsampling_decoder import UpsamplingDecoder
from lmseg.cost_volume import (
    CostVolume,
    cosine_cost,
    gather_classes,
    scatter_classes,
    select_classes,
)
from lmseg.encoders.base import SpatialEncoder, VisionLanguageEncoder
from lmseg.fusion.spatial_adapter import SpatialAdapter
from lmseg.runtime import RuntimeOptions, runtime_or_default

# CAT-Seg's whole-image path pads the normalised image to a multiple of this (detectron2's
# ImageList with MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32) before resizing it.
CATSEG_SIZE_DIVISIBILITY = 32


@dataclass
class ImageFeatures:
    """Everything the class-dependent part of the model needs from an image batch.

    Computed once per image by :meth:`LMSeg.encode_image` and reusable across vocabularies.

    Attributes:
        embedding: the (fused) dense embedding ``F`` ``(B, D, h, w)``.
        decoder_guidance: projected guidance ``[(B, g1, 2h, 2w), (B, g2, 4h, 4w)]``.
        vision_language_embedding: ``F_c`` before fusion ``(B, D, h, w)``.
        spatial_embedding: adapted spatial features ``F_s`` ``(B, D, h, w)``, or None without
            fusion.
    """

    embedding: torch.Tensor
    decoder_guidance: list[torch.Tensor | None]
    vision_language_embedding: torch.Tensor
    spatial_embedding: torch.Tensor | None = None


def pad_to_multiple(images: torch.Tensor, multiple: int, value: torch.Tensor) -> torch.Tensor:
    """Pad ``(B, 3, H, W)`` at the bottom and right to multiples of ``multiple`` with the RGB
    colour ``value`` ``(3,)`` (CAT-Seg pads normalised images with 0, i.e. with the mean)."""
    h, w = images.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return images
    out = value.to(images).view(1, 3, 1, 1).expand(images.shape[0], 3, h + ph, w + pw).clone()
    out[..., :h, :w] = images
    return out


class LMSeg(nn.Module):
    """Open-vocabulary segmentation by cost aggregation over fused image features.

    Args:
        vision_language_encoder: the CLIP role: dense image embedding, guidance, text tower.
        cost_volume: cosine cost volume and its P → C embedding.
        aggregator: spatial + class aggregation stack.
        decoder: upsampling decoder.
        spatial_encoder: the SAM role (frozen dense features), or None for CAT-Seg.
        spatial_adapter: spatial features → the vision-language grid and width.
        fusion: combines ``F_c`` and ``F_s`` into ``F``.
        default_top_k: the class filtering used when the runtime asks for ``"auto"`` (CAT-Seg:
            ``pad_len`` = 256; LMSeg's revised paper: 32; None: exact). Not saved: the factory
            derives it from the variant.
        config: the model's architecture as a plain dict, saved with checkpoints.
    """

    def __init__(
        self,
        *,
        vision_language_encoder: VisionLanguageEncoder,
        cost_volume: CostVolume,
        aggregator: CostAggregator,
        decoder: UpsamplingDecoder,
        spatial_encoder: SpatialEncoder | None = None,
        spatial_adapter: SpatialAdapter | None = None,
        fusion: nn.Module | None = None,
        default_top_k: int | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        parts = (spatial_encoder is None, spatial_adapter is None, fusion is None)
        if len(set(parts)) != 1:
            raise ValueError(
                "spatial_encoder, spatial_adapter and fusion must be given together (or none of them)"
            )
        self.vision_language_encoder = vision_language_encoder
        self.spatial_encoder = spatial_encoder
        self.spatial_adapter = spatial_adapter
        self.fusion = fusion
        self.cost_volume = cost_volume
        self.aggregator = aggregator
        self.decoder = decoder
        self.default_top_k = default_top_k
        self.config: dict[str, Any] = dict(config or {})

    @property
    def text_encoder(self) -> VisionLanguageEncoder:
        """The text tower that embeds class prompts (the vision-language encoder's)."""
        return self.vision_language_encoder

    @property
    def num_prompts(self) -> int:
        """P, the prompts per class the cost embedding expects."""
        return self.cost_volume.num_prompts

    @property
    def embed_dim(self) -> int:
        """D, the joint embedding width of text embeddings."""
        return self.vision_language_encoder.embed_dim

    def top_k(self, runtime: RuntimeOptions | None = None) -> int | None:
        """The class filtering a call with ``runtime`` applies (None: exact)."""
        value = runtime_or_default(runtime).top_k
        return self.default_top_k if value == "auto" else value

    def _check_input(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """Refuse tensors on another device or of a non-float dtype; match the weights' dtype."""
        weight = self.cost_volume.embed.weight
        if tensor.device != weight.device:
            raise ValueError(
                f"{what} are on {tensor.device} but the model is on {weight.device}; "
                f"move them with .to({str(weight.device)!r})"
            )
        if not tensor.is_floating_point():
            raise TypeError(
                f"{what} must be floating point, got {tensor.dtype}"
                + (" (images: RGB in [0, 1]; lmseg.io.load_image converts uint8)" if what == "images" else "")
            )
        return tensor.to(weight.dtype)

    def encode_image(
        self, images: torch.Tensor, runtime: RuntimeOptions | None = None
    ) -> ImageFeatures:
        """Class-independent work for ``(B, 3, H, W)`` RGB images in [0, 1].

        With ``runtime.preprocessing == "catseg"`` the images are first padded at the bottom and
        right to a multiple of 32 with the colour the vision-language encoder normalises to zero,
        as CAT-Seg's whole-image inference does; the logits then cover the padded image.
        """
        images = self._check_input(images, "images")
        if runtime_or_default(runtime).preprocessing == "catseg":
            mean = torch.tensor(self.vision_language_encoder.pixel_mean)
            images = pad_to_multiple(images, CATSEG_SIZE_DIVISIBILITY, mean)
        dense = self.vision_language_encoder(images)
        embedding, spatial_embedding = dense.embedding, None
        if self.spatial_encoder is not None and self.spatial_adapter is not None and self.fusion is not None:
            spatial_embedding = self.spatial_adapter(
                self.spatial_encoder(images), tuple(embedding.shape[-2:])
            )
            embedding = self.fusion(embedding, spatial_embedding)
        return ImageFeatures(
            embedding=embedding,
            decoder_guidance=self.decoder.prepare_guidance(dense.guidance),
            vision_language_embedding=dense.embedding,
            spatial_embedding=spatial_embedding,
        )

    def decode(
        self,
        features: ImageFeatures,
        text_embeddings: torch.Tensor,
        runtime: RuntimeOptions | None = None,
    ) -> torch.Tensor:
        """Class-dependent part: cost volume, aggregation and decoding.

        Args:
            features: from :meth:`encode_image`.
            text_embeddings: prompt embeddings ``(K, P, D)`` shared by the batch, or
                ``(B, K, P, D)``.
            runtime: class filtering, chunk sizes, backend, pooling (defaults when None).

        Returns:
            Logits ``(B, K, 4h, 4w)``; classes removed by class filtering get −100.
        """
        runtime = runtime_or_default(runtime)
        embedding = features.embedding
        b = embedding.shape[0]
        given = tuple(text_embeddings.shape)  # for the error message: the caller's shape
        if text_embeddings.dim() == 3:
            text_embeddings = text_embeddings.unsqueeze(0).expand(b, -1, -1, -1)
        if text_embeddings.dim() != 4 or text_embeddings.shape[-1] != embedding.shape[1]:
            raise ValueError(
                f"text embeddings must be (K, P, {embedding.shape[1]}) or "
                f"(B, K, P, {embedding.shape[1]}), got {given}"
            )
        num_classes = text_embeddings.shape[1]
        if num_classes == 0:
            raise ValueError("the vocabulary is empty: give at least one class")
        text = F.normalize(self._check_input(text_embeddings, "text embeddings"), dim=-1)
        cost = cosine_cost(embedding, text)
        index = None
        top_k = self.top_k(runtime)
        if top_k is not None and num_classes > top_k:
            index = select_classes(cost, top_k)
            cost = gather_classes(cost, index, dim=2)
            text = gather_classes(text, index, dim=1)
        # The cost embedding is this call's own temporary: aggregate it in place at inference.
        x = self.aggregator(self.cost_volume(cost), embedding, text, inplace=True, runtime=runtime)
        logits = self.decoder(x, features.decoder_guidance, runtime=runtime)
        if index is not None:
            logits = scatter_classes(logits, index, num_classes)
        return logits

    def forward(
        self,
        images: torch.Tensor,
        text_embeddings: torch.Tensor,
        runtime: RuntimeOptions | None = None,
    ) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] and ``(K, P, D)`` prompts -> logits ``(B, K, 4h, 4w)``."""
        return self.decode(self.encode_image(images, runtime), text_embeddings, runtime)
