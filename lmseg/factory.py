"""The registry of named model variants: the one place where model sizes live.

``create_model(name, pretrained=True, **overrides)`` builds a variant with its weights (from
:mod:`lmseg.zoo`); ``list_models()`` names them. Variant names say what differs: ``lmseg_vitb16_samb`` (LMSeg, CLIP ViT-B/16, SAM vit_b),
``catseg_vitl14`` (CAT-Seg, CLIP ViT-L/14-336, no SAM), ``lmseg_tiny`` (random-weight test model).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, cast

from lmseg import zoo
from lmseg.aggregation.aggregator import AggregationLayer, CostAggregator
from lmseg.aggregation.class_aggregation import ClassAggregation
from lmseg.aggregation.spatial_aggregation import SpatialAggregation
from lmseg.aggregation.upsampling_decoder import UpsamplingDecoder
from lmseg.cost_volume import CostVolume
from lmseg.encoders.clip import CLIPEncoder, load_clip_model
from lmseg.encoders.sam import build_sam_encoder
from lmseg.fusion.sam_adapter import SAMAdapter
from lmseg.fusion.weighted_fusion import FusionMode, WeightedFusion
from lmseg.model import LMSeg


@dataclass
class CLIPConfig:
    """CLIP branch: open_clip architecture, dense input size and guidance taps."""

    model_name: str = "ViT-B-16"
    image_size: int = 384
    guidance_layers: tuple[int, ...] = (3, 7)
    # A full open_clip config for custom sizes (tiny models); None uses model_name's config.
    model_cfg: dict[str, Any] | None = None
    tokenizer_name: str = "ViT-B-16"
    # OpenAI CLIP (and so CAT-Seg and LMSeg) uses QuickGELU; the weights do not record it.
    quick_gelu: bool = True


@dataclass
class SAMConfig:
    """SAM branch: variant, input size and size overrides (tiny models)."""

    variant: str = "vit_b"
    image_size: int = 1024
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class FusionConfig:
    """Weighted fusion: weight shape, initial CLIP weight, adaptive head width."""

    mode: str = "scalar"
    init: float = 0.5
    hidden_dim: int = 64


@dataclass
class AggregatorConfig:
    """Cost embedding, aggregation and decoder sizes (CAT-Seg's ViT-B defaults)."""

    hidden_dim: int = 128
    appearance_guidance_dim: int = 128
    text_guidance_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    window_size: int = 12
    mlp_ratio: float = 4.0
    pad_len: int = 256
    train_pool_size: int = 1
    decoder_dims: tuple[int, int] = (64, 32)
    decoder_guidance_dims: tuple[int, int] = (256, 128)
    decoder_guidance_proj_dims: tuple[int, int] = (32, 16)
    class_chunk: int | None = None  # None: per device (lmseg.aggregation.common.CHUNK_DEFAULTS)
    token_chunk: int | None = None


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; saved inside every checkpoint."""

    name: str
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    sam: SAMConfig | None = None
    fusion: FusionConfig | None = None
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    num_prompts: int = 1
    top_k: int | None = 256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise, naming them."""
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        sections = {"clip": CLIPConfig, "sam": SAMConfig, "fusion": FusionConfig, "aggregator": AggregatorConfig}
        for key, section in sections.items():
            value = data.get(key)
            if isinstance(value, dict):
                bad = set(value) - {f.name for f in fields(section)}
                if bad:
                    raise ValueError(f"unknown keys in model config section {key!r}: {sorted(bad)}")
                value = dict(value)
                for f in fields(section):
                    if f.name in value and isinstance(value[f.name], list):
                        value[f.name] = tuple(value[f.name])
                data[key] = section(**value)
        return cls(**data)


# Tiny random-weight sizes: a 12×12 grid from 96 px, run on a CPU in well under a second.
_TINY_CLIP = CLIPConfig(
    model_name="tiny",
    image_size=96,
    guidance_layers=(0, 1),
    model_cfg={
        "embed_dim": 32,
        "vision_cfg": {"image_size": 96, "patch_size": 8, "width": 32, "layers": 3, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        "quick_gelu": True,
    },
)
_TINY_SAM = SAMConfig(
    variant="vit_b",
    image_size=64,
    overrides={"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": (1,),
               "window_size": 4, "patch_size": 8, "out_chans": 32},
)
_TINY_AGGREGATOR = AggregatorConfig(
    hidden_dim=32,
    appearance_guidance_dim=32,
    text_guidance_dim=32,
    num_heads=2,
    window_size=6,
    pad_len=16,
    decoder_dims=(32, 16),
    decoder_guidance_dims=(32, 16),
    decoder_guidance_proj_dims=(16, 8),
    class_chunk=8,
)
_VITB = CLIPConfig(model_name="ViT-B-16", image_size=384, guidance_layers=(3, 7))
_VITL = CLIPConfig(
    model_name="ViT-L-14-336", image_size=336, guidance_layers=(7, 15), tokenizer_name="ViT-L-14-336"
)
_SAM_B = SAMConfig(variant="vit_b", image_size=1024)
# LMSeg: template + three attribute sentences (P = 4), the revised paper's top-32 filtering.
_LMSEG: dict[str, Any] = dict(fusion=FusionConfig(), num_prompts=4, top_k=32)
# CAT-Seg: its single template (P = 1) and top-pad_len (256) filtering.
_CATSEG: dict[str, Any] = dict(num_prompts=1, top_k=256)

_REGISTRY: dict[str, ModelConfig] = {
    "lmseg_vitb16_samb": ModelConfig(name="lmseg_vitb16_samb", clip=_VITB, sam=_SAM_B, **_LMSEG),
    "lmseg_vitl14_samb": ModelConfig(
        name="lmseg_vitl14_samb", clip=_VITL, sam=_SAM_B, **_LMSEG
    ),
    "catseg_vitb16": ModelConfig(name="catseg_vitb16", clip=_VITB, **_CATSEG),
    "catseg_vitl14": ModelConfig(name="catseg_vitl14", clip=_VITL, **_CATSEG),
    "lmseg_tiny": ModelConfig(
        name="lmseg_tiny", clip=_TINY_CLIP, sam=_TINY_SAM, aggregator=_TINY_AGGREGATOR,
        fusion=FusionConfig(hidden_dim=16), num_prompts=4, top_k=8,
    ),
    "catseg_tiny": ModelConfig(
        name="catseg_tiny", clip=_TINY_CLIP, aggregator=_TINY_AGGREGATOR, num_prompts=1, top_k=16
    ),
}

_DESCRIPTIONS = {
    "lmseg_vitb16_samb": "LMSeg: CLIP ViT-B/16 @384 + SAM vit_b, attribute prompts (P=4), top-32",
    "lmseg_vitl14_samb": "LMSeg: CLIP ViT-L/14 @336 + SAM vit_b, attribute prompts (P=4), top-32",
    "catseg_vitb16": "CAT-Seg: CLIP ViT-B/16 @384, single template (P=1), top-256",
    "catseg_vitl14": "CAT-Seg: CLIP ViT-L/14 @336, single template (P=1), top-256",
    "lmseg_tiny": "tiny random-weight LMSeg for tests and demos (96 px, 12x12 grid)",
    "catseg_tiny": "tiny random-weight CAT-Seg for tests and demos (96 px, 12x12 grid)",
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return list(_REGISTRY)


def describe_model(name: str) -> str:
    """One line saying what a variant is."""
    return _DESCRIPTIONS.get(name, name)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A copy of a variant's config with overrides applied.

    Overrides name top-level fields (``num_prompts=4``, ``top_k=None``) or update a section
    with a dict (``fusion={"mode": "pixel"}``, ``aggregator={"class_chunk": 8}``); a section
    set to None is removed (``sam=None, fusion=None`` gives CAT-Seg).
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(_REGISTRY)}")
    data = copy.deepcopy(_REGISTRY[name]).to_dict()
    for key, value in overrides.items():
        if key not in data:
            raise KeyError(f"unknown override {key!r}; model config keys: {sorted(data)}")
        if isinstance(value, dict) and isinstance(data[key], dict):
            data[key] = {**data[key], **value}
        elif isinstance(value, dict) and data[key] is None and key in ("sam", "fusion"):
            default = SAMConfig() if key == "sam" else FusionConfig()
            data[key] = {**asdict(default), **value}
        else:
            data[key] = value
    return ModelConfig.from_dict(data)


def build_model(
    config: ModelConfig | dict[str, Any],
    *,
    clip_pretrained: str | None = None,
    sam_checkpoint: str | None = None,
    cache_dir: str | None = None,
) -> LMSeg:
    """Turn a config into an :class:`~lmseg.model.LMSeg` (the only config → kwargs step).

    Args:
        config: a :class:`ModelConfig` or its dict form.
        clip_pretrained: CLIP weights: an open_clip tag (``"openai"``) or a file.
        sam_checkpoint: an official SAM checkpoint path or file name in the cache.
        cache_dir: open_clip's download cache.
    """
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    c, a = config.clip, config.aggregator
    clip = CLIPEncoder(
        model=load_clip_model(
            c.model_name,
            clip_pretrained,
            cache_dir=cache_dir,
            model_cfg=c.model_cfg,
            quick_gelu=c.quick_gelu,
        ),
        image_size=c.image_size,
        guidance_layers=c.guidance_layers,
        tokenizer_name=c.tokenizer_name,
    )
    d = clip.embed_dim
    sam = adapter = fusion = None
    if config.sam is not None:
        sam = build_sam_encoder(
            config.sam.variant,
            image_size=config.sam.image_size,
            checkpoint=sam_checkpoint,
            **config.sam.overrides,
        )
        adapter = SAMAdapter(in_channels=sam.out_channels, embed_dim=d)
        f = config.fusion or FusionConfig()
        fusion = WeightedFusion(
            mode=cast(FusionMode, f.mode), embed_dim=d, grid=clip.grid_size, init=f.init, hidden_dim=f.hidden_dim
        )
    layers = [
        AggregationLayer(
            spatial=SpatialAggregation(
                dim=a.hidden_dim,
                guidance_dim=a.appearance_guidance_dim,
                num_heads=a.num_heads,
                window_size=a.window_size,
                mlp_ratio=a.mlp_ratio,
                class_chunk=a.class_chunk,
            ),
            classes=ClassAggregation(
                dim=a.hidden_dim,
                guidance_dim=a.text_guidance_dim,
                num_heads=a.num_heads,
                pad_len=a.pad_len,
                mlp_ratio=a.mlp_ratio,
                train_pool_size=a.train_pool_size,
                token_chunk=a.token_chunk,
            ),
        )
        for _ in range(a.num_layers)
    ]
    return LMSeg(
        clip=clip,
        sam=sam,
        sam_adapter=adapter,
        fusion=fusion,
        cost_volume=CostVolume(num_prompts=config.num_prompts, dim=a.hidden_dim),
        aggregator=CostAggregator(
            layers=layers,
            embed_dim=d,
            appearance_guidance_dim=a.appearance_guidance_dim,
            text_guidance_dim=a.text_guidance_dim,
        ),
        decoder=UpsamplingDecoder(
            dim=a.hidden_dim,
            clip_width=clip.width,
            guidance_dims=a.decoder_guidance_dims,
            guidance_proj_dims=a.decoder_guidance_proj_dims,
            decoder_dims=a.decoder_dims,
            class_chunk=a.class_chunk,
        ),
        top_k=config.top_k,
        # JSON form (tuples become lists), exactly what a checkpoint stores and reloads.
        config=json.loads(json.dumps(config.to_dict())),
    )


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike[str] | None = True,
    *,
    clip_pretrained: str | None = None,
    sam_checkpoint: str | None = None,
    cache_dir: str | None = None,
    **overrides: Any,
) -> LMSeg:
    """Build a named variant with its weights (downloaded, verified and cached by the zoo).

    Args:
        name: one of :func:`list_models`.
        pretrained: ``True``: the variant's default weights (``lmseg weights list``);
            ``False``/``None``: random weights (a one-line warning says the outputs are
            meaningless; the tiny variants are random by design and build silently); a weights
            tag of the variant (``"catseg"``, ``"openai"``); a checkpoint file (lmseg
            ``.safetensors``, or a released CAT-Seg ``.pth``, converted once and cached); or
            ``"hf-hub:org/name[@revision]"``. See :func:`lmseg.zoo.resolve`.
        clip_pretrained: CLIP weights replacing the plan's (open_clip tag such as
            ``"openai"``, or a file).
        sam_checkpoint: SAM checkpoint replacing the plan's (path, official file name, or a
            file name in ``$LMSEG_CACHE/sam``).
        cache_dir: huggingface_hub cache folder for Hub downloads (its default when None).
        **overrides: config overrides, see :func:`get_config`.

    Returns:
        The model in eval mode.

    Example:
        >>> model = create_model("lmseg_tiny")
    """
    config = get_config(name, **overrides)
    plan = zoo.resolve(config, pretrained, clip=clip_pretrained, sam=sam_checkpoint, cache=cache_dir)
    model = build_model(config, clip_pretrained=plan.clip, sam_checkpoint=plan.sam, cache_dir=cache_dir)
    if plan.checkpoint is not None:
        from lmseg.checkpoint import load_weights

        load_weights(model, plan.checkpoint)
    plan.warn()
    return model.eval()
