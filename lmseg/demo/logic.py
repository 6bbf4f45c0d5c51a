"""What the demo page does, without the page: models, segmentation, overlay, class table, pixels.

Everything here is plain Python and numpy, so it is tested without Gradio or a browser;
:mod:`lmseg.demo.app` only wires these functions to widgets. A :class:`Segmentation` keeps the
image and its label map, so hiding classes or looking up a pixel re-renders from it without
running the model again.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lmseg.factory import create_model, list_models
from lmseg.io import ImageInput, load_image, validate_classes
from lmseg.runtime import resolve_device
from lmseg.segmenter import Segmenter
from lmseg.visualize import overlay
from lmseg.vocabularies import list_vocabularies, load_vocabulary

__all__ = [
    "RANDOM_WEIGHTS_NOTICE",
    "DemoError",
    "ModelCache",
    "Segmentation",
    "class_table",
    "parse_classes",
    "pixel_info",
    "predict_labels",
    "render",
    "resolve_weights",
    "segment",
]

RANDOM_WEIGHTS_NOTICE = "No checkpoint: random weights give meaningless outputs."

# The seed of random-weight models, so that the same inputs give the same (meaningless) output
# on every start of the demo.
_RANDOM_SEED = 0


class DemoError(ValueError):
    """An input the demo cannot use; the page shows its message (one line, no traceback)."""


@dataclass(frozen=True)
class Segmentation:
    """One segmented image, everything the page re-renders from.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB, as the model saw it.
        labels: ``(H, W)`` int32 indices into ``classes``.
        classes: the K class names.
        random_weights: the model had no checkpoint (its output is meaningless).
        notes: warnings raised while segmenting (e.g. no prompt bank for this vocabulary).
    """

    image: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    random_weights: bool
    notes: tuple[str, ...] = ()

    def pixel_counts(self) -> np.ndarray:
        """``(K,)`` int64 number of pixels labelled with each class."""
        return np.bincount(self.labels.ravel(), minlength=len(self.classes))

    def present(self) -> list[str]:
        """Names of the classes that label at least one pixel, largest area first."""
        counts = self.pixel_counts()
        order = np.argsort(-counts, kind="stable")
        return [self.classes[i] for i in order if counts[i] > 0]


def parse_classes(text: str | None, vocabulary: str | None) -> list[str]:
    """The class list of the page: typed names (comma-separated) or a shipped vocabulary.

    Raises:
        DemoError: neither or both given, an unknown vocabulary, empty or duplicate names.
    """
    typed = (text or "").strip()
    if typed and vocabulary:
        raise DemoError(
            f"give typed classes or a vocabulary, not both (clear the classes to use {vocabulary})"
        )
    if vocabulary:
        if vocabulary not in list_vocabularies():
            raise DemoError(
                f"unknown vocabulary {vocabulary!r}; known: {', '.join(list_vocabularies())}"
            )
        return load_vocabulary(vocabulary)
    if not typed:
        raise DemoError("no classes: type class names separated by commas, or pick a vocabulary")
    names = [name.strip() for name in typed.split(",")]
    if any(not name for name in names):
        raise DemoError(f"empty class name in {typed!r}: remove the extra comma")
    try:
        return validate_classes(names)
    except (TypeError, ValueError) as error:
        raise DemoError(str(error)) from error


def resolve_weights(variant: str, weights: str | None) -> Path | None:
    """The weights file the page's weights field names; None for random weights.

    This is the one place that turns the field into a file: a model-zoo tag would be resolved
    here (to a cached download) once the library has one; today the field takes a local lmseg
    ``.safetensors`` checkpoint path.

    Raises:
        DemoError: the path does not name a file.
    """
    text = (weights or "").strip()
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise DemoError(
            f"checkpoint not found: {path} (give the path of an lmseg .safetensors file)"
        )
    return path


class ModelCache:
    """One :class:`~lmseg.segmenter.Segmenter` per (variant, weights), kept between requests.

    Keeping the segmenter keeps its per-vocabulary text embeddings: a second image with the
    same classes runs only the image side of the model.

    Args:
        device: where models run (default: CUDA when available, else CPU).
        max_models: segmenters kept at once; the least recently used is dropped beyond it
            (real-weight variants take about 1 GB each).
    """

    def __init__(self, *, device: str | torch.device | None = None, max_models: int = 2) -> None:
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models}")
        try:
            self.device = resolve_device(device)
        except ValueError as error:
            raise DemoError(str(error)) from error
        self.max_models = max_models
        self._segmenters: OrderedDict[tuple[str, str, int], Segmenter] = OrderedDict()
        # Gradio serves requests from worker threads; building a model twice at once is waste.
        self.lock = threading.Lock()

    def segmenter(self, variant: str, weights: Path | None) -> Segmenter:
        """The segmenter of a variant with weights (None: random), built on first use.

        A checkpoint rewritten on disk (new modification time) is loaded again.

        Raises:
            DemoError: unknown variant, or a checkpoint that does not fit it.
        """
        if variant not in list_models():
            raise DemoError(f"unknown model {variant!r}; available: {', '.join(list_models())}")
        key = (variant, str(weights or ""), weights.stat().st_mtime_ns if weights else 0)
        with self.lock:
            if key in self._segmenters:
                self._segmenters.move_to_end(key)
                return self._segmenters[key]
            try:
                if weights is None:
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(_RANDOM_SEED)
                        model = create_model(variant)
                else:
                    model = create_model(variant, pretrained=str(weights))
            except (FileNotFoundError, KeyError, ValueError) as error:
                raise DemoError(f"cannot load {variant} from {weights}: {error}") from error
            segmenter = Segmenter(model.to(self.device))
            self._segmenters[key] = segmenter
            while len(self._segmenters) > self.max_models:
                self._segmenters.popitem(last=False)
            return segmenter


def predict_labels(
    segmenter: Segmenter, image: torch.Tensor, classes: Sequence[str], *, sliding: bool
) -> np.ndarray:
    """The demo's one call of :meth:`Segmenter.predict`: ``(3, H, W)`` -> ``(H, W)`` int32.

    Kept in one place so that a change of what ``predict`` returns is absorbed here.
    """
    return segmenter.predict(image, classes, sliding_window=sliding).labels


def segment(
    cache: ModelCache,
    image: ImageInput | None,
    *,
    classes_text: str | None,
    vocabulary: str | None,
    variant: str,
    weights: str | None,
    sliding: bool,
) -> Segmentation:
    """Everything the Segment button does, up to the label map.

    Args:
        cache: the models kept between requests.
        image: the upload (a file path from the page, or a PIL image / array).
        classes_text: comma-separated class names (or empty when ``vocabulary`` is given).
        vocabulary: a shipped vocabulary name (or empty).
        variant: one of :func:`lmseg.list_models`.
        weights: checkpoint path, or empty for random weights.
        sliding: CAT-Seg's sliding-window inference instead of the whole image.

    Raises:
        DemoError: any unusable input, with a message for the page.
    """
    if image is None or (isinstance(image, str) and not image):
        raise DemoError("no image: upload or drop an image first")
    classes = parse_classes(classes_text, vocabulary)
    checkpoint = resolve_weights(variant, weights)
    segmenter = cache.segmenter(variant, checkpoint)
    try:
        pixels = load_image(image, max_pixels=segmenter.max_pixels)
    except (FileNotFoundError, TypeError, ValueError) as error:
        raise DemoError(f"cannot read the upload: {_without_folder(error, image)}") from error
    # One request at a time: the segmenter's caches are not made for threads, and recording
    # warnings is process-wide.
    with warnings.catch_warnings(record=True) as caught, cache.lock:
        warnings.simplefilter("always")
        try:
            labels = predict_labels(segmenter, pixels, classes, sliding=sliding)
        except ValueError as error:  # e.g. a prompt bank that does not fit the classes
            raise DemoError(str(error)) from error
    rgb = (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    notes = tuple(dict.fromkeys(str(w.message) for w in caught))
    return Segmentation(rgb, labels, tuple(classes), checkpoint is None, notes)


def _without_folder(error: Exception, image: object) -> str:
    """The error's message with the upload's temporary folder cut (the user knows the file)."""
    message = str(error)
    if isinstance(image, (str, os.PathLike)):
        message = message.replace(str(Path(image).parent) + os.sep, "")
    return message


def render(segmentation: Segmentation, hidden: Collection[str] = ()) -> Image.Image:
    """The overlay with its legend; ``hidden`` classes show the bare image and leave the legend.

    Returns:
        An RGB image ``W + legend`` wide, at least ``H`` high (see :func:`lmseg.visualize.overlay`).
    """
    index = {name: i for i, name in enumerate(segmentation.classes)}
    unknown = [name for name in hidden if name not in index]
    if unknown:
        raise DemoError(f"cannot hide classes that are not in the list: {', '.join(unknown)}")
    return overlay(
        segmentation.image,
        segmentation.labels,
        segmentation.classes,
        hidden=[index[name] for name in hidden],
    )


def class_table(segmentation: Segmentation) -> list[list[str | int | float]]:
    """Rows ``[class, pixels, share in %]`` for every class, largest area first (ties keep the
    list's order)."""
    counts = segmentation.pixel_counts()
    total = int(counts.sum())
    order = np.argsort(-counts, kind="stable")
    return [
        [segmentation.classes[i], int(counts[i]), round(100.0 * int(counts[i]) / total, 2)]
        for i in order
    ]


def pixel_info(segmentation: Segmentation, x: int, y: int) -> str:
    """What the page says about a clicked point of the overlay (``x`` right, ``y`` down, in
    image pixels); points on the legend or outside the image say so."""
    height, width = segmentation.labels.shape
    if not (0 <= x < width and 0 <= y < height):
        return f"({x}, {y}) is outside the image ({width}×{height}): click on the image itself"
    label = int(segmentation.labels[y, x])
    share = 100.0 * segmentation.pixel_counts()[label] / segmentation.labels.size
    return f"pixel ({x}, {y}): {segmentation.classes[label]} ({share:.1f}% of the image)"
