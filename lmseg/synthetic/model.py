"""The demo's model and prompts: ``lmseg_tiny`` resized for 64 px scenes, and each class's prompts.

Roles: the CLIP image tower sees the scene at half resolution, where its bilinear resize averages
the period-2 textures away exactly; the SAM image encoder sees it at full resolution. Only the
fused model can separate unseen classes that differ only in texture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lmseg.factory import build_model, get_config
from lmseg.model import LMSeg
from lmseg.prompts.compose import compose_prompts
from lmseg.prompts.embedding import encode_prompts
from lmseg.synthetic.settings import PromptKind
from lmseg.synthetic.world import IGNORE_VALUE, SyntheticWorld

__all__ = [
    "build_demo_model",
    "class_prompts",
    "model_overrides",
    "prompt_ids",
    "text_embeddings",
    "vocab_lookup",
]


def model_overrides(image_size: int, prompts: PromptKind, fusion: bool) -> dict[str, Any]:
    """``lmseg_tiny`` overrides of the demo model: an 8×8 feature grid for both roles.

    CLIP role: a ViT on the scene resized to S/2 (patch S/16), so period-2 textures vanish, and
    a text tower with a 16-token context (every demo prompt fits). SAM role: a ViT on the scene
    at full resolution S (patch S/8). Exact inference: no class filtering.
    """
    clip_size = image_size // 2
    vision = {
        "image_size": clip_size,
        "patch_size": clip_size // 8,
        "width": 32,
        "layers": 3,
        "head_width": 16,
    }
    text = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
    overrides: dict[str, Any] = {
        "vision_language_encoder": {
            "image_size": clip_size,
            "guidance_layers": (0, 1),
            "model_cfg": {
                "embed_dim": 32,
                "vision_cfg": vision,
                "text_cfg": text,
                "quick_gelu": True,
            },
        },
        "aggregator": {
            "window_size": 4,
            "decoder_dims": (16, 16),
            "decoder_guidance_proj_dims": (8, 8),
        },
        "num_prompts": 1 if prompts == "template" else 3,
        "spatial_encoder": None,
        "fusion": None,
    }
    if fusion:
        overrides["spatial_encoder"] = {
            "type": "sam",
            "variant": "vit_b",
            "image_size": image_size,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 2,
            "global_attn_indexes": (1,),
            "window_size": 4,
            "patch_size": image_size // 8,
            "out_chans": 32,
        }
        overrides["fusion"] = {"type": "weighted", "mode": "scalar", "init": 0.5, "hidden_dim": 16}
    return overrides


def build_demo_model(
    image_size: int,
    prompts: PromptKind,
    fusion: bool,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> LMSeg:
    """The demo's LMSeg in train mode with **every** parameter trainable.

    ``lmseg_tiny`` freezes the SAM encoder, as LMSeg keeps the pretrained SAM frozen; here SAM is
    a random network that must learn, so it is un-frozen along with both CLIP towers.

    Args:
        image_size, prompts, fusion: the world's scene size S, the prompt mode and whether the
            SAM role is fused in (:func:`model_overrides`).
        overrides: further :func:`lmseg.factory.get_config` overrides on top of the demo's, e.g.
            ``{"class_attention": "softmax", "fusion": {"mode": "pixel"}}``; a mapping updates
            the demo's section of that name, anything else replaces it.
    """
    options = model_overrides(image_size, prompts, fusion)
    for key, value in (overrides or {}).items():
        current = options.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            options[key] = {**current, **value}
        else:
            options[key] = value
    model = build_model(get_config("lmseg_tiny", **options))
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train()


def class_prompts(world: SyntheticWorld, ids: Sequence[int], kind: PromptKind) -> list[list[str]]:
    """P prompts per class: the CAT-Seg template with the made-up name (P = 1), or the three
    name-free attribute sentences of the world's bank (P = 3)."""
    names = [world.classes[k].name for k in ids]
    return [
        [str(s) for s in slots]
        for slots in compose_prompts(names, world.bank(), mode=kind, missing="error")
    ]


def prompt_ids(world: SyntheticWorld, ids: Sequence[int], kind: PromptKind) -> torch.Tensor:
    """``(K, P)`` int64, equal where two classes share the exact prompt string."""
    strings: dict[str, int] = {}
    return torch.tensor(
        [
            [strings.setdefault(s, len(strings)) for s in slots]
            for slots in class_prompts(world, ids, kind)
        ]
    )


def text_embeddings(
    model: LMSeg, world: SyntheticWorld, ids: Sequence[int], kind: PromptKind
) -> torch.Tensor:
    """``(K, P, D)`` prompt embeddings of classes ``ids``, with autograd (the text tower trains)."""
    return encode_prompts(model.text_encoder, class_prompts(world, ids, kind))


def vocab_lookup(world: SyntheticWorld, vocab: Sequence[int]) -> torch.Tensor:
    """World class id -> index in ``vocab`` (``IGNORE_VALUE`` for classes not in it)."""
    lookup = torch.full((len(world.classes),), IGNORE_VALUE, dtype=torch.int64)
    lookup[torch.tensor(vocab)] = torch.arange(len(vocab))
    return lookup
