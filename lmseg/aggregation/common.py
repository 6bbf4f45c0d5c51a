"""Pieces shared by the aggregation blocks: softmax attention, chunking and the MLP.

One function runs softmax attention, with the backend named by the caller's runtime options
(:class:`lmseg.runtime.RuntimeOptions`): PyTorch's ``scaled_dot_product_attention`` (the
default, fused on every device), xformers' memory-efficient attention where it is installed *and*
its kernels load on the device (the PyPI wheel is often built for another torch: a tiny trial
call detects that, warns once and falls back), or a plain matmul-softmax path kept as the
readable reference.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Hashable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lmseg.runtime import ATTENTION_BACKENDS, AttentionBackend

logger = logging.getLogger(__name__)

_xformers_ok: dict[str, bool] = {}


def xformers_available(device: torch.device | str) -> bool:
    """Whether xformers' memory-efficient attention imports and runs on ``device``.

    The answer is cached per device type; the first failure is reported once as a warning.
    """
    key = torch.device(device).type
    if key not in _xformers_ok:
        try:
            import xformers.ops as xops  # type: ignore[import-not-found]

            probe = torch.zeros(1, 4, 1, 8, device=device)
            xops.memory_efficient_attention(probe, probe, probe)
            _xformers_ok[key] = True
        except Exception as error:  # ImportError, missing kernels, ABI mismatch...
            _xformers_ok[key] = False
            warnings.warn(
                f"xformers attention is unavailable on {key} ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}); "
                "falling back to torch scaled_dot_product_attention",
                RuntimeWarning,
                stacklevel=2,
            )
    return _xformers_ok[key]


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: AttentionBackend = "sdpa",
) -> torch.Tensor:
    """Scaled dot-product attention through one backend.

    Args:
        q: queries ``(..., heads, N, d)``; any number of leading batch dimensions.
        k: keys ``(..., heads, M, d)``.
        v: values ``(..., heads, M, d)``.
        bias: additive attention bias broadcastable to ``(..., heads, N, M)``, or None.
        backend: ``"sdpa"``, ``"xformers"`` (sdpa where it does not run) or ``"math"``.

    Returns:
        ``(..., heads, N, d)``, softmax(q kᵀ / √d + bias) v.
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {ATTENTION_BACKENDS}")
    if backend == "xformers" and xformers_available(q.device):
        import xformers.ops as xops  # type: ignore[import-not-found]

        lead = q.shape[:-3]
        heads, n, d = q.shape[-3:]
        m = k.shape[-2]

        # xformers wants (batch, N, heads, d) with one batch dimension and a dense bias.
        def to_x(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(-1, heads, t.shape[-2], d).transpose(1, 2)

        attn_bias = None
        if bias is not None:
            attn_bias = bias.to(q.dtype).expand(*lead, heads, n, m).reshape(-1, heads, n, m)
        out = xops.memory_efficient_attention(to_x(q), to_x(k), to_x(v), attn_bias=attn_bias)
        return out.transpose(1, 2).reshape(q.shape)
    if backend == "math":
        attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if bias is not None:
            attn = attn + bias
        return attn.softmax(dim=-1) @ v
    # PyTorch's fused CPU kernel takes 4-D (batch, heads, N, d) inputs only; with more leading
    # dimensions it falls back to the unfused math path (3.5x slower for Swin windows here).
    lead = q.shape[:-3]
    q4, k4, v4 = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
    if bias is not None:
        bias = bias.to(q.dtype)
        bias = bias.expand(*lead, *bias.shape[-3:]).reshape(-1, *bias.shape[-3:])
    return F.scaled_dot_product_attention(q4, k4, v4, attn_mask=bias).reshape(q.shape)


def device_constant(build: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Cache a pure function that builds a constant tensor (a mask, an index) from hashable
    arguments (sizes, device, dtype): built once per shape and device, so there is no
    host-to-device copy per chunk on GPUs. Inside ``torch.compile`` the builder is called
    directly and becomes a constant of the graph.
    """
    cached = functools.lru_cache(maxsize=32)(build)

    @functools.wraps(build)
    def constant(*args: Hashable) -> torch.Tensor:  # positional: one cache entry per call form
        if torch.compiler.is_compiling():
            return build(*args)
        return cached(*args)

    return constant


# Chunk sizes when a block's own is None. CPU: what measured fastest at ViT-B sizes on two cores
# (docs/performance.md): a chunk's 4x-wide MLP activations stay in cache. GPU: fewer, larger
# launches (a guess: not measured on a GPU yet).
CHUNK_DEFAULTS: dict[str, dict[str, int]] = {
    "cpu": {"classes": 8, "tokens": 4096, "mlp_rows": 2048},
    "gpu": {"classes": 64, "tokens": 65536, "mlp_rows": 1 << 30},
}


def map_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    dim: int,
    step: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``fn`` applied to consecutive slices of ``x`` along ``dim``, ``step`` at a time.

    The one chunk loop of the aggregation blocks and the decoder. ``fn`` maps a slice to a result
    whose size along ``dim`` equals the slice's (other dimensions may differ: the decoder
    upsamples). With autograd the parts are concatenated; without, each part is written into
    ``out`` (``x`` itself for in-place use, since a slice is read before the same slice is
    written) or into a tensor allocated from the first part's shape, so at most one part is
    alive besides the output.

    Args:
        fn: the per-chunk computation.
        x: input; split along ``dim``.
        dim: the chunked dimension (classes or pixels).
        step: slice length (the last may be shorter).
        out: where to write the result without autograd (None: a new tensor).

    Returns:
        The results along ``dim`` in order (``out`` when given and more than one slice ran).
    """
    size = x.shape[dim]
    if size <= step:
        return fn(x)
    parts = x.split(step, dim)
    if torch.is_grad_enabled():
        return torch.cat([fn(part) for part in parts], dim)
    start = 0
    for part in parts:
        y = fn(part)
        if out is None:
            shape = list(y.shape)
            shape[dim] = size
            out = y.new_empty(shape)
        out.narrow(dim, start, y.shape[dim]).copy_(y)
        start += y.shape[dim]
    assert out is not None
    return out


def chunk_size(
    value: int | None, kind: Literal["classes", "tokens", "mlp_rows"], device: torch.device
) -> int:
    """A block's chunk size: ``value`` when set, else :data:`CHUNK_DEFAULTS` for the device."""
    if value is not None:
        return max(1, int(value))
    return CHUNK_DEFAULTS["cpu" if device.type == "cpu" else "gpu"][kind]


class Mlp(nn.Module):
    """Two-layer perceptron ``fc2(act(fc1(x)))`` with timm's parameter names.

    Args:
        dim: input and output width C.
        hidden_dim: hidden width (``mlp_ratio * C``).
        activation: ``"gelu"`` (Swin blocks) or ``"relu"`` (class aggregation).
    """

    def __init__(self, *, dim: int, hidden_dim: int, activation: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act: nn.Module = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C) -> (..., C)``."""
        return self.fc2(self.act(self.fc1(x)))


def add_mlp_residual_(
    x: torch.Tensor, norm: nn.Module, mlp: nn.Module, rows: int | None = None
) -> torch.Tensor:
    """``x += mlp(norm(x))`` in place, ``rows`` tokens at a time (inference only).

    Per-token work in row blocks keeps the 4×-wide hidden activation in cache between the two
    products and the activation (~1.15x faster on CPU than one pass over a 4608-token chunk).

    Args:
        x: contiguous tokens ``(..., C)``, updated in place and returned.
        norm: the pre-norm (LayerNorm).
        mlp: the :class:`Mlp`.
        rows: tokens per block; None: the device's default (2,048 on CPU, all on GPUs).
    """
    flat = x.view(-1, x.shape[-1])
    for block in flat.split(chunk_size(rows, "mlp_rows", x.device)):
        block += mlp(norm(block))
    return x
