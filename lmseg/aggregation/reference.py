"""The method in its plain formulation, as CAT-Seg's code writes it.

The blocks of :mod:`lmseg.aggregation` compute the same functions faster: closed-form padding,
block-diagonal heads, window-order gathers, split guidance products, channels-last layout,
chunks and in-place residuals. The functions here do it the straightforward way (explicit
padding tokens, guidance concatenated before the projections, per-head elu + 1 linear attention
with CAT-Seg's value scaling, cyclic shift + window partition, guidance concatenated before the
decoder convolutions in NCHW), take a block for its weights, and are what the fast blocks are
tested against (to float rounding). They hold every class at once: use them to read and check
the method, not to run large vocabularies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from lmseg.aggregation.class_aggregation import ClassAggregation
from lmseg.aggregation.class_attention import SoftmaxClassAttention
from lmseg.aggregation.spatial_aggregation import (
    SHIFT_MASK_VALUE,
    GuidedSwinBlock,
    SpatialAggregation,
)
from lmseg.aggregation.upsampling_decoder import UpsamplingDecoder, UpStage

__all__ = [
    "class_aggregation",
    "cosine_cost",
    "full_attention",
    "linear_attention",
    "spatial_aggregation",
    "upsampling_decoder",
]


def cosine_cost(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """LMSeg/CAT-Seg's cost volume ``E = <F, T> / (|F| |T|)``.

    Args:
        image: ``F`` ``(B, D, h, w)``.
        text: ``T`` ``(B, K, P, D)``.

    Returns:
        ``(B, P, K, h, w)``.
    """
    image = image / image.norm(dim=1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return torch.einsum("bdhw,bkpd->bpkhw", image, text)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """CAT-Seg's ``LinearAttention``: ``φ(q) (φ(k)ᵀ v) / (φ(q) Σ φ(k) + eps)``, φ = elu + 1.

    Args:
        q: ``(N, L, heads, d)``.
        k: ``(N, S, heads, d)``.
        v: ``(N, S, heads, d)``.
        eps: normaliser offset.

    Returns:
        ``(N, L, heads, d)``. CAT-Seg divides the values by S and multiplies the result back (an
        fp16 overflow guard); it is kept here as written.
    """
    q, k = F.elu(q) + 1, F.elu(k) + 1
    length = v.shape[1]
    kv = torch.einsum("nshd,nshe->nhde", k, v / length)
    z = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(1)) + eps)
    return torch.einsum("nlhd,nhde,nlh->nlhe", q, kv, z) * length


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """CAT-Seg's ``FullAttention``: ``softmax(q kᵀ / √d) v`` per head.

    Args:
        q: ``(N, L, heads, d)``.
        k: ``(N, S, heads, d)``.
        v: ``(N, S, heads, d)``.

    Returns:
        ``(N, L, heads, d)``.
    """
    logits = torch.einsum("nlhd,nshd->nlsh", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("nlsh,nshd->nlhd", logits.softmax(dim=2), v)


def class_aggregation(
    block: ClassAggregation, x: torch.Tensor, guidance: torch.Tensor | None, pool_size: int = 1
) -> torch.Tensor:
    """CAT-Seg's ``ClassTransformerLayer`` with the weights of ``block``.

    Args:
        block: a :class:`ClassAggregation` (its attention kernel picks linear or full attention).
        x: cost embedding ``(B, K, h, w, C)``.
        guidance: projected text guidance ``(B, K, Cg)`` or None.
        pool_size: average pooling before the attention (CAT-Seg trains with 2).

    Returns:
        ``(B, K, h, w, C)``.
    """
    b, k, h, w, c = x.shape
    pooled = rearrange(x, "b k h w c -> (b k) c h w")
    if pool_size > 1:
        pooled = F.avg_pool2d(pooled, pool_size)
    hp, wp = pooled.shape[-2:]
    tokens = rearrange(pooled, "(b k) c h w -> (b h w) k c", b=b)
    g = None if guidance is None else repeat(guidance, "b k c -> (b h w) k c", h=hp, w=wp)
    missing = block.pad_len - k
    if missing > 0 and block.padding_tokens is not None:
        tokens = torch.cat([tokens, block.padding_tokens.expand(len(tokens), missing, c)], 1)
        if g is not None and block.padding_guidance is not None:
            g = torch.cat([g, block.padding_guidance.expand(len(g), missing, g.shape[-1])], 1)
    y = block.norm1(tokens)
    q = block.q(torch.cat([y, g], -1)) if g is not None else F.linear(y, block.q.weight[:, :c], block.q.bias)
    key = block.k(torch.cat([y, g], -1)) if g is not None else F.linear(y, block.k.weight[:, :c], block.k.bias)
    v = block.v(y)
    q, key, v = (rearrange(t, "n s (h d) -> n s h d", h=block.num_heads) for t in (q, key, v))
    if isinstance(block.attention, SoftmaxClassAttention):
        out = full_attention(q, key, v)
    else:
        out = linear_attention(q, key, v)
    t = tokens + rearrange(out, "n s h d -> n s (h d)")
    t = t + block.mlp(block.norm2(t))
    t = rearrange(t[:, :k], "(b h w) k c -> (b k) c h w", b=b, h=hp, w=wp)
    t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=True)
    return x + rearrange(t, "(b k) c h w -> b k h w c", b=b)


def _shift_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """``(nW, N, N)``: 0 within a sub-window, −100 across the sub-windows the shift joins."""
    region = torch.zeros(h, w)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for r, rows in enumerate(cuts):
        for s, cols in enumerate(cuts):
            region[rows, cols] = 3 * r + s
    labels = rearrange(region, "(a i) (e j) -> (a e) (i j)", i=window, j=window)
    return (labels[:, None, :] != labels[:, :, None]).float() * SHIFT_MASK_VALUE


def spatial_aggregation(
    spatial: SpatialAggregation, x: torch.Tensor, guidance: torch.Tensor | None
) -> torch.Tensor:
    """CAT-Seg's ``SwinTransformerBlockWrapper`` (two guided Swin blocks) with ``spatial``'s weights.

    Args:
        spatial: a :class:`SpatialAggregation`.
        x: cost embedding ``(B, K, h, w, C)``.
        guidance: projected appearance guidance ``(B, h, w, Cg)`` or None.

    Returns:
        ``(B, K, h, w, C)``.
    """
    b, k, h, w, c = x.shape
    t = rearrange(x, "b k h w c -> (b k) h w c")
    g = None
    if guidance is not None and spatial.guidance_norm is not None:
        g = repeat(spatial.guidance_norm(guidance), "b h w c -> (b k) h w c", k=k)
    blocks: list[GuidedSwinBlock] = list(spatial.blocks)  # type: ignore[arg-type]
    # CAT-Seg's SwinTransformerBlock: when the map is no larger than the window, one window covers
    # it and there is no shift; otherwise the second block shifts by half the window.
    window = min(blocks[0].window_size, h, w)
    for block, shift in zip(blocks, (0, blocks[0].window_size // 2), strict=True):
        if min(h, w) <= blocks[0].window_size:
            shift = 0
        y = block.norm1(t)
        yg = torch.cat([y, g], -1) if g is not None else y
        if shift:
            yg = torch.roll(yg, (-shift, -shift), (1, 2))
        parts = rearrange(yg, "n (a i) (e j) c -> (n a e) (i j) c", i=window, j=window)
        if g is not None:
            q, key = block.q(parts), block.k(parts)
        else:
            q = F.linear(parts, block.q.weight[:, :c], block.q.bias)
            key = F.linear(parts, block.k.weight[:, :c], block.k.bias)
        v = block.v(parts[..., :c])
        q, key, v = (rearrange(p, "m s (h d) -> m h s d", h=block.num_heads) for p in (q, key, v))
        attn = (q * q.shape[-1] ** -0.5) @ key.transpose(-2, -1)
        if shift:
            attn = attn + _shift_mask(h, w, window, shift).repeat(b * k, 1, 1)[:, None]
        out = rearrange(attn.softmax(-1) @ v, "m h s d -> m s (h d)")
        out = rearrange(
            block.proj(out),
            "(n a e) (i j) c -> n (a i) (e j) c",
            a=h // window,
            e=w // window,
            i=window,
            j=window,
        )
        if shift:
            out = torch.roll(out, (shift, shift), (1, 2))
        t = t + out
        t = t + block.mlp(block.norm2(t))
    return rearrange(t, "(b k) h w c -> b k h w c", b=b)


def upsampling_decoder(
    decoder: UpsamplingDecoder, x: torch.Tensor, taps: list[torch.Tensor]
) -> torch.Tensor:
    """CAT-Seg's ``conv_decoder`` with ``decoder``'s weights, guidance concatenated per class.

    Args:
        decoder: an :class:`UpsamplingDecoder` with guidance.
        x: aggregated cost embedding ``(B, K, h, w, C)``.
        taps: the two intermediate CLIP block outputs ``(B, width, h, w)``.

    Returns:
        Logits ``(B, K, 4h, 4w)``.
    """
    b, k = x.shape[:2]
    y = rearrange(x, "b k h w c -> (b k) c h w").contiguous()
    stages: list[UpStage] = list(decoder.stages)  # type: ignore[arg-type]
    for stage, up, proj, tap in zip(
        stages, decoder.guidance_upsamplers, decoder.guidance_projections, taps, strict=True
    ):
        g = repeat(proj(up(tap)), "b c h w -> (b k) c h w", k=k)
        y = stage.conv.conv1(torch.cat([stage.up(y), g], 1))
        y = F.relu(stage.conv.norm1(y))
        y = F.relu(stage.conv.norm2(stage.conv.conv2(y)))
    return rearrange(decoder.head(y), "(b k) 1 h w -> b k h w", b=b)
