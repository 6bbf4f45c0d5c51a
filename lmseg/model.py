"""The reference LMSeg model, composed from lmseg's blocks.

``image → CLIP (dense) [+ SAM → adapter → weighted fusion] → cosine cost volume with the
class prompts → [class filtering] → 7×7 cost embedding → num_layers × (spatial, class)
aggregation → upsampling decoder → logits (B, K, 4h, 4w)``.

With fusion disabled (no SAM) the model is exactly CAT-Seg. The model returns logits; losses,
freezing policy and the training loop live in :mod:`lmseg.train`.
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
from lmseg.encoders.clip import CLIPEncoder
from lmseg.encoders.sam import SAMEncoder
from lmseg.fusion.sam_adapter import SAMAdapter
from lmseg.fusion.weighted_fusion import WeightedFusion


@dataclass
class ImageFeatures:
    """Everything the class-dependent part of the model needs from an image batch.

    Computed once per image by :meth:`LMSeg.encode_image` and reusable across vocabularies.

    Attributes:
        embedding: the (fused) dense embedding ``F`` ``(B, D, h, w)``.
        decoder_guidance: projected CLIP guidance ``[(B, g1, 2h, 2w), (B, g2, 4h, 4w)]``.
        clip_embedding: ``F_c`` before fusion ``(B, D, h, w)``.
        sam_embedding: adapted SAM features ``F_s`` ``(B, D, h, w)``, or None without fusion.
    """

    embedding: torch.Tensor
    decoder_guidance: list[torch.Tensor | None]
    clip_embedding: torch.Tensor
    sam_embedding: torch.Tensor | None = None


class LMSeg(nn.Module):
    """Open-vocabulary segmentation by cost aggregation over fused CLIP + SAM features.

    Args:
        clip: dense CLIP encoder (image and text towers).
        cost_volume: cosine cost volume and its P → C embedding.
        aggregator: spatial + class aggregation stack.
        decoder: upsampling decoder.
        sam: frozen SAM image encoder, or None for CAT-Seg.
        sam_adapter: SAM features → CLIP grid and width (with ``sam``).
        fusion: weighted fusion of CLIP and SAM features (with ``sam``).
        top_k: class filtering: keep the ``top_k`` classes of highest initial similarity when
            K > top_k (CAT-Seg: 256, revised LMSeg: 32); None for exact inference.
        config: the model's config as a plain dict, saved with checkpoints.
    """

    def __init__(
        self,
        *,
        clip: CLIPEncoder,
        cost_volume: CostVolume,
        aggregator: CostAggregator,
        decoder: UpsamplingDecoder,
        sam: SAMEncoder | None = None,
        sam_adapter: SAMAdapter | None = None,
        fusion: WeightedFusion | None = None,
        top_k: int | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if (sam is None) != (fusion is None) or (sam is None) != (sam_adapter is None):
            raise ValueError("sam, sam_adapter and fusion must be given together (or none of them)")
        self.clip = clip
        self.sam = sam
        self.sam_adapter = sam_adapter
        self.fusion = fusion
        self.cost_volume = cost_volume
        self.aggregator = aggregator
        self.decoder = decoder
        self.top_k = top_k
        self.config: dict[str, Any] = dict(config or {})

    @property
    def num_prompts(self) -> int:
        """P, the prompts per class the cost embedding expects."""
        return self.cost_volume.num_prompts

    @property
    def embed_dim(self) -> int:
        """D, the joint embedding width of text embeddings."""
        return self.clip.embed_dim

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

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Class-independent work for ``(B, 3, H, W)`` RGB images in [0, 1]."""
        images = self._check_input(images, "images")
        clip = self.clip(images)
        embedding, sam_embedding = clip.embedding, None
        if self.sam is not None and self.sam_adapter is not None and self.fusion is not None:
            sam_embedding = self.sam_adapter(self.sam(images), tuple(embedding.shape[-2:]))
            embedding = self.fusion(embedding, sam_embedding)
        return ImageFeatures(
            embedding=embedding,
            decoder_guidance=self.decoder.prepare_guidance(clip.guidance),
            clip_embedding=clip.embedding,
            sam_embedding=sam_embedding,
        )

    def decode(self, features: ImageFeatures, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Class-dependent part: cost volume, aggregation and decoding.

        Args:
            features: from :meth:`encode_image`.
            text_embeddings: prompt embeddings ``(K, P, D)`` shared by the batch, or
                ``(B, K, P, D)``.

        Returns:
            Logits ``(B, K, 4h, 4w)``; classes removed by class filtering get −100.
        """
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
        if self.top_k is not None and num_classes > self.top_k:
            index = select_classes(cost, self.top_k)
            cost = gather_classes(cost, index, dim=2)
            text = gather_classes(text, index, dim=1)
        # The cost embedding is this call's own temporary: aggregate it in place at inference.
        x = self.aggregator(self.cost_volume(cost), embedding, text, inplace=True)
        logits = self.decoder(x, features.decoder_guidance)
        if index is not None:
            logits = scatter_classes(logits, index, num_classes)
        return logits

    def forward(self, images: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] and ``(K, P, D)`` prompts -> logits ``(B, K, 4h, 4w)``."""
        return self.decode(self.encode_image(images), text_embeddings)
