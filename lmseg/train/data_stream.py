"""The training data stream: resumable, seeded, identical for one process or many.

The stream concatenates seeded per-epoch permutations of the training set; its position is
``(epoch, index)`` into them (:class:`DataPosition`), which a checkpoint stores. Every sample's
augmentation draws from its own generator seeded by (seed, epoch, index), so the data depend
neither on the number of loader workers nor on restarts, and a DDP job sees exactly the samples
of a single process with the whole batch (:class:`SampleStream`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = [
    "AugmentedDataset",
    "DataPosition",
    "SampleStream",
    "TensorSegmentationDataset",
    "collate",
    "epoch_permutation",
    "ignore_value_of",
    "sample_seed",
]


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


class AugmentedDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Indexed by :class:`SampleStream` keys; applies ``augmentation(image, label,
    generator=...)`` with a generator seeded by (seed, epoch, index)."""

    def __init__(self, base: Dataset[Any], augmentation: Augmentation | None, seed: int) -> None:
        self.base = base
        self.augmentation = augmentation
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        epoch, index, item = key
        sample = self.base[item]
        image, label = sample["image"], sample["label"]
        if self.augmentation is not None:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
            image, label = self.augmentation(image, label, generator=generator)
        return image, label


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, label)`` pairs into ``uint8 (B, 3, H, W)`` and ``int64 (B, H, W)``."""
    images, labels = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(labels)


def ignore_value_of(dataset: Any, default: int = 255) -> int:
    """The label value a dataset uses for unlabelled pixels (its spec's, else its own)."""
    spec = getattr(dataset, "spec", None)
    if spec is not None:
        return int(spec.ignore_value)
    return int(getattr(dataset, "ignore_value", default))
