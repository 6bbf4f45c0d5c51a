"""The registry of named model variants: the one place where model sizes live.

``create_model(name, pretrained=True, **overrides)`` builds a variant with its weights (from
:mod:`lmseg.zoo`); ``list_models()`` names them; ``register_model(...)`` adds one;
``load_model(path)`` rebuilds a saved model from its file alone. Variant names say what differs: ``lmseg_vitb16_samb`` (LMSeg, CLIP ViT-B/16, SAM vit_b),
``catseg_vitl14`` (CAT-Seg, CLIP ViT-L/14-336, no SAM), ``lmseg_tiny`` (random-weight test model).

A model config names an implementation per role, ``{"type": ..., **options}``: the
vision-language encoder (:data:`lmseg.encoders.VISION_LANGUAGE_ENCODERS`), the spatial encoder
(:data:`lmseg.encoders.SPATIAL_ENCODERS`), the fusion (:data:`lmseg.fusion.FUSIONS`) and the
class attention (:data:`lmseg.aggregation.CLASS_ATTENTIONS`); any of them swaps with one override::

    create_model("lmseg_vitb16_samb", spatial_encoder={"type": "sam", "variant": "vit_l"})
    create_model("catseg_vitb16", class_attention="softmax")
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, cast

import torch
from safetensors.torch import load_file

from lmseg import zoo
from lmseg.aggregation.aggregator import AggregationLayer, CostAggregator
from lmseg.aggregation.class_aggregation import ClassAggregation
from lmseg.aggregation.class_attention import CLASS_ATTENTIONS
from lmseg.aggregation.spatial_aggregation import SpatialAggregation
from lmseg.aggregation.upsampling_decoder import UpsamplingDecoder
from lmseg.checkpoint import (
    CheckpointError,
    check_finite,
    check_shapes,
    load_weights,
    migrate_state_keys,
    read_header,
)
from lmseg.cost_volume import CostVolume
from lmseg.encoders.base import SPATIAL_ENCODERS, VISION_LANGUAGE_ENCODERS
from lmseg.fusion.spatial_adapter import SpatialAdapter
from lmseg.fusion.weighted_fusion import FUSIONS
from lmseg.model import LMSeg
from lmseg.registry import RegistryError
from lmseg.runtime import resolve_device
from lmseg.training_free import TrainingFreeModel

__all__ = [
    "AggregatorConfig",
    "ModelConfig",
    "Variant",
    "build_model",
    "create_model",
    "describe_model",
    "get_config",
    "list_models",
    "load_model",
    "register_model",
]


@dataclass
class AggregatorConfig:
    """Cost embedding, aggregation and decoder sizes (CAT-Seg's ViT-B defaults).

    ``class_attention`` names the attention across classes, ``{"type": "linear"}`` (CAT-Seg's
    default) or ``{"type": "softmax"}`` (its ``"full"``), or any registered kernel.
    """

    hidden_dim: int = 128
    appearance_guidance_dim: int = 128
    text_guidance_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    window_size: int = 12
    mlp_ratio: float = 4.0
    pad_len: int = 256
    decoder_dims: tuple[int, int] = (64, 32)
    decoder_guidance_dims: tuple[int, int] = (256, 128)
    decoder_guidance_proj_dims: tuple[int, int] = (32, 16)
    class_attention: dict[str, Any] = field(default_factory=lambda: {"type": "linear"})


# Bounds on what a config may ask for, checked before anything is built: a checkpoint's metadata
# must not be able to make the loader allocate a huge model or loop for long.
_MAX_INT = 1 << 20
_MAX_DEPTH = 256
_MAX_ITEMS = 256
_MAX_NESTING = 4
_DEPTH_KEYS = ("layers", "depth", "num_layers")


def _check_value(value: Any, where: str, nesting: int = 0) -> None:
    """Config values are JSON-like, bounded in size and nesting."""
    if nesting > _MAX_NESTING:
        raise RegistryError(f"{where} is nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str) and len(value) > 256:
            raise RegistryError(f"{where} is a string of {len(value)} characters (at most 256)")
        return
    if isinstance(value, int):
        bound = _MAX_DEPTH if where.rsplit(".", 1)[-1] in _DEPTH_KEYS else _MAX_INT
        if not -_MAX_INT <= value <= bound:
            raise RegistryError(f"{where} = {value} is out of range (at most {bound})")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RegistryError(f"{where} = {value} is not finite")
        return
    if isinstance(value, (list, tuple)):
        if len(value) > _MAX_ITEMS:
            raise RegistryError(f"{where} has {len(value)} items (at most {_MAX_ITEMS})")
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]", nesting + 1)
        return
    if isinstance(value, Mapping):
        if len(value) > _MAX_ITEMS:
            raise RegistryError(f"{where} has {len(value)} keys (at most {_MAX_ITEMS})")
        for key, item in value.items():
            if not isinstance(key, str):
                raise RegistryError(f"{where} has a non-string key {key!r}")
            _check_value(item, f"{where}.{key}", nesting + 1)
        return
    raise RegistryError(f"{where} has an unsupported value of type {type(value).__name__}")


def _section(value: Any) -> dict[str, Any] | None:
    """A role section from its short forms: ``"sam"`` -> ``{"type": "sam"}``; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return {"type": value}
    if isinstance(value, Mapping):
        return dict(value)
    raise RegistryError(f"a config section must be a mapping, a type name or None, got {value!r}")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model's architecture; saved inside every checkpoint.

    Attributes:
        name: the variant name (``lmseg_vitb16_samb``) or a user's own.
        vision_language_encoder: ``{"type": ..., **options}`` of the CLIP role.
        spatial_encoder: the SAM role, or None (CAT-Seg).
        fusion: how ``F_c`` and ``F_s`` combine (with a spatial encoder), or None.
        aggregator: cost aggregation and decoder sizes, and the class attention; None for the
            training-free baseline (:mod:`lmseg.training_free`: cosine similarity, no
            aggregation, nothing trained).
        num_prompts: P, prompts per class (1: CAT-Seg's template; 4: template + three attributes).
    """

    name: str
    vision_language_encoder: dict[str, Any]
    spatial_encoder: dict[str, Any] | None = None
    fusion: dict[str, Any] | None = None
    aggregator: AggregatorConfig | None = field(default_factory=AggregatorConfig)
    num_prompts: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (tuples become lists when dumped)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelConfig:
        """Inverse of :meth:`to_dict`, with every field validated before anything is built.

        Raises:
            ValueError (:class:`~lmseg.registry.RegistryError`): unknown or missing keys, an
                unknown type in a role section, an option its builder does not take, or a value
                out of bounds; each named.
        """
        if not isinstance(data, Mapping):
            raise RegistryError(f"a model config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        if isinstance(data.get("aggregator"), AggregatorConfig):
            data["aggregator"] = asdict(data["aggregator"])
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RegistryError(f"unknown model config keys: {unknown}; known: {sorted(known)}")
        for key in ("name", "vision_language_encoder"):
            if key not in data:
                raise RegistryError(f"the model config has no {key!r}")
        _check_value(data, "config")
        if not isinstance(data["name"], str) or not data["name"]:
            raise RegistryError("config.name must be a non-empty string")
        vl = _section(data["vision_language_encoder"])
        if vl is None:
            raise RegistryError("config.vision_language_encoder is required")
        VISION_LANGUAGE_ENCODERS.check(vl, "vision_language_encoder")
        spatial = _section(data.get("spatial_encoder"))
        fusion = _section(data.get("fusion"))
        if spatial is not None:
            SPATIAL_ENCODERS.check(spatial, "spatial_encoder")
            fusion = fusion if fusion is not None else {"type": "weighted"}
            FUSIONS.check(fusion, "fusion")
        elif fusion is not None:
            raise RegistryError("config.fusion needs a spatial_encoder to fuse with")
        aggregator = data.get("aggregator", {})
        num_prompts = data.get("num_prompts", 1)
        if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or not 1 <= num_prompts <= 64:
            raise RegistryError(f"config.num_prompts must be an integer in [1, 64], got {num_prompts!r}")
        if aggregator is None:  # the training-free baseline
            if spatial is not None:
                raise RegistryError("the training-free model (aggregator: null) takes no spatial_encoder")
            return cls(
                name=data["name"], vision_language_encoder=vl, aggregator=None, num_prompts=num_prompts
            )
        if not isinstance(aggregator, Mapping):
            raise RegistryError("config.aggregator must be a mapping or null")
        aggregator = dict(aggregator)
        bad = sorted(set(aggregator) - {f.name for f in fields(AggregatorConfig)})
        if bad:
            raise RegistryError(f"unknown keys in config.aggregator: {bad}")
        if "class_attention" in aggregator:
            aggregator["class_attention"] = _section(aggregator["class_attention"])
        CLASS_ATTENTIONS.check(
            aggregator.get("class_attention") or {"type": "linear"}, "aggregator.class_attention"
        )
        for f in fields(AggregatorConfig):
            if isinstance(aggregator.get(f.name), list):
                aggregator[f.name] = tuple(aggregator[f.name])
        return cls(
            name=data["name"],
            vision_language_encoder=vl,
            spatial_encoder=spatial,
            fusion=fusion,
            aggregator=AggregatorConfig(**aggregator),
            num_prompts=num_prompts,
        )


@dataclass(frozen=True)
class Variant:
    """A named model: its architecture, a one-line description and how it runs by default.

    Attributes:
        config: the architecture.
        description: what the variant is, for ``lmseg models``.
        default_top_k: class filtering under ``RuntimeOptions(top_k="auto")`` (None: exact).
        tiny: a random-weight model for tests and demos (never downloads weights).
    """

    config: ModelConfig
    description: str
    default_top_k: int | None = None
    tiny: bool = False


_VARIANTS: dict[str, Variant] = {}


def register_model(
    name: str,
    config: ModelConfig | Mapping[str, Any],
    *,
    description: str = "",
    default_top_k: int | None = None,
    tiny: bool = False,
    overwrite: bool = False,
) -> None:
    """Add a named variant to :func:`create_model` (as open_clip's ``add_model_config``).

    Args:
        name: the variant name.
        config: its :class:`ModelConfig` (or dict form; its ``name`` is set to ``name``).
        description: one line for ``lmseg models``.
        default_top_k: class filtering when the runtime asks for ``"auto"``.
        tiny: a random-weight test/demo model.
        overwrite: replace an existing variant.
    """
    if name in _VARIANTS and not overwrite:
        raise ValueError(f"a model named {name!r} is already registered; pass overwrite=True")
    data = config.to_dict() if isinstance(config, ModelConfig) else dict(config)
    data["name"] = name
    _VARIANTS[name] = Variant(
        config=ModelConfig.from_dict(data),
        description=description or name,
        default_top_k=default_top_k,
        tiny=tiny,
    )


def _open_clip(**options: Any) -> dict[str, Any]:
    return {"type": "open_clip", **options}


# Tiny random-weight sizes: a 12×12 grid from 96 px, run on a CPU in well under a second.
_TINY_CLIP = _open_clip(
    model_name="tiny",
    image_size=96,
    guidance_layers=(0, 1),
    tokenizer_name="ViT-B-16",
    model_cfg={
        "embed_dim": 32,
        "vision_cfg": {"image_size": 96, "patch_size": 8, "width": 32, "layers": 3, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        "quick_gelu": True,
    },
)
_TINY_SAM = {
    "type": "sam", "variant": "vit_b", "image_size": 64, "embed_dim": 32, "depth": 2, "num_heads": 2,
    "global_attn_indexes": (1,), "window_size": 4, "patch_size": 8, "out_chans": 32,
}
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
)
_VITB = _open_clip(model_name="ViT-B-16", image_size=384, guidance_layers=(3, 7), tokenizer_name="ViT-B-16")
_VITL = _open_clip(
    model_name="ViT-L-14-336", image_size=336, guidance_layers=(7, 15), tokenizer_name="ViT-L-14-336"
)
_SAM_B = {"type": "sam", "variant": "vit_b", "image_size": 1024}
_WEIGHTED = {"type": "weighted", "mode": "scalar", "init": 0.5, "hidden_dim": 64}

# LMSeg: template + three attribute sentences (P = 4), the revised paper's top-32 filtering.
# CAT-Seg: its single template (P = 1) and top-pad_len (256) filtering.
_BUILT_IN: list[tuple[str, dict[str, Any], int | None, bool, str]] = [
    ("lmseg_vitb16_samb", dict(vision_language_encoder=_VITB, spatial_encoder=_SAM_B, fusion=_WEIGHTED,
                               num_prompts=4), 32, False,
     "LMSeg: CLIP ViT-B/16 @384 + SAM vit_b, attribute prompts (P=4), top-32"),
    ("lmseg_vitl14_samb", dict(vision_language_encoder=_VITL, spatial_encoder=_SAM_B, fusion=_WEIGHTED,
                               num_prompts=4), 32, False,
     "LMSeg: CLIP ViT-L/14 @336 + SAM vit_b, attribute prompts (P=4), top-32"),
    ("catseg_vitb16", dict(vision_language_encoder=_VITB, num_prompts=1), 256, False,
     "CAT-Seg: CLIP ViT-B/16 @384, single template (P=1), top-256"),
    ("catseg_vitl14", dict(vision_language_encoder=_VITL, num_prompts=1), 256, False,
     "CAT-Seg: CLIP ViT-L/14 @336, single template (P=1), top-256"),
    ("lmseg_tiny", dict(vision_language_encoder=_TINY_CLIP, spatial_encoder=_TINY_SAM,
                        fusion={**_WEIGHTED, "hidden_dim": 16}, aggregator=_TINY_AGGREGATOR,
                        num_prompts=4), 8, True,
     "tiny random-weight LMSeg for tests and demos (96 px, 12x12 grid)"),
    ("catseg_tiny", dict(vision_language_encoder=_TINY_CLIP, aggregator=_TINY_AGGREGATOR,
                         num_prompts=1), 16, True,
     "tiny random-weight CAT-Seg for tests and demos (96 px, 12x12 grid)"),
    ("maskclip_vitb16", dict(vision_language_encoder={**_VITB, "image_size": 448, "dense_mode": "maskclip"},
                             aggregator=None, num_prompts=1), None, False,
     "training-free baseline: CLIP ViT-B/16 @448 dense features (MaskCLIP) and cosine similarity"),
    ("maskclip_tiny", dict(vision_language_encoder={**_TINY_CLIP, "dense_mode": "maskclip"},
                           aggregator=None, num_prompts=1), None, True,
     "tiny random-weight training-free baseline for tests (96 px, 12x12 grid)"),
]
for _name, _config, _top_k, _tiny, _description in _BUILT_IN:
    register_model(_name, {"name": _name, **_config}, description=_description,
                   default_top_k=_top_k, tiny=_tiny)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return list(_VARIANTS)


def describe_model(name: str) -> str:
    """One line saying what a variant is."""
    variant = _VARIANTS.get(name)
    return variant.description if variant else name


def get_variant(name: str) -> Variant:
    """The registered :class:`Variant` of ``name``."""
    if name not in _VARIANTS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(_VARIANTS)}")
    return _VARIANTS[name]


_SECTIONS = ("vision_language_encoder", "spatial_encoder", "fusion")


def _merge_section(current: dict[str, Any] | None, value: Any) -> dict[str, Any] | None:
    """Override a role section: the same type (or none given) updates its options; another
    type replaces the section, since options belong to one implementation."""
    new = _section(value)
    if new is None:
        return None
    if current is not None and new.get("type", current.get("type")) == current.get("type"):
        return {**current, **new}
    return new


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A copy of a variant's config with overrides applied.

    Overrides name top-level fields (``num_prompts=4``), update a section with a dict
    (``fusion={"mode": "pixel"}``, ``aggregator={"num_layers": 1}``), swap an implementation
    (``spatial_encoder={"type": "sam", "variant": "vit_l"}``, ``class_attention="softmax"``), or
    remove a role (``spatial_encoder=None, fusion=None`` gives CAT-Seg).
    """
    config = copy.deepcopy(get_variant(name).config).to_dict()
    for key, value in overrides.items():
        if key == "class_attention":
            config["aggregator"]["class_attention"] = _section(value)
        elif key in _SECTIONS:
            config[key] = _merge_section(config.get(key), value)
        elif key == "aggregator":
            if not isinstance(value, Mapping):
                raise RegistryError("the aggregator override must be a mapping")
            value = dict(value)
            if "class_attention" in value:
                value["class_attention"] = _section(value["class_attention"])
            config["aggregator"] = {**config["aggregator"], **value}
        elif key in ("top_k", "train_pool_size", "class_chunk", "token_chunk"):
            raise RegistryError(
                f"{key} is a runtime option, not part of the model: pass it as "
                "lmseg.RuntimeOptions(...) to Segmenter, evaluation or training"
            )
        elif key in ("clip", "sam"):
            role = "vision_language_encoder" if key == "clip" else "spatial_encoder"
            raise RegistryError(f"the {key!r} section is now called {role!r}")
        elif key in config:
            config[key] = value
        else:
            raise RegistryError(f"unknown override {key!r}; model config keys: {sorted(config)}")
    if config.get("spatial_encoder") is None and "fusion" not in overrides:
        config["fusion"] = None
    return ModelConfig.from_dict(config)


def _default_top_k(config: ModelConfig) -> int | None:
    variant = _VARIANTS.get(config.name)
    if variant is not None:
        return variant.default_top_k
    # CAT-Seg's rule: with padding to pad_len, keep the top pad_len classes of larger vocabularies.
    return config.aggregator.pad_len or None if config.aggregator is not None else None


def build_model(
    config: ModelConfig | Mapping[str, Any],
    *,
    vision_language_weights: str | None = None,
    spatial_weights: str | None = None,
    cache_dir: str | None = None,
) -> LMSeg:
    """Turn a config into an :class:`~lmseg.model.LMSeg` (the only config → kwargs step).

    Args:
        config: a :class:`ModelConfig` or its dict form.
        vision_language_weights: weights of the vision-language encoder: for ``open_clip``, a tag
            (``"openai"``) or a file.
        spatial_weights: weights of the spatial encoder: for ``sam``, an official checkpoint path
            or file name in the cache.
        cache_dir: download cache of the encoders.
    """
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(config)
    vision_language = VISION_LANGUAGE_ENCODERS.build(
        config.vision_language_encoder, "vision_language_encoder",
        weights=vision_language_weights, cache_dir=cache_dir,
    )
    saved = json.loads(json.dumps(config.to_dict()))  # what a checkpoint stores and reloads
    a = config.aggregator
    if a is None:
        # The training-free baseline has LMSeg's inference interface (Segmenter, evaluation).
        return cast(
            LMSeg,
            TrainingFreeModel(
                vision_language_encoder=vision_language, num_prompts=config.num_prompts, config=saved
            ),
        )
    d = vision_language.embed_dim
    spatial = adapter = fusion = None
    if config.spatial_encoder is not None:
        spatial = SPATIAL_ENCODERS.build(
            config.spatial_encoder, "spatial_encoder", weights=spatial_weights, cache_dir=cache_dir
        )
        adapter = SpatialAdapter(in_channels=spatial.out_channels, embed_dim=d)
        fusion = FUSIONS.build(
            config.fusion or {"type": "weighted"}, "fusion", embed_dim=d, grid=vision_language.grid_size
        )
    attention = a.class_attention or {"type": "linear"}
    layers = [
        AggregationLayer(
            spatial=SpatialAggregation(
                dim=a.hidden_dim,
                guidance_dim=a.appearance_guidance_dim,
                num_heads=a.num_heads,
                window_size=a.window_size,
                mlp_ratio=a.mlp_ratio,
            ),
            classes=ClassAggregation(
                dim=a.hidden_dim,
                guidance_dim=a.text_guidance_dim,
                num_heads=a.num_heads,
                pad_len=a.pad_len,
                mlp_ratio=a.mlp_ratio,
                attention=CLASS_ATTENTIONS.build(attention, "aggregator.class_attention"),
            ),
        )
        for _ in range(a.num_layers)
    ]
    return LMSeg(
        vision_language_encoder=vision_language,
        spatial_encoder=spatial,
        spatial_adapter=adapter,
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
            clip_width=vision_language.width,
            guidance_dims=a.decoder_guidance_dims,
            guidance_proj_dims=a.decoder_guidance_proj_dims,
            decoder_dims=a.decoder_dims,
        ),
        default_top_k=_default_top_k(config),
        config=saved,
    )


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a config's weights, from a model built on the meta device (nothing
    allocated, no weights read)."""
    with torch.device("meta"):
        model = build_model(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike[str] | None = True,
    *,
    vision_language_weights: str | None = None,
    spatial_weights: str | None = None,
    cache_dir: str | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    clip_pretrained: str | None = None,
    sam_checkpoint: str | None = None,
    **overrides: Any,
) -> LMSeg:
    """Build a named variant with its weights (downloaded, verified and cached by the zoo).

    Args:
        name: one of :func:`list_models`.
        pretrained: ``True``: the variant's default weights (``lmseg weights list``);
            ``False``/``None``: random weights (a one-line warning says the outputs are
            meaningless; the tiny variants are random by design, seeded, and build silently); a
            weights tag of the variant (``"catseg"``, ``"openai"``); a checkpoint file (lmseg
            ``.safetensors``, or a released CAT-Seg ``.pth``, converted once and cached); or
            ``"hf-hub:org/name[@revision]"``. See :func:`lmseg.zoo.resolve`.
        vision_language_weights: weights of the vision-language encoder replacing the zoo's
            (open_clip tag such as ``"openai"``, or a file).
        spatial_weights: weights of the spatial encoder replacing the zoo's (for SAM: a path,
            an official file name, or a file name in ``$LMSEG_CACHE/sam``).
        cache_dir: huggingface_hub cache folder for Hub downloads (its default when None).
        device: where to put the model (default: CPU).
        seed: seed of the randomly initialised weights, drawn without touching the global random
            state. None: the tiny variants use :data:`TINY_SEED` (the same weights, hence the
            same outputs, in every run); other variants draw from the global generator.
        clip_pretrained: earlier name of ``vision_language_weights``.
        sam_checkpoint: earlier name of ``spatial_weights``.
        **overrides: config overrides, see :func:`get_config`.

    Returns:
        The model in eval mode.

    Example:
        >>> model = create_model("lmseg_tiny")
    """
    config = get_config(name, **overrides)
    plan = zoo.resolve(
        config,
        pretrained,
        vision_language=vision_language_weights or clip_pretrained,
        spatial=spatial_weights or sam_checkpoint,
        cache=cache_dir,
    )
    if seed is None and name in _VARIANTS and _VARIANTS[name].tiny and plan.checkpoint is None:
        seed = TINY_SEED
    with _seeded(seed):
        model = build_model(
            config,
            vision_language_weights=plan.vision_language,
            spatial_weights=plan.spatial,
            cache_dir=cache_dir,
        )
    if plan.checkpoint is not None:
        load_weights(model, plan.checkpoint)
    plan.warn()
    return _place(model, device).eval()


# Seed of the tiny random-weight variants: the same weights, hence the same outputs, every run.
TINY_SEED = 0


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Build under ``seed`` (when given) without touching the caller's random state."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _place(model: LMSeg, device: str | torch.device | None) -> LMSeg:
    """Move a model to ``device``, with one clear error for devices this machine lacks."""
    if device is None:
        return model
    return model.to(resolve_device(device))


def load_model(path: str | os.PathLike[str], *, device: str | torch.device | None = None) -> LMSeg:
    """Rebuild a model from a checkpoint alone (its config is inside) and load its weights.

    ``path`` is an lmseg ``.safetensors`` file, a released CAT-Seg ``.pth`` (converted once and
    cached) or ``"hf-hub:org/name[@revision]"`` (see :func:`lmseg.zoo.locate_checkpoint`).

    Nothing in the file chooses what is read or fetched: the config is validated against the
    registered implementations and bounds, the weight shapes in the file's header are compared
    with the config's (from a model built on the meta device) before anything is allocated, no
    encoder weights are looked up (the file holds them all), and the weights must be finite.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: an unreadable file, a bad config (naming the field) or weights that do
            not fit it.
    """
    header = read_header(zoo.locate_checkpoint(path))
    try:
        config = ModelConfig.from_dict(header.config)
    except (RegistryError, ValueError, TypeError) as error:
        raise CheckpointError(f"{header.path}: invalid model config: {error}") from error
    try:
        shapes = expected_shapes(config)
    except (RegistryError, ValueError, TypeError) as error:
        raise CheckpointError(f"{header.path}: invalid model config: {error}") from error
    check_shapes(shapes, header.shapes, source=str(header.path), model_name=config.name)
    model = build_model(config)
    state = load_file(str(header.path))
    if header.format == "1":
        state = migrate_state_keys(state)
    check_finite(state, str(header.path))
    model.load_state_dict(state, strict=True)
    return _place(model, device).eval()

