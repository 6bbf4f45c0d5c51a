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
from einops import rearrange
from torch import nn

from lmseg.aggregation.common import Mlp, add_mlp_residual_, chunk_size, device_constant


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1``, the linear-attention feature map, computed as ``exp(min(x, 0)) + max(x, 0)``.

    The same function (to one rounding: ``exp`` instead of ``expm1(x) + 1``), five times faster on
    CPU, where ``elu``'s ``expm1`` is not vectorised.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        # Gradient of elu + 1 everywhere, including 1 at x = 0.
        return torch.where(x > 0, x + 1, x.clamp(max=0).exp())
    return x.clamp(max=0).exp_().add_(x.clamp(min=0))


@device_constant
def _head_mask(heads: int, dim: int, device: torch.device) -> torch.Tensor:
    """``(C, C)`` float: 1 where row and column belong to the same head."""
    block = torch.arange(heads * dim, device=device) // dim
    return (block[:, None] == block[None, :]).float()


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eps: float = 1e-6,
    *,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    extra_count: int = 0,
) -> torch.Tensor:
    """Multi-head linear attention over the class axis, accumulated in fp32.

    Args:
        q: queries ``(N, K, heads, d)`` for N independent pixels and K classes.
        k: keys ``(N, K, heads, d)``.
        v: values ``(N, K, heads, d)``.
        eps: added to the normaliser, as CAT-Seg.
        extra_k: ``(N or 1, heads, d)``: a key occurring ``extra_count`` times among the keys
            (CAT-Seg's identical padding tokens), added in closed form.
        extra_v: ``(N or 1, heads, d)``: its value.
        extra_count: how many times the extra key/value occur.

    Returns:
        ``(N, K, heads, d)`` in the input dtype: for every query,
        ``Σ_s φ(q)·φ(k_s) v_s / (Σ_s φ(q)·φ(k_s) + eps)`` over all K + extra_count keys,
        with φ = elu + 1 and the sums taken within each head.

    All heads run as one ``(K, C) × (C, C)`` product per pixel (C = heads·d) whose off-diagonal
    head blocks are zeroed: 4× the FLOPs of per-head products at 4 heads, but one dense batched
    matmul on the tensors' own layout instead of per-head copies, which is faster on CPU. The
    normaliser rides along as ``heads`` extra columns of the same product.
    """
    n, length, heads, d = q.shape
    c = heads * d
    dtype = q.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        # (N, K, heads, d) -> (N, K, C): a view whenever heads and d are contiguous.
        fq = elu_feature_map(q.reshape(n, length, c).float())
        fk = elu_feature_map(k.reshape(n, length, c).float())
        kv = torch.bmm(fk.transpose(1, 2), v.reshape(n, length, c).float())  # (N, C, C)
        k_sum = fk.sum(dim=1)  # (N, C)
        if extra_count and extra_k is not None and extra_v is not None:
            ek = elu_feature_map(extra_k.reshape(-1, c).float())
            kv = kv + extra_count * (ek[:, :, None] * extra_v.reshape(-1, c).float()[:, None, :])
            k_sum = k_sum + extra_count * ek
        mask = _head_mask(heads, d, kv.device)
        # Columns C..C+heads hold k_sum masked to each head: φ(q) times them is the normaliser.
        state = torch.cat([kv * mask, k_sum[:, :, None] * mask[:, ::d]], dim=2)  # (N, C, C + heads)
        out = torch.bmm(fq, state)
        z = out[..., c:].add_(eps).reciprocal_()  # (N, K, heads)
        out = out[..., :c].unflatten(-1, (heads, d)) * z[..., None]
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
        token_chunk: tokens (pixels × classes) processed together (None: the device's default):
            every intermediate holds at most this many tokens whatever K is (at least one
            pixel's K classes); does not change results.
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
        token_chunk: int | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.guidance_dim, self.num_heads = dim, guidance_dim, num_heads
        self.pad_len, self.train_pool_size, self.token_chunk = pad_len, train_pool_size, token_chunk
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

    def _padding_kv(
        self, num_classes: int, with_guidance: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
        """Key and value of the learnable padding token, and how many padding slots there are.

        All padding slots hold the same token (and the same guidance token), so their keys and
        values are identical at every pixel: they enter the attention in closed form instead of
        being materialised (their outputs are discarded anyway). The result equals CAT-Seg's
        concatenate-then-attend up to float summation order.
        """
        missing = self.pad_len - num_classes
        if self.padding_tokens is None or missing <= 0:
            return None, None, 0
        d = self.dim
        # Functional forms: the token is a parameter, not an activation (module hooks such as
        # torch's FLOP counter expect activations).
        norm = self.norm1
        y = F.layer_norm(self.padding_tokens[0, 0], norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        k = F.linear(y, self.k.weight[:, :d], self.k.bias)
        if with_guidance and self.padding_guidance is not None:
            k = k + F.linear(self.padding_guidance[0, 0], self.k.weight[:, d:])
        v = F.linear(y, self.v.weight, self.v.bias)
        heads = "(h c) -> 1 h c"  # one key/value, broadcast over every pixel
        return rearrange(k, heads, h=self.num_heads), rearrange(v, heads, h=self.num_heads), missing

    def _class_terms(self, guidance: torch.Tensor | None) -> torch.Tensor:
        """Per-class additive terms of ``[q, k, v]``: guidance shares and biases, ``(B, 1, K, 3C)``.

        ``[x, g] W = x W_x + g W_g``: the guidance share depends on the class only, not on the
        pixel, so it is computed once per forward (or ``(1, 1, 1, 3C)`` biases without guidance).
        """
        d = self.dim
        if guidance is None or not self.guidance_dim:
            return torch.cat([self.q.bias, self.k.bias, self.v.bias]).view(1, 1, 1, 3 * d)
        gq = F.linear(guidance, self.q.weight[:, d:], self.q.bias)
        gk = F.linear(guidance, self.k.weight[:, d:], self.k.bias)
        bv = self.v.bias.expand_as(gq)
        return torch.cat([gq, gk, bv], dim=-1).unsqueeze(1)

    def _attend(
        self,
        t: torch.Tensor,
        qkv_weight: torch.Tensor,
        class_terms: torch.Tensor,
        padding: tuple[torch.Tensor | None, torch.Tensor | None, int],
        *,
        inplace: bool = False,
    ) -> torch.Tensor:
        """Attention + MLP on ``(B, n, K, C)`` pixel tokens; returns the same shape.

        ``inplace`` (no autograd, caller owns ``t``): the residual additions update ``t``.
        """
        b, n, num_classes, d = t.shape
        qkv = F.linear(self.norm1(t), qkv_weight)  # the token-dependent share of [q, k, v]
        qkv = qkv.add_(class_terms) if inplace else qkv + class_terms
        q, k, v = (
            part.reshape(b * n, num_classes, self.num_heads, -1) for part in qkv.split(d, dim=-1)
        )
        pad_k, pad_v, count = padding
        out = linear_attention(q, k, v, extra_k=pad_k, extra_v=pad_v, extra_count=count)
        out = out.reshape(t.shape)
        if not inplace:
            t = t + out
            return t + self.mlp(self.norm2(t))
        t += out
        return add_mlp_residual_(t, self.norm2, self.mlp)

    def forward(
        self, x: torch.Tensor, guidance: torch.Tensor | None, *, inplace: bool = False
    ) -> torch.Tensor:
        """Aggregate across classes.

        Args:
            x: cost embedding ``(B, K, h, w, C)``.
            guidance: projected text guidance ``(B, K, Cg)`` or None.
            inplace: without autograd, overwrite ``x`` chunk by chunk instead of allocating a
                second K-sized tensor (for callers that own ``x``).

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
        with_guidance = guidance is not None and self.guidance_dim > 0
        padding = self._padding_kv(num_classes, with_guidance)

        d = self.dim
        terms = self._class_terms(guidance if with_guidance else None)
        qkv_weight = torch.cat([self.q.weight[:, :d], self.k.weight[:, :d], self.v.weight])

        n = tokens.shape[1]
        step = max(1, chunk_size(self.token_chunk, "tokens", x.device) // (b * num_classes))
        if pool == 1 and not torch.is_grad_enabled():
            # Inference: write x + y chunk by chunk, never holding a full-size y. Each chunk is
            # copied to a contiguous block (the attention then updates that copy in place).
            out = x if inplace else torch.empty_like(x)
            out_tokens = rearrange(out, "b k h w c -> b (h w) k c")
            for i in range(0, n, step):
                chunk = tokens[:, i : i + step]  # read before the same pixels are written
                t = chunk.clone(memory_format=torch.contiguous_format)
                y = self._attend(t, qkv_weight, terms, padding, inplace=True)
                out_tokens[:, i : i + step] = y.add_(chunk)
            return out
        if n <= step:
            y = self._attend(tokens, qkv_weight, terms, padding)
        else:
            y = torch.cat(
                [self._attend(tokens[:, i : i + step], qkv_weight, terms, padding)
                 for i in range(0, n, step)],
                1,
            )
        y = rearrange(y, "b (h w) k c -> b k h w c", h=hp, w=wp)
        if pool > 1:
            y = rearrange(y, "b k h w c -> (b k) c h w")
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=True)
            y = rearrange(y, "(b k) c h w -> b k h w c", b=b)
        return x + y
