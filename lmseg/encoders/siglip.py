"""Dense SigLIP image features and SigLIP's text tower, on top of ``open_clip``.

SigLIP (``ViT-B-16-SigLIP-384`` and siblings in open_clip) has a timm ViT trunk **without a CLS
token**: its image embedding is a learned-query attention pooling (the MAP head: one latent query
attends over all tokens, then an output projection and a residual MLP) of the trunk's normalised
tokens. CAT-Seg's dense CLIP takes what the CLS token would become if its last attention looked at
one patch only (the CLS residual plus that patch's value path). The same question asked of SigLIP's
pooling head has an exact answer: with one key, attention weights are 1, so the head returns

    F[b, :, i, j] = y + MLP(norm(y)),   y = proj(V(x_ij))

for each normalised trunk token ``x_ij``: the value path of the head, its output projection and its
MLP, per token (MaskCLIP's treatment of attention pooling). It equals the head applied to a
one-token sequence, which the tests check against timm's own module. All trunk blocks run
unchanged; the head's query and key projections are unused.

Outputs of two intermediate blocks (3 and 7 for the 12-block ViT-B) guide the decoder, as in
dense CLIP. The image is resized (bilinear, as CAT-Seg) and normalised with SigLIP's mean and
standard deviation (0.5). At another input size than the trunk's, its position embedding is
resized as timm's ``dynamic_img_size`` does (bicubic, antialiased).

The text tower is open_clip's (bidirectional, pooled at the last position). Its tokenizer is
open_clip's for the named model: for the released SigLIP models a Hugging Face tokenizer
(``transformers``), read from the local Hugging Face cache only; it is never downloaded here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import open_clip
import timm
import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import resample_abs_pos_embed
from torch import nn

from lmseg.encoders.base import (
    VISION_LANGUAGE_ENCODERS,
    AttentionWeights,
    DenseFeatures,
    VisionLanguageEncoder,
)
from lmseg.encoders.common import OfficialWeights, check_int, find_weights
from lmseg.weights import WeightsNotFoundError

__all__ = ["SIGLIP_WEIGHTS", "SigLIPEncoder", "build_siglip_encoder", "siglip_model_names"]

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

_HF = "https://huggingface.co/timm/{}/resolve/main/open_clip_model.safetensors"
#: The released weights of the SigLIP models most used for dense work (open_clip's ``webli`` tag;
#: the Hugging Face repository holds the tokenizer files too). No sizes or checksums published
#: beside the hub's own file listing.
SIGLIP_WEIGHTS: dict[str, OfficialWeights] = {
    name: OfficialWeights(
        file="open_clip_model.safetensors",
        url=_HF.format(name),
        licence="Apache-2.0",
        source=f"open_clip pretrained config for {name!r} (tag 'webli', hf_hub 'timm/{name}')",
    )
    for name in ("ViT-B-16-SigLIP", "ViT-B-16-SigLIP-384", "ViT-L-16-SigLIP-384", "ViT-SO400M-14-SigLIP-384")
}

_VISION_KEYS = {"width": "embed_dim", "depth": "depth", "num_heads": "num_heads", "patch_size": "patch_size",
                "image_size": "img_size"}
_TEXT_KEYS = ("width", "heads", "layers", "vocab_size", "context_length")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def siglip_model_names() -> list[str]:
    """open_clip's built-in models with SigLIP's layout (a timm trunk pooled by a MAP head with no
    projection after it, and open_clip's own text tower)."""
    names = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        if vision.get("timm_pool") == "map" and vision.get("timm_proj") == "none" and not text.get("hf_model_name"):
            names.append(name)
    return names


class SigLIPEncoder(VisionLanguageEncoder):
    """An open_clip SigLIP model as the vision-language encoder, with a dense image path.

    Registered as ``"siglip"``.

    Args:
        model: an open_clip ``CustomTextCLIP`` whose ``visual`` is a timm ViT without prefix tokens
            pooled by an ``AttentionPoolLatent`` head (SigLIP's layout).
        image_size: input size of the dense path; an int or (H, W).
        guidance_layers: indices of the blocks whose outputs guide the decoder.
        tokenizer_name: open_clip built-in model whose tokenizer to use.
        cache_dir: the Hugging Face cache that holds a Hugging Face tokenizer's files.
        mean: RGB mean of the weights' normalisation.
        std: RGB standard deviation of that normalisation.
    """

    model: Any  # open_clip's CustomTextCLIP: typed loosely, its towers are reached by attribute
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        *,
        model: Any,
        image_size: int | Sequence[int],
        guidance_layers: Sequence[int],
        tokenizer_name: str,
        cache_dir: str | None = None,
        mean: Sequence[float] = SIGLIP_MEAN,
        std: Sequence[float] = SIGLIP_STD,
    ) -> None:
        super().__init__()
        trunk = getattr(getattr(model, "visual", None), "trunk", None)
        pool: Any = getattr(trunk, "attn_pool", None)
        if trunk is None or type(pool).__name__ != "AttentionPoolLatent" or trunk.num_prefix_tokens:
            raise ValueError(
                "SigLIPEncoder needs an open_clip model whose visual trunk is a timm ViT without "
                "prefix tokens pooled by a MAP head (AttentionPoolLatent), as open_clip's SigLIP models"
            )
        if pool.pos_embed is not None or pool.latent_len != 1 or len(model.visual.head):
            raise ValueError("the MAP head must have one latent query, no position embedding and no projection after it")
        self.model = model
        self.image_size = _pair(image_size)
        self.guidance_layers = tuple(guidance_layers)
        self.tokenizer_name = tokenizer_name
        self.cache_dir = cache_dir
        depth = len(trunk.blocks)
        if any(not 0 <= i < depth for i in self.guidance_layers):
            raise ValueError(f"guidance layers {self.guidance_layers} must lie in [0, {depth - 1}]")
        patch = self.patch_size
        if self.image_size[0] % patch or self.image_size[1] % patch:
            raise ValueError(f"image_size {self.image_size} must be a multiple of the patch size {patch}")
        self._pixel_mean = (float(mean[0]), float(mean[1]), float(mean[2]))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def trunk(self) -> Any:
        """The timm ViT of the image tower."""
        return self.model.visual.trunk

    # -- sizes -------------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        """D, the joint embedding width (the MAP head's output)."""
        return int(self.trunk.attn_pool.out_features)

    @property
    def width(self) -> int:
        """Width of the ViT trunk (the guidance channels)."""
        return int(self.trunk.embed_dim)

    @property
    def patch_size(self) -> int:
        return int(self.trunk.patch_embed.patch_size[0])

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the dense feature grid."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def pixel_mean(self) -> tuple[float, float, float]:
        """SigLIP's RGB mean (what a zero in normalised images shows)."""
        return self._pixel_mean

    # -- image side --------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Resize (bilinear, as CAT-Seg) and normalise ``(B, 3, H, W)`` RGB in [0, 1]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
        size = size or self.image_size
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def _tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised images -> trunk input tokens ``(B, h·w, width)`` and the grid (h, w)."""
        trunk = self.trunk
        x = trunk.patch_embed.proj(images)
        grid = (x.shape[-2], x.shape[-1])
        x = trunk.patch_embed.norm(rearrange(x, "b c h w -> b (h w) c"))
        pos = trunk.pos_embed
        if grid != tuple(trunk.patch_embed.grid_size):
            pos = resample_abs_pos_embed(pos, new_size=grid, old_size=trunk.patch_embed.grid_size, num_prefix_tokens=0)
        x = trunk.pos_drop(x + pos.to(x.dtype))
        return trunk.norm_pre(trunk.patch_drop(x)), grid

    def _run_blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        taps = []
        for i, block in enumerate(self.trunk.blocks):
            x = block(x)
            if i in self.guidance_layers:
                taps.append(x)
        return self.trunk.norm(x), taps

    def dense_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """The MAP head with one key per query: ``(B, L, width)`` normalised trunk tokens ->
        ``(B, L, D)``, each token pooled on its own (value path, output projection, MLP)."""
        head = self.trunk.attn_pool
        width = tokens.shape[-1]
        value = F.linear(tokens, head.kv.weight[width:], None if head.kv.bias is None else head.kv.bias[width:])
        y = head.proj_drop(head.proj(value))
        if head.mlp is not None:
            y = y + head.mlp(head.norm(y))
        return self.trunk.fc_norm(y)

    def forward(self, images: torch.Tensor) -> DenseFeatures:
        """Dense features of ``(B, 3, H, W)`` RGB images in [0, 1].

        Returns:
            :class:`DenseFeatures` with ``embedding (B, D, h, w)`` and the guidance taps
            ``(B, width, h, w)``.
        """
        x, grid = self._tokens(self.preprocess(images))
        x, taps = self._run_blocks(x)
        h, w = grid
        return DenseFeatures(
            embedding=rearrange(self.dense_head(x), "b (h w) d -> b d h w", h=h, w=w),
            guidance=[rearrange(t, "b (h w) c -> b c h w", h=h, w=w) for t in taps],
        )

    def encode_image(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Pooled SigLIP image embedding ``(B, D)`` (the MAP head over all tokens).

        ``size`` defaults to the trunk's input size, where this equals open_clip's
        ``encode_image``.
        """
        native = tuple(int(s) for s in self.trunk.patch_embed.img_size)
        x, _ = self._tokens(self.preprocess(images, size or (native[0], native[1])))
        x, _ = self._run_blocks(x)
        return self.trunk.forward_head(x)

    # -- text side (the TextEncoder protocol of lmseg.prompts) ------------------------------
    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @cached_property
    def _tokenizer(self) -> Any:
        return load_tokenizer(self.tokenizer_name, self.context_length, self.cache_dir)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``N`` strings -> ``(N, context_length)`` int64 token ids."""
        return self._tokenizer(texts, context_length=self.context_length)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, context_length)`` token ids -> unnormalised text embeddings ``(N, D)``."""
        return self.model.encode_text(tokens.to(self.model.text.token_embedding.weight.device))

    @property
    def text_architecture(self) -> str:
        """What the text weights alone do not say (activation, pooling, masking), for cache keys."""
        text = self.model.text
        act = type(text.transformer.resblocks[0].mlp.gelu).__name__
        mask = "causal" if text.attn_mask is not None else "bidirectional"
        return f"siglip-{act}-{text.pool_type}-{mask}-{self.tokenizer_name}"

    def text_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the text tower (``text.*``), for embedding-cache keys."""
        return {k: v for k, v in self.model.state_dict().items() if k.startswith("text.")}

    # -- fine-tuning -------------------------------------------------------------------------
    def attention_weights(self) -> list[AttentionWeights]:
        """The packed attention projections of both towers and of the MAP head.

        The trunk's timm blocks pack q; k; v as row blocks of ``attn.qkv.weight``; the text
        tower's ``nn.MultiheadAttention`` packs them in ``in_proj_weight``. The MAP head has its
        own query projection and packs k; v in ``kv.weight``; the dense path uses only its value
        rows, so its query and key projections are unused.
        """
        found = []
        prefix = "model.visual.trunk"
        for i, block in enumerate(self.trunk.blocks):
            w = block.attn.qkv.in_features
            found.append(AttentionWeights(
                name=f"{prefix}.blocks.{i}.attn.qkv.weight", weight=block.attn.qkv.weight,
                rows={"q": slice(0, w), "k": slice(w, 2 * w), "v": slice(2 * w, 3 * w)},
            ))
        head: Any = self.trunk.attn_pool
        query: Any = head.q  # an Identity when the latent is the query itself (q_proj=False)
        if hasattr(query, "weight"):
            found.append(AttentionWeights(
                name=f"{prefix}.attn_pool.q.weight", weight=query.weight,
                rows={"q": slice(0, query.out_features)}, unused=frozenset({"q"}),
            ))
        w = head.kv.in_features
        found.append(AttentionWeights(
            name=f"{prefix}.attn_pool.kv.weight", weight=head.kv.weight,
            rows={"k": slice(0, w), "v": slice(w, 2 * w)}, unused=frozenset({"k"}),
        ))
        for i, block in enumerate(self.model.text.transformer.resblocks):
            attn = block.attn
            if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
                raise TypeError(f"model.text.transformer.resblocks.{i}.attn is not a packed nn.MultiheadAttention")
            w = attn.embed_dim
            found.append(AttentionWeights(
                name=f"model.text.transformer.resblocks.{i}.attn.in_proj_weight", weight=attn.in_proj_weight,
                rows={"q": slice(0, w), "k": slice(w, 2 * w), "v": slice(2 * w, 3 * w)},
            ))
        return found


def load_tokenizer(name: str, context_length: int, cache_dir: str | None) -> Any:
    """open_clip's tokenizer for the built-in model ``name``; a Hugging Face tokenizer is read
    from the local cache only (``cache_dir`` or Hugging Face's default).

    Raises:
        ImportError: a Hugging Face tokenizer without ``transformers`` installed.
        WeightsNotFoundError: its files are not in the cache, naming the repository.
    """
    hf_name = ((open_clip.get_model_config(name) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
    if not hf_name:
        return open_clip.get_tokenizer(name, context_length=context_length)
    try:
        import transformers  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"the {name} tokenizer is the Hugging Face tokenizer {hf_name!r}: install transformers "
            "and sentencepiece (pip install transformers sentencepiece)"
        ) from error
    try:
        return open_clip.get_tokenizer(name, context_length=context_length, cache_dir=cache_dir, local_files_only=True)
    except OSError as error:
        raise WeightsNotFoundError(
            f"the tokenizer files of {hf_name!r} are not in the Hugging Face cache "
            f"({cache_dir or 'the default ~/.cache/huggingface'}); download that repository's "
            f"tokenizer files (https://huggingface.co/{hf_name}) into it ({error})"
        ) from error


@VISION_LANGUAGE_ENCODERS.register("siglip")
def build_siglip_encoder(
    *,
    model_name: str = "ViT-B-16-SigLIP-384",
    image_size: int | Sequence[int] | None = None,
    guidance_layers: Sequence[int] = (3, 7),
    tokenizer_name: str | None = None,
    vision_cfg: Mapping[str, int] | None = None,
    text_cfg: Mapping[str, int] | None = None,
    weights: str | None = None,
    cache_dir: str | None = None,
) -> SigLIPEncoder:
    """Build an open_clip SigLIP model as the vision-language encoder.

    Args:
        model_name: an open_clip built-in SigLIP model (:func:`siglip_model_names`).
        image_size: input size of the dense path; None: the trunk's own (384 for
            ``ViT-B-16-SigLIP-384``, a 24×24 grid as CAT-Seg's ViT-B/16).
        guidance_layers: indices of the blocks whose outputs guide the decoder.
        tokenizer_name: open_clip built-in model whose tokenizer to use; None: ``model_name``'s.
        vision_cfg: trunk sizes replacing the named model's (tiny test models): ``width``,
            ``depth``, ``num_heads``, ``patch_size``, ``image_size`` (the trunk's input size,
            which sets its position-embedding grid). The joint width D follows ``width``.
        text_cfg: text-tower sizes replacing the named model's: ``width``, ``heads``,
            ``layers``, ``vocab_size``, ``context_length``.
        weights: an open_clip weights file of that model (``open_clip_model.safetensors``); a
            path, or a file name in ``cache_dir`` or ``$LMSEG_CACHE/siglip``. Never downloaded.
            None: random weights.
        cache_dir: a folder to look for ``weights`` in, and the Hugging Face cache of the tokenizer.
    """
    names = siglip_model_names()
    for value, what in ((model_name, "model_name"), (tokenizer_name or model_name, "tokenizer_name")):
        if not isinstance(value, str) or value not in open_clip.list_models() or (what == "model_name" and value not in names):
            raise ValueError(
                f"{what} {value!r} is not one of open_clip's built-in "
                f"{'SigLIP models' if what == 'model_name' else 'model configs'}; SigLIP models: {names}"
            )
    cfg = copy.deepcopy(open_clip.get_model_config(model_name))
    trunk_sizes = _sizes(vision_cfg, _VISION_KEYS, "vision_cfg")
    text_sizes = _sizes(text_cfg, _TEXT_KEYS, "text_cfg")
    cfg["text_cfg"].update(text_sizes)
    if "embed_dim" in trunk_sizes:
        cfg["embed_dim"] = trunk_sizes["embed_dim"]  # no projection after the MAP head: D = width
    if "img_size" in trunk_sizes:
        cfg["vision_cfg"]["image_size"] = trunk_sizes["img_size"]
    cfg.pop("custom_text", None)
    model = _sized_model(model_name, cfg, trunk_sizes) if trunk_sizes or text_sizes else _named_model(model_name)
    if weights is not None:
        path = find_weights(weights, kind="siglip", cache_dir=cache_dir,
                            hint=SIGLIP_WEIGHTS[model_name].url if model_name in SIGLIP_WEIGHTS else "open_clip's release")
        try:
            open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
        except RuntimeError as error:  # load_state_dict's missing / unexpected / size mismatch keys
            raise ValueError(f"the SigLIP weights {path} do not fit {model_name}: {error}") from error
    native = int(model.visual.trunk.patch_embed.img_size[0])
    return SigLIPEncoder(
        model=model.eval(),
        image_size=image_size if image_size is not None else native,
        guidance_layers=guidance_layers,
        tokenizer_name=tokenizer_name or model_name,
        cache_dir=cache_dir,
    )


def _sizes(given: Mapping[str, int] | None, keys: Mapping[str, str] | Sequence[str], where: str) -> dict[str, int]:
    """Bounded integer size overrides, renamed to what the builder takes."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise ValueError(f"{where} must be a mapping of sizes, got {type(given).__name__}")
    rename = dict(keys) if isinstance(keys, Mapping) else {k: k for k in keys}
    unknown = sorted(set(given) - set(rename))
    if unknown:
        raise ValueError(f"{where}: unknown size(s) {unknown}; it takes {sorted(rename)}")
    bounds = {"depth": 64, "layers": 64, "num_heads": 64, "heads": 64, "patch_size": 64, "image_size": 4096,
              "vocab_size": 1 << 18, "context_length": 1024, "width": 4096}
    return {rename[k]: check_int(f"{where}.{k}", v, 1, bounds[k]) for k, v in given.items()}


def _named_model(model_name: str) -> Any:
    # open_clip moves the model to a device: keep the caller's default (the meta device when the
    # factory checks a checkpoint's shapes without allocating).
    device = torch.empty(()).device
    return open_clip.create_model(model_name, pretrained=None, device=device)


def _sized_model(model_name: str, cfg: dict[str, Any], sizes: dict[str, int]) -> Any:
    """open_clip's CustomTextCLIP at other sizes. open_clip's timm adapter passes no sizes to
    timm, so the model is laid out on the meta device (nothing allocated) and its towers are then
    built at the asked sizes, with open_clip's and timm's own constructors."""
    with torch.device("meta"):
        model = open_clip.model.CustomTextCLIP(**cfg)
    vision = cfg["vision_cfg"]
    trunk_sizes: dict[str, Any] = {"img_size": int(vision["image_size"]), **sizes}
    model.visual.trunk = timm.create_model(
        vision["timm_model_name"], pretrained=False, num_classes=0, global_pool=vision["timm_pool"], **trunk_sizes
    )
    model.visual.image_size = _pair(trunk_sizes["img_size"])
    model.text = open_clip.model._build_text_tower(cfg["embed_dim"], cfg["text_cfg"])
    model.context_length = model.text.context_length
    model.vocab_size = model.text.vocab_size
    model.logit_scale = nn.Parameter(torch.full((), float(cfg.get("init_logit_scale", math.log(1 / 0.07)))))
    bias = cfg.get("init_logit_bias")
    model.logit_bias = None if bias is None else nn.Parameter(torch.full((), float(bias)))
    return model
