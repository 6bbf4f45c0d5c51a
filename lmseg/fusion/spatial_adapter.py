"""Spatial adapter: spatial-encoder (SAM-role) features resized to the vision-language grid and
projected into the joint space (LMSeg's SAM adapter)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialAdapter(nn.Module):
    """Resize spatial features to the vision-language grid (bilinear) and project them C → D.

    Resizing comes first so the projection runs on h×w rather than SAM's 64×64 grid; both are
    linear, so the order changes only the cost.

    Args:
        in_channels: C, the spatial encoder's channels (256 for SAM's neck).
        embed_dim: D, the joint embedding width.
    """

    def __init__(self, *, in_channels: int = 256, embed_dim: int = 512) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=1)

    def forward(self, features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(B, C, s, s)`` -> ``F_s (B, D, h, w)`` for ``grid = (h, w)``."""
        if tuple(features.shape[-2:]) != tuple(grid):
            features = F.interpolate(features, size=grid, mode="bilinear", align_corners=False)
        return self.proj(features)


# The name of earlier releases, where SAM was the only spatial encoder.
SAMAdapter = SpatialAdapter
