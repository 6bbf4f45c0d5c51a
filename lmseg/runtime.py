"""How a model runs, kept apart from what the model is.

A checkpoint saves the architecture and the weights. Everything that changes speed, memory or
the numerical path but not the learned function lives here and is passed to the predictor,
evaluation and training for each call: chunk sizes, the attention backend, in-place residuals,
precision, class filtering, CAT-Seg's training-time pooling and the preprocessing variant. It is
never saved in a checkpoint and never held in process-wide state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch

AttentionBackend = Literal["sdpa", "xformers", "math"]
Precision = Literal["fp32", "bf16", "fp16"]
Preprocessing = Literal["lmseg", "catseg"]

ATTENTION_BACKENDS: tuple[str, ...] = ("sdpa", "xformers", "math")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
PREPROCESSINGS: tuple[str, ...] = ("lmseg", "catseg")


@dataclass(frozen=True)
class RuntimeOptions:
    """Runtime settings of a model call; none of them is saved with the model.

    Attributes:
        class_chunk: classes run together through spatial aggregation and the decoder (None:
            the device's default, :data:`lmseg.aggregation.common.CHUNK_DEFAULTS`). Bounds peak
            memory; results equal the unchunked ones (bit for bit in spatial aggregation, to float
            rounding in the decoder's GroupNorm).
        token_chunk: tokens (pixels × classes) run together through class aggregation (None: the
            device's default).
        mlp_rows: tokens per block of the MLPs at inference (None: the device's default).
        attention_backend: softmax attention through PyTorch's ``scaled_dot_product_attention``
            (``"sdpa"``), xformers' memory-efficient kernel where it runs (``"xformers"``, else
            sdpa with one warning) or the plain matmul-softmax (``"math"``).
        inplace: add residuals in place when no gradient is recorded (less memory, same result).
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` autocast.
        top_k: class filtering. ``"auto"``: the model's default (CAT-Seg keeps its ``pad_len`` =
            256 classes of highest initial similarity when K is larger; LMSeg's revised paper 32);
            an int: keep that many when K is larger; None: exact inference over all K classes.
        class_pool_size: average pooling of the cost maps before class aggregation. CAT-Seg
            trains with 2 (``POOLING_SIZES: [2, 2]``) and evaluates with 1 (its ``eval.sh``
            overrides it to ``[1, 1]``): 1 at inference, the training recipe sets 2.
        preprocessing: ``"lmseg"`` resizes the image straight to each encoder's input size;
            ``"catseg"`` reproduces CAT-Seg's whole-image path, which zero-pads the normalised
            image to a multiple of 32 before resizing; as in CAT-Seg, the prediction, padding
            included, is then resized to the image (its crop at model resolution is a no-op).
        device: where the predictor puts the model (None: leave it where it is).
    """

    class_chunk: int | None = None
    token_chunk: int | None = None
    mlp_rows: int | None = None
    attention_backend: AttentionBackend = "sdpa"
    inplace: bool = True
    precision: Precision = "fp32"
    top_k: int | None | Literal["auto"] = "auto"
    class_pool_size: int = 1
    preprocessing: Preprocessing = "lmseg"
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("class_chunk", "token_chunk", "mlp_rows"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"unknown attention backend {self.attention_backend!r}; "
                f"choose one of {ATTENTION_BACKENDS}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        top_k = self.top_k
        if top_k != "auto" and top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
        ):
            raise ValueError(f"top_k must be 'auto', None or a positive integer, got {top_k!r}")
        if not isinstance(self.class_pool_size, int) or self.class_pool_size < 1:
            raise ValueError(f"class_pool_size must be a positive integer, got {self.class_pool_size!r}")
        if self.preprocessing not in PREPROCESSINGS:
            raise ValueError(
                f"preprocessing must be one of {PREPROCESSINGS}, got {self.preprocessing!r}"
            )

    def replace(self, **changes: Any) -> RuntimeOptions:
        """A copy with some fields changed (``options.replace(top_k=None)``)."""
        return dataclasses.replace(self, **changes)


DEFAULT_RUNTIME = RuntimeOptions()


def runtime_or_default(runtime: RuntimeOptions | None) -> RuntimeOptions:
    """``runtime``, or the defaults when None."""
    return DEFAULT_RUNTIME if runtime is None else runtime


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A device this machine has, with one clear error otherwise.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a :class:`torch.device`, or
            None / ``"auto"`` for the first GPU when there is one, else the CPU.

    Raises:
        ValueError: an unknown device name, or a device this machine does not have.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r} (use cpu, cuda, cuda:N or mps)") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} was asked for but this machine has no usable CUDA GPU "
                "(or this torch build has no CUDA support); use --device cpu"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but MPS is not available here")
    return resolved
