"""Segment an image with an exported lmseg model and onnxruntime alone: no torch, no lmseg.

Needs numpy, pillow and onnxruntime. First export a model with its vocabulary (with lmseg
installed, once):

    lmseg export lmseg_tiny --format onnx --vocabulary voc20 --out exported/

then, anywhere onnxruntime runs:

    python examples/onnx_inference.py exported/ photo.jpg --vocabulary voc20 --out labels.png

What happens, the same steps as lmseg's whole-image inference:

1. the image becomes RGB float32 in [0, 1], ``(1, 3, H, W)`` (EXIF orientation applied, alpha
   dropped); the encoders' own resizing (bilinear to their input sizes, antialiased for SAM) and
   normalisation are inside the image graph, as they are inside lmseg's encoders, so any H × W
   goes in as it is;
2. ``image_encoder.onnx``: images -> the image features;
3. ``class_decoder.onnx``: features + the vocabulary's text embeddings ``(K, P, D)`` -> logits
   ``(1, K, 4h, 4w)``;
4. sigmoid, bilinear upsampling (align_corners=False) to H × W and the arg-max over classes,
   one class chunk at a time;
5. a label PNG: 8-bit class indices for K ≤ 256, 16-bit above.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def load_rgb(path: str | Path) -> np.ndarray:
    """An 8-bit image file as ``(1, 3, H, W)`` float32 RGB in [0, 1]."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
        array = np.asarray(image, dtype=np.float32) / 255.0
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None])


def interpolation_matrix(out_size: int, in_size: int) -> np.ndarray:
    """``(out_size, in_size)`` weights of 1-D linear interpolation with half-pixel centres
    (``align_corners=False``): source ``(i + 0.5) · in / out − 0.5``, clamped at 0, between its
    two neighbours (the last one repeated at the border)."""
    source = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5, 0)
    low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    weight = source - low
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), 1 - weight)
    np.add.at(matrix, (rows, high), weight)
    return matrix.astype(np.float32)


def upsampled_argmax(logits: np.ndarray, size: tuple[int, int], chunk: int = 64) -> np.ndarray:
    """Arg-max over classes of sigmoid probabilities ``(K, h, w)`` upsampled bilinearly to
    ``size``, ``chunk`` classes at a time (memory does not grow with K); the first class wins
    ties. Returns ``(H, W)`` int64."""
    rows = interpolation_matrix(size[0], logits.shape[1])
    cols = interpolation_matrix(size[1], logits.shape[2])
    labels = np.zeros(size, dtype=np.int64)
    best = np.full(size, -1.0, dtype=np.float32)
    for start in range(0, logits.shape[0], chunk):
        part = logits[start : start + chunk].astype(np.float32)
        probabilities = 1.0 / (1.0 + np.exp(-part))
        up = np.einsum("ij,kjl,ml->kim", rows, probabilities, cols, optimize=True)
        index = up.argmax(axis=0)
        value = np.take_along_axis(up, index[None], axis=0)[0]
        better = value > best
        best = np.where(better, value, best)
        labels = np.where(better, index + start, labels)
    return labels


def load_vocabulary(directory: Path, manifest: dict[str, Any], name: str | None) -> tuple[list[str], np.ndarray]:
    """Class names and text embeddings ``(K, P, D)`` of one exported vocabulary."""
    entries = manifest["text_embeddings"]
    if not entries:
        raise SystemExit("error: the export has no text embeddings; export with --vocabulary or --classes")
    if name is None:
        name = next(iter(entries))
    if name not in entries:
        raise SystemExit(f"error: no vocabulary {name!r} in the export; it has {', '.join(entries)}")
    with np.load(directory / entries[name]["file"], allow_pickle=False) as data:
        return [str(c) for c in data["classes"]], np.asarray(data["embeddings"], dtype=np.float32)


def segment(
    directory: str | Path, image_path: str | Path, vocabulary: str | None = None, threads: int | None = None
) -> tuple[np.ndarray, list[str]]:
    """Label map ``(H, W)`` int64 of an image and the class names its values index."""
    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("format") != "onnx":
        raise SystemExit(f"error: {directory} holds a {manifest.get('format')!r} export, not ONNX")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    graphs = manifest["graphs"]
    sessions = {
        key: ort.InferenceSession(str(directory / graphs[key]["file"]), options, providers=["CPUExecutionProvider"])
        for key in ("image_encoder", "class_decoder")
    }
    classes, text = load_vocabulary(directory, manifest, vocabulary)
    images = load_rgb(image_path)
    feature_names = [o["name"] for o in graphs["image_encoder"]["outputs"]]
    features = sessions["image_encoder"].run(feature_names, {"images": images})
    inputs = dict(zip(feature_names, features, strict=True))
    (logits,) = sessions["class_decoder"].run(["logits"], {**inputs, "text_embeddings": text})
    return upsampled_argmax(logits[0], images.shape[-2:]), classes


def save_labels(labels: np.ndarray, num_classes: int, path: str | Path) -> None:
    """A label PNG: 8-bit indices for up to 256 classes, 16-bit for more."""
    if num_classes <= 256:
        Image.fromarray(labels.astype(np.uint8)).save(path)
    else:
        Image.fromarray(labels.astype(np.uint16)).save(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Segment an image with an ONNX export of lmseg.")
    parser.add_argument("export", help="folder written by `lmseg export --format onnx`")
    parser.add_argument("image", help="image file")
    parser.add_argument("--vocabulary", help="exported vocabulary (text/NAME.npz; default: the first)")
    parser.add_argument("--out", default="labels.png", help="label PNG to write (default labels.png)")
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: its own)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    labels, classes = segment(args.export, args.image, args.vocabulary, args.threads)
    save_labels(labels, len(classes), args.out)
    shares = np.bincount(labels.ravel(), minlength=len(classes)) / labels.size
    top = ", ".join(f"{classes[i]} {100 * shares[i]:.1f}%" for i in np.argsort(-shares)[:5] if shares[i] > 0)
    print(f"{args.out}: {labels.shape[1]}x{labels.shape[0]} labels over {len(classes)} classes "
          f"in {time.perf_counter() - start:.2f} s; largest: {top}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
