"""Registry and reader of the open-vocabulary segmentation benchmarks, without detectron2.

The on-disk layout is the one CAT-Seg's preparation scripts produce under ``$DETECTRON2_DATASETS``
(default ``./datasets``), so a tree prepared for CAT-Seg (or for MaskFormer, SAN, ...) works as is;
``tools/prepare_*.py`` create the same layout from the official downloads (``docs/datasets.md``).

Images and labels are paired the way detectron2's ``load_sem_seg`` pairs them: the sorted
intersection of file stems in the image and label directories (for example, PASCAL Context's
label directory holds only the validation split while ``JPEGImages`` holds every image).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import tifffile
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from lmseg.vocabularies import load_vocabulary

__all__ = [
    "BadSampleError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "Sample",
    "SegmentationDataset",
    "dataset_root",
    "get_dataset_spec",
    "list_datasets",
    "read_image",
    "read_label",
    "check_label_values",
]

ROOT_ENV_VAR = "DETECTRON2_DATASETS"
DEFAULT_ROOT = "datasets"
_TIFF_SUFFIXES = (".tif", ".tiff")

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class DatasetNotFoundError(FileNotFoundError):
    """A benchmark's prepared directory is missing; the message names the path and the script."""


class BadSampleError(ValueError):
    """One image or label cannot be used (unreadable, truncated, wrong size, values outside the
    class list); the message is one line that names the file and the problem."""

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if message.startswith(f"Caught {type(self).__name__}") and marker in message:
            # A DataLoader worker's exception is re-raised in the main process with the worker's
            # whole traceback as its message: keep the one line that names the file.
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """Where one benchmark split lives under the dataset root, and how it is evaluated.

    A dataset of your own (:func:`lmseg.data.load_dataset` with a path) has a spec too, with
    ``classes`` instead of ``vocabulary`` and absolute directories.

    Attributes:
        name: short name (``"ade150"``); the key of :func:`get_dataset_spec`.
        catseg_name: the name CAT-Seg registers the split under in detectron2 ("" for datasets
            of your own).
        split: ``"train"`` or ``"val"`` (a custom dataset's split name, "" without splits).
        image_dir: image directory, relative to the dataset root (or absolute).
        label_dir: label directory, relative to the dataset root (or absolute).
        image_suffix: file suffix of the images.
        label_suffix: file suffix of the labels (``".tif"`` for 16-bit labels).
        ignore_value: label value excluded from training targets and from evaluation.
        vocabulary: the :func:`lmseg.vocabularies.load_vocabulary` name of the prompt classes.
        classes: the class names of a dataset of your own (instead of ``vocabulary``).
        background_index: if set, the ground truth uses this index for "background" and every
            predicted class index ``>= background_index`` counts as background (VOC-20b).
        prepare_script: the script under ``tools/`` that creates the label directory.
        description: one line for listings.
    """

    name: str
    catseg_name: str = ""
    split: str
    image_dir: str
    label_dir: str
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"
    ignore_value: int = 255
    vocabulary: str | None = None
    classes: tuple[str, ...] = ()
    background_index: int | None = None
    prepare_script: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if (self.vocabulary is None) == (not self.classes):
            raise ValueError(f"dataset {self.name!r}: give either a vocabulary or classes")

    @property
    def class_names(self) -> list[str]:
        """The K evaluation classes, in label-index order.

        Equal to the vocabulary, except for background variants: VOC-20b prompts with 59 names
        (20 objects + 39 PASCAL Context background classes) but is scored over the 20 objects
        plus one ``"background"`` class, as CAT-Seg's ``voc_2012_test_background_sem_seg``.
        """
        names = self.prompt_classes
        if self.background_index is None:
            return names
        return names[: self.background_index] + ["background"]

    @property
    def prompt_classes(self) -> list[str]:
        """The class names the model is prompted with (VOC-20b: 59, scored as 21)."""
        if self.vocabulary is None:
            return list(self.classes)
        return load_vocabulary(self.vocabulary)

    @property
    def num_classes(self) -> int:
        """K, the number of evaluation classes (``len(class_names)``)."""
        return len(self.class_names)

    def image_root(self, root: str | os.PathLike[str] | None = None) -> Path:
        """Absolute image directory under ``root`` (see :func:`dataset_root`)."""
        return dataset_root(root) / self.image_dir

    def label_root(self, root: str | os.PathLike[str] | None = None) -> Path:
        """Absolute label directory under ``root`` (see :func:`dataset_root`)."""
        return dataset_root(root) / self.label_dir

    def check_exists(self, root: str | os.PathLike[str] | None = None) -> None:
        """Raise :class:`DatasetNotFoundError` unless both directories exist."""
        for kind, path in (("label", self.label_root(root)), ("image", self.image_root(root))):
            if not path.is_dir():
                raise DatasetNotFoundError(self._missing_message(kind, path))

    def _missing_message(self, kind: str, path: Path) -> str:
        return (
            f"dataset {self.name!r} ({self.catseg_name}): {kind} directory not found: {path}\n"
            f"Prepare the dataset with `python {self.prepare_script}` (its --help and "
            f"docs/datasets.md list the downloads it reads). The dataset root is the `root` "
            f"argument, else ${ROOT_ENV_VAR}, else ./{DEFAULT_ROOT}."
        )


# Paths, suffixes and ignore values follow CAT-Seg's cat_seg/data/datasets/register_*.py.
_SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        name="coco_train",
        catseg_name="coco_2017_train_stuff_all_sem_seg",
        split="train",
        image_dir="coco-stuff/images/train2017",
        label_dir="coco-stuff/annotations_detectron2/train2017",
        vocabulary="coco",
        prepare_script="tools/prepare_coco_stuff.py",
        description="COCO-Stuff train2017, 171 classes (the training set)",
    ),
    DatasetSpec(
        name="coco",
        catseg_name="coco_2017_test_stuff_all_sem_seg",
        split="val",
        image_dir="coco-stuff/images/val2017",
        label_dir="coco-stuff/annotations_detectron2/val2017",
        vocabulary="coco",
        prepare_script="tools/prepare_coco_stuff.py",
        description="COCO-Stuff val2017, 171 classes",
    ),
    DatasetSpec(
        name="ade150",
        catseg_name="ade20k_150_test_sem_seg",
        split="val",
        image_dir="ADEChallengeData2016/images/validation",
        label_dir="ADEChallengeData2016/annotations_detectron2/validation",
        vocabulary="ade150",
        prepare_script="tools/prepare_ade20k_150.py",
        description="ADE20K-150 val, 150 classes",
    ),
    DatasetSpec(
        name="ade847",
        catseg_name="ade20k_full_sem_seg_freq_val_all",
        split="val",
        # Images are the resized copies written by the preparation script, not images/ADE/.
        image_dir="ADE20K_2021_17_01/images_detectron2/validation",
        label_dir="ADE20K_2021_17_01/annotations_detectron2/validation",
        label_suffix=".tif",
        # 847 classes do not fit in 8 bits: labels are 16-bit TIFFs and 65535 is "unlabeled".
        ignore_value=65535,
        vocabulary="ade847",
        prepare_script="tools/prepare_ade20k_847.py",
        description="ADE20K-847 (full ADE20K 2021) val, 847 classes",
    ),
    DatasetSpec(
        name="pc59",
        catseg_name="context_59_test_sem_seg",
        split="val",
        image_dir="VOCdevkit/VOC2010/JPEGImages",
        label_dir="VOCdevkit/VOC2010/annotations_detectron2/pc59_val",
        vocabulary="pc59",
        prepare_script="tools/prepare_pascal_context.py",
        description="PASCAL Context-59 val, 59 classes",
    ),
    DatasetSpec(
        name="pc459",
        catseg_name="context_459_test_sem_seg",
        split="val",
        image_dir="VOCdevkit/VOC2010/JPEGImages",
        label_dir="VOCdevkit/VOC2010/annotations_detectron2/pc459_val",
        label_suffix=".tif",
        # CAT-Seg registers ignore_label=459, a value the labels (0..458) never take: every
        # pixel of PC-459 is scored.
        ignore_value=459,
        vocabulary="pc459",
        prepare_script="tools/prepare_pascal_context.py",
        description="PASCAL Context-459 val, 459 classes",
    ),
    DatasetSpec(
        name="voc20",
        catseg_name="voc_2012_test_sem_seg",
        split="val",
        image_dir="VOCdevkit/VOC2012/JPEGImages",
        label_dir="VOCdevkit/VOC2012/annotations_detectron2/val",
        vocabulary="voc20",
        prepare_script="tools/prepare_voc.py",
        description="PASCAL VOC 2012 val, 20 classes, background ignored",
    ),
    DatasetSpec(
        name="voc20b",
        catseg_name="voc_2012_test_background_sem_seg",
        split="val",
        image_dir="VOCdevkit/VOC2012/JPEGImages",
        label_dir="VOCdevkit/VOC2012/annotations_detectron2_bg/val",
        vocabulary="voc20b",
        # CAT-Seg's VOCbEvaluator: ground-truth background is 20 and any predicted index >= 20
        # (one of the 39 PC-59 background prompts) is scored as background.
        background_index=20,
        prepare_script="tools/prepare_voc.py",
        description="PASCAL VOC 2012 val, 20 classes + background (predictions >= 20 -> 20)",
    ),
)

_BY_NAME: dict[str, DatasetSpec] = {}
for _s in _SPECS:
    _BY_NAME[_s.name] = _s
    _BY_NAME[_s.catseg_name] = _s


def list_datasets() -> list[str]:
    """Short names accepted by :func:`get_dataset_spec` (CAT-Seg's names are accepted too)."""
    return [spec.name for spec in _SPECS]


def get_dataset_spec(name: str) -> DatasetSpec:
    """Return the :class:`DatasetSpec` of a short name (``"pc59"``) or a CAT-Seg name."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())} "
            f"(CAT-Seg names such as {_SPECS[2].catseg_name!r} work too)"
        ) from None


def dataset_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The dataset root: ``root`` if given, else ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    if root is None:
        root = os.environ.get(ROOT_ENV_VAR) or DEFAULT_ROOT
    return Path(root).expanduser().absolute()


def preparation_parser(description: str | None) -> argparse.ArgumentParser:
    """The argument parser shared by the ``tools/prepare_*.py`` scripts (``--root``)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help=f"dataset root (default: ${ROOT_ENV_VAR}, else ./{DEFAULT_ROOT})",
    )
    return parser


def _reason(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


# What decoders raise on corrupt, truncated or unsupported files (PIL: OSError, SyntaxError,
# ValueError; tifffile: TiffFileError, a ValueError; a file cut inside a header: EOFError).
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as an RGB ``uint8`` array of shape (H, W, 3).

    The EXIF orientation is applied, as detectron2's ``read_image`` does for the images CAT-Seg
    trains and evaluates on (a few COCO photos carry one).

    Raises:
        BadSampleError: the file is missing, corrupt or truncated (the message names it).
    """
    try:
        with Image.open(path) as img:
            upright = ImageOps.exif_transpose(img)
            return np.array(upright.convert("RGB"), dtype=np.uint8)
    except _READ_ERRORS as error:
        raise BadSampleError(f"image {path}: unreadable ({_reason(error)})") from error


def read_label(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label map exactly as stored: shape (H, W), dtype uint8, uint16 or int32.

    TIFFs go through ``tifffile`` (16-bit ADE-847 / PC-459 labels keep 65535 and values > 255);
    PNGs through PIL without any mode conversion, so palette PNGs (VOC's ``SegmentationClass``)
    yield their indices, not colours, and 16-bit PNGs their 16-bit values.

    Raises:
        BadSampleError: the file is missing, corrupt or truncated, or is not one channel of
            integers (a colour image, for example); the message names the file.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            array = np.asarray(tifffile.imread(path))
        else:
            with Image.open(path) as img:
                array = np.array(img)
    except _READ_ERRORS as error:
        raise BadSampleError(f"label {path}: unreadable ({_reason(error)})") from error
    if array.ndim != 2:
        raise BadSampleError(
            f"label {path}: shape {array.shape}, expected one channel (H, W) of class indices "
            "(an 8- or 16-bit grey or palette PNG, not a colour image)"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype.kind not in "ui":
        raise BadSampleError(f"label {path}: dtype {array.dtype}, expected integer class indices")
    return array


def _format_values(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return f"[{shown}, ... ({len(values)} values)]" if len(values) > limit else f"[{shown}]"


def check_label_values(
    label: np.ndarray, num_classes: int, ignore_value: int, path: str | os.PathLike[str]
) -> None:
    """Raise :class:`BadSampleError` naming ``path`` and the values if ``label`` holds a value
    that is neither a class index in ``[0, num_classes)`` nor ``ignore_value``."""
    invalid = (label >= num_classes) & (label != ignore_value)
    if label.dtype.kind == "i":
        invalid |= label < 0
    if invalid.any():
        values = np.unique(label[invalid])
        raise BadSampleError(
            f"label {path}: values {_format_values(values)} outside the {num_classes} classes "
            f"(0..{num_classes - 1}, ignore value {ignore_value})"
        )


def size_mismatch(
    image_path: str | os.PathLike[str],
    label_path: str | os.PathLike[str],
    image_shape: Sequence[int],
    label_shape: Sequence[int],
) -> str:
    """The one-line message of a label whose size differs from its image's (sizes as W×H)."""
    (h, w), (lh, lw) = image_shape[:2], label_shape[:2]
    return f"label {label_path}: size {lw}x{lh} differs from image {image_path} ({w}x{h})"


def _stems(directory: Path, suffix: str) -> dict[str, Path]:
    with os.scandir(directory) as entries:
        return {
            entry.name[: -len(suffix)]: Path(entry.path)
            for entry in entries
            if entry.name.endswith(suffix) and entry.is_file()
        }


class Sample(TypedDict):
    """One dataset item: ``image`` uint8 (3, H, W) RGB, ``label`` int64 (H, W), image ``file``."""

    image: torch.Tensor
    label: torch.Tensor
    file: str


class SegmentationDataset(Dataset[Sample]):
    """A benchmark split, or a dataset of your own, as a map-style dataset.

    Each item is ``{"image": uint8 (3, H, W) RGB, "label": int64 (H, W), "file": str}``, after
    ``transform(image, label)`` if one is given (for example
    :class:`lmseg.data.transforms.TrainAugmentation`). Build one with
    :func:`lmseg.data.load_dataset`, which also accepts dataset folders and COCO files.

    Args:
        name: a short name, a CAT-Seg name, or a :class:`DatasetSpec`.
        root: dataset root (default ``$DETECTRON2_DATASETS`` or ``./datasets``).
        transform: called as ``transform(image, label) -> (image, label)``.
        samples: the (image file, label file) pairs; by default those of the registered
            layout under ``root`` (the sorted intersection of file stems).

    Raises:
        DatasetNotFoundError: a directory is missing or no image has a label.

    Reading an item raises :class:`BadSampleError` (naming the file) when a file is unreadable,
    the label's size differs from the image's, or a label value is neither a class index nor
    the ignore value.
    """

    def __init__(
        self,
        name: str | DatasetSpec,
        *,
        root: str | os.PathLike[str] | None = None,
        transform: Transform | None = None,
        samples: Sequence[tuple[Path, Path]] | None = None,
    ) -> None:
        self.spec = name if isinstance(name, DatasetSpec) else get_dataset_spec(name)
        self.root = dataset_root(root)
        self.transform = transform
        self.samples: list[tuple[Path, Path]] = (
            list(samples) if samples is not None else self._registered_samples()
        )
        self._num_classes = self.spec.num_classes

    def _registered_samples(self) -> list[tuple[Path, Path]]:
        self.spec.check_exists(self.root)
        image_root, label_root = self.spec.image_root(self.root), self.spec.label_root(self.root)
        images = _stems(image_root, self.spec.image_suffix)
        labels = _stems(label_root, self.spec.label_suffix)
        stems = sorted(images.keys() & labels.keys())
        if not stems:
            raise DatasetNotFoundError(
                f"dataset {self.spec.name!r}: no {self.spec.label_suffix} label in {label_root} "
                f"has a matching {self.spec.image_suffix} image in {image_root} "
                f"({len(labels)} labels, {len(images)} images). "
                f"Create the labels with `python {self.spec.prepare_script}`."
            )
        return [(images[s], labels[s]) for s in stems]

    @property
    def class_names(self) -> list[str]:
        """The K evaluation classes (see :attr:`DatasetSpec.class_names`)."""
        return self.spec.class_names

    @property
    def ignore_value(self) -> int:
        """The label value of unlabelled pixels."""
        return self.spec.ignore_value

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The checked ``(image (H, W, 3) uint8, label (H, W))`` arrays of item ``index``,
        before any transform.

        Raises:
            BadSampleError: see the class description.
        """
        image_path, label_path = self.samples[index]
        image = read_image(image_path)
        label = read_label(label_path)
        if image.shape[:2] != label.shape:
            raise BadSampleError(size_mismatch(image_path, label_path, image.shape, label.shape))
        check_label_values(label, self._num_classes, self.spec.ignore_value, label_path)
        return image, label

    def __getitem__(self, index: int) -> Sample:
        image, label = self.read(index)
        image_t = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        label_t = torch.from_numpy(label.astype(np.int64))
        if self.transform is not None:
            image_t, label_t = self.transform(image_t, label_t)
        return {"image": image_t, "label": label_t, "file": str(self.samples[index][0])}

    def __repr__(self) -> str:
        return f"SegmentationDataset({self.spec.name!r}, root={str(self.root)!r}, n={len(self)})"
