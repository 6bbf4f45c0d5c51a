"""Strict, table-driven conversion of released CAT-Seg checkpoints to lmseg checkpoints.

A CAT-Seg checkpoint (detectron2 format: ``{"model": state_dict, ...}``) holds

- the CLIP model under ``sem_seg_head.predictor.clip_model.`` in OpenAI's layout, with each
  attention's ``in_proj_weight`` split into ``q_proj_weight``, ``k_proj_weight``,
  ``v_proj_weight``;
- the aggregator and decoder under ``sem_seg_head.predictor.transformer.``;
- the decoder-guidance transposed convs ``upsample1.`` (×2, 256 ch) and ``upsample2.`` (×4, 128 ch).

Rename rules are applied in order (first match wins), then explicit tensor surgery; every source
key must be used or listed as expected-unused, every target key filled, every shape equal, or
the conversion raises naming the keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lmseg.checkpoint import CheckpointError, save_model
from lmseg.factory import build_model, get_config
from lmseg.model import LMSeg

HEAD = r"sem_seg_head\.predictor\."
AGG = HEAD + r"transformer\."

# (pattern, replacement, reason). Patterns are anchored; first match wins.
RENAME_RULES: list[tuple[str, str, str]] = [
    (HEAD + r"clip_model\.(.*)", r"vision_language_encoder.model.\1",
     "CLIP weights keep OpenAI/open_clip names, under the vision-language encoder"),
    (AGG + r"conv1\.(weight|bias)", r"cost_volume.embed.\1", "7x7 cost embedding P -> 128"),
    (AGG + r"guidance_projection\.0\.(.*)", r"aggregator.appearance_projection.0.\1",
     "appearance guidance conv D -> 128"),
    (AGG + r"text_guidance_projection\.0\.(.*)", r"aggregator.text_projection.0.\1",
     "text guidance linear D -> 128"),
    (AGG + r"decoder_guidance_projection\.(\d)\.0\.(.*)", r"decoder.guidance_projections.\1.0.\2",
     "3x3 projections of the decoder guidance"),
    (r"upsample1\.(.*)", r"decoder.guidance_upsamplers.0.\1", "x2 transposed conv of block 3/7"),
    (r"upsample2\.(.*)", r"decoder.guidance_upsamplers.1.\1", "x4 transposed conv of block 7/15"),
    (AGG + r"decoder(\d)\.up\.(.*)", r"decoder.stages.<\1-1>.up.\2", "decoder stage upsampling"),
    (AGG + r"decoder(\d)\.conv\.double_conv\.0\.(.*)", r"decoder.stages.<\1-1>.conv.conv1.\2",
     "DoubleConv: Sequential index 0 is the first conv"),
    (AGG + r"decoder(\d)\.conv\.double_conv\.1\.(.*)", r"decoder.stages.<\1-1>.conv.norm1.\2",
     "index 1 is the first GroupNorm"),
    (AGG + r"decoder(\d)\.conv\.double_conv\.3\.(.*)", r"decoder.stages.<\1-1>.conv.conv2.\2",
     "index 3 is the second conv (2 is a ReLU)"),
    (AGG + r"decoder(\d)\.conv\.double_conv\.4\.(.*)", r"decoder.stages.<\1-1>.conv.norm2.\2",
     "index 4 is the second GroupNorm"),
    (AGG + r"head\.(.*)", r"decoder.head.\1", "3x3 conv to one logit per class"),
    (AGG + r"layers\.(\d+)\.swin_block\.guidance_norm\.(.*)",
     r"aggregator.layers.\1.spatial.guidance_norm.\2", "LayerNorm of the appearance guidance"),
    (AGG + r"layers\.(\d+)\.swin_block\.block_(\d)\.attn\.(q|k|v|proj)\.(.*)",
     r"aggregator.layers.\1.spatial.blocks.<\2-1>.\3.\4", "window attention projections"),
    (AGG + r"layers\.(\d+)\.swin_block\.block_(\d)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.(.*)",
     r"aggregator.layers.\1.spatial.blocks.<\2-1>.\3.\4", "Swin norms and MLP (timm names)"),
    (AGG + r"layers\.(\d+)\.attention\.(padding_tokens|padding_guidance)",
     r"aggregator.layers.\1.classes.\2", "learnable class-padding tokens"),
    (AGG + r"layers\.(\d+)\.attention\.attention\.(q|k|v)\.(.*)",
     r"aggregator.layers.\1.classes.\2.\3", "linear-attention projections"),
    (AGG + r"layers\.(\d+)\.attention\.MLP\.0\.(.*)", r"aggregator.layers.\1.classes.mlp.fc1.\2",
     "class MLP: Sequential index 0 is fc1"),
    (AGG + r"layers\.(\d+)\.attention\.MLP\.2\.(.*)", r"aggregator.layers.\1.classes.mlp.fc2.\2",
     "index 2 is fc2 (1 is a ReLU)"),
    (AGG + r"layers\.(\d+)\.attention\.(norm1|norm2)\.(.*)", r"aggregator.layers.\1.classes.\2.\3",
     "class-aggregation LayerNorms"),
]

# Source keys that are expected and deliberately dropped, with the reason.
EXPECTED_UNUSED: list[tuple[str, str]] = [
    (AGG + r"layers\.\d+\.swin_block\.block_\d\.attn_mask",
     "shifted-window mask buffer: lmseg recomputes it from the grid size"),
    (r"(pixel|clip_pixel)_(mean|std)", "normalisation constants: the encoders own them"),
]

_QKV = re.compile(r"(.*\.attn\.)(q|k|v)_proj_weight")


def _rename(key: str) -> str | None:
    for pattern, replacement, _reason in RENAME_RULES:
        match = re.fullmatch(pattern, key)
        if match:
            out = match.expand(replacement)
            # "<n-1>": CAT-Seg numbers decoder stages and Swin blocks from 1, lmseg from 0.
            return re.sub(r"<(\d+)-1>", lambda m: str(int(m.group(1)) - 1), out)
    return None


def catseg_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The model state dict of a loaded CAT-Seg checkpoint (detectron2 ``{"model": ...}``)."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointError("no model state dict found in the CAT-Seg checkpoint")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def convert_state_dict(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a CAT-Seg state dict onto lmseg's keys, strictly.

    Args:
        source: CAT-Seg state dict.
        target: the state dict of the lmseg model to fill (for names and shapes).

    Returns:
        A state dict with exactly the CAT-Seg-covered keys of ``target``.

    Raises:
        CheckpointError: unknown source keys, target keys left empty, or shape mismatches,
            each named.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in source.items():
        if any(re.fullmatch(p, key) for p, _ in EXPECTED_UNUSED):
            continue
        name = _rename(key)
        if name is None:
            unknown.append(key)
            continue
        match = _QKV.fullmatch(name)
        if match:
            # Surgery: open_clip keeps one packed in_proj_weight (3·width, width), q;k;v rows.
            qkv.setdefault(match.group(1), {})[match.group(2)] = tensor
            continue
        out[name] = tensor
    for prefix, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            unknown.append(f"{prefix}: missing {missing} projection(s)")
            continue
        out[prefix + "in_proj_weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    covered = [
        k for k in target if not k.startswith(("spatial_encoder.", "spatial_adapter.", "fusion."))
    ]
    missing_keys = sorted(set(covered) - set(out))
    extra = sorted(set(out) - set(target))
    mismatched = [
        f"{k}: checkpoint {tuple(out[k].shape)} vs lmseg {tuple(target[k].shape)}"
        for k in out
        if k in target and out[k].shape != target[k].shape
    ]
    if unknown or missing_keys or extra or mismatched:
        raise CheckpointError(
            "CAT-Seg checkpoint does not map onto the lmseg model: "
            f"unknown source keys {unknown[:10]}, target keys not filled {missing_keys[:10]}, "
            f"mapped keys the model lacks {extra[:10]}, shape mismatches {mismatched[:10]}"
        )
    return out


def detect_variant(source: Mapping[str, torch.Tensor]) -> str:
    """``catseg_vitb16`` or ``catseg_vitl14`` from the width of CLIP's patch embedding."""
    key = "sem_seg_head.predictor.clip_model.visual.conv1.weight"
    if key not in source:
        raise CheckpointError(f"not a CAT-Seg checkpoint: {key} is missing")
    width = source[key].shape[0]
    variants = {768: "catseg_vitb16", 1024: "catseg_vitl14"}
    if width not in variants:
        raise CheckpointError(f"unsupported CLIP width {width} (expected 768 or 1024)")
    return variants[width]


def convert_catseg(
    source_path: str | Path, output_path: str | Path | None = None, *, model: str | None = None
) -> LMSeg:
    """Convert a CAT-Seg checkpoint file into an lmseg model (and checkpoint file).

    Args:
        source_path: CAT-Seg ``.pth`` (loaded with ``weights_only=True``).
        output_path: where to write the lmseg ``.safetensors`` checkpoint, or None.
        model: target variant; detected from the CLIP width when None. The number of prompts
            per class is taken from the checkpoint's cost embedding.

    Returns:
        The converted model, in eval mode.
    """
    try:
        checkpoint = torch.load(source_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"could not read CAT-Seg checkpoint {source_path}: {error}") from error
    source = catseg_state_dict(checkpoint)
    name = model or detect_variant(source)
    embed = source.get(AGG.replace("\\", "") + "conv1.weight")
    overrides: dict[str, Any] = {"num_prompts": int(embed.shape[1])} if embed is not None else {}
    lmseg_model = build_model(get_config(name, **overrides))  # empty: filled strictly below
    state = convert_state_dict(source, lmseg_model.state_dict())
    lmseg_model.load_state_dict(state, strict=False)
    if output_path is not None:
        save_model(lmseg_model, output_path, extra={"converted_from": Path(source_path).name})
    return lmseg_model.eval()
