"""Training configs: plain YAML files, typed sections, dotted ``key=value`` overrides.

A config has seven sections (``model``, ``data``, ``prompts``, ``solver``, ``loss``, ``train``,
``eval``), each a dataclass below whose defaults are CAT-Seg's recipe (``configs/config.yaml``
and ``configs/vitb_384.yaml`` of CAT-Seg). Shipped configs live in ``lmseg/configs/``
(:func:`list_configs`); a run writes its resolved config to ``OUTPUT_DIR/config.yaml``, which
:func:`load_config` reads back as is.

Overrides use dotted keys and YAML values: ``solver.lr=1.0e-4``, ``data.min_size=[320,384]``,
``model.overrides.fusion.mode=pixel``, ``train.output_dir=runs/a``. Unknown keys raise.

Keys of earlier releases that named a library rather than a role are still read (and mapped):
``model.clip_pretrained`` → ``model.vision_language_weights``, ``model.sam_checkpoint`` →
``model.spatial_weights``, ``solver.clip_lr_multiplier`` / ``solver.clip_finetune`` →
``solver.vision_language_lr_multiplier`` / ``solver.vision_language_finetune``, and
``model.overrides.aggregator.train_pool_size`` → ``train.class_pool_size`` (a training setting,
not part of the saved model).
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelSection",
    "PromptConfig",
    "RunConfig",
    "SolverConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_yaml",
    "diff_configs",
    "list_configs",
    "load_config",
    "save_config",
]

PRECISIONS = ("fp32", "bf16", "fp16")


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key."""


@dataclass
class ModelSection:
    """Which model to train and the weights it starts from.

    Attributes:
        name: a :func:`lmseg.list_models` variant.
        overrides: :func:`lmseg.factory.get_config` overrides (``{"fusion": {"mode": "pixel"}}``,
            ``{"spatial_encoder": {"type": "sam", "variant": "vit_l"}}``, ...).
        vision_language_weights: weights of the vision-language encoder (CLIP role): an
            open_clip tag (``openai``) or a file; None = random.
        spatial_weights: weights of the spatial encoder (SAM role): an official SAM checkpoint
            (path or file name in ``$LMSEG_CACHE/sam``).
        weights: an lmseg ``.safetensors`` checkpoint to initialise the whole model from.
    """

    name: str = "catseg_vitb16"
    overrides: dict[str, Any] = field(default_factory=dict)
    vision_language_weights: str | None = "openai"
    spatial_weights: str | None = None
    weights: str | None = None


@dataclass
class DataConfig:
    """Training set and CAT-Seg's augmentation (:class:`lmseg.data.TrainAugmentation`)."""

    dataset: str = "coco_train"
    root: str | None = None
    min_size: list[int] = field(default_factory=lambda: [384])
    max_size: int = 1333
    size_sampling: str = "choice"
    crop_size: int = 384
    color_aug: bool = True
    flip_prob: float = 0.5
    num_workers: int = 4


@dataclass
class PromptConfig:
    """Training vocabulary and prompts (encoded with gradients every step).

    Attributes:
        vocabulary: a shipped vocabulary name; None = the training set's classes (COCO-Stuff's
            171 for ``coco_train``).
        mode: prompt mode (:data:`lmseg.prompts.MODES`); None = ``template`` for P = 1 and
            ``attributes`` for P = 4, as :class:`lmseg.Segmenter`.
        bank: prompt bank name or path; None = the shipped bank matching the vocabulary.
    """

    vocabulary: str | None = None
    mode: str | None = None
    bank: str | None = None


@dataclass
class SolverConfig:
    """Optimisation (CAT-Seg: ``SOLVER.*`` and ``MODEL.SEM_SEG_HEAD.CLIP_FINETUNE``).

    Attributes:
        iterations: optimizer steps (``MAX_ITER``, 80k).
        batch_size: images per optimizer step over all processes and accumulation steps
            (``IMS_PER_BATCH``, 4).
        grad_accum: micro-batches per optimizer step.
        lr: base learning rate (``BASE_LR``, 2e-4), for everything outside the vision-language
            encoder.
        weight_decay: AdamW weight decay (1e-4); ``weight_decay_norm`` for norm layers (0).
        betas: AdamW betas (torch defaults, as detectron2).
        vision_language_lr_multiplier: the vision-language encoder's learning-rate factor
            (CAT-Seg's ``CLIP_MULTIPLIER``, 0.01).
        vision_language_finetune: what of the vision-language encoder trains: ``qv`` (the query
            and value projections, CAT-Seg's ``CLIP_FINETUNE: "attention"``), ``none`` or ``full``.
        schedule: ``cosine`` (``WarmupCosineLR``) or ``constant``; ``warmup_iters`` (0).
        grad_clip: max L2 norm of all gradients together (``CLIP_TYPE: full_model``, 0.01);
            None disables.
    """

    iterations: int = 80000
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    vision_language_lr_multiplier: float = 0.01
    vision_language_finetune: str = "qv"
    schedule: str = "cosine"
    warmup_iters: int = 0
    grad_clip: float | None = 0.01


@dataclass
class LossConfig:
    """``bce`` (CAT-Seg's per-class BCE) or ``ce``; ``ignore_mode`` of the BCE
    (``negative``: CAT-Seg's ignore pixels as negatives, or ``exclude``)."""

    name: str = "bce"
    ignore_mode: str = "negative"


@dataclass
class RunConfig:
    """Where and how the run executes.

    Attributes:
        output_dir: run folder (config copy, ``log.jsonl``, ``checkpoints/``, final model).
        overwrite: a fresh run may replace an earlier run's outputs in ``output_dir`` (its
            checkpoints, final model, log); otherwise such a folder is refused. Not kept in the
            run's saved ``config.yaml``, so rerunning that file never replaces a run by itself.
        precision: ``fp32`` (CAT-Seg: detectron2 without ``SOLVER.AMP``), or ``bf16``/``fp16``
            autocast (fp16 with a GradScaler).
        seed: seeds model initialisation, the data order and augmentation.
        device: ``cuda``/``cpu``; None picks CUDA when available.
        log_period: iterations between JSON log lines (detectron2: 20).
        checkpoint_period: iterations between checkpoints (CAT-Seg: 5000).
        keep_checkpoints: periodic checkpoints kept (0 keeps all).
        tensorboard: also write TensorBoard scalars (needs the ``tensorboard`` extra).
        progress: show a tqdm progress bar (main process).
        find_unused_parameters: DDP's option, for model variants with unused parameters.
        cudnn_benchmark: let cuDNN pick convolution algorithms (CAT-Seg: ``CUDNN_BENCHMARK``);
            faster, not bit-reproducible on GPU.
        class_pool_size: average pooling of the cost maps before class aggregation in training
            steps (CAT-Seg's ``POOLING_SIZES: [2, 2]``; its evaluation uses 1, as lmseg's does).
    """

    output_dir: str = "output/run"
    overwrite: bool = False
    precision: str = "fp32"
    seed: int = 0
    device: str | None = None
    log_period: int = 20
    checkpoint_period: int = 5000
    keep_checkpoints: int = 3
    tensorboard: bool = False
    progress: bool = True
    find_unused_parameters: bool = False
    cudnn_benchmark: bool = True
    class_pool_size: int = 2


@dataclass
class EvalConfig:
    """Evaluation during and after training; none by default (CAT-Seg scores COCO-Stuff val
    every 5000 iterations, ``TEST.EVAL_PERIOD``; the benchmarks are run with ``lmseg eval``).

    Attributes:
        datasets: :func:`lmseg.data.list_datasets` names evaluated every ``period`` iterations
            (0: only after the last iteration).
        sliding_window: CAT-Seg's sliding-window inference (else whole image).
        batch_size: images per forward pass.
        limit: evaluate only the first ``limit`` images of each dataset.
    """

    datasets: list[str] = field(default_factory=list)
    period: int = 0
    sliding_window: bool = True
    batch_size: int = 4
    limit: int | None = None


@dataclass
class TrainConfig:
    """A complete training run."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts (YAML-ready)."""
        return asdict(self)

    def validate(self) -> TrainConfig:
        """Check values that types cannot; returns self."""
        s = self.solver
        checks = [
            (s.iterations >= 1, "solver.iterations must be >= 1"),
            (s.batch_size >= 1, "solver.batch_size must be >= 1"),
            (s.grad_accum >= 1, "solver.grad_accum must be >= 1"),
            (len(s.betas) == 2, "solver.betas must hold two numbers"),
            (
                s.vision_language_finetune in ("qv", "none", "full"),
                "solver.vision_language_finetune: qv, none or full",
            ),
            (self.train.class_pool_size >= 1, "train.class_pool_size must be >= 1"),
            (s.schedule in ("cosine", "constant"), "solver.schedule: cosine or constant"),
            (self.loss.name in ("bce", "ce"), "loss.name: bce or ce"),
            (
                self.loss.ignore_mode in ("negative", "exclude"),
                "loss.ignore_mode: negative or exclude",
            ),
            (self.train.precision in PRECISIONS, f"train.precision: one of {PRECISIONS}"),
            (self.train.log_period >= 1, "train.log_period must be >= 1"),
            (self.train.checkpoint_period >= 1, "train.checkpoint_period must be >= 1"),
            (self.data.size_sampling in ("choice", "range"), "data.size_sampling: choice or range"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        from lmseg.factory import get_config

        try:
            get_config(self.model.name, **self.model.overrides)
        except (KeyError, ValueError, TypeError) as error:
            raise ConfigError(f"model: {error}") from None
        return self


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return True, args[0]
    return False, tp


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``, converting YAML's loose scalars."""
    optional, tp = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} may not be null")
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise TypeError
            return value
        if tp is int:
            if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
                raise TypeError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)  # YAML reads "1e-4" as a string
        if tp is str:
            if isinstance(value, (dict, list)):
                raise TypeError
            return str(value)
        if origin is list:
            (item,) = typing.get_args(tp)
            items = value if isinstance(value, (list, tuple)) else [value]
            return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(items)]
        if origin is dict:
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {tp}, got {value!r}") from None
    raise ConfigError(f"{key}: unsupported annotation {tp}")


def _build(cls: Any, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config keys {[where + k for k in unknown]}; keys of "
            f"{where.rstrip('.') or 'the config'}: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, where + name)
    return cls(**kwargs)


# Keys of earlier releases -> their role names.
_RENAMED_KEYS: dict[tuple[str, str], str] = {
    ("model", "clip_pretrained"): "vision_language_weights",
    ("model", "sam_checkpoint"): "spatial_weights",
    ("solver", "clip_lr_multiplier"): "vision_language_lr_multiplier",
    ("solver", "clip_finetune"): "vision_language_finetune",
}


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Map the keys of earlier releases onto this release's (see the module docstring)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for (section, old), new in _RENAMED_KEYS.items():
        node = data.get(section)
        if isinstance(node, dict) and old in node:
            if new in node:
                raise ConfigError(f"{section}.{old} and {section}.{new} are the same setting; give one")
            node[new] = node.pop(old)
    model = data.get("model")
    overrides = model.get("overrides") if isinstance(model, dict) else None
    aggregator = overrides.get("aggregator") if isinstance(overrides, dict) else None
    if (
        isinstance(model, dict)
        and isinstance(overrides, dict)
        and isinstance(aggregator, dict)
        and "train_pool_size" in aggregator
    ):
        aggregator = dict(aggregator)
        pool = aggregator.pop("train_pool_size")
        model["overrides"] = {**overrides, "aggregator": aggregator}
        if not aggregator:
            del model["overrides"]["aggregator"]
        train = data.setdefault("train", {})
        if isinstance(train, dict):
            train.setdefault("class_pool_size", pool)
    return data


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A validated :class:`TrainConfig` from nested dicts (missing keys take defaults)."""
    return _build(TrainConfig, _migrate(data), "").validate()


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: value is not YAML: {error}") from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (YAML values) to nested dicts, in place; returns it."""
    for text in overrides:
        parts, value = _parse_override(text)
        if len(parts) == 2 and (parts[0], parts[1]) in _RENAMED_KEYS:
            parts = [parts[0], _RENAMED_KEYS[(parts[0], parts[1])]]  # an earlier release's name
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def list_configs() -> list[str]:
    """Names of the configs shipped in ``lmseg/configs`` (accepted by :func:`load_config`)."""
    folder = resources.files("lmseg").joinpath("configs")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read(source: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    path = Path(source)
    if path.is_file():
        text, origin = path.read_text(encoding="utf-8"), str(path)
    elif str(source) in list_configs():
        file = resources.files("lmseg").joinpath("configs", f"{source}.yaml")
        text, origin = file.read_text(encoding="utf-8"), f"lmseg/configs/{source}.yaml"
    else:
        raise FileNotFoundError(
            f"config {str(source)!r} is neither a file nor a shipped config "
            f"({', '.join(list_configs())})"
        )
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{origin} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must hold a mapping of sections")
    return data, origin


def load_config(
    source: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()
) -> TrainConfig:
    """Read a YAML config (a path or a shipped name) and apply overrides.

    Args:
        source: a YAML file, a :func:`list_configs` name, or None for the defaults.
        overrides: ``key=value`` strings with dotted keys.

    Raises:
        ConfigError: unknown keys, wrong types or invalid values (the key is named).
        FileNotFoundError: ``source`` does not exist.
    """
    data = _read(source)[0] if source is not None else {}
    return config_from_dict(apply_overrides(data, overrides))


def config_to_yaml(config: TrainConfig) -> str:
    """The YAML text of a config, sections in declaration order."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)


def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write a config as YAML, atomically."""
    from lmseg.io import atomic_write

    text = config_to_yaml(config)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def diff_configs(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict) and v and prefix.count(".") < 1:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = v
        return out

    fa, fb = flat(a.to_dict()), flat(b.to_dict())
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
