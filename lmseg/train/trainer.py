"""The training loop: CAT-Seg's recipe, resumable exactly, single process or DDP.

One optimizer step: ``grad_accum`` micro-batches, each encoding the training vocabulary's
prompts with the (QV-trainable) text tower, running the model under autocast and the loss in
fp32; then gradient clipping over all trainable parameters, AdamW, the QV row restore, the LR
schedule. Data come from an endless stream of seeded per-epoch permutations; each sample's
augmentation draws from a generator seeded by (seed, epoch, position), so data do not depend on
worker count or restarts.

A run folder holds ``config.yaml`` (the resolved config), ``log.jsonl`` (one JSON object per
log period), ``checkpoints/iter_XXXXXXX/`` (``model.safetensors`` via
:func:`lmseg.checkpoint.save_model`, and ``state.pt``: optimizer, scheduler, grad scaler, RNG
states of every process, data position, as plain containers of tensors and numbers loaded with
``weights_only=True``), ``checkpoints/last`` (name of the newest complete checkpoint) and
``model_final.safetensors``. A checkpoint folder is written under a temporary name and renamed,
so a killed run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from lmseg.checkpoint import load_weights, save_model
from lmseg.io import atomic_write
from lmseg.model import LMSeg
from lmseg.prompts import prompts_for
from lmseg.prompts.compose import PromptSlot
from lmseg.prompts.embedding import encode_prompts
from lmseg.train.config import TrainConfig, diff_configs, load_config, save_config
from lmseg.train.data_stream import (
    Augmentation,
    AugmentedDataset,
    DataPosition,
    SampleStream,
    TensorSegmentationDataset,
    collate,
    ignore_value_of,
)
from lmseg.train.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    get_dist_info,
    mean_over_processes,
)
from lmseg.train.loss import segmentation_bce_loss, segmentation_ce_loss
from lmseg.train.optim import QVMask, build_optimizer, build_scheduler, configure_trainable

__all__ = [
    "AugmentedDataset",
    "DataPosition",
    "SampleStream",
    "TensorSegmentationDataset",
    "Trainer",
    "TrainingPrompts",
    "TrainingStep",
    "build_train_model",
    "capture_rng_state",
    "restore_rng_state",
    "run_training",
]

logger = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
STATE_FORMAT = 1


# -- prompts ----------------------------------------------------------------------------------
class TrainingPrompts:
    """The training vocabulary's prompts, tokenised once and encoded with gradients per step.

    Equal to :func:`lmseg.prompts.encode_prompts` (which validates them at construction), minus
    the per-call tokenisation and length checks (BPE in Python, ~0.1–0.2 s per step for
    COCO-Stuff's 171 × 4 prompts).

    Args:
        prompts: K lists of P prompt slots (:func:`lmseg.prompts.prompts_for`).
        clip: the model's CLIP encoder (for tokenisation and validation).
        class_names: K names, used in error messages.
    """

    def __init__(
        self,
        prompts: Sequence[Sequence[PromptSlot]],
        clip: Any,
        class_names: Sequence[str] | None = None,
    ) -> None:
        with torch.no_grad():
            reference = encode_prompts(clip, prompts, class_names=class_names)
        self.num_classes, self.num_prompts = int(reference.shape[0]), int(reference.shape[1])
        self.prompts = [list(p) for p in prompts]
        unique: dict[str, int] = {}
        slots: list[list[int]] = []
        for per_class in prompts:
            for slot in per_class:
                variants = (slot,) if isinstance(slot, str) else tuple(slot)
                slots.append([unique.setdefault(t, len(unique)) for t in variants])
        self.tokens = clip.tokenize(list(unique))  # (N unique, context_length)
        self.slots = slots

    def encode(self, clip: Any) -> torch.Tensor:
        """``(K, P, D)`` unit-norm embeddings, differentiable through the text tower."""
        table = F.normalize(clip.encode_text(self.tokens).float(), dim=-1)
        flat = [
            table[s[0]] if len(s) == 1 else F.normalize(table[s].mean(dim=0), dim=-1)
            for s in self.slots
        ]
        return rearrange(torch.stack(flat), "(k p) d -> k p d", k=self.num_classes)


class TrainingStep(nn.Module):
    """Model plus training prompts: ``forward(images (B, 3, H, W) in [0, 1]) -> logits
    (B, K, 4h, 4w)``. Text encoding runs inside ``forward`` so DDP sees the text tower's
    gradients as part of the step."""

    def __init__(self, model: LMSeg, prompts: TrainingPrompts) -> None:
        super().__init__()
        self.model = model
        self.prompts = prompts

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, self.prompts.encode(self.model.clip))


# -- RNG state --------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors and numbers."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "python": {
            "version": version,
            "state": torch.tensor(state, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "kind": str(kind),
            "state": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if (
        state["cuda"]
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- model ------------------------------------------------------------------------------------
def build_train_model(config: TrainConfig) -> LMSeg:
    """The model of ``config.model``, with its initial weights."""
    from lmseg.factory import create_model

    m = config.model
    return create_model(
        m.name,
        pretrained=m.weights,
        clip_pretrained=m.clip_pretrained,
        sam_checkpoint=m.sam_checkpoint,
        **m.overrides,
    )


# -- trainer ----------------------------------------------------------------------------------
class Trainer:
    """CAT-Seg's training recipe for an :class:`~lmseg.model.LMSeg`.

    Args:
        config: the run's :class:`~lmseg.train.config.TrainConfig`.
        model: a model to train; built from ``config.model`` when None.
        dataset: a training set of ``{"image", "label"}`` items; ``config.data.dataset`` when
            None. Items go through CAT-Seg's augmentation from ``config.data`` unless
            ``augment=False``.
        class_names: the training vocabulary; default ``config.prompts.vocabulary``, else the
            dataset's ``class_names``.
        augment: apply :class:`lmseg.data.TrainAugmentation`.
        dist: the process's :class:`~lmseg.train.distributed.DistInfo`; by default read from an
            initialised process group (see :func:`~lmseg.train.distributed.init_distributed`).

    Example:
        >>> trainer = Trainer(load_config("catseg_vitb16_coco"))
        >>> trainer.resume()   # continue from output_dir/checkpoints/last, if any
        >>> trainer.train()
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: LMSeg | None = None,
        dataset: Dataset[Any] | None = None,
        class_names: Sequence[str] | None = None,
        augment: bool = True,
        dist: DistInfo | None = None,
    ) -> None:
        self.config = config.validate()
        self.dist = dist or get_dist_info(config.train.device)
        self.device = self.dist.device
        self.output_dir = Path(config.train.output_dir)
        run, solver = config.train, config.solver

        per_step = self.dist.world_size * solver.grad_accum
        if solver.batch_size % per_step:
            raise ValueError(
                f"solver.batch_size {solver.batch_size} must be a multiple of world size × "
                f"grad_accum = {self.dist.world_size} × {solver.grad_accum}"
            )
        self.micro_batch = solver.batch_size // per_step

        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = run.cudnn_benchmark
        _seed_everything(run.seed)  # identical initialisation in every process
        if model is None:
            model = build_train_model(config)
        self.model = model.to(self.device)
        if dataset is None:
            from lmseg.data import SegmentationDataset

            dataset = SegmentationDataset(config.data.dataset, root=config.data.root)
        self.dataset = dataset
        self.dataset_size: int = len(dataset)  # type: ignore[arg-type]
        self.ignore_value = ignore_value_of(dataset)
        self.class_names = self._vocabulary(class_names)
        prompts = prompts_for(
            self.class_names,
            bank=config.prompts.bank,
            mode=self._prompt_mode(),  # type: ignore[arg-type]
        )
        self.prompts = TrainingPrompts(prompts, self.model.clip, class_names=self.class_names)
        if self.prompts.num_prompts != self.model.num_prompts:
            raise ValueError(
                f"prompt mode gives {self.prompts.num_prompts} prompts per class, the model "
                f"expects {self.model.num_prompts}"
            )
        self.prompts.tokens = self.prompts.tokens.to(self.device)

        self.qv_mask: QVMask = configure_trainable(self.model, solver.clip_finetune)  # type: ignore[arg-type]
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(
            self.model,
            lr=solver.lr,
            weight_decay=solver.weight_decay,
            clip_lr_multiplier=solver.clip_lr_multiplier,
            weight_decay_norm=solver.weight_decay_norm,
            betas=(solver.betas[0], solver.betas[1]),
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            total_steps=solver.iterations,
            schedule=solver.schedule,
            warmup_steps=solver.warmup_iters,
        )
        self.autocast_dtype = _DTYPES.get(run.precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if run.precision == "fp16" else None
        step = TrainingStep(self.model, self.prompts)
        self.step_module: nn.Module = step
        if self.dist.distributed:
            self.step_module = DistributedDataParallel(
                step,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=run.find_unused_parameters,
            )
            self.qv_mask.refresh()  # DDP broadcast rank 0's weights

        self.augmentation = self._augmentation() if augment else None
        self.iteration = 0
        self.position = DataPosition()
        self.history: list[dict[str, float]] = []
        self._batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._writer: Any = None
        if run.tensorboard and self.dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError as error:
                raise ImportError(
                    "train.tensorboard needs the tensorboard package: pip install 'lmseg[tensorboard]'"
                ) from error
        _seed_everything(run.seed + self.dist.rank)

    # -- set-up helpers -----------------------------------------------------------------------
    def _vocabulary(self, class_names: Sequence[str] | None) -> list[str]:
        if class_names is not None:
            return list(class_names)
        if self.config.prompts.vocabulary is not None:
            from lmseg.vocabularies import load_vocabulary

            return load_vocabulary(self.config.prompts.vocabulary)
        names = getattr(self.dataset, "class_names", None)
        if not names:
            raise ValueError("no training vocabulary: set prompts.vocabulary or pass class_names")
        return list(names)

    def _prompt_mode(self) -> str:
        if self.config.prompts.mode is not None:
            return self.config.prompts.mode
        defaults = {1: "template", 4: "attributes"}
        if self.model.num_prompts not in defaults:
            raise ValueError(
                f"the model expects {self.model.num_prompts} prompts: set prompts.mode"
            )
        return defaults[self.model.num_prompts]

    def _augmentation(self) -> Augmentation:
        from lmseg.data import TrainAugmentation

        d = self.config.data
        return TrainAugmentation(
            min_size=d.min_size,
            max_size=d.max_size,
            size_sampling=d.size_sampling,
            crop_size=(d.crop_size, d.crop_size),
            color_aug=d.color_aug,
            flip_prob=d.flip_prob,
            ignore_value=self.ignore_value,
            size_divisibility=d.crop_size,
        )

    def _loader(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        stream = SampleStream(
            self.dataset_size,
            seed=self.config.train.seed,
            micro_batch=self.micro_batch,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            start=self.position,
        )
        workers = self.config.data.num_workers
        loader = DataLoader(
            AugmentedDataset(self.dataset, self.augmentation, self.config.train.seed),
            batch_size=self.micro_batch,
            sampler=stream,
            # Its own generator: otherwise each new iterator (one per resume) draws its workers'
            # base seed from the global torch RNG, and a resumed run's RNG leaves the
            # uninterrupted run's.
            generator=torch.Generator().manual_seed(self.config.train.seed + self.dist.rank),
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )
        return iter(loader)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.config.loss
        if loss.name == "ce":
            return segmentation_ce_loss(logits, labels, ignore_value=self.ignore_value)
        return segmentation_bce_loss(
            logits,
            labels,
            ignore_value=self.ignore_value,
            ignore_mode=loss.ignore_mode,  # type: ignore[arg-type]
        )

    def _train_mode(self) -> None:
        self.step_module.train()
        if self.model.sam is not None:
            self.model.sam.eval()  # frozen

    # -- one step -----------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns its statistics."""
        if self._batches is None:
            self._batches = self._loader()
        self._train_mode()
        solver = self.config.solver
        start = time.perf_counter()
        data_time = 0.0
        total = torch.zeros((), device=self.device)
        for micro in range(solver.grad_accum):
            t0 = time.perf_counter()
            images, labels = next(self._batches)
            images = images.to(self.device, non_blocking=True).float().div_(255)
            labels = labels.to(self.device, non_blocking=True)
            data_time += time.perf_counter() - t0
            last = micro == solver.grad_accum - 1
            sync = nullcontext()
            if isinstance(self.step_module, DistributedDataParallel) and not last:
                sync = self.step_module.no_sync()  # type: ignore[assignment]
            with sync:
                autocast = (
                    torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None
                    else nullcontext()
                )
                with autocast:
                    logits = self.step_module(images)
                loss = self._loss(logits.float(), labels)
                scaled = loss / solver.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if solver.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, solver.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.params if p.grad is not None]
            )
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.qv_mask.restore()
        lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.iteration += 1
        # batch_size counts every process and micro-batch: the global stream moved that far.
        self.position = self.position.advance(solver.batch_size, self.dataset_size)
        return {
            "iteration": self.iteration,
            "loss": float(total) / solver.grad_accum,
            "grad_norm": float(grad_norm),
            "lr": lrs.get("head", next(iter(lrs.values()))),
            "lr_clip": lrs.get("clip", 0.0),
            "time": time.perf_counter() - start,
            "data_time": data_time,
        }

    # -- loop ---------------------------------------------------------------------------------
    def train(self, until: int | None = None) -> list[dict[str, float]]:
        """Train to ``solver.iterations`` (or stop after iteration ``until``).

        Writes logs, periodic checkpoints, and at the end a final checkpoint and
        ``model_final.safetensors``; stopping at ``until`` writes nothing more than a run killed
        there would. Returns the per-iteration history of this process
        (``iteration``, ``loss`` (this process's), ``grad_norm``, ``lr``).
        """
        from tqdm import tqdm

        run, total = self.config.train, self.config.solver.iterations
        stop = total if until is None else min(until, total)
        if self.dist.is_main:
            self._prepare_output_dir()
        barrier()
        bar = tqdm(
            total=total,
            initial=self.iteration,
            desc="train",
            disable=not (self.dist.is_main and run.progress),
            dynamic_ncols=True,
        )
        window: list[dict[str, float]] = []
        while self.iteration < stop:
            stats = self.step()
            self.history.append({k: stats[k] for k in ("iteration", "loss", "grad_norm", "lr")})
            window.append(stats)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}")
            if self.iteration % run.log_period == 0 or self.iteration == stop:
                self._log(window)
                window = []
            if self.iteration % run.checkpoint_period == 0 or self.iteration == total:
                self.save_checkpoint()
            period = self.config.eval.period
            if self.config.eval.datasets and (
                (period and self.iteration % period == 0) or self.iteration == total
            ):
                self.evaluate()
        bar.close()
        if self.iteration == total and self.dist.is_main:
            save_model(
                self.model,
                self.output_dir / "model_final.safetensors",
                extra={"iteration": str(self.iteration)},
            )
        barrier()
        if self._writer is not None:
            self._writer.flush()
        return self.history

    def _prepare_output_dir(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / "config.yaml"
        if path.is_file() and self.iteration > 0:
            try:
                changed = diff_configs(load_config(path), self.config)
            except Exception:  # an unreadable old copy is replaced
                changed = ["<unreadable>"]
            if changed:
                logger.warning("config differs from the run's config.yaml in %s", changed)
                save_config(
                    self.config, self.output_dir / f"config_resume_{self.iteration:07d}.yaml"
                )
            return
        save_config(self.config, path)

    def _log(self, window: list[dict[str, float]]) -> None:
        if not window:
            return
        # on the training device: NCCL reduces CUDA tensors only
        loss = mean_over_processes(
            torch.tensor([w["loss"] for w in window], device=self.device).mean()
        )
        last = window[-1]
        seconds = float(np.mean([w["time"] for w in window]))
        record: dict[str, Any] = {
            "iteration": self.iteration,
            "loss": float(loss),
            "grad_norm": last["grad_norm"],
            "lr": last["lr"],
            "lr_clip": last["lr_clip"],
            "time": round(seconds, 4),
            "data_time": round(float(np.mean([w["data_time"] for w in window])), 4),
            "eta_seconds": round(seconds * (self.config.solver.iterations - self.iteration)),
            "epoch": self.position.epoch,
        }
        if self.device.type == "cuda":
            record["max_mem_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20)
        self._write_log(record)

    def _write_log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.output_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.config.train.tensorboard:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.output_dir / "tensorboard"))
            for key, value in _flatten(record).items():
                if key != "iteration" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, self.iteration)

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Evaluate on ``config.eval.datasets`` (sharded over processes); logs mIoU etc."""
        import tempfile

        from lmseg.eval.evaluate import EvalOptions, evaluate, write_result

        e = self.config.eval
        options = EvalOptions(
            sliding_window=e.sliding_window,
            batch_size=e.batch_size,
            precision=self.config.train.precision,  # type: ignore[arg-type]
            limit=e.limit,
            num_workers=min(2, self.config.data.num_workers),
            progress=False,
        )
        results: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as cache:  # the text tower changes every step
            for name in e.datasets:
                result = evaluate(
                    self.model,
                    name,
                    root=self.config.data.root,
                    options=options,
                    text_cache_dir=cache,
                )
                results[name] = {k: result.metrics[k] for k in ("mIoU", "fwIoU", "mAcc", "pAcc")}
                if self.dist.is_main:
                    write_result(result, self.output_dir / "eval" / f"iter_{self.iteration:07d}")
        self._write_log({"iteration": self.iteration, "eval": results})
        self._train_mode()
        return results

    # -- checkpoints --------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def _state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict(),
            # The schedule's shape comes from the config on resume (a run may be extended).
            "scheduler": {
                **self.scheduler.state_dict(),
                "lr_lambdas": [None] * len(self.scheduler.lr_lambdas),
            },
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": rng,
            "data": {
                "epoch": self.position.epoch,
                "index": self.position.index,
                "dataset_size": self.dataset_size,
            },
            "world_size": self.dist.world_size,
            "batch_size": self.config.solver.batch_size,
        }

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/iter_XXXXXXX`` atomically (every process takes part)."""
        rng = all_gather_objects(capture_rng_state())
        final = self.checkpoint_dir / f"iter_{self.iteration:07d}"
        if self.dist.is_main:
            tmp = self.checkpoint_dir / f".{final.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_model(
                self.model, tmp / "model.safetensors", extra={"iteration": str(self.iteration)}
            )
            torch.save(self._state(rng), tmp / "state.pt")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            atomic_write(
                self.checkpoint_dir / "last",
                lambda p: Path(p).write_text(final.name + "\n", encoding="utf-8"),
            )
            self._prune_checkpoints()
        barrier()
        return final

    def _prune_checkpoints(self) -> None:
        keep = self.config.train.keep_checkpoints
        if keep <= 0:
            return
        folders = sorted(p for p in self.checkpoint_dir.glob("iter_*") if p.is_dir())
        for old in folders[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint folder of the run, or None."""
        pointer = self.checkpoint_dir / "last"
        if not pointer.is_file():
            return None
        folder = self.checkpoint_dir / pointer.read_text(encoding="utf-8").strip()
        return folder if (folder / "state.pt").is_file() else None

    def resume(self, checkpoint: str | os.PathLike[str] | None = None) -> bool:
        """Continue from a checkpoint folder (default: the run's last); False if none.

        Restores weights, optimizer, scheduler, grad scaler, this process's RNG states (when
        the world size is unchanged) and the data position, so the continued run computes the
        same losses as an uninterrupted one.
        """
        folder = Path(checkpoint) if checkpoint is not None else self.last_checkpoint()
        if folder is None:
            return False
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"{folder}/state.pt has format {state.get('format')}, expected {STATE_FORMAT}"
            )
        load_weights(self.model, folder / "model.safetensors")
        self.qv_mask.refresh()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for group, base, fn in zip(
            self.optimizer.param_groups,
            self.scheduler.base_lrs,
            self.scheduler.lr_lambdas,
            strict=True,
        ):
            group["lr"] = base * fn(self.scheduler.last_epoch)
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        data = state["data"]
        if int(data["dataset_size"]) != self.dataset_size:
            logger.warning("the training set changed size since the checkpoint: data order differs")
        self.position = DataPosition(int(data["epoch"]), int(data["index"]))
        if int(state["world_size"]) == self.dist.world_size:
            restore_rng_state(state["rng"][self.dist.rank])
        else:
            logger.warning(
                "resuming %d processes from a %d-process checkpoint: RNG states are reseeded",
                self.dist.world_size,
                state["world_size"],
            )
            _seed_everything(self.config.train.seed + self.dist.rank + self.iteration)
        self._batches = None
        return True


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


def run_training(config: TrainConfig, *, resume: bool = False) -> Trainer:
    """Set up the process group (torchrun) and train ``config``; returns the trainer.

    Raises:
        ValueError: the output folder already holds a checkpoint and ``resume`` is False.
    """
    from lmseg.train.distributed import cleanup_distributed, init_distributed

    info = init_distributed(config.train.device)
    try:
        trainer = Trainer(config, dist=info)
        if trainer.last_checkpoint() is not None and not resume:
            raise ValueError(
                f"{trainer.output_dir} already holds checkpoints: pass --resume to continue the "
                "run, or choose another train.output_dir"
            )
        if resume and trainer.resume() and info.is_main:
            logger.info("resumed from iteration %d", trainer.iteration)
        trainer.train()
        return trainer
    finally:
        cleanup_distributed()
