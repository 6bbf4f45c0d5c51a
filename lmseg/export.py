"""Export a model for other runtimes: two graphs that serve every vocabulary.

An exported model is a folder:

- ``image_encoder.onnx`` (or ``.pt2`` for ``torch.export``): the class-independent half,
  :meth:`LMSeg.encode_image <lmseg.model.LMSeg.encode_image>`. Input ``images (B, 3, H, W)``,
  RGB float32 in [0, 1], any B, H and W: the encoders' own resizing and normalisation are part of
  the graph, as they are part of the encoders. Outputs ``embedding (B, D, h, w)`` and the
  decoder guidance ``decoder_guidance_0 (B, g0, 2h, 2w)``, ``decoder_guidance_1 (B, g1, 4h, 4w)``.
- ``class_decoder.onnx`` (or ``.pt2``): the class-dependent half, :meth:`LMSeg.decode
  <lmseg.model.LMSeg.decode>`. Inputs the three feature tensors and ``text_embeddings (K, P, D)``;
  output ``logits (B, K, 4h, 4w)``. K is a dynamic dimension, so one export serves every
  vocabulary. The graph runs in exact mode (``RuntimeOptions(top_k=None)``: no class filtering)
  and unchunked (one pass over all K classes: chunk loops over K cannot be traced for a symbolic
  K); class filtering, if wanted, can be done outside the graph by passing fewer classes.
- ``text/NAME.npz``: text embeddings of a vocabulary (``embeddings (K, P, D)`` float32 and
  ``classes (K,)`` strings), one file per vocabulary, computed with the prompts
  :class:`~lmseg.segmenter.Segmenter` would use.
- ``manifest.json``: input and output names and shapes of both graphs, the model config, the
  encoders' preprocessing, lmseg and torch versions, the ONNX opset and the text files.

Everything is written atomically, the manifest last, and nothing is overwritten unless asked.
:func:`verify_export` runs the exported graphs (onnxruntime for ONNX) against the PyTorch model on
the same inputs and reports the largest logit difference.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lmseg.io import MAX_CLASSES, atomic_write, validate_classes
from lmseg.model import ImageFeatures, LMSeg
from lmseg.runtime import RuntimeOptions

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_RUNTIME",
    "FORMATS",
    "ClassDecoderGraph",
    "ImageEncoderGraph",
    "export_model",
    "load_text_embeddings",
    "read_manifest",
    "save_text_embeddings",
    "verify_export",
]

ExportFormat = Literal["onnx", "torch-export"]
FORMATS: tuple[str, ...] = ("onnx", "torch-export")

# Opset 18 is the first with Resize's antialias attribute (SAM's downscaling) and runs on
# onnxruntime 1.14 and later.
DEFAULT_OPSET = 18

# Larger than any chunk loop's extent: every block then takes its single-pass branch, which is the
# only one a graph with a symbolic K can hold.
_UNCHUNKED = 1 << 40
#: How the graphs run: exact (no class filtering), every chunk loop a single pass, functional
#: residuals (in-place updates of one cost embedding buy nothing in a static graph).
EXPORT_RUNTIME = RuntimeOptions(
    top_k=None,
    class_chunk=_UNCHUNKED,
    token_chunk=_UNCHUNKED,
    mlp_rows=_UNCHUNKED,
    inplace=False,
)

# Bounds of the dynamic dimensions the exporter reasons with (runtimes do not enforce them).
MAX_BATCH = 1024
MAX_IMAGE_SIDE = 1 << 14

IMAGE_INPUTS = ("images",)
FEATURES = ("embedding", "decoder_guidance_0", "decoder_guidance_1")
CLASS_INPUTS = (*FEATURES, "text_embeddings")
CLASS_OUTPUTS = ("logits",)
GRAPHS = ("image_encoder", "class_decoder")  # file stems and manifest keys
_SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}
MANIFEST = "manifest.json"
TEXT_FOLDER = "text"


class ImageEncoderGraph(nn.Module):
    """The class-independent half as a graph: ``images (B, 3, H, W)`` RGB in [0, 1] ->
    ``(embedding (B, D, h, w), decoder_guidance_0 (B, g0, 2h, 2w), decoder_guidance_1
    (B, g1, 4h, 4w))``.

    Args:
        model: the model to export (its decoder must take guidance, as every registered variant's).
    """

    def __init__(self, *, model: LMSeg) -> None:
        super().__init__()
        if not len(model.decoder.guidance_upsamplers):
            raise ValueError(
                "export needs a decoder guided by the vision-language encoder "
                "(every registered variant has one)"
            )
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.model.encode_image(images, EXPORT_RUNTIME)
        first, second = features.decoder_guidance
        assert first is not None and second is not None
        return features.embedding, first, second


class ClassDecoderGraph(nn.Module):
    """The class-dependent half as a graph, in exact mode and unchunked
    (:data:`EXPORT_RUNTIME`): the three feature tensors and ``text_embeddings (K, P, D)`` ->
    ``logits (B, K, 4h, 4w)``.

    Args:
        model: the model to export.
    """

    def __init__(self, *, model: LMSeg) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        embedding: torch.Tensor,
        decoder_guidance_0: torch.Tensor,
        decoder_guidance_1: torch.Tensor,
        text_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        features = ImageFeatures(
            embedding=embedding,
            decoder_guidance=[decoder_guidance_0, decoder_guidance_1],
            vision_language_embedding=embedding,
        )
        return self.model.decode(features, text_embeddings, EXPORT_RUNTIME)


@dataclass(frozen=True)
class _Traced:
    """What tracing needs: example inputs and their dynamic dimensions, per graph."""

    image_args: tuple[torch.Tensor, ...]
    image_dims: dict[str, dict[int, Any]]
    class_args: tuple[torch.Tensor, ...]
    class_dims: dict[str, dict[int, Any]]


def _encoder_sides(model: LMSeg) -> list[tuple[int, int]]:
    sides = [tuple(model.vision_language_encoder.image_size)]
    size = getattr(model.spatial_encoder, "image_size", None)
    if size is not None:
        sides.append((size, size) if isinstance(size, int) else tuple(size))
    return [(int(h), int(w)) for h, w in sides]


def _examples(model: LMSeg) -> _Traced:
    """Example inputs that trace the general case of every shape-dependent branch.

    Batch 2 and K = 2 (sizes 0 and 1 are special-cased by the tracer); an image side that no
    encoder takes as is, so the graph keeps the encoders' resize for every input size (resizing
    to the size an image already has is the identity, which the tests check).
    """
    from torch.export import Dim

    sides = _encoder_sides(model)
    height = max(h for h, _ in sides) + 1
    width = max(w for _, w in sides) + 2
    weight = model.cost_volume.embed.weight
    images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    images = images.to(weight.device)
    with torch.no_grad():
        features = ImageEncoderGraph(model=model)(images)
    text = torch.randn(2, model.num_prompts, model.embed_dim, device=weight.device)
    batch = Dim("batch", min=1, max=MAX_BATCH)
    classes = Dim("classes", min=1, max=MAX_CLASSES)
    side = {"min": 1, "max": MAX_IMAGE_SIDE}
    image_dims = {"images": {0: batch, 2: Dim("height", **side), 3: Dim("width", **side)}}
    class_dims: dict[str, dict[int, Any]] = {name: {0: batch} for name in FEATURES}
    class_dims["text_embeddings"] = {0: classes}
    return _Traced((images,), image_dims, (*features, text), class_dims)


def _targets(out: Path, fmt: ExportFormat, vocabularies: Mapping[str, Sequence[str]]) -> list[Path]:
    suffix = _SUFFIX[fmt]
    paths = [out / f"{name}{suffix}" for name in GRAPHS]
    paths += [out / TEXT_FOLDER / f"{name}.npz" for name in vocabularies]
    return [*paths, out / MANIFEST]


def _check_vocabulary_name(name: str) -> str:
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or len(name) > 128:
        raise ValueError(f"vocabulary name {name!r} cannot be a file name (no slashes, no leading dot)")
    return name


def _opset_of(path: Path) -> int | None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _publish(path: Path, write: Callable[[str], object]) -> None:
    """:func:`~lmseg.io.atomic_write`, leaving the file readable by others (rw-r--r--) like any
    shipped model file, not private as a temporary file is."""

    def write_readable(tmp: str) -> None:
        write(tmp)
        os.chmod(tmp, 0o644)

    atomic_write(path, write_readable)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the ONNX exporter's progress notes and optimiser chatter off the user's terminal."""
    logger = logging.getLogger("onnxscript")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _export_onnx(graph: nn.Module, args: tuple[torch.Tensor, ...], dims: dict[str, dict[int, Any]],
                 inputs: Sequence[str], outputs: Sequence[str], opset: int, path: Path) -> None:
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            graph,
            args,
            dynamo=True,
            dynamic_shapes=dims,
            input_names=list(inputs),
            output_names=list(outputs),
            opset_version=opset,
            verbose=False,
        )
    assert program is not None
    # One self-contained file (the protobuf limit is 2 GiB; the largest variant's image half is
    # about 1.6 GB).
    _publish(path, lambda tmp: program.save(tmp, external_data=False))


def _export_torch(graph: nn.Module, args: tuple[torch.Tensor, ...], dims: dict[str, dict[int, Any]],
                  path: Path) -> None:
    with torch.no_grad():
        program = torch.export.export(graph, args, dynamic_shapes=dims)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: torch checks a path's suffix
            torch.export.save(program, f)

    _publish(path, write)


def save_text_embeddings(
    path: str | os.PathLike[str],
    classes: Sequence[str],
    embeddings: torch.Tensor,
    *,
    overwrite: bool = False,
) -> Path:
    """Write one vocabulary's text embeddings as ``.npz``: ``embeddings (K, P, D)`` float32 and
    ``classes (K,)`` unicode strings (loadable with ``allow_pickle=False``), atomically."""
    path = Path(path)
    names = validate_classes(classes)
    if embeddings.dim() != 3 or embeddings.shape[0] != len(names):
        raise ValueError(
            f"text embeddings must be (K={len(names)}, P, D), got {tuple(embeddings.shape)}"
        )
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    array = embeddings.detach().float().cpu().numpy()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, embeddings=array, classes=np.array(names, dtype=np.str_))

    _publish(path, write)
    return path


def load_text_embeddings(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """Read a file of :func:`save_text_embeddings`: ``(classes, embeddings (K, P, D))``."""
    with np.load(Path(path), allow_pickle=False) as data:
        return [str(c) for c in data["classes"]], np.asarray(data["embeddings"], dtype=np.float32)


def _io_entry(name: str, shape: Sequence[int | str], description: str) -> dict[str, Any]:
    return {"name": name, "shape": list(shape), "dtype": "float32", "description": description}


def _graph_entries(model: LMSeg, traced: _Traced) -> dict[str, Any]:
    """Input and output names and shapes of both graphs (symbolic dimensions by name)."""
    feature_shapes = [tuple(t.shape[1:]) for t in traced.class_args[:3]]
    (d, h, w), (g0, h2, w2), (g1, h4, w4) = feature_shapes
    p, dim = model.num_prompts, model.embed_dim
    features = [
        _io_entry("embedding", ["batch", d, h, w], "(fused) dense image embedding F"),
        _io_entry("decoder_guidance_0", ["batch", g0, h2, w2], "projected decoder guidance, 2h x 2w"),
        _io_entry("decoder_guidance_1", ["batch", g1, h4, w4], "projected decoder guidance, 4h x 4w"),
    ]
    return {
        "image_encoder": {
            "inputs": [_io_entry("images", ["batch", 3, "height", "width"],
                                 "RGB in [0, 1]; resized and normalised inside the graph")],
            "outputs": features,
        },
        "class_decoder": {
            "inputs": [*features, _io_entry("text_embeddings", ["classes", p, dim],
                                            "prompt embeddings of the K classes (text/*.npz)")],
            "outputs": [_io_entry("logits", ["batch", "classes", h4, w4],
                                  "per-class logits at 4h x 4w; sigmoid gives probabilities")],
        },
    }


def _preprocessing(model: LMSeg) -> dict[str, Any]:
    """How the graph's encoders see an image (for runtimes that want to check or mirror it)."""
    encoder = model.vision_language_encoder
    info: dict[str, Any] = {
        "input": "RGB float32 in [0, 1], (B, 3, H, W), any H x W",
        "vision_language_encoder": {
            "resize": list(encoder.image_size),
            "interpolation": "bilinear, align_corners=False",
            "mean": [float(v) for v in getattr(encoder, "mean", torch.zeros(3)).flatten()],
            "std": [float(v) for v in getattr(encoder, "std", torch.ones(3)).flatten()],
        },
    }
    spatial = model.spatial_encoder
    if spatial is not None:
        size = getattr(spatial, "image_size", None)
        info["spatial_encoder"] = {
            "resize": [size, size] if isinstance(size, int) else size,
            "interpolation": "bilinear, align_corners=False, antialias",
            "mean": [float(v) for v in getattr(spatial, "mean", torch.zeros(3)).flatten()],
            "std": [float(v) for v in getattr(spatial, "std", torch.ones(3)).flatten()],
        }
    info["postprocessing"] = (
        "sigmoid of the logits, bilinear upsampling (align_corners=False) to the image size, "
        "arg-max over classes (as lmseg's whole-image inference)"
    )
    return info


def export_model(
    model: LMSeg,
    out: str | os.PathLike[str],
    *,
    format: ExportFormat = "onnx",
    vocabularies: Mapping[str, Sequence[str]] | None = None,
    prompt_mode: str | None = None,
    prompt_bank: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export the two halves of ``model`` (and text embeddings) into the folder ``out``.

    Args:
        model: the model (evaluation mode is set; fp32 weights are exported as they are).
        out: output folder (created).
        format: ``"onnx"`` (onnxruntime and other ONNX runtimes) or ``"torch-export"``
            (``torch.export`` programs, ``.pt2``, loadable with ``torch.export.load``).
        vocabularies: name -> class names; each becomes ``text/NAME.npz``.
        prompt_mode: how class names become prompts (the :class:`~lmseg.segmenter.Segmenter`
            default for the model when None).
        prompt_bank: a prompt bank for every vocabulary (the shipped banks when None).
        opset: ONNX opset (18 or later: SAM's antialiased resize needs 18).
        overwrite: replace files of an earlier export.

    Returns:
        The manifest (also written to ``out/manifest.json``).

    Raises:
        FileExistsError: a file of the export exists and ``overwrite`` is False (nothing is
            written then).
        ValueError: an unknown format, a bad vocabulary name or class list, an opset below 18.
        ImportError: ONNX export without onnx and onnxscript (``pip install 'lmseg[onnx]'``).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {FORMATS}")
    if format == "onnx" and opset < 18:
        raise ValueError(f"opset {opset} is too old: the antialiased resize of SAM needs opset 18")
    if format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401  (torch's ONNX exporter translates through it)
        except ImportError as error:
            raise ImportError(
                "ONNX export needs onnx and onnxscript: pip install 'lmseg[onnx]'"
            ) from error
    lists = {_check_vocabulary_name(k): validate_classes(v) for k, v in (vocabularies or {}).items()}
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    targets = _targets(out, format, lists)
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} exist{'s' if len(existing) == 1 else ''}; "
            "pass overwrite=True (--overwrite) to replace"
        )
    model = model.eval()
    if model.cost_volume.embed.weight.dtype != torch.float32:
        raise ValueError("export takes fp32 weights; call model.float() first")

    from lmseg import __version__

    # Text embeddings first, in memory: an unknown prompt mode or a bank that does not fit fails
    # before the slow export. Files are written after the graphs, the manifest last.
    texts: dict[str, tuple[list[str], torch.Tensor, str]] = {}
    if lists:
        from lmseg.segmenter import Segmenter

        segmenter = Segmenter(model, prompt_mode=prompt_mode, prompt_bank=prompt_bank)
        for name, classes in lists.items():
            texts[name] = (classes, segmenter.text_embeddings(classes), segmenter.prompt_mode)

    traced = _examples(model)
    image_graph = ImageEncoderGraph(model=model).eval()
    class_graph = ClassDecoderGraph(model=model).eval()
    suffix = _SUFFIX[format]
    files = {name: out / f"{name}{suffix}" for name in GRAPHS}
    if format == "onnx":
        _export_onnx(image_graph, traced.image_args, traced.image_dims, IMAGE_INPUTS, FEATURES,
                     opset, files["image_encoder"])
        _export_onnx(class_graph, traced.class_args, traced.class_dims, CLASS_INPUTS,
                     CLASS_OUTPUTS, opset, files["class_decoder"])
        written_opset = _opset_of(files["class_decoder"])
    else:
        _export_torch(image_graph, traced.image_args, traced.image_dims, files["image_encoder"])
        _export_torch(class_graph, traced.class_args, traced.class_dims, files["class_decoder"])
        written_opset = None

    text_entries: dict[str, Any] = {}
    for name, (classes, embeddings, mode) in texts.items():
        path = save_text_embeddings(
            out / TEXT_FOLDER / f"{name}.npz", classes, embeddings, overwrite=overwrite
        )
        text_entries[name] = {
            "file": path.relative_to(out).as_posix(),
            "classes": len(classes),
            "shape": list(embeddings.shape),
            "prompt_mode": mode,
        }
    graphs = _graph_entries(model, traced)
    for key, path in files.items():
        graphs[key] = {"file": path.name, **graphs[key]}
    manifest = {
        "format": format,
        "lmseg_version": __version__,
        "torch_version": torch.__version__,
        "opset": written_opset,
        "model": {"name": model.config.get("name"), "config": model.config},
        "mode": {
            "class_filtering": None,
            "description": "exact: every class of the vocabulary is scored (no top-k filtering); "
            "every chunk loop is a single pass over all K classes",
        },
        "dynamic_dimensions": {
            "batch": [1, MAX_BATCH],
            "classes": [1, MAX_CLASSES],
            "height": [1, MAX_IMAGE_SIDE],
            "width": [1, MAX_IMAGE_SIDE],
        },
        "graphs": graphs,
        "preprocessing": _preprocessing(model),
        "text_embeddings": text_entries,
    }
    text = json.dumps(manifest, indent=2, default=_jsonable)
    _publish(out / MANIFEST, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    return json.loads(text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to the manifest")


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an export folder, with a clear error when there is none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not an lmseg export folder")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") not in FORMATS:
        raise ValueError(f"{path} names no known export format")
    return manifest


class _Runner:
    """Runs an export folder's two graphs on numpy inputs (onnxruntime or torch.export)."""

    def __init__(self, directory: Path, manifest: dict[str, Any], threads: int | None) -> None:
        self.format = manifest["format"]
        files = {key: directory / manifest["graphs"][key]["file"] for key in GRAPHS}
        if self.format == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads is not None:
                options.intra_op_num_threads = threads
            self.sessions = {
                key: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for key, path in files.items()
            }
        else:
            self.programs = {key: torch.export.load(str(path)).module() for key, path in files.items()}

    def __call__(self, key: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.format == "onnx":
            return list(self.sessions[key].run(None, inputs))
        with torch.no_grad():
            result = self.programs[key](*(torch.from_numpy(v) for v in inputs.values()))
        results = result if isinstance(result, (tuple, list)) else [result]
        return [r.numpy() for r in results]


def verify_export(
    directory: str | os.PathLike[str],
    model: LMSeg,
    *,
    classes: Sequence[int] = (5, 150, 847),
    batch_size: int = 2,
    image_size: tuple[int, int] = (240, 320),
    runtime: RuntimeOptions | None = None,
    threads: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Run an export's graphs and ``model`` on the same random inputs and compare.

    The PyTorch side is the model as users call it (``runtime``: exact mode with the default
    chunking); the exported side is onnxruntime on CPU (ONNX) or the loaded ``torch.export``
    programs.

    Args:
        directory: an export folder of :func:`export_model` for this model.
        model: the PyTorch model it was exported from.
        classes: vocabulary sizes K to check (random text embeddings ``(K, P, D)``).
        batch_size: images per call (random RGB ``(B, 3, H, W)`` in [0, 1]).
        image_size: (H, W) of the images.
        runtime: the PyTorch runtime (default ``RuntimeOptions(top_k=None)``).
        threads: onnxruntime's intra-op threads (its default when None).
        seed: seeds the inputs.

    Returns:
        One row per K: ``classes``, ``batch``, ``max_abs_feature_difference``,
        ``max_abs_logit_difference``, ``max_abs_logit`` and ``argmax_agreement`` (share of
        logit-map positions whose arg-max over classes agrees).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    runner = _Runner(directory, manifest, threads)
    runtime = runtime or RuntimeOptions(top_k=None)
    model = model.eval()
    device = model.cost_volume.embed.weight.device
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, *image_size, generator=generator)
    with torch.no_grad():
        features = model.encode_image(images.to(device), runtime)
    expected = [features.embedding, *features.decoder_guidance]
    exported = runner("image_encoder", {"images": images.numpy()})
    feature_difference = max(
        float(np.abs(e.detach().cpu().numpy() - x).max())
        for e, x in zip(expected, exported, strict=True)
        if e is not None
    )
    rows = []
    for k in classes:
        text = torch.randn(k, model.num_prompts, model.embed_dim, generator=generator)
        with torch.no_grad():
            reference = model.decode(features, text.to(device), runtime).cpu().numpy()
        inputs = dict(zip(FEATURES, exported, strict=True))
        logits = runner("class_decoder", {**inputs, "text_embeddings": text.numpy()})[0]
        if logits.shape != reference.shape:
            raise AssertionError(f"exported logits {logits.shape} vs PyTorch {reference.shape}")
        rows.append({
            "classes": int(k),
            "batch": batch_size,
            "image_size": list(image_size),
            "max_abs_feature_difference": feature_difference,
            "max_abs_logit_difference": float(np.abs(logits - reference).max()),
            "max_abs_logit": float(np.abs(reference).max()),
            "argmax_agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
        })
    return rows
