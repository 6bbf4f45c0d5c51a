"""SAM adapter: SAM features resized to the CLIP grid and projected into CLIP's joint space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SAMAdapter(nn.Module):
    """Resize SAM features to the CLIP grid (bilinear) and project them 256 → D.

    Resizing comes first so the projection runs on h×w rather than SAM's 64×64 grid; both are
    linear, so the order changes only the cost.

    Args:
        in_channels: SAM neck channels (256).
        embed_dim: D, the CLIP joint embedding width.
    """

    def __init__(self, *, in_channels: int = 256, embed_dim: int = 512) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=1)

    def forward(self, sam_features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(B, 256, S, S)`` -> ``F_s (B, D, h, w)`` for ``grid = (h, w)``."""
        if tuple(sam_features.shape[-2:]) != tuple(grid):
            sam_features = F.interpolate(
                sam_features, size=grid, mode="bilinear", align_corners=False
            )
        return self.proj(sam_features)
