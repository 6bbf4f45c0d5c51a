"""What decides a run of the synthetic demo: its rows (configurations) and its settings.

A row is a prompt mode and whether the SAM role is fused in (:data:`ROWS`); the settings fix the
world, the training recipe, the evaluation sets and how the jobs run (:class:`DemoSettings`).
Everything here is recorded in the results JSON, so a run is reproducible from its file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmseg.runtime import RuntimeOptions
from lmseg.synthetic.world import SyntheticWorld

__all__ = [
    "DEFAULT_ROWS",
    "EXACT",
    "ROWS",
    "DemoRow",
    "DemoSettings",
    "PromptKind",
    "make_world",
    "select_rows",
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
            :func:`~lmseg.synthetic.training.alignment_loss` (weight 0 disables it);
            alignment_pixels: ``"objects"`` (background pixels excluded) or ``"all"``.
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


def make_world(settings: DemoSettings) -> SyntheticWorld:
    """The world of a demo run."""
    return SyntheticWorld.generate(
        settings.world_seed,
        image_size=settings.image_size,
        seen_matchings=settings.seen_matchings,
        seen_textures=settings.seen_textures,
    )
