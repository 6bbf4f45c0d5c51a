"""Datasets: the registered benchmarks (CAT-Seg's prepared layout, no detectron2), datasets of
your own (folders, COCO files) through :func:`load_dataset`, and training augmentation."""

from lmseg.data.datasets import (
    BadSampleError,
    DatasetNotFoundError,
    DatasetSpec,
    Sample,
    SegmentationDataset,
    check_label_values,
    dataset_root,
    get_dataset_spec,
    list_datasets,
    read_image,
    read_label,
)
from lmseg.data.folder import DatasetFormatError, ResolvedSplit, read_class_file
from lmseg.data.load import (
    dataset_splits,
    find_dataset,
    load_dataset,
    read_classes,
    resolve_dataset,
)
from lmseg.data.transforms import TrainAugmentation

__all__ = [
    "BadSampleError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "ResolvedSplit",
    "Sample",
    "SegmentationDataset",
    "TrainAugmentation",
    "check_label_values",
    "dataset_root",
    "dataset_splits",
    "find_dataset",
    "get_dataset_spec",
    "list_datasets",
    "load_dataset",
    "read_class_file",
    "read_classes",
    "read_image",
    "read_label",
    "resolve_dataset",
]
