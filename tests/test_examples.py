"""Every example script runs offline on CPU, and what it prints or writes is checked for content.

Each example runs in-process in a fresh folder with a fixed seed; its check recomputes what the
example claims (labels, counts, shapes, prompt strings, cached embeddings, result tables) with
the library or from the definitions, and compares.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import lmseg
from lmseg.segmenter import Segmenter
from lmseg.visualize import palette

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SEED = 0


def check_segment_image(out: str) -> None:
    folder = Path("outputs/segment_image")
    classes = ["sky", "grass", "ball", "road"]
    assert re.search(r"^model lmseg_tiny: 320x240 label map in [\d.]+ s$", out, re.MULTILINE)
    counts = ast.literal_eval(re.search(r"^pixels per class: (\{.*\})$", out, re.MULTILINE).group(1))
    torch.manual_seed(SEED)  # the example's model: same seed, same random weights
    labels = Segmenter(lmseg.create_model("lmseg_tiny")).predict(folder / "sample.png", classes).labels
    assert labels.shape == (240, 320)
    assert counts == {c: int((labels == i).sum()) for i, c in enumerate(classes)}
    scene = np.asarray(Image.open(folder / "sample.png").convert("RGB"))
    assert tuple(scene[10, 10]) == (135, 190, 235) and tuple(scene[230, 5]) == (70, 150, 60)
    overlay = np.asarray(Image.open(folder / "overlay.png").convert("RGB"))
    expected = (0.5 * scene + 0.5 * palette(4)[labels].astype(np.float64)).round()
    np.testing.assert_allclose(overlay[:240, :320], expected, atol=1)
    assert overlay.shape[1] > 320  # the legend
    assert f"overlay written to {folder / 'overlay.png'}" in out


def check_segment_vocabulary(out: str) -> None:
    from lmseg.vocabularies import load_vocabulary

    folder = Path("outputs/segment_vocabulary")
    classes = load_vocabulary("voc20")
    torch.manual_seed(SEED)
    segmenter = Segmenter(lmseg.create_model("lmseg_tiny"), sliding_window=True)
    labels = segmenter.predict(folder / "noise.png", classes)
    present = len(np.unique(labels))
    assert f"voc20: 20 classes, prompts from the shipped bank (P=4); {present} present" in out
    overlay = np.asarray(Image.open(folder / "overlay.png").convert("RGB"))
    noise = np.asarray(Image.open(folder / "noise.png").convert("RGB")).astype(np.float64)
    np.testing.assert_allclose(overlay[:180, :240], (0.5 * noise + 0.5 * palette(20)[labels]).round(), atol=1)


def check_compose_blocks(out: str) -> None:
    # 3 classes x 2 prompts of the 64-wide tiny CLIP; 128 px / patch 8 = 16x16 grid -> 64x64 logits
    assert "text (3, 2, 64) -> logits (1, 3, 64, 64) (B, K, 4h, 4w)" in out
    count = int(re.search(r"composed model: ([\d,]+) parameters", out).group(1).replace(",", ""))
    assert count > 1_000_000


def check_swap_fusion(out: str) -> None:
    # every variant starts at the configured CLIP weight 0.7; w's shape says what it varies over
    shapes = {"scalar": "(1, 1, 1, 1)", "channel": "(1, 32, 1, 1)", "pixel": "(1, 1, 12, 12)",
              "adaptive": "(1, 1, 12, 12)"}
    for mode, shape in shapes.items():
        line = next(line for line in out.splitlines() if line.startswith(mode))
        assert line.split() == [mode, "w", "shape", *shape.split(), "mean", "0.700", "logits",
                                "(1,", "5,", "48,", "48)"], line
    assert "no fusion: spatial_encoder=None, fusion=None" in out


def check_prompt_bank(out: str) -> None:
    from lmseg.prompts import encode_prompts, load_bank

    folder = Path("outputs/prompt_bank")
    bank = load_bank(folder / "kitchen.json")
    assert [c.name for c in bank.classes] == ["kettle", "toaster"]
    assert "validation problems: none" in out
    # CAT-Seg's template, then one sentence per attribute appended after ". " (LMSeg)
    kettle = [
        "A photo of a kettle in the scene",
        "A photo of a kettle in the scene. It is usually steel, white or black.",
        "A photo of a kettle in the scene. It is a squat jug with a spout and a handle.",
        "A photo of a kettle in the scene. It has a glossy metal or plastic surface.",
    ]
    printed = [line.strip() for line in out.splitlines() if line.startswith("   ")]
    assert printed == kettle
    assert "computed: embeddings (2, 4, 32)" in out and "cached: embeddings (2, 4, 32)" in out
    cached = list((folder / "cache").glob("*.safetensors"))
    assert len(cached) == 1  # the second call read the first one's file
    (stored,) = load_file(cached[0]).values()
    torch.manual_seed(SEED)
    model = lmseg.create_model("lmseg_tiny")
    toaster = [
        "A photo of a toaster in the scene",
        "A photo of a toaster in the scene. It is chrome, white or pastel coloured.",
        "A photo of a toaster in the scene. It is a small box with two slots on top.",
        "A photo of a toaster in the scene. It has smooth brushed metal sides.",
    ]
    with torch.no_grad():
        expected = encode_prompts(model.text_encoder, [kettle, toaster])
    torch.testing.assert_close(stored.float(), expected, rtol=1e-5, atol=1e-6)


def check_synthetic_zero_shot(out: str) -> None:
    results = json.loads(Path("out/results.json").read_text())
    summary = results["summary"]
    assert summary, "no configuration was run"
    for row in summary.values():
        unseen, seen = row["unseen_mIoU"]["mean"], row["seen_mIoU"]["mean"]
        assert 0 <= unseen <= 100 and 0 <= seen <= 100
        # the printed table shows the numbers of the file
        line = next(line for line in out.splitlines() if line.startswith(f"| {row['name']} |"))
        assert f"{unseen:.1f}" in line and f"{seen:.1f}" in line, line
    for run in results["runs"]:
        assert run["unseen_mIoU"] == pytest.approx(summary[run["row"]]["unseen_by_seed"][str(run["seed"])])
    chance = results["reference"]["unseen"]["chance"]
    assert f"| chance (perfect masks, random class) | {chance:.1f} |" in out
    with Image.open("out/unseen_predictions.png") as figure:
        assert figure.width > 64 and figure.height > 64


def check_add_your_own_block(out: str) -> None:
    """The new blocks are built, trained, saved in the config, refused without their
    registration, and the reloaded model gives the same logits."""
    from safetensors import safe_open

    from lmseg.aggregation import CLASS_ATTENTIONS
    from lmseg.encoders import SPATIAL_ENCODERS

    try:
        assert "unknown option(s) ['widht'] for spatial encoder 'tiny_conv'" in out
        padding = re.search(r"3 explicit padding tokens: max \|difference\| (\S+)", out)
        assert padding and float(padding.group(1)) < 1e-5
        assert "spatial encoder TinyConvEncoder, class attention CosineClassAttention" in out
        assert "the new encoder's weights changed" in out
        assert "without the registration:" in out and "unknown spatial encoder type 'tiny_conv'" in out
        assert "max |difference| 0: identical" in out
        # the test runs in its own directory
        with safe_open("out/model.safetensors", "pt") as f:
            config = json.loads(f.metadata()["lmseg_config"])
        assert config["spatial_encoder"] == {"type": "tiny_conv", "width": 16}
        assert config["aggregator"]["class_attention"] == {"type": "cosine"}
    finally:  # leave the registries as the other tests expect them
        SPATIAL_ENCODERS.unregister("tiny_conv")
        CLASS_ATTENTIONS.unregister("cosine")



ARGS: dict[str, list[str] | None] = {
    "segment_image.py": [],
    "segment_vocabulary.py": ["--vocabulary", "voc20", "--sliding-window"],
    "compose_blocks.py": None,
    "swap_fusion.py": None,
    "prompt_bank.py": None,
    "synthetic_zero_shot.py": ["--smoke", "--no-progress", "--out", "out"],
    "add_your_own_block.py": ["--steps", "2", "--out", "out"],
}
CHECKS: dict[str, Callable[[str], None]] = {
    "segment_image.py": check_segment_image,
    "segment_vocabulary.py": check_segment_vocabulary,
    "compose_blocks.py": check_compose_blocks,
    "swap_fusion.py": check_swap_fusion,
    "prompt_bank.py": check_prompt_bank,
    "synthetic_zero_shot.py": check_synthetic_zero_shot,
    "add_your_own_block.py": check_add_your_own_block,
}

# Examples that need files another step writes, run by their own tests.
TESTED_ELSEWHERE = {"onnx_inference.py": "tests/test_export.py (after an ONNX export)"}


def test_every_example_is_covered():
    assert {p.name for p in EXAMPLES.glob("*.py")} <= set(ARGS) | set(TESTED_ELSEWHERE)
    assert set(ARGS) == set(CHECKS)


@pytest.mark.parametrize("name", sorted(ARGS))
def test_example_output(name, tmp_path, monkeypatch, capsys):
    path = EXAMPLES / name
    if not path.exists():
        pytest.skip(f"{name} is not part of this checkout")
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "argv", [str(path)])
    spec.loader.exec_module(module)
    torch.manual_seed(SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ARGS[name]
        rc = module.main() if args is None else module.main(args)
    assert rc == 0
    out = capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CHECKS[name](out)
