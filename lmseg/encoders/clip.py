"""Dense CLIP image features and the CLIP text tower, on top of ``open_clip``.

The image side follows CAT-Seg's modified CLIP: the image is resized to the encoder's input size
(384 px for ViT-B/16, 336 px for ViT-L/14-336: a 24×24 grid), the positional embedding is resized
bicubically when the grid differs from the pretraining grid, and the **last block runs in dense
mode**: attention is skipped, the value path goes through out-proj, the CLS token of the block's
input is added as the residual to every token, then the MLP; then ``ln_post`` and the projection.
Outputs of two intermediate blocks (3 and 7 for ViT-B; 7 and 15 for ViT-L) are kept as decoder
guidance.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from einops import rearrange
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from lmseg.encoders.base import (
    VISION_LANGUAGE_ENCODERS,
    AttentionWeights,
    DenseFeatures,
    VisionLanguageEncoder,
    needs_resize,
)
from lmseg.weights import WeightsNotFoundError, quiet_open_clip_random_init

logger = logging.getLogger(__name__)

# Kept for code written against earlier releases: the dense output of any vision-language encoder.
CLIPFeatures = DenseFeatures
DENSE_MODES: tuple[str, ...] = ("catseg", "maskclip")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class CLIPEncoder(VisionLanguageEncoder):
    """An open_clip CLIP ViT (OpenAI or LAION weights) as the vision-language encoder.

    Registered as ``"open_clip"``.

    Args:
        model: an ``open_clip`` ``CLIP`` model (OpenAI layout: ``visual`` is a ViT, the text
            tower lives on the model).
        image_size: input size of the dense path (384 for ViT-B/16 in CAT-Seg); an int or (H, W).
        guidance_layers: indices of the blocks whose outputs guide the decoder.
        tokenizer_name: open_clip model name whose tokenizer to use.
        mean: RGB mean of the pretrained weights' normalisation (OpenAI's by default).
        std: RGB standard deviation of that normalisation.
        dense_mode: how the last block makes dense features: ``"catseg"`` (CAT-Seg's: value
            path, out-proj, the CLS token as residual, then the MLP) or ``"maskclip"``
            (MaskCLIP's: the value path through out-proj alone, no residual, no MLP), the
            training-free baseline's.

    Images are RGB float tensors in [0, 1]; the encoder owns resizing and normalisation.
    """

    model: Any  # open_clip's CLIP: typed loosely, its towers are reached by attribute
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        *,
        model: Any,
        image_size: int | Sequence[int],
        guidance_layers: Sequence[int],
        tokenizer_name: str = "ViT-B-16",
        mean: Sequence[float] = OPENAI_DATASET_MEAN,
        std: Sequence[float] = OPENAI_DATASET_STD,
        dense_mode: str = "catseg",
    ) -> None:
        super().__init__()
        if dense_mode not in DENSE_MODES:
            raise ValueError(f"dense_mode must be one of {DENSE_MODES}, got {dense_mode!r}")
        self.dense_mode = dense_mode
        self.model = model
        self.image_size = _pair(image_size)
        self.guidance_layers = tuple(guidance_layers)
        self.tokenizer_name = tokenizer_name
        depth = len(model.visual.transformer.resblocks)
        if any(not 0 <= i < depth - 1 for i in self.guidance_layers):
            raise ValueError(
                f"guidance layers {self.guidance_layers} must lie in [0, {depth - 2}] "
                f"(the last of the {depth} blocks runs in dense mode)"
            )
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    # -- sizes -------------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        """D, the joint embedding width."""
        return int(self.model.visual.output_dim)

    @property
    def width(self) -> int:
        """Width of the vision transformer (the guidance channels)."""
        return int(self.model.visual.conv1.out_channels)

    @property
    def pixel_mean(self) -> tuple[float, float, float]:
        """OpenAI CLIP's RGB mean (what CAT-Seg's zero padding of normalised images shows)."""
        r, g, b = (float(v) for v in self.mean.flatten().tolist())
        return r, g, b

    @property
    def patch_size(self) -> int:
        return int(self.model.visual.conv1.kernel_size[0])

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the dense feature grid."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    # -- image side --------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Resize (bilinear, as CAT-Seg) and normalise ``(B, 3, H, W)`` RGB in [0, 1]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
        size = size or self.image_size
        if needs_resize(images, size):
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """Positional embedding ``(1 + h·w, width)`` resized bicubically to ``grid`` (CAT-Seg)."""
        pos = self.model.visual.positional_embedding
        side = int(round((pos.shape[0] - 1) ** 0.5))
        if (side, side) == grid:
            return pos
        patches = rearrange(pos[1:], "(h w) c -> 1 c h w", h=side)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], rearrange(patches, "1 c h w -> (h w) c")], dim=0)

    def _tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        visual = self.model.visual
        x = visual.conv1(images)
        grid = (x.shape[-2], x.shape[-1])
        x = rearrange(x, "b c h w -> b (h w) c")
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding(grid).to(x.dtype)
        return visual.ln_pre(visual.patch_dropout(x)), grid

    def _dense_block(self, block: Any, x: torch.Tensor) -> torch.Tensor:
        """The dense last block on ``(B, 1 + L, width)`` tokens (see ``dense_mode``)."""
        attn: nn.MultiheadAttention = block.attn
        width = x.shape[-1]
        y = block.ln_1(x)
        value = F.linear(
            y, attn.in_proj_weight[2 * width :], attn.in_proj_bias[2 * width :]
        )
        if self.dense_mode == "maskclip":
            # MaskCLIP: "using the value features works the best"; adding them to the residual
            # or feeding them to the MLP degrades training-free segmentation.
            return block.ls_1(attn.out_proj(value))
        y = block.ls_1(attn.out_proj(value)) + x[:, :1]
        return y + block.ls_2(block.mlp(block.ln_2(y)))

    def _run_blocks(self, x: torch.Tensor, dense: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        transformer = self.model.visual.transformer
        blocks = transformer.resblocks
        if not getattr(transformer, "batch_first", True):
            raise ValueError("CLIPEncoder needs an open_clip transformer with batch_first=True")
        taps = []
        for i, block in enumerate(blocks[:-1]):
            x = block(x)
            if i in self.guidance_layers:
                taps.append(x[:, 1:])
        x = self._dense_block(blocks[-1], x) if dense else blocks[-1](x)
        return x, taps

    def forward(self, images: torch.Tensor) -> DenseFeatures:
        """Dense features of ``(B, 3, H, W)`` RGB images in [0, 1].

        Returns:
            :class:`DenseFeatures` with ``embedding (B, D, h, w)`` and the guidance taps
            ``(B, width, h, w)``.
        """
        x, grid = self._tokens(self.preprocess(images))
        x, taps = self._run_blocks(x, dense=True)
        visual = self.model.visual
        x = visual.ln_post(x[:, 1:]) @ visual.proj
        h, w = grid
        return DenseFeatures(
            embedding=rearrange(x, "b (h w) d -> b d h w", h=h, w=w),
            guidance=[rearrange(t, "b (h w) c -> b c h w", h=h, w=w) for t in taps],
        )

    def encode_image(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Pooled (non-dense) CLIP image embedding ``(B, D)``, the classification path.

        ``size`` defaults to the pretraining resolution, where this equals open_clip's
        ``encode_image``.
        """
        side = self.model.visual.image_size
        x, _ = self._tokens(self.preprocess(images, size or _pair(side)))
        x, _ = self._run_blocks(x, dense=False)
        visual = self.model.visual
        return visual.ln_post(x[:, 0]) @ visual.proj

    # -- text side (the TextEncoder protocol of lmseg.prompts) ------------------------------
    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @cached_property
    def _tokenizer(self) -> Any:
        return open_clip.get_tokenizer(self.tokenizer_name)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``N`` strings -> ``(N, context_length)`` int64 token ids (open_clip's BPE)."""
        return self._tokenizer(texts, context_length=self.context_length)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, context_length)`` token ids -> unnormalised text embeddings ``(N, D)``."""
        return self.model.encode_text(tokens.to(self.model.token_embedding.weight.device))

    @property
    def text_architecture(self) -> str:
        """What the text weights alone do not say (the MLP activation), for cache keys."""
        return type(self.model.transformer.resblocks[0].mlp.gelu).__name__

    def text_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the text tower (everything but ``visual.*``), for embedding-cache keys."""
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith("visual.")}

    # -- fine-tuning -------------------------------------------------------------------------
    def attention_weights(self) -> list[AttentionWeights]:
        """Packed ``in_proj_weight`` of every attention block of both towers.

        open_clip keeps q; k; v as row blocks of one ``(3·width, width)`` tensor. The last vision
        block runs in dense mode, which uses only the value path: its q and k rows are unused.
        """
        towers = [("model.visual.transformer", self.model.visual.transformer, True)]
        if hasattr(self.model, "transformer"):
            towers.append(("model.transformer", self.model.transformer, False))
        found = []
        for prefix, transformer, is_visual in towers:
            blocks = transformer.resblocks
            for i, block in enumerate(blocks):
                attn = block.attn
                if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
                    raise TypeError(f"{prefix}.resblocks.{i}.attn is not a packed nn.MultiheadAttention")
                w = attn.embed_dim
                dense = is_visual and i == len(blocks) - 1
                found.append(
                    AttentionWeights(
                        name=f"{prefix}.resblocks.{i}.attn.in_proj_weight",
                        weight=attn.in_proj_weight,
                        rows={"q": slice(0, w), "k": slice(w, 2 * w), "v": slice(2 * w, 3 * w)},
                        unused=frozenset({"q", "k"}) if dense else frozenset(),
                    )
                )
        return found


def _known_open_clip_name(name: str, what: str) -> str:
    """Refuse names open_clip would resolve remotely or on disk (``hf-hub:``, ``local-dir:``):
    a config may only name open_clip's built-in architectures."""
    if not isinstance(name, str) or name not in open_clip.list_models():
        raise ValueError(
            f"{what} {name!r} is not one of open_clip's built-in model configs "
            "(see open_clip.list_models()); pass custom sizes as model_cfg"
        )
    return name


@VISION_LANGUAGE_ENCODERS.register("open_clip")
def build_open_clip_encoder(
    *,
    model_name: str = "ViT-B-16",
    image_size: int | Sequence[int] = 384,
    guidance_layers: Sequence[int] = (3, 7),
    model_cfg: dict[str, Any] | None = None,
    tokenizer_name: str = "ViT-B-16",
    quick_gelu: bool = True,
    dense_mode: str = "catseg",
    weights: str | None = None,
    cache_dir: str | None = None,
) -> CLIPEncoder:
    """Build an open_clip CLIP ViT as the vision-language encoder.

    Args:
        model_name: an open_clip built-in architecture (``"ViT-B-16"``, ``"ViT-L-14-336"``);
            ignored when ``model_cfg`` is given.
        image_size: input size of the dense path (384 for ViT-B/16 in CAT-Seg).
        guidance_layers: indices of the blocks whose outputs guide the decoder.
        model_cfg: a full open_clip model config for custom sizes (tiny test models).
        tokenizer_name: open_clip built-in model whose tokenizer to use.
        quick_gelu: QuickGELU (OpenAI CLIP's activation, hence CAT-Seg's and LMSeg's).
        dense_mode: ``"catseg"`` or ``"maskclip"`` (see :class:`CLIPEncoder`).
        weights: open_clip pretrained tag (``"openai"``) or a weights file; None: random.
        cache_dir: open_clip's download cache.
    """
    if model_cfg is None:
        _known_open_clip_name(model_name, "model_name")
    _known_open_clip_name(tokenizer_name, "tokenizer_name")
    model = load_clip_model(
        model_name, weights, cache_dir=cache_dir, model_cfg=model_cfg, quick_gelu=quick_gelu
    )
    return CLIPEncoder(
        model=model,
        image_size=image_size,
        guidance_layers=guidance_layers,
        tokenizer_name=tokenizer_name,
        dense_mode=dense_mode,
    )


def load_clip_model(
    model_name: str,
    pretrained: str | None = None,
    *,
    cache_dir: str | None = None,
    model_cfg: dict[str, Any] | None = None,
    quick_gelu: bool | None = None,
) -> nn.Module:
    """Build an open_clip CLIP model, optionally with pretrained weights.

    Args:
        model_name: open_clip architecture (``"ViT-B-16"``, ``"ViT-L-14-336"``), ignored when
            ``model_cfg`` is given.
        pretrained: None (random weights), an open_clip pretrained tag (``"openai"``) or a path
            to a weights file (open_clip or OpenAI state dict, ``.safetensors``/``.bin``/``.pt``).
        cache_dir: where open_clip caches downloads (its default when None).
        model_cfg: a full open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``,
            ``quick_gelu``) for custom sizes such as the tiny test models.
        quick_gelu: use QuickGELU (OpenAI CLIP's activation, and so CAT-Seg's and LMSeg's) rather
            than GELU. None: only for the ``"openai"`` tag and ``*-quickgelu`` names. Weights
            alone do not say which: a mismatch silently changes every feature.

    Raises:
        WeightsNotFoundError: the weights are neither on disk nor downloadable (offline),
            with the file to fetch and where to put it.
    """
    if model_cfg is not None:
        cfg = dict(model_cfg)
        quick_gelu = bool(cfg.pop("quick_gelu", False))
        model = open_clip.model.CLIP(**cfg, quick_gelu=quick_gelu)
        if pretrained:
            _load_file(model, pretrained)
        return model.eval()
    if quick_gelu is None:
        quick_gelu = pretrained == "openai" or model_name.endswith("quickgelu")
    if pretrained is None or Path(pretrained).is_file():
        # open_clip moves the model to a device: keep the caller's default (the meta device when
        # the factory checks a checkpoint's shapes without allocating). Built empty on purpose:
        # weights follow, or lmseg.create_model warns about random CLIP.
        device = torch.empty(()).device
        with quiet_open_clip_random_init():
            model = open_clip.create_model(
                model_name, pretrained=None, force_quick_gelu=quick_gelu, device=device
            )
        if pretrained is not None:
            _load_file(model, pretrained)
        return model.eval()
    if not open_clip.pretrained.is_pretrained_cfg(model_name, pretrained):
        raise WeightsNotFoundError(
            f"{pretrained!r} is neither a file nor an open_clip pretrained tag for {model_name}; "
            f"known tags: {open_clip.list_pretrained_tags_by_model(model_name)}"
        )
    try:
        model = open_clip.create_model(
            model_name, pretrained=pretrained, cache_dir=cache_dir, force_quick_gelu=quick_gelu
        )
    except Exception as error:
        cfg = open_clip.pretrained.get_pretrained_cfg(model_name, pretrained)
        where = cfg.get("hf_hub") or cfg.get("url") or "its release page"
        raise WeightsNotFoundError(
            f"could not load CLIP {model_name} '{pretrained}' weights "
            f"({type(error).__name__}: {error}). This machine may be offline: download the "
            f"weights from {where} (open_clip_model.safetensors or the .pt file) and pass the "
            f"file path instead of the tag, or place them in open_clip's cache "
            f"({cache_dir or '~/.cache/huggingface or ~/.cache/clip'})."
        ) from error
    return model.eval()


def _load_file(model: nn.Module, path: str) -> None:
    """Load a weights file into an open_clip model without unpickling arbitrary objects."""
    try:
        open_clip.load_checkpoint(model, path, strict=True, weights_only=True)
    except Exception as error:  # e.g. an OpenAI TorchScript archive
        try:
            archive = torch.jit.load(path, map_location="cpu")
        except Exception:
            raise ValueError(f"could not load CLIP weights from {path}: {error}") from error
        state = {
            k: v
            for k, v in archive.state_dict().items()
            if k not in ("input_resolution", "context_length", "vocab_size")
        }
        model.load_state_dict(state, strict=True)
