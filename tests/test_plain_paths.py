"""The fast blocks compute what CAT-Seg's straightforward formulation computes.

The references (:mod:`lmseg.aggregation.reference`) are written the plain way, as CAT-Seg's code
does it: explicit padding tokens, guidance concatenated before Q/K, per-head elu + 1 linear
attention with CAT-Seg's value scaling, cyclic shift + window partition, guidance concatenated
before the decoder convs in NCHW. The blocks (closed-form padding, block-diagonal heads,
window-order gathers, split guidance products, channels-last, chunks, in-place residuals) must
agree to float rounding.
"""

import pytest
import torch

from lmseg.aggregation import ClassAggregation, SpatialAggregation, UpsamplingDecoder
from lmseg.aggregation.reference import (
    class_aggregation as plain_class_aggregation,
)
from lmseg.aggregation.reference import (
    spatial_aggregation as plain_spatial_aggregation,
)
from lmseg.aggregation.reference import (
    upsampling_decoder as plain_decoder,
)
from lmseg.runtime import RuntimeOptions


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(3)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return module.eval()


def test_training_pooled_class_aggregation_matches_plain_formulation():
    # CAT-Seg pools the cost map 2x2 before the class attention in training, then upsamples the
    # attended map bilinearly with aligned corners before the residual.
    block = _randomise(ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=7)).train()
    x, g = torch.randn(2, 3, 6, 8, 16), torch.randn(2, 3, 8)
    with torch.no_grad():
        expected = plain_class_aggregation(block, x, g, pool_size=2)
    pooled = block(x, g, runtime=RuntimeOptions(class_pool_size=2))
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # no pooling unless the runtime asks for it (CAT-Seg's eval.sh: [1, 1])
        torch.testing.assert_close(block(x, g), plain_class_aggregation(block, x, g), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("classes", [3, 7, 12])  # below, at and above pad_len
def test_class_aggregation_matches_plain_formulation(classes):
    block = _randomise(ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=7))
    x, g = torch.randn(2, classes, 4, 5, 16), torch.randn(2, classes, 8)
    runtime = RuntimeOptions(token_chunk=40)
    with torch.no_grad():
        expected = plain_class_aggregation(block, x, g)
        out_of_place = block(x, g, runtime=runtime)
        inplace = block(x.clone(), g, inplace=True, runtime=runtime)
    with torch.enable_grad():  # the autograd path (training) too
        trained = block(x, g, runtime=runtime)
    for out in (out_of_place, inplace, trained):
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_spatial_aggregation_matches_plain_formulation():
    spatial = _randomise(SpatialAggregation(dim=16, guidance_dim=8, num_heads=2, window_size=4))
    x, g = torch.randn(2, 5, 8, 12, 16), torch.randn(2, 8, 12, 8)
    runtime = RuntimeOptions(class_chunk=2)
    with torch.no_grad():
        expected = plain_spatial_aggregation(spatial, x, g)
        out_of_place = spatial(x, g, runtime=runtime)
        inplace = spatial(x.clone(), g, inplace=True, runtime=runtime)
    with torch.enable_grad():
        trained = spatial(x, g, runtime=runtime)
    for out in (out_of_place, inplace, trained):
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_decoder_matches_plain_formulation():
    decoder = _randomise(UpsamplingDecoder(dim=32, clip_width=24, guidance_dims=(32, 16),
                                           guidance_proj_dims=(16, 8), decoder_dims=(32, 16)))
    x = torch.randn(2, 5, 6, 8, 32)
    taps = [torch.randn(2, 24, 6, 8), torch.randn(2, 24, 6, 8)]
    with torch.no_grad():
        expected = plain_decoder(decoder, x, taps)
        out = decoder(x, decoder.prepare_guidance(taps), runtime=RuntimeOptions(class_chunk=2))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("which", ["class", "spatial"])
def test_gradients_match_plain_formulation(which):
    # Training goes through the autograd path of the same fast code: its gradients must be the
    # plain formulation's (input and every parameter).
    if which == "class":
        block = _randomise(ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=7))
        x, g = torch.randn(2, 4, 3, 5, 16), torch.randn(2, 4, 8)
        plain = plain_class_aggregation
    else:
        block = _randomise(SpatialAggregation(dim=16, guidance_dim=8, num_heads=2, window_size=4))
        x, g = torch.randn(2, 3, 8, 8, 16), torch.randn(2, 8, 8, 8)
        plain = plain_spatial_aggregation
    weight = torch.randn_like(x)
    grads = []
    runtime = RuntimeOptions(class_chunk=2)
    for forward in (lambda a, b: block(a, b, runtime=runtime), lambda a, b: plain(block, a, b)):
        block.zero_grad()
        xi = x.clone().requires_grad_(True)
        (forward(xi, g) * weight).sum().backward()
        grads.append([xi.grad] + [p.grad.clone() for p in block.parameters()])
    for fast, reference in zip(*grads, strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
