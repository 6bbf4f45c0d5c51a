"""Benchmark evaluation: a model over a prepared dataset, batched, with detectron2's metrics.

Inference follows CAT-Seg's test path: the image is first resized so its short side is 640 (long
side at most 2560; CAT-Seg's ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST`` through detectron2's
test mapper), then either

- sliding window (CAT-Seg's ``TEST.SLIDING_WINDOW``, the default of its evaluation script):
  resize to 640×640, 384-px windows with 1/3 overlap plus one global view, sigmoid
  probabilities averaged, or
- whole image: the encoders resize the image to their input size;

and the per-class probabilities are upsampled to the label's size and arg-maxed. Windows and
images are batched across images; the class-dependent assembly runs in class chunks, so memory
does not grow with ``K × 640 × 640``. The arithmetic is :class:`lmseg.segmenter.Segmenter`'s
(tests check the two agree), which also provides the cached text embeddings.

:func:`evaluate_sweep` runs the six standard benchmarks in the published column order
(A-847, PC-459, A-150, PC-59, VOC-20, VOC-20b) and :func:`format_summary` prints them as one
row.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from lmseg.data.datasets import DatasetNotFoundError, SegmentationDataset, get_dataset_spec
from lmseg.data.transforms import resize_image, shortest_edge_size
from lmseg.eval.metrics import SegmentationMetrics, format_table, results_to_json
from lmseg.label_maps import upsampled_argmax
from lmseg.model import LMSeg
from lmseg.segmenter import Precision, Segmenter, SlidingWindow
from lmseg.vocabularies import load_vocabulary

__all__ = [
    "SWEEP_COLUMNS",
    "SWEEP_DATASETS",
    "EvalOptions",
    "EvalResult",
    "evaluate",
    "evaluate_sweep",
    "format_summary",
    "predict_labels",
    "write_result",
]

logger = logging.getLogger(__name__)

# The published column order of CAT-Seg / LMSeg tables.
SWEEP_DATASETS: tuple[str, ...] = ("ade847", "pc459", "ade150", "pc59", "voc20", "voc20b")
SWEEP_COLUMNS: dict[str, str] = {
    "ade847": "A-847",
    "pc459": "PC-459",
    "ade150": "A-150",
    "pc59": "PC-59",
    "voc20": "VOC-20",
    "voc20b": "VOC-20b",
    "coco": "COCO",
}


@dataclass
class EvalOptions:
    """How to run inference over a benchmark.

    Attributes:
        sliding_window: CAT-Seg's sliding-window inference (else whole image).
        window_resize, window_size, window_overlap: CAT-Seg's sliding-window geometry (640,
            384, 0.333: four windows and the global view per image).
        batch_size: images per forward pass (sliding window: 5 views each by default).
        precision: ``fp32``, or ``bf16``/``fp16`` autocast.
        test_short_edge: resize images so the short side has this length before inference
            (CAT-Seg: 640); None keeps the original size.
        test_max_size: long-side cap of that resize (CAT-Seg: 2560).
        num_workers: data-loading processes.
        limit: evaluate only the first ``limit`` images.
        prompt_mode: prompt composition (default by the model's P, as :class:`Segmenter`).
        prompt_bank: a bank name or path for every vocabulary (default: the matching one).
        class_chunk: classes assembled and upsampled at once.
        progress: show a progress bar.
    """

    sliding_window: bool = True
    window_resize: int = 640
    window_size: int = 384
    window_overlap: float = 0.333
    batch_size: int = 4
    precision: Precision = "fp32"
    test_short_edge: int | None = 640
    test_max_size: int = 2560
    num_workers: int = 2
    limit: int | None = None
    prompt_mode: str | None = None
    prompt_bank: str | None = None
    class_chunk: int = 64
    progress: bool = True


@dataclass
class EvalResult:
    """Metrics of one model on one dataset.

    Attributes:
        dataset: the dataset's short name.
        metrics: :meth:`lmseg.eval.metrics.SegmentationMetrics.compute`'s output.
        class_names: the evaluation classes (K).
        num_images: images evaluated.
        seconds: wall time.
        options: the :class:`EvalOptions` used, as a dict.
        model: the model's config name.
        confusion_matrix: ``(K, K)`` int64 counts, ``[truth, prediction]`` (not in the JSON).
    """

    dataset: str
    metrics: dict[str, Any]
    class_names: list[str]
    num_images: int
    seconds: float
    options: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    confusion_matrix: torch.Tensor | None = field(default=None, repr=False)

    @property
    def miou(self) -> float:
        return float(self.metrics["mIoU"])

    def to_json(self) -> dict[str, Any]:
        """JSON-ready results: summary metrics, per-class IoU/Acc and the settings."""
        return {
            "dataset": self.dataset,
            "model": self.model,
            "num_images": self.num_images,
            "seconds": round(self.seconds, 2),
            "options": self.options,
            **results_to_json(self.metrics, self.class_names),
        }

    def table(self) -> str:
        """Plain-text table: summary line, then per-class IoU and accuracy."""
        return f"{self.dataset} ({self.num_images} images)\n" + format_table(
            self.metrics, self.class_names
        )


class _EvalItems(Dataset[tuple[int, torch.Tensor, torch.Tensor]]):
    """``(index, uint8 image after the test resize (3, H', W'), label (H, W))``."""

    def __init__(self, base: SegmentationDataset, options: EvalOptions) -> None:
        self.base = base
        self.options = options

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        sample = self.base[index]
        image, label = sample["image"], sample["label"]
        short = self.options.test_short_edge
        if short:
            h, w = image.shape[-2:]
            image = resize_image(image, shortest_edge_size(h, w, short, self.options.test_max_size))
        return index, image, label


def _collate(batch: list[Any]) -> list[Any]:
    return batch


def _labels_from_logits(
    logits: torch.Tensor,
    size: tuple[int, int],
    sliding: bool,
    segmenter: Segmenter,
) -> torch.Tensor:
    """Arg-max labels ``(H, W)`` of one image's logits, chunk by chunk over classes."""
    chunks = (
        segmenter.window.combine(part) if sliding else part[0].sigmoid()
        for part in logits.split(segmenter.class_chunk, dim=1)
    )
    return upsampled_argmax(chunks, size)


def _same_size_groups(images: Sequence[torch.Tensor]) -> Iterator[list[int]]:
    group: list[int] = []
    for i, image in enumerate(images):
        if group and images[group[0]].shape != image.shape:
            yield group
            group = []
        group.append(i)
    if group:
        yield group


@torch.no_grad()
def predict_labels(
    segmenter: Segmenter,
    images: Sequence[torch.Tensor],
    text: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    *,
    sliding: bool,
) -> list[torch.Tensor]:
    """Label maps of a batch of images.

    Args:
        segmenter: holds the model, precision, window settings and class chunk.
        images: ``(3, H_i, W_i)`` float RGB in [0, 1] (any sizes).
        text: prompt embeddings ``(K, P, D)``.
        sizes: the output size of each label map (the ground truth's).
        sliding: sliding-window (all views of all images in one forward) or whole-image
            inference (images of equal size share a forward).

    Returns:
        One ``int64 (H_i, W_i)`` label map per image, on the model's device.
    """
    model, device = segmenter.model, segmenter.device
    images = [im.to(device) for im in images]
    precision = segmenter.precision
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
        if precision != "fp32"
        else nullcontext()
    )
    per_image: list[torch.Tensor] = [torch.empty(0)] * len(images)
    if sliding:
        views = [segmenter.window.views(im) for im in images]
        with autocast:
            logits = model(torch.cat(views), text).float()
        for i, part in enumerate(logits.split([len(v) for v in views])):
            per_image[i] = part
    else:
        for group in _same_size_groups(images):
            with autocast:
                logits = model(torch.stack([images[i] for i in group]), text).float()
            for j, i in enumerate(group):
                per_image[i] = logits[j : j + 1]
    return [
        _labels_from_logits(per_image[i], tuple(sizes[i]), sliding, segmenter)  # type: ignore[arg-type]
        for i in range(len(images))
    ]


def _model_name(model: LMSeg) -> str:
    return str(model.config.get("name", "")) if model.config else ""


def evaluate(
    model: LMSeg,
    dataset: str | SegmentationDataset,
    *,
    root: str | os.PathLike[str] | None = None,
    options: EvalOptions | None = None,
    text_cache_dir: str | os.PathLike[str] | None = None,
) -> EvalResult:
    """Evaluate a model on one benchmark.

    Under ``torch.distributed`` each process evaluates every ``world_size``-th image and the
    confusion matrices are summed, so every process returns the full result.

    Args:
        model: the model (its device is used; it is put in eval mode).
        dataset: a :func:`lmseg.data.list_datasets` name or a :class:`SegmentationDataset`.
        root: dataset root (default ``$DETECTRON2_DATASETS`` or ``./datasets``).
        options: :class:`EvalOptions`.
        text_cache_dir: text-embedding cache folder (default ``$LMSEG_CACHE/text``).

    Raises:
        DatasetNotFoundError: the dataset is not prepared under the root.
    """
    from tqdm import tqdm

    options = options or EvalOptions()
    data = (
        dataset
        if isinstance(dataset, SegmentationDataset)
        else SegmentationDataset(dataset, root=root)
    )
    spec = data.spec
    segmenter = Segmenter(
        model,
        prompt_mode=options.prompt_mode,
        prompt_bank=options.prompt_bank,
        precision=options.precision,
        cache_dir=text_cache_dir,
        class_chunk=options.class_chunk,
    )
    if options.sliding_window:  # SlidingWindow refuses windows that do not tile the image
        segmenter.window = SlidingWindow(
            resize=options.window_resize, window=options.window_size, overlap=options.window_overlap
        )
    text = segmenter.text_embeddings(load_vocabulary(spec.vocabulary))
    device = segmenter.device
    backend_device = device
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and dist.get_backend() == "gloo":
        backend_device = torch.device("cpu")
    metrics = SegmentationMetrics.for_dataset(spec, device=backend_device)

    count = len(data) if options.limit is None else min(options.limit, len(data))
    indices = list(range(count))
    if distributed:
        indices = indices[dist.get_rank() :: dist.get_world_size()]
    loader = DataLoader(
        Subset(_EvalItems(data, options), indices),
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        collate_fn=_collate,
    )
    main = not distributed or dist.get_rank() == 0
    start = time.perf_counter()
    for batch in tqdm(loader, desc=spec.name, disable=not (options.progress and main), leave=False):
        images = [image.float().div_(255) for _, image, _ in batch]
        labels = [label for _, _, label in batch]
        sizes = [tuple(label.shape) for label in labels]
        preds = predict_labels(segmenter, images, text, sizes, sliding=options.sliding_window)  # type: ignore[arg-type]
        for pred, label in zip(preds, labels, strict=True):
            metrics.update(pred.to(backend_device), label.to(backend_device))
    metrics.all_reduce()
    return EvalResult(
        dataset=spec.name,
        metrics=metrics.compute(),
        class_names=spec.class_names,
        num_images=count,
        seconds=time.perf_counter() - start,
        options=asdict(options),
        model=_model_name(model),
        confusion_matrix=metrics.confusion_matrix.cpu(),
    )


def write_result(result: EvalResult, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``DATASET.json`` (metrics, per-class IoU) and ``DATASET.txt`` (the table)."""
    from lmseg.io import atomic_write

    out = Path(out_dir)
    text = json.dumps(result.to_json(), indent=2)
    atomic_write(
        out / f"{result.dataset}.json", lambda p: Path(p).write_text(text, encoding="utf-8")
    )
    table = result.table()
    atomic_write(
        out / f"{result.dataset}.txt", lambda p: Path(p).write_text(table, encoding="utf-8")
    )
    return out / f"{result.dataset}.json"


def evaluate_sweep(
    model: LMSeg,
    datasets: Sequence[str] = SWEEP_DATASETS,
    *,
    root: str | os.PathLike[str] | None = None,
    options: EvalOptions | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    skip_missing: bool = True,
    text_cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, EvalResult | None]:
    """Evaluate on several benchmarks (by default the six of the published tables).

    Args:
        skip_missing: a dataset that is not prepared gives None (and a warning) instead of
            raising :class:`DatasetNotFoundError`.
        out_dir: if given, per-dataset JSON/tables and ``summary.json``/``summary.md``.

    Returns:
        Dataset name -> :class:`EvalResult` (None for skipped ones), in the given order.
    """
    results: dict[str, EvalResult | None] = {}
    for name in datasets:
        get_dataset_spec(name)  # unknown names fail before any work
        try:
            result = evaluate(
                model, name, root=root, options=options, text_cache_dir=text_cache_dir
            )
        except DatasetNotFoundError as error:
            if not skip_missing:
                raise
            logger.warning("skipping %s: %s", name, str(error).splitlines()[0])
            results[name] = None
            continue
        results[name] = result
        if out_dir is not None:
            write_result(result, out_dir)
    if out_dir is not None:
        from lmseg.io import atomic_write

        summary = {
            name: (None if r is None else results_to_json(r.metrics, r.class_names))
            for name, r in results.items()
        }
        for item in summary.values():
            if item is not None:
                item.pop("per_class")
        text = json.dumps(summary, indent=2)
        atomic_write(
            Path(out_dir) / "summary.json", lambda p: Path(p).write_text(text, encoding="utf-8")
        )
        table = format_summary(results, model=_model_name(model))
        atomic_write(
            Path(out_dir) / "summary.md",
            lambda p: Path(p).write_text(table + "\n", encoding="utf-8"),
        )
    return results


def format_summary(
    results: dict[str, EvalResult | None], *, model: str = "", metric: str = "mIoU"
) -> str:
    """A Markdown table with one column per dataset (published order first), ``metric`` values
    with one decimal, and ``n/a`` for datasets that were not evaluated."""
    order = [n for n in SWEEP_DATASETS if n in results] + [
        n for n in results if n not in SWEEP_DATASETS
    ]
    titles = [SWEEP_COLUMNS.get(n, n) for n in order]

    def cell(r: EvalResult | None) -> str:
        if r is None:
            return "n/a"
        value = float(r.metrics[metric])
        return "-" if math.isnan(value) else f"{value:.1f}"

    header = "| model | " + " | ".join(titles) + " |"
    rule = "|---|" + "---:|" * len(order)
    row = f"| {model or 'model'} | " + " | ".join(cell(results[n]) for n in order) + " |"
    return "\n".join([header, rule, row])
