"""Benchmark datasets (CAT-Seg's prepared layout, no detectron2) and training augmentation."""

from lmseg.data.datasets import (
    DatasetNotFoundError,
    DatasetSpec,
    Sample,
    SegmentationDataset,
    dataset_root,
    get_dataset_spec,
    list_datasets,
    read_image,
    read_label,
)
from lmseg.data.transforms import TrainAugmentation

__all__ = [
    "DatasetNotFoundError",
    "DatasetSpec",
    "Sample",
    "SegmentationDataset",
    "TrainAugmentation",
    "dataset_root",
    "get_dataset_spec",
    "list_datasets",
    "read_image",
    "read_label",
]
