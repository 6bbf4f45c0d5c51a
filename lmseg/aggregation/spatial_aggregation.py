"""Spatial aggregation: guided Swin blocks applied to every class's cost map independently.

Follows CAT-Seg's modified Swin block (window 12, shift 6, 4 heads, width 128, MLP ratio 4,
pre-LayerNorm, no relative-position bias, shifted-window mask value −100). Queries and keys see
the cost embedding concatenated with the LayerNorm'd appearance guidance; values see the cost
embedding alone.

Because the guidance is the same for every class, its contribution to Q and K is computed once
per image (the concatenation ``[x, g] @ Wᵀ`` is split into ``x @ W_xᵀ + g @ W_gᵀ``) and classes
run in chunks, so peak memory is bounded by the chunk size rather than by K. The plain
formulation this is tested against is :func:`lmseg.aggregation.reference.spatial_aggregation`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lmseg.aggregation.common import (
    Mlp,
    add_mlp_residual_,
    chunk_size,
    device_constant,
    map_chunks,
    softmax_attention,
)
from lmseg.runtime import RuntimeOptions, runtime_or_default

# CAT-Seg's additive mask value between tokens of different sub-windows after the cyclic shift.
SHIFT_MASK_VALUE = -100.0


@device_constant
def shifted_window_mask(
    h: int, w: int, window: int, shift: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Additive attention mask of shifted-window attention, computed once per shape and device.

    Returns:
        ``(nW, 1, N, N)`` with nW = (h/window)·(w/window), N = window², 0 inside a sub-window
        and −100 across sub-windows that the cyclic shift made neighbours.
    """
    labels = torch.zeros(h, w)
    region = 0
    for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            labels[rows, cols] = region
            region += 1
    windows = rearrange(labels, "(nh wh) (nw ww) -> (nh nw) (wh ww)", wh=window, ww=window)
    differs = windows[:, None, :] != windows[:, :, None]
    mask = torch.zeros(differs.shape).masked_fill(differs, SHIFT_MASK_VALUE)
    return mask[:, None].to(device=device, dtype=dtype)  # (nW, 1, N, N): broadcasts over heads


@device_constant
def window_order(h: int, w: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Token order of (shifted) window attention: the cyclic shift and the window partition
    are one permutation of the h·w tokens.

    Returns:
        ``(h·w,)`` int64: the row-major index of the token at each slot, windows of
        ``window²`` consecutive slots.
    """
    index = torch.arange(h * w).view(h, w)
    if shift:
        index = torch.roll(index, shifts=(-shift, -shift), dims=(0, 1))
    return rearrange(index, "(nh wh) (nw ww) -> (nh nw wh ww)", wh=window, ww=window).to(device)


class GuidedSwinBlock(nn.Module):
    """One Swin block whose queries and keys also see per-pixel appearance guidance.

    Args:
        dim: cost-embedding width C (128).
        guidance_dim: appearance-guidance width Cg (128); 0 disables guidance.
        num_heads: attention heads (4).
        window_size: window side (12).
        shift_size: cyclic shift (0 or window_size // 2).
        mlp_ratio: MLP hidden width over C (4).
    """

    def __init__(
        self,
        *,
        dim: int,
        guidance_dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.guidance_dim, self.num_heads = dim, guidance_dim, num_heads
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim=dim, hidden_dim=int(dim * mlp_ratio), activation="gelu")

    def guidance_terms(self, guidance: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The class-independent part of Q and K: ``g @ W_gᵀ + b``.

        Args:
            guidance: normalised appearance guidance ``(B, L, Cg)`` (tokens in any order) or None.

        Returns:
            Two tensors ``(B, 1, L, C)`` (or ``(1, 1, 1, C)`` biases without guidance).
        """
        d = self.dim
        if guidance is None or self.guidance_dim == 0:
            return self.q.bias.view(1, 1, 1, d), self.k.bias.view(1, 1, 1, d)
        gq = F.linear(guidance, self.q.weight[:, d:], self.q.bias)
        gk = F.linear(guidance, self.k.weight[:, d:], self.k.bias)
        return gq.unsqueeze(1), gk.unsqueeze(1)

    def geometry(self, h: int, w: int) -> tuple[int, int]:
        """(window, shift) on an h×w grid: as CAT-Seg, a window covering the map is not shifted."""
        window = min(self.window_size, h, w)
        shift = self.shift_size if window < min(h, w) else 0
        if h % window or w % window:
            raise ValueError(f"feature grid {h}x{w} is not divisible by window size {window}")
        return window, shift

    def forward(
        self,
        x: torch.Tensor,
        guidance_q: torch.Tensor,
        guidance_k: torch.Tensor,
        grid: tuple[int, int],
        *,
        inplace: bool = False,
        runtime: RuntimeOptions | None = None,
    ) -> torch.Tensor:
        """Apply the block to a chunk of classes whose tokens are in this block's window order.

        Every operation but the attention is per token, so the block runs entirely in the
        order of :func:`window_order` (cyclic shift and partition applied once, by the caller,
        as a single gather).

        Args:
            x: cost embedding ``(B, K, h·w, C)`` in window order.
            guidance_q: query term of :meth:`guidance_terms` in the same order, ``(B, 1, h·w, C)``.
            guidance_k: key term, likewise.
            grid: (h, w).
            inplace: without autograd, add the residuals into ``x`` (the caller owns it).
            runtime: attention backend and MLP row blocks (defaults when None).

        Returns:
            ``(B, K, h·w, C)`` in the same order.
        """
        runtime = runtime_or_default(runtime)
        b, k_classes, length, c = x.shape
        window, shift = self.geometry(*grid)
        n = window * window
        y = self.norm1(x)
        d = self.dim
        if inplace:
            q = F.linear(y, self.q.weight[:, :d]).add_(guidance_q)
            k = F.linear(y, self.k.weight[:, :d]).add_(guidance_k)
        else:
            q = F.linear(y, self.q.weight[:, :d]) + guidance_q
            k = F.linear(y, self.k.weight[:, :d]) + guidance_k
        v = self.v(y)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B·K, nW, heads, N, c), a view
            return t.view(b * k_classes, length // n, n, self.num_heads, -1).transpose(2, 3)

        mask = shifted_window_mask(*grid, window, shift, x.device, q.dtype) if shift else None
        out = softmax_attention(heads(q), heads(k), heads(v), mask, backend=runtime.attention_backend)
        out = self.proj(out.transpose(2, 3).reshape(b, k_classes, length, c))
        if not inplace:
            x = x + out
            return x + self.mlp(self.norm2(x))
        x += out
        return add_mlp_residual_(x, self.norm2, self.mlp, runtime.mlp_rows)


class SpatialAggregation(nn.Module):
    """Two guided Swin blocks (plain, then shifted) over each class's cost map.

    Args:
        dim: cost-embedding width C (128).
        guidance_dim: appearance-guidance width Cg (128).
        num_heads: attention heads (4).
        window_size: window side (12); the second block shifts by half of it.
        mlp_ratio: MLP ratio (4).

    The runtime option ``class_chunk`` (:class:`~lmseg.runtime.RuntimeOptions`) sets how many
    classes run together (None: the device's default, see
    :func:`~lmseg.aggregation.common.chunk_size`); it bounds peak memory and does not change
    results.
    """

    def __init__(
        self,
        *,
        dim: int = 128,
        guidance_dim: int = 128,
        num_heads: int = 4,
        window_size: int = 12,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                GuidedSwinBlock(
                    dim=dim,
                    guidance_dim=guidance_dim,
                    num_heads=num_heads,
                    window_size=window_size,
                    shift_size=shift,
                    mlp_ratio=mlp_ratio,
                )
                for shift in (0, window_size // 2)
            ]
        )
        self.guidance_norm = nn.LayerNorm(guidance_dim) if guidance_dim > 0 else None

    def forward(
        self,
        x: torch.Tensor,
        guidance: torch.Tensor | None,
        *,
        inplace: bool = False,
        runtime: RuntimeOptions | None = None,
    ) -> torch.Tensor:
        """Aggregate every class's cost map spatially.

        Args:
            x: cost embedding ``(B, K, h, w, C)``.
            guidance: projected appearance guidance ``(B, h, w, Cg)`` or None.
            inplace: without autograd, overwrite ``x`` chunk by chunk instead of allocating a
                second K-sized tensor (for callers that own ``x``).
            runtime: class chunk, attention backend, in-place residuals (defaults when None).

        Returns:
            ``(B, K, h, w, C)``, bit-for-bit independent of the class chunk.
        """
        runtime = runtime_or_default(runtime)
        h, w = x.shape[2:4]
        if guidance is not None and self.guidance_norm is not None:
            guidance = self.guidance_norm(guidance).flatten(1, 2)  # (B, h·w, Cg)
        blocks: list[GuidedSwinBlock] = list(self.blocks)  # type: ignore[arg-type]
        orders = [window_order(h, w, *block.geometry(h, w), x.device) for block in blocks]
        terms = [
            block.guidance_terms(None if guidance is None else guidance[:, order])
            for block, order in zip(blocks, orders, strict=True)
        ]
        # Slot of every token in each order; chaining gathers moves between orders directly.
        slots = [torch.argsort(order) for order in orders]
        gathers = [orders[0]] + [slots[i - 1][orders[i]] for i in range(1, len(orders))]
        inplace_blocks = runtime.inplace and not torch.is_grad_enabled()

        def run(chunk: torch.Tensor) -> torch.Tensor:
            t = chunk.flatten(2, 3)
            for block, gather, (gq, gk) in zip(blocks, gathers, terms, strict=True):
                # The gather makes a fresh tensor, which the block may then update in place.
                t = block(
                    t.index_select(2, gather), gq, gk, (h, w), inplace=inplace_blocks, runtime=runtime
                )
            return t.index_select(2, slots[-1]).view(chunk.shape)

        step = chunk_size(runtime.class_chunk, "classes", x.device)
        out = x if inplace and runtime.inplace else None
        return map_chunks(run, x, dim=1, step=step, out=out)
