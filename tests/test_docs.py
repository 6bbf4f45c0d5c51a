"""Every ```python block of the block, getting-started, model and weights pages runs offline on
CPU and does what the page says.

The blocks of one page run in order in one namespace (a later block may use an earlier one's
names). A block preceded by a ``<!-- no-test -->`` line is skipped (snippets that need released
weights). After a page has run, its check (:data:`PAGE_CHECKS`) compares what the snippets printed
with what the page shows, and recomputes the values the page names (costs, padded outputs,
decoded logits, loaded weights, ...) independently. A changed snippet needs its check updated.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lmseg.aggregation.reference import class_aggregation as plain_class_aggregation
from lmseg.aggregation.reference import spatial_aggregation as plain_spatial_aggregation
from lmseg.aggregation.reference import upsampling_decoder as plain_decoder

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = [
    DOCS / "getting-started.md",
    DOCS / "model.md",
    DOCS / "weights.md",
    *sorted((DOCS / "blocks").glob("*.md")),
]

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_SKIP = "<!-- no-test -->"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` for every ```python block not marked with ``<!-- no-test -->``."""
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        if before and before[-1].strip() == _SKIP:
            continue
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return blocks


# -- what each page's snippets must show ---------------------------------------------------------
Namespace = dict[str, Any]


def check_getting_started(ns: Namespace, out: str) -> None:
    lines = out.splitlines()
    assert lines[0] == "(120, 160) int32"
    assert lines[1].startswith("duplicate class names: 'sky' (at 0) and 'Sky' (at 1); ")
    assert lines[2].startswith(
        "image scene.png is too large (160x120 = 19,200 pixels > max_pixels=10,000)"
    ) and "--max-pixels" in lines[2]
    assert lines[3:] == ["(3, 120, 160)", "torch.Size([1, 5, 48, 48])"]
    result = ns["result"]
    labels, probabilities = result.labels, result.probabilities
    # the path and the array give the same labels; labels are the arg-max of the probabilities
    from_path = ns["segmenter"].predict("scene.png", ["sky", "grass", "box"]).labels
    np.testing.assert_array_equal(labels, from_path)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    np.testing.assert_array_equal(labels, probabilities.argmax(0))
    from PIL import Image

    from lmseg.visualize import palette

    drawn = np.asarray(Image.open("scene_overlay.png").convert("RGB"))
    expected = (0.5 * ns["pixels"] + 0.5 * palette(3)[labels].astype(np.float64)).round()
    np.testing.assert_allclose(drawn[:120, :160], expected, atol=1)


def check_model(ns: Namespace, out: str) -> None:
    assert out == "adaptive SoftmaxClassAttention\n(1, 20, 48, 48)\n"
    model = ns["model"]
    assert model.fusion.head is not None  # the adaptive variant predicts w per pixel
    assert model.config["aggregator"]["class_attention"] == {"type": "softmax"}
    assert "top_k" not in model.config and "class_chunk" not in str(model.config)  # runtime only
    # the runtime's exact mode scored all 20 classes (none got the filtered logit)
    assert (ns["logits"] != -100).all()


def check_weights(ns: Namespace, out: str) -> None:
    from safetensors.torch import load_file

    lines = out.splitlines()
    assert float(lines[0]) == 1.0  # the training-free baseline's softmax over classes
    np.testing.assert_allclose(ns["result"].probabilities.sum(axis=0), 1.0, atol=1e-5)
    tags = [line.split()[0] for line in lines[1:3]]
    assert tags == ["catseg", "openai"] and lines[1].split()[1:3] == ["True", "catseg"]
    assert lines[3] == "('CLIP', 'aggregator')"
    assert "coco-lab" in lines[4]
    stored = load_file(ns["path"])  # read back with safetensors itself
    state = ns["model"].state_dict()
    assert set(stored) == set(state)
    for key, value in stored.items():
        assert torch.equal(state[key], value), key


def check_class_aggregation(ns: Namespace, out: str) -> None:
    assert out == "torch.Size([2, 5, 12, 12, 32])\n"
    with torch.no_grad():
        expected = plain_class_aggregation(ns["classes"], ns["x"], ns["text_guidance"])
    torch.testing.assert_close(ns["y"], expected, rtol=1e-5, atol=1e-5)


def check_cost_volume(ns: Namespace, out: str) -> None:
    assert out.splitlines() == [
        "torch.Size([2, 4, 20, 12, 12]) torch.Size([2, 8]) torch.Size([2, 20, 12, 12, 32])",
        "torch.Size([2, 20, 48, 48]) -100.0",
    ]
    image, text, cost = ns["image"], ns["text"], ns["cost"]
    unit_image = image / image.norm(dim=1, keepdim=True)
    unit_text = text / text.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(cost, torch.einsum("bdhw,kpd->bpkhw", unit_image, unit_text), rtol=1e-5, atol=1e-6)
    best = cost.amax(dim=(1, 3, 4))  # (B, K): the maximum over prompts and pixels
    for b in range(2):
        assert ns["keep"][b].tolist() == sorted(best[b].topk(8).indices.tolist())
        dropped = [k for k in range(20) if k not in ns["keep"][b].tolist()]
        assert (ns["logits"][b, dropped] == -100).all() and (ns["logits"][b, ns["keep"][b]] == 0).all()


def check_decoder(ns: Namespace, out: str) -> None:
    assert out == "[(2, 16, 24, 24), (2, 8, 48, 48)] (2, 5, 48, 48)\n"
    with torch.no_grad():
        expected = plain_decoder(ns["decoder"], ns["x"], ns["taps"])
    torch.testing.assert_close(ns["logits"], expected, rtol=1e-4, atol=1e-4)


def check_encoders(ns: Namespace, out: str) -> None:
    assert out.splitlines() == [
        "torch.Size([2, 32, 12, 12])",
        "[torch.Size([2, 32, 12, 12]), torch.Size([2, 32, 12, 12])]",
        "torch.Size([2, 32, 8, 8])",
        "torch.Size([2, 32, 8, 8])",  # DINOv2 at 112 px: 8x8 patches of 14
        "torch.Size([2, 32, 12, 12])",  # SigLIP's dense F_c on the 12x12 grid
    ]
    # the 96x128 images were resized to the encoder's 96x96 input: a 12x12 grid of 8 px patches
    assert ns["clip"].grid_size == (12, 12)
    assert not any(p.requires_grad for p in ns["sam"].parameters())  # SAM is frozen


def check_fusion(ns: Namespace, out: str) -> None:
    w = ns["w"]
    assert w.shape == (2, 1, 6, 6)
    torch.testing.assert_close(ns["fused"], 0.5 * ns["clip_features"] + 0.5 * ns["f_s"])


def check_prompts(ns: Namespace, out: str) -> None:
    import ast

    lines = out.splitlines()
    sky = ast.literal_eval(lines[0])
    assert sky[0] == "A photo of a sky in the scene" and len(sky) == 4
    for sentence in sky[1:]:
        assert sentence.startswith("A photo of a sky in the scene. It ")
    assert lines[1] == "torch.Size([3, 4, 32])"
    torch.testing.assert_close(ns["text"].norm(dim=-1), torch.ones(3, 4))  # unit-norm embeddings


def check_spatial_aggregation(ns: Namespace, out: str) -> None:
    assert out == "torch.Size([2, 5, 12, 12, 32])\n"
    with torch.no_grad():
        expected = plain_spatial_aggregation(ns["spatial"], ns["x"], ns["guidance"])
    torch.testing.assert_close(ns["y"], expected, rtol=1e-5, atol=1e-5)


PAGE_CHECKS: dict[str, Callable[[Namespace, str], None]] = {
    "getting-started.md": check_getting_started,
    "model.md": check_model,
    "weights.md": check_weights,
    "blocks/class-aggregation.md": check_class_aggregation,
    "blocks/cost-volume.md": check_cost_volume,
    "blocks/decoder.md": check_decoder,
    "blocks/encoders.md": check_encoders,
    "blocks/fusion.md": check_fusion,
    "blocks/prompts.md": check_prompts,
    "blocks/spatial-aggregation.md": check_spatial_aggregation,
}


def test_every_tested_page_has_a_check() -> None:
    assert {str(p.relative_to(DOCS)) for p in PAGES} == set(PAGE_CHECKS)


@pytest.mark.filterwarnings("ignore::lmseg.prompts.MissingBankWarning")
@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(DOCS)))
def test_page_snippets_do_what_the_page_says(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A page's blocks run in order in one namespace, as a reader would paste them; then the
    page's check compares the printed output and the values with an independent derivation."""
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    assert blocks, f"{page} has no tested snippet"
    monkeypatch.chdir(tmp_path)  # snippets that write files write them here
    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": "docs_snippet"}
    capsys.readouterr()
    for line, code in blocks:
        exec(compile(code, f"{page}:{line}", "exec"), namespace)
    out = capsys.readouterr().out
    check = PAGE_CHECKS.get(str(page.relative_to(DOCS)))
    assert check is not None, f"add a check for {page.name} to PAGE_CHECKS"
    check(namespace, out)


def test_skip_marker() -> None:
    text = "<!-- no-test -->\n```python\nraise SystemExit\n```\n\n```python\nx = 1\n```\n"
    assert python_blocks(text) == [(6, "x = 1\n")]


def test_variants_table_is_current() -> None:
    """docs/model.md's variants table matches the registry (regenerate: tools/make_figures.py)."""
    path = DOCS.parent / "tools" / "make_figures.py"
    spec = importlib.util.spec_from_file_location("make_figures", path)
    assert spec is not None and spec.loader is not None
    make_figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_figures)
    page = (DOCS / "model.md").read_text(encoding="utf-8")
    assert make_figures.render_model_page(page) == page, "run python tools/make_figures.py"
