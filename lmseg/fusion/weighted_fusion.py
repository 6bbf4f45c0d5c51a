"""Weighted fusion of CLIP and SAM features: ``F = w·F_c + (1 − w)·F_s`` (LMSeg).

``F_c`` comes from the vision-language encoder, ``F_s`` from the spatial encoder through the
spatial adapter. Registered in :data:`FUSIONS` as ``"weighted"``.

``w`` is kept in [0, 1] as the sigmoid of a learnable parameter and comes in four shapes:

- ``"scalar"``: one weight for everything;
- ``"channel"``: one weight per channel, ``(1, D, 1, 1)``;
- ``"pixel"``: one learnable weight per grid position, ``(1, 1, h, w)``;
- ``"adaptive"``: predicted per pixel by a small conv head from both inputs (the revised
  paper's adaptive variant). Its last layer starts at zero weights and a bias of
  ``logit(init)``, so every variant starts at ``w = init``.
"""

from __future__ import annotations

import math
from typing import Literal, cast

import torch
from torch import nn

from lmseg.registry import Registry

# Fusions of the dense vision-language embedding with the adapted spatial features. Builders
# take their options plus the context the factory knows: ``embed_dim`` and ``grid``.
FUSIONS: Registry[nn.Module] = Registry("fusion", context=("embed_dim", "grid"))

FusionMode = Literal["scalar", "channel", "pixel", "adaptive"]
FUSION_MODES: tuple[str, ...] = ("scalar", "channel", "pixel", "adaptive")


class WeightedFusion(nn.Module):
    """Learnable convex combination of two feature maps.

    Args:
        mode: ``"scalar"``, ``"channel"``, ``"pixel"`` or ``"adaptive"``.
        embed_dim: D, channels of both inputs.
        grid: (h, w), needed by ``"pixel"``.
        init: initial weight of the CLIP features, in (0, 1).
        hidden_dim: hidden channels of the ``"adaptive"`` head.
    """

    def __init__(
        self,
        *,
        mode: FusionMode = "scalar",
        embed_dim: int = 512,
        grid: tuple[int, int] = (24, 24),
        init: float = 0.5,
        hidden_dim: int = 64,
    ) -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"unknown fusion mode {mode!r}; choose one of {FUSION_MODES}")
        if not 0.0 < init < 1.0:
            raise ValueError(f"initial fusion weight must lie in (0, 1), got {init}")
        self.mode = mode
        logit = math.log(init / (1.0 - init))
        self.weight_logit: nn.Parameter | None = None
        self.head: nn.Sequential | None = None
        if mode == "adaptive":
            last = nn.Conv2d(hidden_dim, 1, 1)
            nn.init.zeros_(last.weight)
            nn.init.constant_(cast(torch.Tensor, last.bias), logit)
            self.head = nn.Sequential(nn.Conv2d(2 * embed_dim, hidden_dim, 3, padding=1), nn.ReLU(), last)
        else:
            shape = {"scalar": (1, 1, 1, 1), "channel": (1, embed_dim, 1, 1), "pixel": (1, 1, *grid)}
            self.weight_logit = nn.Parameter(torch.full(shape[mode], logit))

    def weight(self, clip_features: torch.Tensor, sam_features: torch.Tensor) -> torch.Tensor:
        """The CLIP weight ``w`` in [0, 1], broadcastable to ``(B, D, h, w)``."""
        if self.head is not None:
            return torch.sigmoid(self.head(torch.cat([clip_features, sam_features], dim=1)))
        assert self.weight_logit is not None
        if self.mode == "pixel" and self.weight_logit.shape[-2:] != clip_features.shape[-2:]:
            raise ValueError(
                f"per-pixel fusion weights were built for a {tuple(self.weight_logit.shape[-2:])} "
                f"grid, features have {tuple(clip_features.shape[-2:])}"
            )
        return torch.sigmoid(self.weight_logit)

    def forward(self, clip_features: torch.Tensor, sam_features: torch.Tensor) -> torch.Tensor:
        """``F_c, F_s (B, D, h, w)`` -> ``F = w·F_c + (1 − w)·F_s`` ``(B, D, h, w)``."""
        if clip_features.shape != sam_features.shape:
            raise ValueError(
                f"fusion inputs differ in shape: CLIP {tuple(clip_features.shape)} vs "
                f"SAM {tuple(sam_features.shape)}"
            )
        w = self.weight(clip_features, sam_features)
        return w * clip_features + (1.0 - w) * sam_features


@FUSIONS.register("weighted")
def _build_weighted(
    *,
    mode: str = "scalar",
    init: float = 0.5,
    hidden_dim: int = 64,
    embed_dim: int = 512,
    grid: tuple[int, int] = (24, 24),
) -> WeightedFusion:
    return WeightedFusion(
        mode=cast(FusionMode, mode), embed_dim=embed_dim, grid=grid, init=init, hidden_dim=hidden_dim
    )
