"""Fast paths compute what the plain path computes: bf16 autocast, torch.compile (about a minute
of compilation on two cores)."""


import pytest
import torch

import lmseg
from lmseg.runtime import RuntimeOptions

EXACT = RuntimeOptions(top_k=None)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = lmseg.create_model("catseg_tiny")
    with torch.no_grad():
        features = model.encode_image(torch.rand(1, 3, 96, 96))
        text = torch.randn(10, 1, 32)
        reference = model.decode(features, text, EXACT)
    return model, features, text, reference


def test_bf16_autocast_agrees_with_fp32(setup):
    model, features, text, reference = setup
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.decode(features, text, EXACT).float()
    assert (low - reference).abs().max() < 0.1
    # Random weights give near-tied logits; trained models agree far more (see benchmarks).
    assert (low.argmax(1) == reference.argmax(1)).float().mean() > 0.9


def test_compiled_blocks_match_eager():
    from lmseg.aggregation import compile_blocks

    torch.manual_seed(0)
    model = lmseg.create_model("catseg_tiny").eval()
    with torch.no_grad():
        features = model.encode_image(torch.rand(1, 3, 96, 96))
        text = torch.randn(10, 1, 32)
        eager = model.decode(features, text, EXACT)
        compile_blocks(model)
        compiled = model.decode(features, text, EXACT)
    assert "forward" in vars(model.aggregator.layers[0].spatial.blocks[0])  # really wrapped
    assert "_decode" in vars(model.decoder)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
