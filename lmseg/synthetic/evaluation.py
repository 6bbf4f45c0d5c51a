"""Evaluation of the demo's models: object mIoU on fixed scenes, and two reference levels.

The metric is mIoU over the object classes present, background excluded (its IoU is reported on
its own), computed with :class:`lmseg.eval.metrics.SegmentationMetrics`. The references use
perfect masks: *chance* labels each object with a random class of the vocabulary, the
*texture-blind oracle* gets colour and shape right and guesses the texture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmseg.eval.metrics import SegmentationMetrics
from lmseg.model import LMSeg
from lmseg.synthetic.model import text_embeddings, vocab_lookup
from lmseg.synthetic.settings import EXACT, DemoSettings, PromptKind
from lmseg.synthetic.world import IGNORE_VALUE, SyntheticWorld

__all__ = ["eval_sets", "evaluate", "reference_levels"]


def _object_miou(metrics: SegmentationMetrics) -> tuple[float, list[float | None]]:
    """mIoU over the object classes present (background, index 0, excluded) and per-class IoU."""
    per_class = [None if math.isnan(x) else float(x) for x in metrics.compute()["IoU"]]
    objects = [x for x in per_class[1:] if x is not None]
    return (float(np.mean(objects)) if objects else math.nan), per_class


@torch.no_grad()
def evaluate(
    model: LMSeg,
    world: SyntheticWorld,
    ids: Sequence[int],
    images: torch.Tensor,
    labels: torch.Tensor,
    kind: PromptKind,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Segment ``images (N, 3, S, S)`` with the vocabulary background + ``ids`` and score them
    against ``labels (N, S, S)`` (world class ids).

    Returns:
        ``mIoU`` (object classes, background excluded), ``background_IoU``, ``per_class``
        (name → IoU) and ``predictions`` ``(N, S, S)`` world class ids.
    """
    vocab = [0, *ids]
    text = text_embeddings(model, world, vocab, kind)
    lookup = vocab_lookup(world, vocab)
    metrics = SegmentationMetrics(len(vocab), IGNORE_VALUE)
    predictions = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        logits = model(x, text, EXACT)  # (b, K, S/2, S/2)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        pred = logits.argmax(dim=1)
        metrics.update(pred, lookup[labels[start : start + batch_size]])
        predictions.append(torch.tensor(vocab)[pred])
    miou, per_class = _object_miou(metrics)
    return {
        "mIoU": miou,
        "background_IoU": per_class[0],
        "per_class": {world.classes[k].name: per_class[i] for i, k in enumerate(vocab) if i},
        "predictions": torch.cat(predictions),
    }


def reference_levels(
    world: SyntheticWorld, ids: Sequence[int], labels: torch.Tensor, seed: int = 0, draws: int = 20
) -> dict[str, float]:
    """Object mIoU of two oracles with perfect masks on ``labels``, averaged over ``draws``:

    - ``chance``: each object gets a uniformly random class of ``ids``;
    - ``texture_blind``: colour and shape right, the texture guessed among the classes of
      ``ids`` with that colour and shape: the best any texture-blind model can do.
    """
    rng = np.random.default_rng(seed)
    vocab = [0, *ids]
    target = vocab_lookup(world, vocab)[labels]
    out: dict[str, float] = {}
    for oracle in ("chance", "texture_blind"):
        scores = []
        for _ in range(draws):
            metrics = SegmentationMetrics(len(vocab), IGNORE_VALUE)
            for y in target:
                pred = y.clone()
                for c in torch.unique(y).tolist():
                    if c == 0:
                        continue
                    pair = world.classes[vocab[c]].attributes[:2]
                    options = [
                        i
                        for i, k in enumerate(vocab)
                        if i and (oracle == "chance" or world.classes[k].attributes[:2] == pair)
                    ]
                    pred[y == c] = int(rng.choice(options))
                metrics.update(pred, y)
            scores.append(_object_miou(metrics)[0])
        out[oracle] = float(np.mean(scores))
    return out


def eval_sets(settings: DemoSettings, world: SyntheticWorld) -> dict[str, tuple[Any, ...]]:
    """The fixed evaluation scenes: name → (class ids, images, labels)."""
    s = settings.world_seed
    return {
        "unseen": (
            world.unseen_ids,
            *world.dataset(10_000 + s, world.unseen_ids, settings.eval_unseen),
        ),
        "seen": (world.seen_ids, *world.dataset(20_000 + s, world.seen_ids, settings.eval_seen)),
    }
