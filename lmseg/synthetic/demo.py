"""Zero-shot demo on the synthetic world: attribute prompts and CLIP+SAM fusion vs baselines.

A small LMSeg (``lmseg_tiny`` resized for 64 px scenes, every weight random-init and trained)
learns the seen classes of a :class:`~lmseg.synthetic.world.SyntheticWorld` and is evaluated on
scenes of its unseen classes, whose colour+shape pairs never occur in training. Rows:

- ``template + fusion``: CAT-Seg's single template with the made-up name (P = 1);
- ``attributes + CLIP only``: the three name-free attribute sentences (P = 3), no SAM branch;
- ``attributes + fusion``: the same prompts with the SAM role fused in (LMSeg).

The fourth cell of the 2×2 (template + CLIP only) is off by default to stay within five minutes
on two CPU cores: a template model is at chance on unseen classes whatever its image encoder, so
the cell costs a fifth of the time and adds no information (``rows=tuple(ROWS)`` runs it).

Roles: the CLIP image tower sees the scene at half resolution, where its bilinear resize averages
the period-2 textures away exactly; the SAM image encoder sees it at full resolution. Only the
fused model can separate unseen classes that differ only in texture.

Training recipe, chosen for a budget of a few hundred steps (``docs/synthetic.md`` has the
measurements): softmax cross-entropy over each image's vocabulary
(:func:`lmseg.train.loss.segmentation_ce_loss`; CAT-Seg's BCE learns far slower at this budget)
plus an auxiliary pixel–prompt alignment loss on the cosine cost volume over object pixels
(:func:`alignment_loss`: CLIP's contrastive pretraining, which this from-scratch model lacks, in
miniature); vocabularies of the classes present, their one-attribute partners (hard negatives)
and random seen classes; AdamW with warm-up and cosine decay; all towers train, SAM included.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from lmseg.cost_volume import cosine_cost
from lmseg.eval.metrics import SegmentationMetrics
from lmseg.factory import build_model, get_config
from lmseg.model import LMSeg
from lmseg.prompts.compose import compose_prompts
from lmseg.prompts.embedding import encode_prompts
from lmseg.runtime import RuntimeOptions
from lmseg.synthetic.world import COLORS, IGNORE_VALUE, SyntheticWorld
from lmseg.train.loss import segmentation_ce_loss

__all__ = [
    "DEFAULT_ROWS",
    "ROWS",
    "DemoRow",
    "DemoSettings",
    "alignment_loss",
    "batch_loss",
    "build_demo_model",
    "class_prompts",
    "eval_sets",
    "evaluate",
    "format_table",
    "make_world",
    "model_overrides",
    "prompt_ids",
    "reference_levels",
    "run_demo",
    "select_rows",
    "train_row",
    "training_vocabulary",
]

PromptKind = Literal["template", "attributes_only"]


@dataclass(frozen=True)
class DemoRow:
    """One configuration of the table: prompt mode and whether the SAM role is fused in."""

    name: str
    prompts: PromptKind
    fusion: bool


ROWS: dict[str, DemoRow] = {
    "template+clip": DemoRow("template + CLIP only", "template", False),
    "template+fusion": DemoRow("template + fusion", "template", True),
    "attributes+clip": DemoRow("attributes + CLIP only", "attributes_only", False),
    "attributes+fusion": DemoRow("attributes + fusion", "attributes_only", True),
}
# The demo's vocabularies are small: no class filtering, in training and evaluation.
EXACT = RuntimeOptions(top_k=None)
DEFAULT_ROWS = ("template+fusion", "attributes+clip", "attributes+fusion")


def select_rows(which: str) -> tuple[str, ...]:
    """Row keys for ``"default"`` (three rows), ``"all"`` (the 2×2) or a comma-separated list."""
    if which == "default":
        return DEFAULT_ROWS
    if which == "all":
        return tuple(ROWS)
    keys = tuple(k.strip() for k in which.split(",") if k.strip())
    unknown = [k for k in keys if k not in ROWS]
    if unknown or not keys:
        raise ValueError(f"unknown rows {unknown or which!r}; choose from {', '.join(ROWS)}")
    return keys


@dataclass(frozen=True)
class DemoSettings:
    """Everything that decides a demo run (all of it is recorded in the results JSON).

    Attributes:
        steps: optimisation steps per (row, seed).
        seeds: training seeds; seed s fixes the initial weights and the training data stream,
            which is the same for every row (paired comparison).
        rows: keys of :data:`ROWS`.
        world_seed, image_size, seen_matchings, seen_textures: the world
            (:meth:`SyntheticWorld.generate`).
        batch_size: images per step; vocab_size: classes per training image (background
            included); hard_negatives: fill vocabularies with one-attribute partners first.
        lr, weight_decay, warmup, min_lr_ratio: AdamW, linear warm-up, cosine decay.
        alignment_weight, alignment_scale: weight and inverse temperature of
            :func:`alignment_loss` (weight 0 disables it); alignment_pixels: ``"objects"``
            (background pixels excluded) or ``"all"``.
        eval_unseen, eval_seen: scenes in the two evaluation sets (fixed, seeded).
        workers, threads: processes running (row, seed) jobs in parallel, torch threads each.
        figure_images: unseen scenes shown in the figure.
    """

    steps: int = 200
    seeds: tuple[int, ...] = (0, 1, 2)
    rows: tuple[str, ...] = DEFAULT_ROWS
    world_seed: int = 0
    image_size: int = 64
    seen_matchings: int = 3
    seen_textures: int = 4
    batch_size: int = 8
    vocab_size: int = 6
    hard_negatives: bool = True
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: int = 20
    min_lr_ratio: float = 0.05
    alignment_weight: float = 1.0
    alignment_scale: float = 10.0
    alignment_pixels: Literal["objects", "all"] = "objects"
    eval_unseen: int = 96
    eval_seen: int = 32
    workers: int = 2
    threads: int = 1
    figure_images: int = 6


# -------------------------------------------------------------------------------------------
# World, model and prompts


def make_world(settings: DemoSettings) -> SyntheticWorld:
    """The world of a demo run."""
    return SyntheticWorld.generate(
        settings.world_seed,
        image_size=settings.image_size,
        seen_matchings=settings.seen_matchings,
        seen_textures=settings.seen_textures,
    )


def model_overrides(image_size: int, prompts: PromptKind, fusion: bool) -> dict[str, Any]:
    """``lmseg_tiny`` overrides of the demo model: an 8×8 feature grid for both roles.

    CLIP role: a ViT on the scene resized to S/2 (patch S/16), so period-2 textures vanish, and
    a text tower with a 16-token context (every demo prompt fits). SAM role: a ViT on the scene
    at full resolution S (patch S/8). Exact inference: no class filtering.
    """
    clip_size = image_size // 2
    vision = {
        "image_size": clip_size,
        "patch_size": clip_size // 8,
        "width": 32,
        "layers": 3,
        "head_width": 16,
    }
    text = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
    overrides: dict[str, Any] = {
        "vision_language_encoder": {
            "image_size": clip_size,
            "guidance_layers": (0, 1),
            "model_cfg": {
                "embed_dim": 32,
                "vision_cfg": vision,
                "text_cfg": text,
                "quick_gelu": True,
            },
        },
        "aggregator": {
            "window_size": 4,
            "decoder_dims": (16, 16),
            "decoder_guidance_proj_dims": (8, 8),
        },
        "num_prompts": 1 if prompts == "template" else 3,
        "spatial_encoder": None,
        "fusion": None,
    }
    if fusion:
        overrides["spatial_encoder"] = {
            "type": "sam",
            "variant": "vit_b",
            "image_size": image_size,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 2,
            "global_attn_indexes": (1,),
            "window_size": 4,
            "patch_size": image_size // 8,
            "out_chans": 32,
        }
        overrides["fusion"] = {"type": "weighted", "mode": "scalar", "init": 0.5, "hidden_dim": 16}
    return overrides


def build_demo_model(image_size: int, prompts: PromptKind, fusion: bool) -> LMSeg:
    """The demo's LMSeg in train mode with **every** parameter trainable.

    ``lmseg_tiny`` freezes the SAM encoder, as LMSeg keeps the pretrained SAM frozen; here SAM is
    a random network that must learn, so it is un-frozen along with both CLIP towers.
    """
    model = build_model(get_config("lmseg_tiny", **model_overrides(image_size, prompts, fusion)))
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train()


def class_prompts(world: SyntheticWorld, ids: Sequence[int], kind: PromptKind) -> list[list[str]]:
    """P prompts per class: the CAT-Seg template with the made-up name (P = 1), or the three
    name-free attribute sentences of the world's bank (P = 3)."""
    names = [world.classes[k].name for k in ids]
    return [
        [str(s) for s in slots]
        for slots in compose_prompts(names, world.bank(), mode=kind, missing="error")
    ]


def prompt_ids(world: SyntheticWorld, ids: Sequence[int], kind: PromptKind) -> torch.Tensor:
    """``(K, P)`` int64, equal where two classes share the exact prompt string."""
    strings: dict[str, int] = {}
    return torch.tensor(
        [
            [strings.setdefault(s, len(strings)) for s in slots]
            for slots in class_prompts(world, ids, kind)
        ]
    )


def text_embeddings(
    model: LMSeg, world: SyntheticWorld, ids: Sequence[int], kind: PromptKind
) -> torch.Tensor:
    """``(K, P, D)`` prompt embeddings of classes ``ids``, with autograd (the text tower trains)."""
    return encode_prompts(model.text_encoder, class_prompts(world, ids, kind))


def _vocab_lookup(world: SyntheticWorld, vocab: Sequence[int]) -> torch.Tensor:
    """World class id -> index in ``vocab`` (``IGNORE_VALUE`` for classes not in it)."""
    lookup = torch.full((len(world.classes),), IGNORE_VALUE, dtype=torch.int64)
    lookup[torch.tensor(vocab)] = torch.arange(len(vocab))
    return lookup


# -------------------------------------------------------------------------------------------
# Training


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
    targets = torch.stack([_vocab_lookup(world, v)[y] for v, y in zip(vocabs, labels, strict=True)])

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
) -> tuple[LMSeg, list[float]]:
    """Train one configuration from scratch on the seen classes.

    Args:
        world: the world; only seen classes are drawn or named.
        row: prompt mode and fusion.
        settings: steps, batch, vocabulary, optimiser and loss settings.
        seed: fixes the initial weights and the data stream (the same for every row).
        on_step: called with (step, loss) after every step.

    Returns:
        The trained model (eval mode) and the loss of every step.
    """
    torch.manual_seed(seed)
    model = build_demo_model(settings.image_size, row.prompts, row.fusion)
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


# -------------------------------------------------------------------------------------------
# Evaluation


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
    lookup = _vocab_lookup(world, vocab)
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
    target = _vocab_lookup(world, vocab)[labels]
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


# -------------------------------------------------------------------------------------------
# Jobs


def _run_job(
    settings: DemoSettings, key: str, seed: int, progress: Callable[[int], Any] | None = None
) -> dict[str, Any]:
    """Train and evaluate one (row, seed): JSON-ready results plus ``_predictions``."""
    torch.set_num_threads(settings.threads)
    world = make_world(settings)
    row = ROWS[key]
    pending = [0]

    def report(step: int, loss: float) -> None:
        pending[0] += 1
        if progress is not None and (pending[0] >= 5 or step == settings.steps - 1):
            progress(pending[0])
            pending[0] = 0

    start = time.perf_counter()
    model, losses = train_row(world, row, settings, seed, on_step=report)
    train_time = time.perf_counter() - start
    result: dict[str, Any] = {"row": key, "seed": seed}
    predictions = torch.zeros(0)
    for split, (ids, images, labels) in eval_sets(settings, world).items():
        scores = evaluate(model, world, ids, images, labels, row.prompts)
        result[f"{split}_mIoU"] = scores["mIoU"]
        result[f"{split}_background_IoU"] = scores["background_IoU"]
        result[f"{split}_per_class"] = scores["per_class"]
        if split == "unseen":
            predictions = scores["predictions"][: settings.figure_images]
    weight = None
    logit = getattr(model.fusion, "weight_logit", None)
    if isinstance(logit, torch.Tensor):
        weight = float(torch.sigmoid(logit.detach()).mean())
    result.update(
        clip_fusion_weight=weight,
        final_loss=float(np.mean(losses[-20:])),
        loss_every_25_steps=losses[::25],
        train_seconds=train_time,
        eval_seconds=time.perf_counter() - start - train_time,
        _predictions=predictions.to(torch.int16).numpy(),
    )
    return result


_PROGRESS: Any = None


def _init_worker(progress_queue: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress_queue


def _worker_job(settings: DemoSettings, key: str, seed: int) -> dict[str, Any]:
    return _run_job(settings, key, seed, _PROGRESS.put if _PROGRESS is not None else None)


def _run_all(settings: DemoSettings, show_progress: bool) -> list[dict[str, Any]]:
    """Every (row, seed) job, in ``settings.workers`` spawned processes (in-process for 1)."""
    from tqdm.auto import tqdm

    jobs = [(key, seed) for seed in settings.seeds for key in settings.rows]
    bar = tqdm(
        total=len(jobs) * settings.steps,
        desc="training",
        unit="step",
        disable=not show_progress,
        mininterval=1.0,
    )
    if settings.workers <= 1:
        results = [_run_job(settings, key, seed, bar.update) for key, seed in jobs]
        bar.close()
        return results
    ctx = mp.get_context("spawn")  # fork after torch has started threads is unsafe
    progress_queue = ctx.Queue()
    with ProcessPoolExecutor(
        settings.workers, mp_context=ctx, initializer=_init_worker, initargs=(progress_queue,)
    ) as pool:
        # Longest jobs (fusion) first, so that the workers finish together.
        order = sorted(jobs, key=lambda j: not ROWS[j[0]].fusion)
        futures = [pool.submit(_worker_job, settings, key, seed) for key, seed in order]
        while not all(f.done() for f in futures) or not progress_queue.empty():
            with contextlib.suppress(queue.Empty):
                bar.update(progress_queue.get(timeout=0.2))
        by_job = {(r["row"], r["seed"]): r for r in (f.result() for f in futures)}
    bar.close()
    return [by_job[j] for j in jobs]


# -------------------------------------------------------------------------------------------
# Table, targets and figure


def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def summarise(runs: Sequence[dict[str, Any]], rows: Sequence[str]) -> dict[str, Any]:
    """Per row: mean/std/min/max over seeds of unseen and seen mIoU, and unseen per seed."""
    summary = {}
    for key in rows:
        mine = [r for r in runs if r["row"] == key]
        summary[key] = {
            **asdict(ROWS[key]),
            "unseen_mIoU": _stats([r["unseen_mIoU"] for r in mine]),
            "seen_mIoU": _stats([r["seen_mIoU"] for r in mine]),
            "unseen_by_seed": {str(r["seed"]): r["unseen_mIoU"] for r in mine},
        }
    return summary


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The demo's two claims, on mean unseen mIoU: attributes beat the template by ≥ 15 and
    fusion beats CLIP only (rows missing from the run are skipped)."""
    unseen = {k: v["unseen_mIoU"]["mean"] for k, v in summary.items()}
    out: dict[str, Any] = {}
    if "attributes+fusion" in unseen and "template+fusion" in unseen:
        out["attributes_minus_template"] = unseen["attributes+fusion"] - unseen["template+fusion"]
        out["attributes_beat_template_by_15"] = out["attributes_minus_template"] >= 15
    if "attributes+fusion" in unseen and "attributes+clip" in unseen:
        out["fusion_minus_clip_only"] = unseen["attributes+fusion"] - unseen["attributes+clip"]
        out["fusion_beats_clip_only"] = out["fusion_minus_clip_only"] > 0
    return out


def format_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table: mean ± std over seeds, then unseen mIoU per seed."""
    ref = results["reference"]
    lines = [
        "| configuration | unseen mIoU | seen mIoU | unseen mIoU per seed |",
        "|---|---|---|---|",
    ]
    for row in results["summary"].values():
        u, s = row["unseen_mIoU"], row["seen_mIoU"]
        seeds = ", ".join(f"{v:.1f}" for v in row["unseen_by_seed"].values())
        lines.append(
            f"| {row['name']} | {u['mean']:.1f} ± {u['std']:.1f} | "
            f"{s['mean']:.1f} ± {s['std']:.1f} | {seeds} |"
        )
    for key, name in (
        ("chance", "chance (perfect masks, random class)"),
        ("texture_blind", "texture-blind oracle (perfect masks)"),
    ):
        lines.append(f"| {name} | {ref['unseen'][key]:.1f} | {ref['seen'][key]:.1f} | |")
    return "\n".join(lines)


def save_figure(
    path: Path,
    world: SyntheticWorld,
    images: torch.Tensor,
    labels: torch.Tensor,
    predictions: dict[str, np.ndarray],
    scale: int = 3,
) -> None:
    """One line per unseen scene: the image, the ground truth, then each row's prediction.

    Regions are filled with their class's colour (black background) and named; a predicted name
    is white where it matches the ground truth under most of the region, red otherwise.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    palette = np.full((len(world.classes), 3), 25, np.uint8)
    for k, c in enumerate(world.classes[1:], start=1):
        palette[k] = (np.asarray(COLORS[c.color]) * 200).round().astype(np.uint8)
    s, pad, header = world.image_size * scale, 6, 24
    titles = ["image", "ground truth", *predictions]
    canvas = Image.new(
        "RGB", (pad + len(titles) * (s + pad), header + len(images) * (s + pad)), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(titles):
        draw.text((pad + j * (s + pad), 6), title, fill="black", font=font)

    def tile(label: np.ndarray, truth: np.ndarray) -> Image.Image:
        up = np.kron(label, np.ones((scale, scale), np.int64))
        out = Image.fromarray(palette[up])
        pen = ImageDraw.Draw(out)
        for k in (k for k in np.unique(label) if k):
            ys, xs = np.nonzero(label == k)
            if len(ys) < 12:
                continue
            right = np.bincount(truth[ys, xs]).argmax() == k
            name = world.classes[int(k)].name
            pen.text(
                (xs.mean() * scale - font.getlength(name) / 2, ys.mean() * scale - 5),
                name,
                fill="white" if right else (255, 90, 90),
                font=font,
            )
        return out

    for i in range(len(images)):
        y0 = header + i * (s + pad)
        truth = labels[i].numpy()
        rgb = (images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        canvas.paste(Image.fromarray(rgb).resize((s, s), Image.Resampling.NEAREST), (pad, y0))
        canvas.paste(tile(truth, truth), (pad + (s + pad), y0))
        for j, pred in enumerate(predictions.values(), start=2):
            canvas.paste(tile(pred[i].astype(np.int64), truth), (pad + j * (s + pad), y0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


# -------------------------------------------------------------------------------------------
# Entry point


def run_demo(
    settings: DemoSettings,
    out_dir: str | os.PathLike[str] | None = "outputs/synthetic",
    *,
    show_progress: bool = True,
    echo: Callable[[str], Any] | None = print,
) -> dict[str, Any]:
    """Train and evaluate every (row, seed), print the table, write ``results.json`` and
    ``unseen_predictions.png`` under ``out_dir`` (nothing written when None).

    With ``settings.workers > 1`` jobs run in spawned processes: call this from under
    ``if __name__ == "__main__":`` in scripts.

    Returns:
        The results: ``settings``, ``world`` (the split), ``loss``, ``metric``, ``reference``
        (chance and texture-blind oracle), ``summary`` (per row), ``targets``, ``runs`` (per
        row and seed, with per-class IoU), ``threads`` and ``wall_seconds``.
    """
    start = time.perf_counter()
    world = make_world(settings)
    runs = _run_all(settings, show_progress)
    sets = eval_sets(settings, world)
    reference = {
        split: reference_levels(world, ids, labels) for split, (ids, _, labels) in sets.items()
    }
    summary = summarise(runs, settings.rows)
    predictions = {
        ROWS[r["row"]].name: r["_predictions"] for r in runs if r["seed"] == settings.seeds[0]
    }
    runs = [{k: v for k, v in r.items() if k != "_predictions"} for r in runs]
    record = {"name": "", "color": "", "shape": "", "texture": ""}
    results: dict[str, Any] = {
        "settings": asdict(settings),
        "world": {
            split: [{key: getattr(world.classes[k], key) for key in record} for k in ids]
            for split, ids in (("seen", world.seen_ids), ("unseen", world.unseen_ids))
        },
        "loss": "segmentation_ce_loss (softmax CE over each image's vocabulary) + "
        "alignment_weight x alignment_loss (object pixels)",
        "metric": "mIoU over object classes present, background excluded, percent",
        "reference": reference,
        "summary": summary,
        "targets": targets(summary),
        "runs": runs,
        "threads": {
            "workers": settings.workers,
            "torch_threads": settings.threads,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        },
    }
    if out_dir is not None:
        out = Path(out_dir)
        _, images, labels = sets["unseen"]
        n = settings.figure_images
        save_figure(out / "unseen_predictions.png", world, images[:n], labels[:n], predictions)
    results["wall_seconds"] = time.perf_counter() - start
    if out_dir is not None:
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if echo is not None:
        echo(format_table(results))
        for key, claim, target in (
            ("attributes_minus_template", "attributes - template", ">= +15"),
            ("fusion_minus_clip_only", "fusion - CLIP only", "> 0"),
        ):
            if key in results["targets"]:
                met = (
                    results["targets"][key] >= 15
                    if "template" in key
                    else (results["targets"][key] > 0)
                )
                echo(
                    f"{claim} (unseen mIoU): {results['targets'][key]:+.1f} "
                    f"(target {target}: {'met' if met else 'MISSED'})"
                )
        echo(
            f"wall-clock {results['wall_seconds']:.0f} s"
            + (f"; wrote {out_dir}/results.json and unseen_predictions.png" if out_dir else "")
        )
    return results
