"""Exported graphs (ONNX through onnxruntime, torch.export) reproduce the PyTorch model.

Tiny random-weight models; each export is done once per module (about ten seconds each on two
cores). The logits of the exported pair are compared with the eager model as users run it
(exact mode, default chunking) on the same random inputs, at vocabulary sizes below and above the
tiny models' ``pad_len`` (16) and at batch sizes other than the one traced.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lmseg import create_model
from lmseg.aggregation.class_aggregation import ClassAggregation
from lmseg.aggregation.class_attention import SoftmaxClassAttention
from lmseg.checkpoint import save_model
from lmseg.cli import main
from lmseg.export import (
    EXPORT_RUNTIME,
    export_model,
    load_text_embeddings,
    read_manifest,
    verify_export,
)
from lmseg.runtime import RuntimeOptions
from lmseg.segmenter import Segmenter
from lmseg.segmenter import upsampled_argmax as torch_upsampled_argmax
from lmseg.vocabularies import load_vocabulary

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
# The CLI export names classes no shipped prompt bank has: the template alone, with a notice.
pytestmark = pytest.mark.filterwarnings("ignore::lmseg.prompts.MissingBankWarning")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "onnx_inference.py"
TOLERANCE = 1e-4  # the largest logit difference accepted between the exported pair and PyTorch
EXACT = RuntimeOptions(top_k=None)


def _seeded(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(name).eval()


@pytest.fixture(scope="module")
def lmseg_onnx(tmp_path_factory):
    """lmseg_tiny exported to ONNX with the voc20 embeddings."""
    model = _seeded("lmseg_tiny")
    out = tmp_path_factory.mktemp("lmseg_onnx")
    manifest = export_model(model, out, vocabularies={"voc20": load_vocabulary("voc20")})
    return model, out, manifest


@pytest.fixture(scope="module")
def catseg_cli(tmp_path_factory):
    """catseg_tiny exported by the CLI from a checkpoint, over a stale earlier export."""
    model = _seeded("catseg_tiny", seed=1)
    root = tmp_path_factory.mktemp("catseg_cli")
    checkpoint = root / "catseg_tiny.safetensors"
    save_model(model, checkpoint)
    out = root / "export"
    out.mkdir()
    (out / "manifest.json").write_text('{"stale": true}')
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--classes",
            "cat, dog,sky", "--classes-name", "pets", "--overwrite", "--quiet", "--verify",
            "--verify-classes", "5", "17"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(argv)
    return model, out, rc, printed.getvalue()


@pytest.mark.parametrize("which", ["lmseg", "catseg"])
def test_onnx_pair_reproduces_pytorch_logits(which, lmseg_onnx, catseg_cli):
    """K = 5, 17 (> pad_len 16) and 64 at batch 3 (traced with 2), non-square images."""
    model, out = (lmseg_onnx if which == "lmseg" else catseg_cli)[:2]
    rows = verify_export(out, model, classes=(5, 17, 64), batch_size=3, image_size=(70, 110))
    assert [r["classes"] for r in rows] == [5, 17, 64]
    for row in rows:
        assert row["max_abs_feature_difference"] < TOLERANCE, row
        assert row["max_abs_logit_difference"] < TOLERANCE, row
        assert row["max_abs_logit"] > 0.1  # the comparison is not between near-zero maps


def test_onnx_pair_at_one_image_one_class_and_the_encoders_own_size(lmseg_onnx):
    """Batch 1, K = 1 and images already at the CLIP encoder's 96 px (where eager skips the
    resize the graph always does: resizing to the same size is the identity)."""
    model, out, _ = lmseg_onnx
    (row,) = verify_export(out, model, classes=(1,), batch_size=1, image_size=(96, 96))
    assert row["max_abs_feature_difference"] < TOLERANCE
    assert row["max_abs_logit_difference"] < TOLERANCE


def test_manifest_names_what_the_graphs_take(lmseg_onnx):
    model, out, manifest = lmseg_onnx
    assert read_manifest(out) == manifest
    assert manifest["format"] == "onnx" and manifest["opset"] == 18
    assert manifest["model"]["config"] == json.loads(json.dumps(model.config))
    assert manifest["mode"]["class_filtering"] is None
    for key in ("image_encoder", "class_decoder"):
        graph = manifest["graphs"][key]
        session = ort.InferenceSession(str(out / graph["file"]), providers=["CPUExecutionProvider"])
        for entries, actual in ((graph["inputs"], session.get_inputs()),
                                (graph["outputs"], session.get_outputs())):
            assert [e["name"] for e in entries] == [a.name for a in actual]
            for entry, node in zip(entries, actual, strict=True):
                assert len(entry["shape"]) == len(node.shape)
                for want, got in zip(entry["shape"], node.shape, strict=True):
                    # Named dimensions are dynamic in the graph; numbers are fixed.
                    assert isinstance(got, str) if isinstance(want, str) else got == want
    decoder = manifest["graphs"]["class_decoder"]
    assert decoder["inputs"][-1]["shape"] == ["classes", 4, 32]
    assert decoder["outputs"][0]["shape"] == ["batch", "classes", 48, 48]


def test_text_embeddings_are_the_segmenters(lmseg_onnx):
    model, out, manifest = lmseg_onnx
    entry = manifest["text_embeddings"]["voc20"]
    classes, embeddings = load_text_embeddings(out / entry["file"])
    vocabulary = load_vocabulary("voc20")
    assert classes == vocabulary
    expected = Segmenter(model).text_embeddings(vocabulary)
    np.testing.assert_array_equal(embeddings, expected.numpy())
    assert entry["shape"] == [20, 4, 32]


def test_export_never_overwrites_unless_asked(lmseg_onnx):
    model, out, _ = lmseg_onnx
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match="manifest.json"):
        export_model(model, out)
    assert main(["export", "lmseg_tiny", "--out", str(out)]) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_cli_exports_a_checkpoint_over_an_earlier_export(catseg_cli):
    model, out, rc, printed = catseg_cli
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert "stale" not in manifest and manifest["model"]["name"] == "catseg_tiny"
    classes, embeddings = load_text_embeddings(out / "text" / "pets.npz")
    assert classes == ["cat", "dog", "sky"] and embeddings.shape == (3, 1, 32)
    assert not [p for p in out.rglob("*.tmp")]  # atomic writes leave no temporary file


def test_cli_verify_prints_the_differences(catseg_cli):
    rows = [line.split() for line in catseg_cli[3].splitlines()[1:]]
    assert [int(row[0]) for row in rows] == [5, 17]
    assert all(float(row[3]) < TOLERANCE for row in rows)  # max |d logits|


def test_cli_reports_bad_requests(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path)]) == 1
    assert "--model" in capsys.readouterr().err
    assert main(["export", "lmseg_tiny", "--vocabulary", "nope", "--out", str(tmp_path)]) == 1
    assert "unknown vocabulary" in capsys.readouterr().err
    assert main(["export", "lmseg_tiny", "--classes", "a,a", "--out", str(tmp_path)]) == 1
    assert "duplicate class names" in capsys.readouterr().err
    assert main(["export", "lmseg_tiny", "--opset", "17", "--out", str(tmp_path)]) == 1
    assert "opset 18" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_torch_export_programs_reproduce_pytorch(tmp_path):
    model = _seeded("catseg_tiny", seed=2)
    manifest = export_model(model, tmp_path, format="torch-export")
    assert manifest["opset"] is None and (tmp_path / "class_decoder.pt2").is_file()
    rows = verify_export(tmp_path, model, classes=(2, 20), batch_size=1, image_size=(50, 130))
    for row in rows:
        assert row["max_abs_logit_difference"] < TOLERANCE, row


# -- the shape-polymorphic paths the graphs rely on ---------------------------------------------


class _ClassAggregationGraph(torch.nn.Module):
    def __init__(self, block: ClassAggregation) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        return self.block(x, guidance, runtime=EXPORT_RUNTIME)


@pytest.mark.parametrize("attention", ["linear", "softmax"])
def test_class_padding_count_is_traced_for_every_k(attention):
    """One program traced with K = 3 gives the eager results for K below, at and above pad_len:
    the padding count max(pad_len - K, 0) is computed in the graph, not fixed at trace time."""
    torch.manual_seed(0)
    kernel = SoftmaxClassAttention() if attention == "softmax" else None
    block = ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=6, attention=kernel).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5)  # the padding tokens start at zero: make them matter
    classes = torch.export.Dim("classes", min=1, max=1000)
    example = (torch.randn(1, 3, 4, 4, 16), torch.randn(1, 3, 8))
    with torch.no_grad():
        program = torch.export.export(
            _ClassAggregationGraph(block), example,
            dynamic_shapes={"x": {1: classes}, "guidance": {1: classes}},
        ).module()
        for k in (2, 6, 9):
            x, guidance = torch.randn(1, k, 4, 4, 16), torch.randn(1, k, 8)
            expected = block(x, guidance, runtime=EXACT)
            torch.testing.assert_close(program(x, guidance), expected, atol=1e-5, rtol=1e-5)


def test_spatial_encoder_graph_takes_any_batch(lmseg_onnx):
    """SAM encodes one image at a time on CPU; a graph traced for any batch encodes the batch."""
    model, out, _ = lmseg_onnx
    sam = model.spatial_encoder
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        program = torch.export.export(sam, (torch.rand(2, 3, 64, 64),),
                                      dynamic_shapes={"images": {0: batch}}).module()
        images = torch.rand(3, 3, 64, 64)
        torch.testing.assert_close(program(images), sam(images), atol=1e-5, rtol=1e-5)


# -- the onnxruntime-only example ---------------------------------------------------------------


def _load_example():
    spec = importlib.util.spec_from_file_location("onnx_inference", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_upsampling_is_torchs_bilinear():
    example = _load_example()
    for out_size, in_size in ((70, 48), (48, 48), (30, 48), (1, 5)):
        matrix = example.interpolation_matrix(out_size, in_size)
        eye = torch.eye(in_size)[None, None]  # interpolating the identity gives the weights
        expected = F.interpolate(eye, size=(out_size, in_size), mode="bilinear", align_corners=False)
        np.testing.assert_allclose(matrix, expected[0, 0].numpy(), atol=1e-5)  # torch: fp32 indices
    logits = torch.randn(70, 12, 12) * 3
    labels = example.upsampled_argmax(logits.numpy(), (50, 37), chunk=16)
    expected = torch_upsampled_argmax(logits.sigmoid().split(16), (50, 37))
    assert (labels == expected.numpy()).mean() > 0.999


def test_example_segments_with_onnxruntime_alone(lmseg_onnx, tmp_path):
    """The example runs with torch and lmseg made unimportable, and labels the image as lmseg's
    own exact whole-image inference does."""
    model, out, _ = lmseg_onnx
    image = tmp_path / "scene.png"
    pixels = np.random.default_rng(0).integers(0, 255, (70, 110, 3), np.uint8)
    Image.fromarray(pixels).save(image)
    labels_path = tmp_path / "labels.png"
    blocked = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None\n"  # any 'import torch' now raises ImportError
        "sys.modules['lmseg'] = None\n"
        f"sys.argv = ['onnx_inference.py', {str(out)!r}, {str(image)!r}, '--vocabulary', 'voc20',"
        f" '--out', {str(labels_path)!r}]\n"
        f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "20 classes" in result.stdout
    labels = np.asarray(Image.open(labels_path))
    expected = Segmenter(model, runtime=EXACT).predict(image, load_vocabulary("voc20")).labels
    assert labels.shape == expected.shape == (70, 110)
    assert (labels == expected).mean() > 0.999
