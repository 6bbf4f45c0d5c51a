"""Attention across classes at one pixel: the kernels class aggregation can use.

CAT-Seg's class transformer takes ``attention_type="linear"`` (its default and the released
models') or ``"full"`` (softmax attention). Both are parameter-free, so swapping them changes no
checkpoint key. Each kernel takes per-pixel queries, keys and values over the K classes plus one
key/value that stands for CAT-Seg's ``pad_len − K`` identical padding tokens, added in closed
form instead of being materialised.

A new kernel is one module plus one registration::

    @CLASS_ATTENTIONS.register("my_attention")
    def build(*, temperature: float = 1.0) -> nn.Module:
        return MyAttention(temperature=temperature)

Its ``forward(q, k, v, *, extra_k, extra_v, extra_count, runtime)`` returns ``(N, K, heads, d)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmseg.aggregation.common import device_constant, softmax_attention
from lmseg.registry import Registry
from lmseg.runtime import RuntimeOptions, runtime_or_default

CLASS_ATTENTIONS: Registry[nn.Module] = Registry("class attention")


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1``, the linear-attention feature map, computed as ``exp(min(x, 0)) + max(x, 0)``.

    The same function (to one rounding: ``exp`` instead of ``expm1(x) + 1``), five times faster on
    CPU, where ``elu``'s ``expm1`` is not vectorised.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        # Gradient of elu + 1 everywhere, including 1 at x = 0.
        return torch.where(x > 0, x + 1, x.clamp(max=0).exp())
    return x.clamp(max=0).exp_().add_(x.clamp(min=0))


def has_padding(count: int | torch.SymInt) -> bool:
    """Whether the padding key/value take part: ``count > 0``, and always for a symbolic count
    (a graph traced for every K, where a count of 0 then adds nothing)."""
    return isinstance(count, torch.SymInt) or count > 0


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
    extra_count: int | torch.SymInt = 0,
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
    normaliser rides along as ``heads`` extra columns of the same product. CAT-Seg divides the
    values by K and multiplies the result back to keep fp16 sums in range; accumulating in fp32
    makes that unnecessary (the two agree to float rounding).
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
        if has_padding(extra_count) and extra_k is not None and extra_v is not None:
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


class LinearClassAttention(nn.Module):
    """CAT-Seg's default class attention: linear attention with the feature map elu + 1.

    Args:
        eps: added to the normaliser (1e-6, CAT-Seg).
    """

    def __init__(self, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        extra_k: torch.Tensor | None = None,
        extra_v: torch.Tensor | None = None,
        extra_count: int | torch.SymInt = 0,
        runtime: RuntimeOptions | None = None,
    ) -> torch.Tensor:
        """``q, k, v (N, K, heads, d)`` (+ the padding key/value) -> ``(N, K, heads, d)``."""
        return linear_attention(
            q, k, v, self.eps, extra_k=extra_k, extra_v=extra_v, extra_count=extra_count
        )


class SoftmaxClassAttention(nn.Module):
    """CAT-Seg's ``attention_type="full"``: softmax attention across classes at every pixel.

    ``softmax(q kᵀ / √d) v`` per head, through the runtime's softmax-attention backend, whose
    fused kernels do not hold the ``K × K`` attention map of a pixel at once. The ``extra_count``
    identical padding keys enter as one key whose logit is raised by ``log(extra_count)``:
    ``n·exp(s) = exp(s + log n)``, exactly the softmax over the repeated keys.
    """

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        extra_k: torch.Tensor | None = None,
        extra_v: torch.Tensor | None = None,
        extra_count: int | torch.SymInt = 0,
        runtime: RuntimeOptions | None = None,
    ) -> torch.Tensor:
        """``q, k, v (N, K, heads, d)`` (+ the padding key/value) -> ``(N, K, heads, d)``."""
        backend = runtime_or_default(runtime).attention_backend
        n, length, heads, d = q.shape
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (N, heads, K, d)
        bias = None
        if has_padding(extra_count) and extra_k is not None and extra_v is not None:
            pad_k = extra_k.reshape(-1, heads, 1, d).to(kh.dtype).expand(n, -1, -1, -1)
            pad_v = extra_v.reshape(-1, heads, 1, d).to(vh.dtype).expand(n, -1, -1, -1)
            kh = torch.cat([kh, pad_k], dim=2)
            vh = torch.cat([vh, pad_v], dim=2)
            if isinstance(extra_count, torch.SymInt):
                # Traced for every K: log(0) = -inf removes the padding key when K ≥ pad_len.
                log_count = qh.new_full((1, 1, 1, 1), extra_count).log()
                bias = torch.cat([qh.new_zeros(1, 1, 1, length), log_count], dim=-1)
            else:
                bias = _padding_bias(length, math.log(extra_count), q.device, qh.dtype)
        out = softmax_attention(qh, kh, vh, bias, backend=backend)
        return out.transpose(1, 2)


@device_constant
def _padding_bias(
    length: int, log_count: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``(1, 1, 1, K + 1)``: 0 on the K class keys, ``log(count)`` on the padding key."""
    bias = torch.zeros(1, 1, 1, length + 1, device=device, dtype=dtype)
    bias[..., -1] = log_count
    return bias


@CLASS_ATTENTIONS.register("linear")
def _build_linear(*, eps: float = 1e-6) -> nn.Module:
    return LinearClassAttention(eps=eps)


@CLASS_ATTENTIONS.register("softmax")
def _build_softmax() -> nn.Module:
    return SoftmaxClassAttention()
