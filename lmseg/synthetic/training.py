"""Training of the demo's models from scratch on the seen classes of the synthetic world.

The recipe is chosen for a budget of a few hundred steps (``docs/synthetic.md`` has the
measurements): softmax cross-entropy over each image's vocabulary
(:func:`lmseg.train.loss.segmentation_ce_loss`; CAT-Seg's BCE learns far slower at this budget)
plus an auxiliary pixel–prompt alignment loss on the cosine cost volume over object pixels
(:func:`alignment_loss`: CLIP's contrastive pretraining, which this from-scratch model lacks, in
miniature); vocabularies of the classes present, their one-attribute partners (hard negatives)
and random seen classes; AdamW with warm-up and cosine decay; all towers train, SAM included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lmseg.cost_volume import cosine_cost
from lmseg.model import LMSeg
from lmseg.synthetic.model import build_demo_model, prompt_ids, text_embeddings, vocab_lookup
from lmseg.synthetic.settings import EXACT, DemoRow, DemoSettings, PromptKind
from lmseg.synthetic.world import IGNORE_VALUE, SyntheticWorld
from lmseg.train.loss import segmentation_ce_loss

__all__ = ["alignment_loss", "batch_loss", "train_row", "training_vocabulary"]


def training_vocabulary(
    world: SyntheticWorld,
    rng: np.random.Generator,
    present: Sequence[int],
    size: int,
    hard_negatives: bool = True,
) -> list[int]:
    """``size`` class ids for one training image: background, the classes present, then (with
    ``hard_negatives``) their one-attribute partners round-robin, then random seen classes."""
    vocab = [0, *dict.fromkeys(int(k) for k in present if k)]
    if hard_negatives:
        partners = [[int(p) for p in rng.permutation(world.partners(k))] for k in vocab[1:]]
        while len(vocab) < size and any(partners):
            for options in partners:
                while options and len(vocab) < size:
                    candidate = options.pop()
                    if candidate not in vocab:
                        vocab.append(candidate)
                        break
    rest = [k for k in world.seen_ids if k not in vocab]
    vocab += [int(k) for k in rng.permutation(rest)[: max(0, size - len(vocab))]]
    return vocab[:size]


def alignment_loss(
    embedding: torch.Tensor,
    text: torch.Tensor,
    ids: torch.Tensor,
    targets: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Auxiliary pixel–prompt alignment on the cosine cost volume, one prompt slot at a time.

    For slot p (with attribute prompts: colour, shape, texture) each labelled pixel is
    classified by ``scale``·cosine among the *distinct* slot-p prompts of its image's
    vocabulary, the target being its class's prompt: classes sharing a prompt (two blue classes
    share "It is blue.") are one candidate. With one prompt per class (the template) this is
    softmax cross-entropy over the vocabulary on the cost volume.

    Args:
        embedding: dense image embedding ``(B, D, h, w)`` (fused when fusion is on).
        text: prompt embeddings of each image's vocabulary ``(B, K, P, D)``.
        ids: prompt-string ids ``(B, K, P)`` (:func:`prompt_ids`).
        targets: ``(B, H, W)`` vocabulary indices or ``IGNORE_VALUE``.
        scale: inverse temperature of the cosine logits.

    Returns:
        Scalar loss, the mean over labelled pixels and the P slots.
    """
    cost = cosine_cost(embedding, text)  # (B, P, K, h, w)
    b, p, k = cost.shape[:3]
    same = ids[:, :, None, :] == ids[:, None, :, :]  # (B, K, K', P)
    first = same.int().argmax(dim=2).permute(0, 2, 1)  # (B, P, K): first class with that prompt
    duplicate = first != torch.arange(k, device=first.device)
    logits = (scale * cost).masked_fill(duplicate[..., None, None], -1e4)
    flat = targets.clamp(0, k - 1).reshape(b, 1, -1).expand(b, p, -1)
    slot_targets = first.gather(2, flat).reshape(b, p, *targets.shape[1:])  # (B, P, H, W)
    slot_targets = slot_targets.masked_fill((targets == IGNORE_VALUE)[:, None], IGNORE_VALUE)
    return segmentation_ce_loss(
        logits.flatten(0, 1), slot_targets.flatten(0, 1), ignore_value=IGNORE_VALUE
    )


def _lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def batch_loss(
    model: LMSeg,
    world: SyntheticWorld,
    kind: PromptKind,
    images: torch.Tensor,
    labels: torch.Tensor,
    vocabs: Sequence[Sequence[int]],
    settings: DemoSettings,
) -> torch.Tensor:
    """The training loss of one batch.

    Args:
        images: ``(B, 3, S, S)``; labels: ``(B, S, S)`` world class ids.
        vocabs: each image's vocabulary (K world class ids, background first, every class of
            its label included).

    Returns:
        Softmax CE over each image's vocabulary on the model's logits, plus
        ``alignment_weight`` × :func:`alignment_loss` on object pixels.
    """
    union = sorted({k for v in vocabs for k in v})
    position = {k: i for i, k in enumerate(union)}
    index = torch.tensor([[position[k] for k in v] for v in vocabs])  # (B, K)
    text = text_embeddings(model, world, union, kind)[index]  # (B, K, P, D)
    targets = torch.stack([vocab_lookup(world, v)[y] for v, y in zip(vocabs, labels, strict=True)])

    features = model.encode_image(images)
    logits = model.decode(features, text, EXACT)  # (B, K, S/2, S/2)
    loss = segmentation_ce_loss(logits, targets, ignore_value=IGNORE_VALUE)
    if settings.alignment_weight > 0:
        # Object pixels only: the background (most pixels) would push every object prompt the
        # same way, away from its features, and collapse them in the first steps.
        aligned = targets
        if settings.alignment_pixels == "objects":
            aligned = targets.masked_fill(labels == 0, IGNORE_VALUE)
        ids = prompt_ids(world, union, kind)[index]  # (B, K, P)
        loss = loss + settings.alignment_weight * alignment_loss(
            features.embedding, text, ids, aligned, settings.alignment_scale
        )
    return loss


def train_row(
    world: SyntheticWorld,
    row: DemoRow,
    settings: DemoSettings,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[LMSeg, list[float]]:
    """Train one configuration from scratch on the seen classes.

    Args:
        world: the world; only seen classes are drawn or named.
        row: prompt mode and fusion.
        settings: steps, batch, vocabulary, optimiser and loss settings.
        seed: fixes the initial weights and the data stream (the same for every row).
        on_step: called with (step, loss) after every step.
        overrides: model config overrides on top of the row's (a class attention, a fusion
            mode; :func:`~lmseg.synthetic.model.build_demo_model`).

    Returns:
        The trained model (eval mode) and the loss of every step.
    """
    torch.manual_seed(seed)
    model = build_demo_model(settings.image_size, row.prompts, row.fusion, overrides=overrides)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, fused=True
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, settings.steps, settings.warmup, settings.min_lr_ratio)
    )
    data_rng = np.random.default_rng([settings.world_seed, seed, 1])
    losses: list[float] = []
    for step in range(settings.steps):
        images, labels = world.sample(data_rng, world.seen_ids, settings.batch_size)
        vocabs = [
            training_vocabulary(
                world,
                data_rng,
                torch.unique(y).tolist(),
                settings.vocab_size,
                settings.hard_negatives,
            )
            for y in labels
        ]
        loss = batch_loss(model, world, row.prompts, images, labels, vocabs, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    return model.eval(), losses
