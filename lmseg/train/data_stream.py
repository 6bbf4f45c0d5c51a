"""The training data stream: resumable, seeded, identical for one process or many.

The stream concatenates seeded per-epoch permutations of the training set; its position is
``(epoch, index)`` into them (:class:`DataPosition`), which a checkpoint stores. Every sample's
augmentation draws from its own generator seeded by (seed, epoch, index), so the data depend
neither on the number of loader workers nor on restarts, and a DDP job sees exactly the samples
of a single process with the whole batch (:class:`SampleStream`).

A sample that cannot be read (:class:`lmseg.data.BadSampleError`: a truncated file, a label of
the wrong size or with values outside the class list) never stops training: the next readable
sample in dataset order takes its place, the same one in every run (so exact resume holds), and
:class:`SkippedSamples` warns once per bad file and counts the skips.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lmseg.data.datasets import BadSampleError

__all__ = [
    "AugmentedDataset",
    "DataPosition",
    "SampleStream",
    "SkippedSamples",
    "TensorSegmentationDataset",
    "collate",
    "epoch_permutation",
    "ignore_value_of",
    "sample_seed",
]

logger = logging.getLogger(__name__)


class TensorSegmentationDataset(Dataset[dict[str, Any]]):
    """An in-memory segmentation dataset (tests, demos, synthetic data).

    Args:
        images: ``uint8 (N, 3, H, W)`` RGB.
        labels: ``int64 (N, H, W)`` class indices or ``ignore_value``.
        class_names: the K class names, if known.
        ignore_value: label value of unlabelled pixels.

    Items are ``{"image": uint8 (3, H, W), "label": int64 (H, W), "file": "<index>"}``, like
    :class:`lmseg.data.SegmentationDataset`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        class_names: Sequence[str] | None = None,
        ignore_value: int = 255,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self.class_names = list(class_names) if class_names is not None else None
        self.ignore_value = ignore_value

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": self.labels[index], "file": str(index)}


@dataclass(frozen=True)
class DataPosition:
    """Where the sample stream stands: ``index`` into the permutation of ``epoch``."""

    epoch: int = 0
    index: int = 0

    def advance(self, samples: int, dataset_size: int) -> DataPosition:
        """The position ``samples`` later (the stream runs through epochs back to back)."""
        total = self.index + samples
        return DataPosition(self.epoch + total // dataset_size, total % dataset_size)


def epoch_permutation(size: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch (a function of seed and epoch only)."""
    return np.random.default_rng([seed, epoch]).permutation(size)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation generator (63 bits from numpy's SeedSequence)."""
    words = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class SampleStream(Sampler[tuple[int, int, int]]):
    """Endless stream of ``(epoch, index, dataset index)`` keys for one process.

    The global stream concatenates seeded per-epoch permutations. Each micro-step consumes
    ``micro_batch × world_size`` consecutive keys; process ``rank`` takes the slice
    ``[rank·micro_batch, (rank+1)·micro_batch)`` of them, so a DDP job sees exactly the samples a
    single process with the whole batch would.
    """

    def __init__(
        self,
        dataset_size: int,
        *,
        seed: int,
        micro_batch: int,
        rank: int = 0,
        world_size: int = 1,
        start: DataPosition = DataPosition(),
    ) -> None:
        if dataset_size < 1:
            raise ValueError("the training set is empty")
        self.dataset_size = dataset_size
        self.seed = seed
        self.micro_batch = micro_batch
        self.rank = rank
        self.world_size = world_size
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch, index = self.start.epoch, self.start.index
        order = epoch_permutation(self.dataset_size, self.seed, epoch)
        group = self.micro_batch * self.world_size
        lo, hi = self.rank * self.micro_batch, (self.rank + 1) * self.micro_batch
        while True:
            for offset in range(group):
                if lo <= offset < hi:
                    yield epoch, index, int(order[index])
                index += 1
                if index == self.dataset_size:
                    epoch, index = epoch + 1, 0
                    order = epoch_permutation(self.dataset_size, self.seed, epoch)


Augmentation = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class AugmentedDataset(Dataset[tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]]):
    """Indexed by :class:`SampleStream` keys; applies ``augmentation(image, label,
    generator=...)`` with a generator seeded by (seed, epoch, index).

    Items are ``(image, label, skipped)``: ``skipped`` holds the one-line messages of the bad
    samples that were passed over to reach a readable one (usually empty).
    """

    def __init__(self, base: Dataset[Any], augmentation: Augmentation | None, seed: int) -> None:
        self.base = base
        self.augmentation = augmentation
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def _readable(self, item: int) -> tuple[Any, tuple[str, ...]]:
        size = len(self)
        skipped: list[str] = []
        for offset in range(size):
            try:
                return self.base[(item + offset) % size], tuple(skipped)
            except BadSampleError as error:
                skipped.append(str(error))
        raise BadSampleError(f"none of the {size} training samples is readable: {skipped[0]}")

    def __getitem__(
        self, key: tuple[int, int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:  # type: ignore[override]
        epoch, index, item = key
        sample, skipped = self._readable(item)
        image, label = sample["image"], sample["label"]
        if self.augmentation is not None:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
            image, label = self.augmentation(image, label, generator=generator)
        return image, label, skipped


def collate(
    batch: list[tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]],
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack ``(image, label, skipped)`` items into ``uint8 (B, 3, H, W)``, ``int64 (B, H, W)``
    and the list of every skipped sample's message."""
    images, labels, skipped = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(labels), [m for s in skipped for m in s]


@dataclass
class SkippedSamples:
    """Warns once per bad training sample (the message names the file) and counts skips."""

    reported: set[str] = field(default_factory=set)

    def note(self, messages: Sequence[str]) -> int:
        """Warn about the messages not seen before; returns how many samples were skipped."""
        for message in messages:
            if message not in self.reported:
                self.reported.add(message)
                logger.warning("skipping a bad training sample: %s", message)
        return len(messages)


def ignore_value_of(dataset: Any, default: int = 255) -> int:
    """The label value a dataset uses for unlabelled pixels (its spec's, else its own)."""
    spec = getattr(dataset, "spec", None)
    if spec is not None:
        return int(spec.ignore_value)
    return int(getattr(dataset, "ignore_value", default))
