"""The training loop: CAT-Seg's recipe, resumable exactly, single process or DDP.

One optimizer step: ``grad_accum`` micro-batches, each encoding the training vocabulary's
prompts with the (QV-trainable) text tower, running the model under autocast and the loss in
fp32; then gradient clipping over all trainable parameters, AdamW, the QV row restore, the LR
schedule. Data come from an endless stream of seeded per-epoch permutations; each sample's
augmentation draws from a generator seeded by (seed, epoch, position), so data do not depend on
worker count or restarts.

The run folder, checkpoints and resuming live in :mod:`lmseg.train.checkpointing`, the JSON
log and TensorBoard in :mod:`lmseg.train.run_log`; their public names are importable from here
too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from lmseg.checkpoint import load_weights
from lmseg.model import LMSeg
from lmseg.prompts import prompts_for
from lmseg.prompts.compose import PromptSlot
from lmseg.prompts.embedding import encode_prompts
from lmseg.runtime import RuntimeOptions
from lmseg.train.checkpointing import (
    STATE_FORMAT,
    ResumeWarning,
    RunFolder,
    RunFolderError,
    capture_rng_state,
    read_checkpoint,
    restore_rng_state,
    restore_training_state,
    seed_everything,
    training_state,
)
from lmseg.train.config import TrainConfig, diff_configs, load_config, save_config
from lmseg.train.data_stream import (
    Augmentation,
    AugmentedDataset,
    DataPosition,
    SampleStream,
    SkippedSamples,
    TensorSegmentationDataset,
    collate,
    ignore_value_of,
)
from lmseg.train.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    get_dist_info,
)
from lmseg.train.loss import segmentation_bce_loss, segmentation_ce_loss
from lmseg.train.optim import QVMask, build_optimizer, build_scheduler, configure_trainable
from lmseg.train.run_log import RunLog, period_record, require_tensorboard

__all__ = [
    "STATE_FORMAT",
    "AugmentedDataset",
    "DataPosition",
    "ResumeWarning",
    "RunFolder",
    "RunFolderError",
    "RunLog",
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


# -- prompts ----------------------------------------------------------------------------------
class TrainingPrompts:
    """The training vocabulary's prompts, tokenised once and encoded with gradients per step.

    Equal to :func:`lmseg.prompts.encode_prompts` (which validates them at construction), minus
    the per-call tokenisation and length checks (BPE in Python, ~0.1–0.2 s per step for
    COCO-Stuff's 171 × 4 prompts).

    Args:
        prompts: K lists of P prompt slots (:func:`lmseg.prompts.prompts_for`).
        clip: the model's text encoder (for tokenisation and validation).
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
    gradients as part of the step; ``runtime`` carries the recipe's training-time settings
    (CAT-Seg's 2×2 class-aggregation pooling)."""

    def __init__(
        self, model: LMSeg, prompts: TrainingPrompts, runtime: RuntimeOptions | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.prompts = prompts
        self.runtime = runtime or RuntimeOptions()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        text = self.prompts.encode(self.model.text_encoder)
        return self.model(images, text, self.runtime)


# -- model ------------------------------------------------------------------------------------
def build_train_model(config: TrainConfig) -> LMSeg:
    """The model of ``config.model``, with its initial weights."""
    from lmseg.factory import create_model

    m = config.model
    return create_model(
        m.name,
        pretrained=m.weights,
        vision_language_weights=m.vision_language_weights,
        spatial_weights=m.spatial_weights,
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
        >>> trainer.resume()   # continue from the newest complete checkpoint, if any
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
        self.run_folder = RunFolder(self.output_dir)
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
        seed_everything(run.seed)  # identical initialisation in every process
        if model is None:
            model = build_train_model(config)
        self.model = model.to(self.device)
        if dataset is None:
            from lmseg.data import load_dataset

            dataset = load_dataset(config.data.dataset, root=config.data.root)
        self.dataset = dataset
        self.dataset_size: int = len(dataset)  # type: ignore[arg-type]
        self.ignore_value = ignore_value_of(dataset)
        self.class_names = self._vocabulary(class_names)
        prompts = prompts_for(
            self.class_names,
            bank=config.prompts.bank,
            mode=self._prompt_mode(),  # type: ignore[arg-type]
        )
        self.prompts = TrainingPrompts(prompts, self.model.text_encoder, class_names=self.class_names)
        if self.prompts.num_prompts != self.model.num_prompts:
            raise ValueError(
                f"prompt mode gives {self.prompts.num_prompts} prompts per class, the model "
                f"expects {self.model.num_prompts}"
            )
        self.prompts.tokens = self.prompts.tokens.to(self.device)

        self.qv_mask: QVMask = configure_trainable(self.model, solver.vision_language_finetune)  # type: ignore[arg-type]
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(
            self.model,
            lr=solver.lr,
            weight_decay=solver.weight_decay,
            encoder_lr_multiplier=solver.vision_language_lr_multiplier,
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
        self.runtime = RuntimeOptions(class_pool_size=run.class_pool_size)
        step = TrainingStep(self.model, self.prompts, self.runtime)
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
        self.skipped = SkippedSamples()
        self._batches: Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]] | None = None
        self.resumed_from: Path | None = None
        self._resume_asked = False  # resume() found nothing: a fresh start, said so if refused
        self._started = False  # train() has prepared the run folder
        if run.tensorboard and self.dist.is_main:
            require_tensorboard()
        self.run_log = RunLog(
            self.run_folder.log,
            tensorboard=self.run_folder.tensorboard if run.tensorboard else None,
        )
        seed_everything(run.seed + self.dist.rank)

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

    def _loader(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
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
        if self.model.spatial_encoder is not None:
            self.model.spatial_encoder.eval()  # frozen

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
        skipped = 0
        for micro in range(solver.grad_accum):
            t0 = time.perf_counter()
            images, labels, bad = next(self._batches)
            skipped += self.skipped.note(bad)
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
            "lr_vision_language": lrs.get("vision_language", 0.0),
            "time": time.perf_counter() - start,
            "data_time": data_time,
            "skipped": skipped,
        }

    # -- loop ---------------------------------------------------------------------------------
    def train(self, until: int | None = None) -> list[dict[str, float]]:
        """Train to ``solver.iterations`` (or stop after iteration ``until``).

        Writes logs, periodic checkpoints, and at the end a final checkpoint and
        ``model_final.safetensors``; stopping at ``until`` writes nothing more than a run killed
        there would. A run resumed at or past ``solver.iterations`` trains nothing and writes
        the final model of the checkpoint's weights. Returns the per-iteration history of this
        process (``iteration``, ``loss`` (this process's), ``grad_norm``, ``lr``).

        Raises:
            RunFolderError: a fresh start (nothing resumed) in a folder that holds an earlier
                run's checkpoints or final model, without ``train.overwrite``.
        """
        from tqdm import tqdm

        run, total = self.config.train, self.config.solver.iterations
        stop = total if until is None else min(until, total)
        fresh = not self._started and self.resumed_from is None
        if fresh:  # every process, before the main one writes anything
            self.run_folder.check_fresh_start(overwrite=run.overwrite, resume_asked=self._resume_asked)
        if self.dist.is_main:
            self._prepare_output_dir(fresh)
        self._started = True
        barrier()
        if self.iteration > total and self.dist.is_main:
            warnings.warn(
                f"resumed at iteration {self.iteration}, past solver.iterations={total}: nothing "
                f"to train; {self.run_folder.final_model} holds the weights of iteration "
                f"{self.iteration}",
                ResumeWarning,
                stacklevel=2,
            )
        bar = tqdm(
            total=total,
            initial=min(self.iteration, total),
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
        if self.iteration >= total and self.dist.is_main:
            self.run_folder.write_final_model(self.model, self.iteration)
        barrier()
        self.run_log.flush()
        return self.history

    def _prepare_output_dir(self, fresh: bool) -> None:
        """Main process: replace an earlier run if asked, remove leftovers of interrupted
        writes, drop log lines after the resumed iteration, save the config."""
        if fresh and self.config.train.overwrite:
            removed = self.run_folder.clear()
            if removed:
                logger.warning(
                    "train.overwrite: removed the earlier run's %s",
                    ", ".join(str(p.relative_to(self.output_dir)) for p in removed),
                )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for path in self.run_folder.remove_temporary():
            logger.info("removed %s, left by an interrupted write", path)
        dropped = self.run_log.drop_after(self.iteration)
        if dropped:
            logger.info("dropped %d log lines after iteration %d", dropped, self.iteration)
        # A rerun of the saved config never replaces a run by itself.
        config = dataclasses.replace(
            self.config, train=dataclasses.replace(self.config.train, overwrite=False)
        )
        path = self.run_folder.config
        if path.is_file() and self.iteration > 0:
            try:
                changed = diff_configs(load_config(path), config)
            except Exception:  # an unreadable old copy is replaced
                changed = ["<unreadable>"]
            if changed:
                logger.warning("config differs from the run's config.yaml in %s", changed)
                save_config(config, self.output_dir / f"config_resume_{self.iteration:07d}.yaml")
            return
        save_config(config, path)

    def _log(self, window: list[dict[str, float]]) -> None:
        if not window:
            return
        record = period_record(
            window,
            iteration=self.iteration,
            iterations=self.config.solver.iterations,
            epoch=self.position.epoch,
            device=self.device,
            world_size=self.dist.world_size,
        )
        self._write_log(record)

    def _write_log(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            self.run_log.write(record)

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Evaluate on ``config.eval.datasets`` (sharded over processes); logs mIoU etc."""
        import tempfile

        from lmseg.eval.evaluate import EvalOptions, evaluate, write_result

        e = self.config.eval
        options = EvalOptions(
            sliding_window=e.sliding_window,
            batch_size=e.batch_size,
            runtime=RuntimeOptions(precision=self.config.train.precision),  # type: ignore[arg-type]
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
                    write_result(result, self.run_folder.evaluation(self.iteration))
        self._write_log({"iteration": self.iteration, "eval": results})
        self._train_mode()
        return results

    # -- checkpoints --------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_folder.checkpoints

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/iter_XXXXXXX`` atomically (every process takes part)."""
        rng = all_gather_objects(capture_rng_state())
        final = self.run_folder.checkpoint(self.iteration)
        if self.dist.is_main:
            state = training_state(
                iteration=self.iteration,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.scaler,
                rng=rng,
                position=self.position,
                dataset_size=self.dataset_size,
                world_size=self.dist.world_size,
                batch_size=self.config.solver.batch_size,
            )
            self.run_folder.write_checkpoint(self.model, state, self.iteration)
            self.run_folder.prune(self.config.train.keep_checkpoints, upto=self.iteration)
        barrier()
        return final

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint folder of the run, or None."""
        try:
            found = self.run_folder.newest_checkpoint(report=False)
        except RunFolderError:
            return None
        return None if found is None else found[0]

    def resume(self, checkpoint: str | os.PathLike[str] | None = None) -> bool:
        """Continue from a checkpoint folder (default: the run's newest complete one); False if
        the run has none.

        Restores weights, optimizer, scheduler, grad scaler, this process's RNG states (when
        the world size is unchanged) and the data position, so the continued run computes the
        same losses as an uninterrupted one.

        Raises:
            RunFolderError: the run has checkpoint folders but none is complete.
            lmseg.checkpoint.CheckpointError: ``checkpoint`` is incomplete or does not fit.
        """
        if checkpoint is not None:
            folder = Path(checkpoint)
            state = read_checkpoint(folder)
        else:
            found = self.run_folder.newest_checkpoint(report=self.dist.is_main)
            if found is None:
                self._resume_asked = True
                return False
            folder, state = found
        load_weights(self.model, folder / "model.safetensors")
        self.qv_mask.refresh()
        restore_training_state(
            state, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler
        )
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
            seed_everything(self.config.train.seed + self.dist.rank + self.iteration)
        self._batches = None
        self.resumed_from = folder
        return True


def run_training(config: TrainConfig, *, resume: bool = False) -> Trainer:
    """Set up the process group (torchrun) and train ``config``; returns the trainer.

    Args:
        config: the run.
        resume: continue from the run folder's newest complete checkpoint; without one, start
            afresh (refused over an earlier run's final model unless ``train.overwrite``).

    Raises:
        RunFolderError: the output folder holds an earlier run and neither ``resume`` nor
            ``train.overwrite`` is set; or ``resume`` finds checkpoint folders but none complete.
    """
    from lmseg.train.distributed import cleanup_distributed, init_distributed

    if not resume:  # before anything is built
        RunFolder(config.train.output_dir).check_fresh_start(overwrite=config.train.overwrite)
    info = init_distributed(config.train.device)
    try:
        trainer = Trainer(config, dist=info)
        if resume and trainer.resume() and info.is_main:
            logger.info("resumed from iteration %d (%s)", trainer.iteration, trainer.resumed_from)
        trainer.train()
        return trainer
    finally:
        cleanup_distributed()
