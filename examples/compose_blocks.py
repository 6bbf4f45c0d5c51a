"""Compose an LMSeg-style model from the blocks, without the factory.

Every block is a plain module with keyword-only constructors: build a tiny CLIP with open_clip,
the cost volume, the aggregator and the decoder, wire them into ``LMSeg`` and run it.

    python examples/compose_blocks.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from lmseg.aggregation import (
    AggregationLayer,
    ClassAggregation,
    CostAggregator,
    SpatialAggregation,
    UpsamplingDecoder,
)
from lmseg.cost_volume import CostVolume
from lmseg.encoders import CLIPEncoder, load_clip_model
from lmseg.model import LMSeg


def main() -> int:
    torch.manual_seed(0)
    clip_model = load_clip_model(
        "tiny",
        model_cfg={
            "embed_dim": 64,
            "vision_cfg": {"image_size": 128, "patch_size": 8, "width": 64, "layers": 4, "head_width": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
            "quick_gelu": True,
        },
    )
    clip = CLIPEncoder(model=clip_model, image_size=128, guidance_layers=(1, 2))  # 16x16 grid
    hidden = 64
    layers = [
        AggregationLayer(
            spatial=SpatialAggregation(dim=hidden, guidance_dim=32, num_heads=4, window_size=8),
            classes=ClassAggregation(dim=hidden, guidance_dim=32, num_heads=4, pad_len=32),
        )
        for _ in range(2)
    ]
    model = LMSeg(
        vision_language_encoder=clip,
        cost_volume=CostVolume(num_prompts=2, dim=hidden),
        aggregator=CostAggregator(
            layers=layers, embed_dim=clip.embed_dim, appearance_guidance_dim=32, text_guidance_dim=32
        ),
        decoder=UpsamplingDecoder(
            dim=hidden, clip_width=clip.width, guidance_dims=(64, 32), guidance_proj_dims=(16, 16),
            decoder_dims=(32, 16),
        ),
    ).eval()

    classes = ["cat", "dog", "sofa"]
    prompts = [[f"a photo of a {c}.", f"a {c} in the scene."] for c in classes]
    with torch.no_grad():
        tokens = clip.tokenize([p for pair in prompts for p in pair])
        text = clip.encode_text(tokens).view(len(classes), 2, -1)  # (K, P, D)
        logits = model(torch.rand(1, 3, 200, 300), text)
    print(f"composed model: {sum(p.numel() for p in model.parameters()):,} parameters")
    print(f"text {tuple(text.shape)} -> logits {tuple(logits.shape)} (B, K, 4h, 4w)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
