"""Class aggregation: attention across the K classes at every pixel.

CAT-Seg's class transformer layer: 4 heads, no output projection and no positional encoding, so
the layer is permutation-equivariant over classes. Queries and keys see the projected text
guidance concatenated to the LayerNorm'd input; values see the LayerNorm'd input alone. Classes
are padded to ``pad_len`` with a learnable token (and a learnable guidance token), which then take
part in the attention, as in CAT-Seg. The attention itself is injected
(:mod:`lmseg.aggregation.class_attention`): linear attention with elu + 1 (Katharopoulos et al.,
"Transformers are RNNs"; CAT-Seg's default) or softmax attention (its ``"full"``).

Pixels are independent, so they run in chunks of a token budget: memory does not grow with K
beyond one pixel's K classes. The plain formulation this is tested against is
:func:`lmseg.aggregation.reference.class_aggregation`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lmseg.aggregation.class_attention import LinearClassAttention
from lmseg.aggregation.common import Mlp, add_mlp_residual_, chunk_size, map_chunks
from lmseg.runtime import RuntimeOptions, runtime_or_default


class ClassAggregation(nn.Module):
    """Attention across classes at every pixel, with CAT-Seg's class padding.

    Args:
        dim: cost-embedding width C (128).
        guidance_dim: projected text-guidance width Cg (128); 0 disables guidance.
        num_heads: attention heads (4).
        pad_len: classes are padded with learnable tokens up to this length (256); 0 disables.
        mlp_ratio: MLP hidden width over C (4).
        attention: the attention across classes (default: :class:`LinearClassAttention`).

    Runtime options (:class:`~lmseg.runtime.RuntimeOptions`, per call): ``token_chunk``, tokens
    (pixels × classes) processed together, so every intermediate holds at most that many tokens
    whatever K is (at least one pixel's K classes), without changing results; and
    ``class_pool_size``, CAT-Seg's average pooling of the cost map before the attention (2 in its
    training recipe, 1 at test).
    """

    def __init__(
        self,
        *,
        dim: int = 128,
        guidance_dim: int = 128,
        num_heads: int = 4,
        pad_len: int = 256,
        mlp_ratio: float = 4.0,
        attention: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.guidance_dim, self.num_heads = dim, guidance_dim, num_heads
        self.pad_len = pad_len
        self.attention = attention if attention is not None else LinearClassAttention()
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
        self, num_classes: int | torch.SymInt, with_guidance: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, int | torch.SymInt]:
        """Key and value of the learnable padding token, and how many padding slots there are.

        All padding slots hold the same token (and the same guidance token), so their keys and
        values are identical at every pixel: they enter the attention in closed form instead of
        being materialised (their outputs are discarded anyway). The result equals CAT-Seg's
        concatenate-then-attend up to float summation order.
        """
        missing = self.pad_len - num_classes
        if self.padding_tokens is None:
            return None, None, 0
        if isinstance(missing, torch.SymInt):
            # A graph traced for every vocabulary size (lmseg.export) cannot branch on
            # K < pad_len: the count is max(pad_len - K, 0) in the graph, and 0 adds nothing.
            missing = torch.sym_max(missing, 0)
        elif missing <= 0:
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
        padding: tuple[torch.Tensor | None, torch.Tensor | None, int | torch.SymInt],
        runtime: RuntimeOptions,
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
        out = self.attention(
            q, k, v, extra_k=pad_k, extra_v=pad_v, extra_count=count, runtime=runtime
        )
        out = out.reshape(t.shape)
        if not inplace:
            t = t + out
            return t + self.mlp(self.norm2(t))
        t += out
        return add_mlp_residual_(t, self.norm2, self.mlp, runtime.mlp_rows)

    def forward(
        self,
        x: torch.Tensor,
        guidance: torch.Tensor | None,
        *,
        inplace: bool = False,
        runtime: RuntimeOptions | None = None,
    ) -> torch.Tensor:
        """Aggregate across classes.

        Args:
            x: cost embedding ``(B, K, h, w, C)``.
            guidance: projected text guidance ``(B, K, Cg)`` or None.
            inplace: without autograd, overwrite ``x`` chunk by chunk instead of allocating a
                second K-sized tensor (for callers that own ``x``).
            runtime: chunk sizes, pooling, attention backend (defaults when None).

        Returns:
            ``(B, K, h, w, C)``: ``x + y`` where y is the attended (and, when pooled,
            upsampled) map, exactly CAT-Seg's double residual.
        """
        runtime = runtime_or_default(runtime)
        b, num_classes, h, w, c = x.shape
        pool = runtime.class_pool_size
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
        step = max(1, chunk_size(runtime.token_chunk, "tokens", x.device) // (b * num_classes))

        if pool == 1 and not torch.is_grad_enabled():
            # Inference: write x + y chunk by chunk, never holding a full-size y. Each chunk is
            # copied to a contiguous block, which the attention then updates in place.
            def attend_and_add(chunk: torch.Tensor) -> torch.Tensor:
                t = chunk.clone(memory_format=torch.contiguous_format)
                y = self._attend(t, qkv_weight, terms, padding, runtime, inplace=runtime.inplace)
                return y.add_(chunk)

            out = x if inplace and runtime.inplace else torch.empty_like(x)
            out_tokens = rearrange(out, "b k h w c -> b (h w) k c")
            result = map_chunks(attend_and_add, tokens, dim=1, step=step, out=out_tokens)
            if result is not out_tokens:  # a single chunk: returned, not written
                out_tokens.copy_(result)
            return out

        y = map_chunks(
            lambda chunk: self._attend(chunk, qkv_weight, terms, padding, runtime),
            tokens,
            dim=1,
            step=step,
        )
        y = rearrange(y, "b (h w) k c -> b k h w c", h=hp, w=wp)
        if pool > 1:
            y = rearrange(y, "b k h w c -> (b k) c h w")
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=True)
            y = rearrange(y, "(b k) c h w -> b k h w c", b=b)
        return x + y
