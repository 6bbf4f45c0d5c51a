"""Swap the fusion variant: scalar, per-channel, per-pixel and adaptive weights, and none.

The same tiny LMSeg is built with each fusion mode (``create_model(..., fusion={"mode": m})``);
the script prints the CLIP weight ``w`` each starts with and how the fused features differ.
``spatial_encoder=None, fusion=None`` gives CAT-Seg.

    python examples/swap_fusion.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

import lmseg
from lmseg.fusion import FUSION_MODES


def main() -> int:
    images = torch.rand(1, 3, 96, 96)
    text = torch.randn(5, 4, 32)
    for mode in FUSION_MODES:
        torch.manual_seed(0)
        model = lmseg.create_model("lmseg_tiny", fusion={"mode": mode, "init": 0.7})
        with torch.no_grad():
            features = model.encode_image(images)
            w = model.fusion.weight(features.vision_language_embedding, features.spatial_embedding)
            logits = model.decode(features, text)
        print(f"{mode:9s} w shape {tuple(w.shape)!s:18s} mean {w.mean():.3f}  logits {tuple(logits.shape)}")
    catseg = lmseg.create_model("lmseg_tiny", spatial_encoder=None, fusion=None)
    print(
        f"no fusion: spatial_encoder={catseg.spatial_encoder}, fusion={catseg.fusion} "
        "-> exactly CAT-Seg's pipeline"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
