"""Class aggregation: linear attention across the K classes at every pixel.

CAT-Seg's class transformer layer: the feature map elu(x) + 1 (Katharopoulos et al.,
"Transformers are RNNs"), 4 heads, no output projection and no positional encoding, so the layer
is permutation-equivariant over classes. Queries and keys see the projected text guidance
concatenated to the LayerNorm'd input; values see the LayerNorm'd input alone. Classes are padded
to ``pad_len`` with a learnable token (and a learnable guidance token), which then take part in
the attention, as in CAT-Seg.

xformers no longer ships a linear-attention component, so this is lmseg's own einsum code; it
accumulates in fp32 under bf16/fp16 autocast. Pixels are independent, so they run in chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from lmseg.aggregation.common import Mlp


def linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Multi-head linear attention over the class axis, accumulated in fp32.

    Args:
        q, k, v: ``(N, K, heads, d)`` for N independent pixels and K classes.
        eps: added to the normaliser, as CAT-Seg.

    Returns:
        ``(N, K, heads, d)`` in the input dtype.
    """
    dtype = q.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = (F.elu(q.float()) + 1, F.elu(k.float()) + 1, v.float())
        length = v.shape[1]
        # CAT-Seg divides the values by the sequence length (and multiplies back at the end) to
        # keep fp16 sums in range; kept for parity of rounding.
        v = v / length
        kv = torch.einsum("nkhd,nkhe->nhde", k, v)
        z = 1.0 / (torch.einsum("nkhd,nhd->nkh", q, k.sum(dim=1)) + eps)
        out = torch.einsum("nkhd,nhde,nkh->nkhe", q, kv, z) * length
    return out.to(dtype)


class ClassAggregation(nn.Module):
    """Attention across classes at every pixel, with CAT-Seg's class padding.

    Args:
        dim: cost-embedding width C (128).
        guidance_dim: projected text-guidance width Cg (128); 0 disables guidance.
        num_heads: attention heads (4).
        pad_len: classes are padded with learnable tokens up to this length (256); 0 disables.
        mlp_ratio: MLP hidden width over C (4).
        train_pool_size: average pooling of the cost map before the attention in training mode
            (CAT-Seg's efficiency trick); none at test time.
        pixel_chunk: pixels processed together; bounds memory, does not change results.
    """

    def __init__(
        self,
        *,
        dim: int = 128,
        guidance_dim: int = 128,
        num_heads: int = 4,
        pad_len: int = 256,
        mlp_ratio: float = 4.0,
        train_pool_size: int = 1,
        pixel_chunk: int = 4096,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.guidance_dim, self.num_heads = dim, guidance_dim, num_heads
        self.pad_len, self.train_pool_size, self.pixel_chunk = pad_len, train_pool_size, pixel_chunk
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, dim)) if pad_len > 0 else None
        self.padding_guidance = (
            nn.Parameter(torch.zeros(1, 1, guidance_dim)) if pad_len > 0 and guidance_dim else None
        )
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.mlp = Mlp(dim=dim, hidden_dim=int(dim * mlp_ratio), activation="relu")
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def _pad(
        self, tokens: torch.Tensor, guidance: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pad ``(B, L, K, C)`` tokens and ``(B, K, Cg)`` guidance to ``pad_len`` classes."""
        b, n, num_classes, _ = tokens.shape
        missing = self.pad_len - num_classes
        if self.padding_tokens is None or missing <= 0:
            return tokens, guidance
        pad = repeat(self.padding_tokens, "1 1 c -> b n k c", b=b, n=n, k=missing)
        tokens = torch.cat([tokens, pad.to(tokens.dtype)], dim=2)
        if guidance is not None and self.padding_guidance is not None:
            gpad = repeat(self.padding_guidance, "1 1 c -> b k c", b=b, k=missing)
            guidance = torch.cat([guidance, gpad.to(guidance.dtype)], dim=1)
        return tokens, guidance

    def _attend(self, t: torch.Tensor, gq: torch.Tensor, gk: torch.Tensor) -> torch.Tensor:
        """Attention + MLP on ``(B, n, K', C)`` pixel tokens; returns the same shape."""
        d = self.dim
        y = self.norm1(t)
        q = F.linear(y, self.q.weight[:, :d]) + gq
        k = F.linear(y, self.k.weight[:, :d]) + gk
        v = self.v(y)
        heads = "b n k (h c) -> (b n) k h c"
        out = linear_attention(*(rearrange(z, heads, h=self.num_heads) for z in (q, k, v)))
        t = t + rearrange(out, "(b n) k h c -> b n k (h c)", b=t.shape[0])
        return t + self.mlp(self.norm2(t))

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        """Aggregate across classes.

        Args:
            x: cost embedding ``(B, K, h, w, C)``.
            guidance: projected text guidance ``(B, K, Cg)`` or None.

        Returns:
            ``(B, K, h, w, C)``: ``x + y`` where y is the attended (and, when pooled,
            upsampled) map, exactly CAT-Seg's double residual.
        """
        b, num_classes, h, w, c = x.shape
        pool = self.train_pool_size if self.training else 1
        pooled = x
        if pool > 1:
            pooled = rearrange(x, "b k h w c -> (b k) c h w")
            pooled = rearrange(
                F.avg_pool2d(pooled, pool), "(b k) c h w -> b k h w c", b=b, k=num_classes
            )
        hp, wp = pooled.shape[2:4]
        tokens = rearrange(pooled, "b k h w c -> b (h w) k c")
        tokens, guidance = self._pad(tokens, guidance)

        d = self.dim
        if guidance is not None and self.guidance_dim:
            gq = F.linear(guidance, self.q.weight[:, d:], self.q.bias).unsqueeze(1)
            gk = F.linear(guidance, self.k.weight[:, d:], self.k.bias).unsqueeze(1)
        else:
            gq, gk = self.q.bias, self.k.bias

        n = tokens.shape[1]
        step = max(1, self.pixel_chunk // max(1, b))
        if n <= step:
            y = self._attend(tokens, gq, gk)
        else:
            y = torch.cat([self._attend(tokens[:, i : i + step], gq, gk) for i in range(0, n, step)], 1)
        y = y[:, :, :num_classes]
        y = rearrange(y, "b (h w) k c -> b k h w c", h=hp, w=wp)
        if pool > 1:
            y = rearrange(y, "b k h w c -> (b k) c h w")
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=True)
            y = rearrange(y, "(b k) c h w -> b k h w c", b=b)
        return x + y
