"""SAM 2's image encoder (the ``sam2`` package: Hiera trunk + FPN neck) as the spatial encoder.

The neck gives three levels at strides 4, 8 and 16 (the stride-32 level is computed for the
top-down path and then dropped, SAM 2's ``scalp=1``). The spatial encoder returns the **stride-16
level** (``vision_features``, 256 channels): it is the one SAM 2's mask decoder takes as its image
embedding, the only level that carries the top-down context of the stride-32 stage, and at 1024 px
it is a ``(B, 256, 64, 64)`` map exactly as SAM's neck gives, so it replaces SAM with no change to
the spatial adapter. The two finer levels only refine mask edges in SAM 2's decoder.

SAM 2's image predictor also adds a learned per-channel vector (``no_mem_embed``) to that level
in image mode; the spatial adapter's 1×1 projection has a bias that absorbs any constant offset,
so only the ``image_encoder.*`` weights are loaded.

Like SAM 2's own transforms, the image is resized to a square (no aspect-ratio padding) and
normalised with ImageNet's mean and standard deviation. Sizes are lmseg data (the official
``sam2.1_hiera_{t,s,b+,l}`` configs, written out below); nothing runs hydra. The ``sam2``
package is an optional dependency (``pip install "lmseg[sam2]"``; set ``SAM2_BUILD_CUDA=0`` to skip
its CUDA extension, which only the video predictor uses).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lmseg.encoders.base import SPATIAL_ENCODERS, SpatialEncoder, load_weights_exactly, square_input
from lmseg.encoders.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OfficialWeights,
    check_int,
    check_ints,
    find_weights,
)

__all__ = [
    "SAM2_0_WEIGHTS",
    "SAM2_VARIANTS",
    "SAM2_WEIGHTS",
    "SAM2Encoder",
    "build_sam2_encoder",
    "load_sam2_image_encoder",
]


# The image-encoder sections of sam2's configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml (identical in
# the SAM 2.0 configs), with Hiera's defaults written out where a config leaves them.
SAM2_VARIANTS: dict[str, dict[str, tuple[int, ...] | int]] = {
    "hiera_t": dict(
        embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
        window_spec=(8, 4, 14, 7), window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "hiera_s": dict(
        embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
        window_spec=(8, 4, 14, 7), window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "hiera_b+": dict(
        embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
        window_spec=(8, 4, 14, 7), window_pos_embed_bkg_spatial_size=(14, 14),
    ),
    "hiera_l": dict(
        embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8), window_pos_embed_bkg_spatial_size=(7, 7),
    ),
}
# The neck of every official config: 256 channels, top-down into the two coarsest kept levels.
_NECK: dict[str, Any] = dict(d_model=256, fpn_top_down_levels=(2, 3), fpn_interp_model="nearest", scalp=1)

_SAM2_1 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_SAM2_0 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
_SOURCE = "facebookresearch/sam2 README.md and checkpoints/download_ckpts.sh"
#: The released SAM 2.1 checkpoints per variant (Meta publishes no sizes or checksums). The SAM 2.0
#: files (``_SAM2_0 + "sam2_hiera_tiny.pt"`` etc.) share the image-encoder layout and load too.
SAM2_WEIGHTS: dict[str, OfficialWeights] = {
    variant: OfficialWeights(file=name, url=_SAM2_1 + name, licence="Apache-2.0", source=_SOURCE)
    for variant, name in [
        ("hiera_t", "sam2.1_hiera_tiny.pt"),
        ("hiera_s", "sam2.1_hiera_small.pt"),
        ("hiera_b+", "sam2.1_hiera_base_plus.pt"),
        ("hiera_l", "sam2.1_hiera_large.pt"),
    ]
}
SAM2_0_WEIGHTS: dict[str, OfficialWeights] = {
    variant: OfficialWeights(file=name, url=_SAM2_0 + name, licence="Apache-2.0", source=_SOURCE)
    for variant, name in [
        ("hiera_t", "sam2_hiera_tiny.pt"),
        ("hiera_s", "sam2_hiera_small.pt"),
        ("hiera_b+", "sam2_hiera_base_plus.pt"),
        ("hiera_l", "sam2_hiera_large.pt"),
    ]
}

# Top-level modules of a full SAM 2 checkpoint besides the image encoder: expected, unused.
_OTHER_MODULES = (
    "mask_downsample", "maskmem_tpos_enc", "memory_attention", "memory_encoder", "no_mem_embed",
    "no_mem_pos_enc", "no_obj_embed_spatial", "no_obj_ptr", "obj_ptr_proj", "obj_ptr_tpos_proj",
    "sam_mask_decoder", "sam_prompt_encoder",
)


class SAM2Encoder(SpatialEncoder):
    """SAM 2's image encoder as the spatial encoder, with its own resizing and normalisation.

    Registered as ``"sam2"``.

    Args:
        encoder: a ``sam2`` ``ImageEncoder`` (Hiera trunk, FPN neck).
        image_size: square input side (1024 in SAM 2); a multiple of 32.
    """

    encoder: Any  # sam2's ImageEncoder: typed loosely, its trunk and neck are reached by attribute
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, *, encoder: nn.Module, image_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def out_channels(self) -> int:
        """Channels of the neck (256 for the official models)."""
        return int(self.encoder.neck.d_model)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize ``(B, 3, H, W)`` RGB in [0, 1] to ``image_size`` and normalise (SAM 2's
        transforms: a square bilinear, antialiased resize, then ImageNet statistics)."""
        return square_input(images, self.image_size, self.mean, self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] -> the stride-16 level ``(B, 256, s/16, s/16)``."""
        return self.encoder(self.preprocess(images))["vision_features"]


@SPATIAL_ENCODERS.register("sam2")
def build_sam2_encoder(
    *,
    variant: str = "hiera_b+",
    image_size: int = 1024,
    embed_dim: int | None = None,
    num_heads: int | None = None,
    stages: Sequence[int] | None = None,
    global_att_blocks: Sequence[int] | None = None,
    window_spec: Sequence[int] | None = None,
    window_pos_embed_bkg_spatial_size: Sequence[int] | None = None,
    d_model: int = 256,
    weights: str | os.PathLike[str] | None = None,
    cache_dir: str | None = None,
) -> SAM2Encoder:
    """Build SAM 2's image encoder (frozen), optionally loading an official checkpoint.

    Args:
        variant: ``"hiera_t"``, ``"hiera_s"``, ``"hiera_b+"`` or ``"hiera_l"`` (the official
            ``sam2.1_hiera_*`` configs); the size keywords below replace its sizes (tiny test
            models).
        image_size: square input side, a multiple of 32 (Hiera downsamples by 32; the first
            stage's window must tile the stride-4 grid).
        embed_dim: width of Hiera's first stage (doubles at each stage).
        num_heads: heads of the first stage (double at each stage).
        stages: blocks in each of the four stages.
        global_att_blocks: indices of the blocks with global attention (the others are windowed).
        window_spec: window side per stage.
        window_pos_embed_bkg_spatial_size: side of the background position embedding.
        d_model: channels of the neck (and of the output).
        weights: an official checkpoint (``sam2.1_hiera_base_plus.pt``: ``{"model": state_dict}``
            with ``image_encoder.*`` keys), or a bare image-encoder state dict; a path, or a file
            name in ``cache_dir`` or ``$LMSEG_CACHE/sam2``. Read with ``weights_only=True``; never
            downloaded. None: random weights.
        cache_dir: a folder to look for ``weights`` in.

    Raises:
        ImportError: the ``sam2`` package is not installed.
        ValueError: an unknown variant, or a size out of bounds or inconsistent, named.
    """
    if variant not in SAM2_VARIANTS:
        raise ValueError(f"unknown SAM 2 variant {variant!r}; choose one of {list(SAM2_VARIANTS)}")
    sizes: dict[str, Any] = dict(SAM2_VARIANTS[variant])
    given = dict(
        embed_dim=embed_dim, num_heads=num_heads, stages=stages, global_att_blocks=global_att_blocks,
        window_spec=window_spec, window_pos_embed_bkg_spatial_size=window_pos_embed_bkg_spatial_size,
    )
    sizes.update({k: v for k, v in given.items() if v is not None})
    sizes = _checked_sizes(sizes, image_size)
    d_model = check_int("d_model", d_model, 2, 4096)
    if d_model % 2:
        raise ValueError(f"d_model must be even (sine position encoding), got {d_model}")
    encoder = _image_encoder(sizes, d_model)
    if weights is not None:
        hint = SAM2_WEIGHTS[variant].url if variant in SAM2_WEIGHTS else "the SAM 2 release"
        path = find_weights(weights, kind="sam2", cache_dir=cache_dir, hint=hint)
        load_sam2_image_encoder(encoder, torch.load(path, map_location="cpu", weights_only=True))
    encoder.requires_grad_(False)
    return SAM2Encoder(encoder=encoder.eval(), image_size=image_size)


def _checked_sizes(sizes: dict[str, Any], image_size: int) -> dict[str, Any]:
    """Bounds and consistency of Hiera's sizes, each named, before anything is built."""
    check_int("image_size", image_size, 32, 4096)
    if image_size % 32:
        raise ValueError(f"SAM 2 image_size must be a multiple of 32 (Hiera's stride), got {image_size}")
    out: dict[str, Any] = dict(
        embed_dim=check_int("embed_dim", sizes["embed_dim"], 1, 2048),
        num_heads=check_int("num_heads", sizes["num_heads"], 1, 64),
        stages=check_ints("stages", sizes["stages"], 4, 1, 64),
        window_spec=check_ints("window_spec", sizes["window_spec"], 4, 0, 64),
        window_pos_embed_bkg_spatial_size=check_ints(
            "window_pos_embed_bkg_spatial_size", sizes["window_pos_embed_bkg_spatial_size"], 2, 1, 256
        ),
    )
    depth = sum(out["stages"])
    out["global_att_blocks"] = check_ints("global_att_blocks", sizes["global_att_blocks"], None, 0, depth - 1)
    for stage in range(1, 4):
        # The first block of stages 2-4 pools its queries inside the previous stage's windows.
        block, window = sum(out["stages"][:stage]), out["window_spec"][stage - 1]
        if block in out["global_att_blocks"] or window < 2:
            raise ValueError(
                f"block {block} pools its queries (first of stage {stage + 1}): it needs windowed "
                f"attention with window_spec[{stage - 1}] >= 2, not global attention or window {window}"
            )
    first_window = out["window_spec"][0]
    if first_window < 1 or (image_size // 4) % first_window:
        raise ValueError(
            f"window_spec[0] = {first_window} must divide the stride-4 grid side {image_size // 4} "
            "(Hiera tiles its window position embedding over it)"
        )
    return out


def _image_encoder(sizes: Mapping[str, Any], d_model: int) -> nn.Module:
    """``sam2``'s ImageEncoder(Hiera, FpnNeck) as the official configs compose it."""
    try:
        from sam2.modeling.backbones.hieradet import Hiera
        from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
        from sam2.modeling.position_encoding import PositionEmbeddingSine
    except ImportError as error:
        raise ImportError(
            f"the 'sam2' spatial encoder needs the sam2 package ({error}); install it with "
            "SAM2_BUILD_CUDA=0 pip install 'lmseg[sam2]'"
        ) from error

    def build() -> nn.Module:
        trunk = Hiera(
            embed_dim=sizes["embed_dim"],
            num_heads=sizes["num_heads"],
            stages=sizes["stages"],
            global_att_blocks=sizes["global_att_blocks"],
            window_spec=sizes["window_spec"],
            window_pos_embed_bkg_spatial_size=sizes["window_pos_embed_bkg_spatial_size"],
        )
        neck = FpnNeck(
            # warmup_cache would precompute CUDA encodings for 1024 px at build time; they are
            # computed per shape on first use instead.
            position_encoding=PositionEmbeddingSine(
                num_pos_feats=d_model, normalize=True, scale=None, temperature=10000, warmup_cache=False
            ),
            d_model=d_model,
            backbone_channel_list=list(trunk.channel_list),
            fpn_top_down_levels=list(_NECK["fpn_top_down_levels"]),
            fpn_interp_model=str(_NECK["fpn_interp_model"]),
        )
        return ImageEncoder(trunk=trunk, neck=neck, scalp=int(_NECK["scalp"]))

    if torch.empty(()).device.type != "meta":
        return build()
    # Hiera reads its drop-path schedule with .item(), which the meta device refuses: build the
    # encoder on the CPU and move it (the factory's shape check builds models on the meta device).
    with torch.device("cpu"):
        encoder = build()
    return encoder.to("meta")


def load_sam2_image_encoder(encoder: nn.Module, state: Mapping[str, Any]) -> None:
    """Load the ``image_encoder.*`` weights of an official SAM 2 checkpoint, strictly.

    Accepts the released layout (``{"model": state_dict}``), a full state dict, or a bare
    image-encoder state dict (``trunk.*``, ``neck.*``). Keys of SAM 2's other modules (memory,
    prompt encoder, mask decoder) are expected and unused; any other unexpected, missing or
    mis-shaped key raises with the keys named.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"a SAM 2 checkpoint must hold a state dict, got {type(state).__name__}")
    if "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    prefix = "image_encoder."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if weights:
        unexpected = [k for k in state if not k.startswith(prefix) and k.split(".")[0] not in _OTHER_MODULES]
    else:
        weights, unexpected = dict(state), []
    load_weights_exactly(encoder, weights, "the SAM 2 checkpoint does not fit the image encoder", unexpected)
