"""The cost aggregator: guidance projections and ``num_layers`` × (spatial, class) aggregation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lmseg.aggregation.class_aggregation import ClassAggregation
from lmseg.aggregation.spatial_aggregation import SpatialAggregation
from lmseg.runtime import RuntimeOptions


class AggregationLayer(nn.Module):
    """Spatial aggregation followed by class aggregation (one CAT-Seg ``AggregatorLayer``).

    Args:
        spatial: the :class:`SpatialAggregation` block.
        classes: the :class:`ClassAggregation` block.
    """

    def __init__(self, *, spatial: SpatialAggregation, classes: ClassAggregation) -> None:
        super().__init__()
        self.spatial = spatial
        self.classes = classes

    def forward(
        self,
        x: torch.Tensor,
        appearance_guidance: torch.Tensor | None,
        text_guidance: torch.Tensor | None,
        *,
        inplace: bool = False,
        runtime: RuntimeOptions | None = None,
    ) -> torch.Tensor:
        """``x (B, K, h, w, C)``, guidance ``(B, h, w, Cg)`` and ``(B, K, Cg)`` -> ``(B, K, h, w, C)``.

        ``inplace``: without autograd, update ``x`` itself (the caller owns it).
        """
        x = self.spatial(x, appearance_guidance, inplace=inplace, runtime=runtime)
        return self.classes(x, text_guidance, inplace=inplace, runtime=runtime)


class CostAggregator(nn.Module):
    """Refines the embedded cost volume with appearance and text guidance.

    Appearance guidance is the (fused) image embedding projected D → Cg by a 3×3 conv + ReLU;
    text guidance is the mean prompt embedding, normalised, projected D → Cg by Linear + ReLU
    (CAT-Seg). Both are computed once per image and vocabulary, not per class.

    Args:
        layers: the stacked :class:`AggregationLayer` (2 in the reference models).
        embed_dim: joint embedding width D (512 for ViT-B, 768 for ViT-L).
        appearance_guidance_dim: Cg of the appearance guidance (128); 0 disables it.
        text_guidance_dim: Cg of the text guidance (128); 0 disables it.
    """

    def __init__(
        self,
        *,
        layers: list[AggregationLayer],
        embed_dim: int,
        appearance_guidance_dim: int = 128,
        text_guidance_dim: int = 128,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.appearance_projection = (
            nn.Sequential(nn.Conv2d(embed_dim, appearance_guidance_dim, 3, padding=1), nn.ReLU())
            if appearance_guidance_dim > 0
            else None
        )
        self.text_projection = (
            nn.Sequential(nn.Linear(embed_dim, text_guidance_dim), nn.ReLU())
            if text_guidance_dim > 0
            else None
        )

    def forward(
        self,
        x: torch.Tensor,
        image_embedding: torch.Tensor,
        text_embedding: torch.Tensor,
        *,
        inplace: bool = False,
        runtime: RuntimeOptions | None = None,
    ) -> torch.Tensor:
        """Aggregate.

        Args:
            x: embedded cost volume ``(B, K, h, w, C)``.
            image_embedding: (fused) dense image embedding ``(B, D, h, w)``.
            text_embedding: prompt embeddings of the K classes ``(B, K, P, D)``, L2-normalised.
            inplace: without autograd, update ``x`` layer by layer instead of allocating new
                K-sized tensors, so memory stays at one cost embedding (for callers that own
                ``x``, as :class:`~lmseg.model.LMSeg` does).
            runtime: chunk sizes, backend, pooling (:class:`~lmseg.runtime.RuntimeOptions`).

        Returns:
            ``(B, K, h, w, C)``.
        """
        appearance = None
        if self.appearance_projection is not None:
            appearance = rearrange(
                self.appearance_projection(image_embedding), "b c h w -> b h w c"
            )
        text = None
        if self.text_projection is not None:
            text = self.text_projection(F.normalize(text_embedding.mean(dim=2), dim=-1))
        inplace = inplace and not torch.is_grad_enabled()
        for layer in self.layers:
            x = layer(x, appearance, text, inplace=inplace, runtime=runtime)
        return x
