"""Freezing policy, parameter groups, optimizer and learning-rate schedule of CAT-Seg's recipe.

What trains (CAT-Seg ``MODEL.SEM_SEG_HEAD.CLIP_FINETUNE: "attention"``), by role:

- The vision-language encoder (CLIP role), both towers: only the **query and value projection
  weights** of every attention block. CAT-Seg's CLIP splits each attention's ``in_proj_weight``
  into ``q_proj_weight``, ``k_proj_weight`` and ``v_proj_weight`` and sets ``requires_grad`` on
  the parameters whose names contain ``transformer`` and ``q_proj``/``v_proj``; everything else
  of CLIP is frozen: positional and token embeddings, class embedding, ``proj``/
  ``text_projection``, LayerNorms, out-proj, MLPs, and ``in_proj_bias`` (one packed tensor for
  q, k and v, which CAT-Seg leaves frozen). The encoder names its projections
  (:meth:`~lmseg.encoders.VisionLanguageEncoder.attention_weights`): where several share one
  tensor (open_clip packs q;k;v as row blocks of ``in_proj_weight``), the tensor trains with a
  **row mask**: a gradient hook zeroes the rows of the frozen projections (so they add nothing
  to the gradient norm and Adam's moments for them stay zero), and :meth:`QVMask.restore` copies
  the frozen rows back after each optimizer step (undoing AdamW's decoupled weight decay, which
  acts without a gradient). Projections the encoder never uses stay frozen too: CAT-Seg's dense
  last vision block uses only the value path, so its q gets no gradient there and AdamW skips it.
- The spatial encoder (SAM role): frozen.
- Everything else (cost embedding, aggregation, decoder, spatial adapter, fusion): trains.

Learning rates: base rate for everything, ``vision_language_lr_multiplier`` (0.01) for the
vision-language encoder. Weight decay as CAT-Seg's ``build_optimizer``: ``weight_decay``
everywhere except normalisation layers (``WEIGHT_DECAY_NORM``, 0.0) and embeddings
(``WEIGHT_DECAY_EMBED``, 0.0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from lmseg.model import LMSeg

__all__ = [
    "FINETUNE_MODES",
    "QVMask",
    "WarmupCosine",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "configure_trainable",
    "trainable_parameters",
]

Finetune = Literal["qv", "none", "full"]
FINETUNE_MODES: tuple[str, ...] = ("qv", "none", "full")

_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


@dataclass
class QVMask:
    """Row masks that keep parts of packed ``in_proj_weight`` tensors frozen.

    Attributes:
        masks: parameter name -> ``(3·width, 1)`` float mask, 1 on trainable rows.
        params: parameter name -> the ``in_proj_weight`` parameter.
        frozen: parameter name -> copy of the parameter's frozen rows (the whole tensor, rows
            outside the mask are what :meth:`restore` writes back).
    """

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    params: dict[str, nn.Parameter] = field(default_factory=dict)
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)
    _handles: list[Any] = field(default_factory=list)

    def add(self, name: str, param: nn.Parameter, trainable_rows: torch.Tensor) -> None:
        """Mask ``param``'s rows where ``trainable_rows`` (bool ``(3·width,)``) is False."""
        mask = trainable_rows.to(param.device, param.dtype)[:, None]
        self.masks[name] = mask
        self.params[name] = param
        self.frozen[name] = param.detach().clone()
        self._handles.append(param.register_hook(lambda grad, m=mask: grad * m.to(grad.dtype)))

    @torch.no_grad()
    def restore(self) -> None:
        """Write the frozen rows back (call after every optimizer step)."""
        for name, param in self.params.items():
            keep = self.masks[name].to(torch.bool).expand_as(param)
            param.copy_(torch.where(keep, param, self.frozen[name].to(param.device)))

    def refresh(self) -> None:
        """Re-read the frozen rows from the parameters (after loading weights)."""
        for name, param in self.params.items():
            self.frozen[name] = param.detach().clone()

    def to(self, device: torch.device | str) -> QVMask:
        """Move the saved rows and masks (the hooks follow the parameters)."""
        self.frozen = {k: v.to(device) for k, v in self.frozen.items()}
        self.masks = {k: v.to(device) for k, v in self.masks.items()}
        return self

    def remove(self) -> None:
        """Remove the gradient hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def num_trainable(self) -> int:
        """Number of trainable elements in the masked tensors."""
        return int(
            sum(
                int(m.sum().item()) * p.shape[1]
                for m, p in zip(self.masks.values(), self.params.values(), strict=True)
            )
        )


def configure_trainable(model: LMSeg, finetune: Finetune = "qv") -> QVMask:
    """Set ``requires_grad`` on every parameter of ``model`` following the recipe.

    Args:
        model: an :class:`~lmseg.model.LMSeg`.
        finetune: what of the vision-language encoder trains: ``"qv"`` (CAT-Seg's
            ``"attention"``: the query and value projection weights of both towers), ``"none"``
            (frozen) or ``"full"`` (every parameter).

    Returns:
        The :class:`QVMask` holding the gradient hooks (empty unless ``"qv"``); call its
        :meth:`~QVMask.restore` after each optimizer step.

    Raises:
        ValueError: an unknown mode.
        NotImplementedError: ``"qv"`` with an encoder that does not name its attention weights.
    """
    if finetune not in FINETUNE_MODES:
        raise ValueError(f"vision-language fine-tuning must be one of {FINETUNE_MODES}, got {finetune!r}")
    for p in model.parameters():
        p.requires_grad_(True)
    if model.spatial_encoder is not None:
        model.spatial_encoder.requires_grad_(False)
    encoder = model.vision_language_encoder
    encoder.requires_grad_(finetune == "full")
    mask = QVMask()
    if finetune != "qv":
        return mask
    for attention in encoder.attention_weights():
        rows = torch.zeros(attention.weight.shape[0], dtype=torch.bool)
        for part in ("q", "v"):
            if part in attention.rows and part not in attention.unused:
                rows[attention.rows[part]] = True
        if not rows.any():
            continue
        attention.weight.requires_grad_(True)
        if not rows.all():
            mask.add(f"vision_language_encoder.{attention.name}", attention.weight, rows)
    return mask


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every parameter with ``requires_grad``."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def build_param_groups(
    model: LMSeg,
    *,
    lr: float,
    weight_decay: float,
    encoder_lr_multiplier: float = 0.01,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups of the trainable parameters (CAT-Seg's ``build_optimizer``).

    Groups are keyed by (vision-language encoder or not, weight decay); each carries ``name``,
    ``lr``, ``weight_decay`` and ``lr_multiplier`` (``encoder_lr_multiplier`` for the encoder).
    """
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            is_encoder = module_name == "vision_language_encoder" or module_name.startswith(
                "vision_language_encoder."
            )
            decay = weight_decay
            if isinstance(module, _NORM_TYPES):
                decay = weight_decay_norm
            elif isinstance(module, nn.Embedding):
                decay = weight_decay_embed
            key = (is_encoder, decay)
            if key not in groups:
                multiplier = encoder_lr_multiplier if is_encoder else 1.0
                groups[key] = {
                    "name": ("vision_language" if is_encoder else "head")
                    + ("" if decay else "_no_decay"),
                    "params": [],
                    "lr": lr * multiplier,
                    "weight_decay": decay,
                    "lr_multiplier": multiplier,
                }
            groups[key]["params"].append(param)
    return sorted(groups.values(), key=lambda g: g["name"])


def build_optimizer(
    model: LMSeg,
    *,
    lr: float,
    weight_decay: float,
    encoder_lr_multiplier: float = 0.01,
    weight_decay_norm: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over :func:`build_param_groups` (detectron2's ``ADAMW`` with torch defaults)."""
    groups = build_param_groups(
        model,
        lr=lr,
        weight_decay=weight_decay,
        encoder_lr_multiplier=encoder_lr_multiplier,
        weight_decay_norm=weight_decay_norm,
    )
    if not groups:
        raise ValueError("the model has no trainable parameter")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class WarmupCosine:
    """LR multiplier of detectron2's ``WarmupCosineLR``: optional linear warm-up, then
    ``0.5·(1 + cos(π·t/T))`` from 1 at step 0 to 0 at step T (CAT-Seg: no warm-up).

    A plain object (not a lambda), so :class:`torch.optim.lr_scheduler.LambdaLR` saves its
    attributes in its state dict.
    """

    def __init__(
        self,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_factor: float = 0.001,
        cosine: bool = True,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.cosine = bool(cosine)

    def __call__(self, step: int) -> float:
        value = 1.0
        if self.cosine:
            t = min(step, self.total_steps) / self.total_steps
            value = 0.5 * (1.0 + math.cos(math.pi * t))
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            value *= self.warmup_factor * (1 - alpha) + alpha
        return value


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    schedule: str = "cosine",
    warmup_steps: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule: ``"cosine"`` (:class:`WarmupCosine`) or ``"constant"``."""
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    fn = WarmupCosine(total_steps, warmup_steps, cosine=schedule == "cosine")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
