"""Aggregation blocks: equivariance, chunking equivalence, attention backends, shift mask."""

import warnings

import pytest
import torch

from lmseg.aggregation import (
    ClassAggregation,
    SpatialAggregation,
    UpsamplingDecoder,
    attention_backend,
    linear_attention,
)
from lmseg.aggregation.spatial_aggregation import shifted_window_mask


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return module.eval()


def test_shift_mask_matches_brute_force():
    h = w = 8
    window, shift = 4, 2
    mask = shifted_window_mask(h, w, window, shift, torch.device("cpu"), torch.float32)
    # Region of each pixel after the cyclic shift: pixels wrapped around from the far edge
    # belong to other regions than their window neighbours.
    rows = torch.arange(h).roll(-shift)
    cols = torch.arange(w).roll(-shift)
    region = ((rows >= h - shift).long()[:, None] * 3 + (cols >= w - shift).long()[None, :])
    for wi in range(4):
        r0, c0 = (wi // 2) * window, (wi % 2) * window
        reg = region[r0:r0 + window, c0:c0 + window].flatten()
        expected = torch.where(reg[:, None] == reg[None, :], 0.0, -100.0)
        torch.testing.assert_close(mask[wi, 0], expected)


@pytest.mark.parametrize("backend", ["math", "sdpa", "xformers"])
def test_spatial_backends_agree(backend):
    block = _randomise(SpatialAggregation(dim=16, guidance_dim=8, num_heads=2, window_size=4))
    x, g = torch.randn(2, 3, 8, 8, 16), torch.randn(2, 8, 8, 8)
    with attention_backend("math"):
        reference = block(x, g)
    # xformers falls back to sdpa (with one warning) where it is missing or cannot run.
    with attention_backend(backend), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = block(x, g)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_spatial_is_independent_per_class_and_chunking_is_exact():
    block = _randomise(SpatialAggregation(dim=16, guidance_dim=8, num_heads=2, window_size=4))
    x, g = torch.randn(1, 7, 8, 8, 16), torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        block.class_chunk = 100
        whole = block(x, g)
        block.class_chunk = 3
        chunked = block(x, g)
        single = block(x[:, 4:5], g)
    assert torch.equal(whole, chunked)
    torch.testing.assert_close(single[:, 0], whole[:, 4], rtol=1e-6, atol=1e-6)


def test_class_aggregation_is_permutation_equivariant():
    block = _randomise(ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=10))
    x, t = torch.randn(2, 6, 4, 5, 16), torch.randn(2, 6, 8)
    perm = torch.randperm(6)
    with torch.no_grad():
        out = block(x, t)
        permuted = block(x[:, perm], t[:, perm])
    torch.testing.assert_close(permuted, out[:, perm], rtol=1e-5, atol=1e-5)


def test_class_aggregation_padding_tokens_take_part():
    from test_plain_paths import plain_class_aggregation

    block = _randomise(ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=10))
    x, t = torch.randn(1, 4, 3, 3, 16), torch.randn(1, 4, 8)
    with torch.no_grad():
        before = block(x, t)
        # a constant shift would vanish in the LayerNorm: perturb per channel
        block.padding_tokens.add_(torch.randn_like(block.padding_tokens))
        block.padding_guidance.add_(torch.randn_like(block.padding_guidance))
        after = block(x, t)
        # the 6 padding slots hold the new tokens, attended to like classes (CAT-Seg's concatenation)
        torch.testing.assert_close(after, plain_class_aggregation(block, x, t), rtol=1e-5, atol=1e-5)
    assert (after - before).abs().max() > 1e-3


def test_class_aggregation_pixel_chunks_are_exact():
    block = _randomise(ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=0))
    x, t = torch.randn(2, 5, 6, 6, 16), torch.randn(2, 5, 8)
    with torch.no_grad():
        block.token_chunk = 10_000_000
        whole = block(x, t)
        block.token_chunk = 140  # 14 pixels of 2 x 5 tokens
        chunked = block(x, t)
    # Pixels are independent; only the GEMM tail handling of odd chunk sizes can differ, by an
    # ulp or so (chunks that are multiples of 8 pixels come out bit-identical here).
    torch.testing.assert_close(whole, chunked, rtol=0, atol=2e-6)


def test_class_aggregation_pools_in_training_only():
    from test_plain_paths import plain_class_aggregation

    block = _randomise(ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=0, train_pool_size=2))
    x, t = torch.randn(1, 3, 4, 4, 16), torch.randn(1, 3, 8)
    block.train()
    pooled = block(x, t)
    block.eval()
    plain = block(x, t)
    with torch.no_grad():
        torch.testing.assert_close(pooled, plain_class_aggregation(block, x, t, pool=2), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plain, plain_class_aggregation(block, x, t), rtol=1e-5, atol=1e-5)
    assert (pooled - plain).abs().max() > 1e-3


def test_linear_attention_matches_its_definition():
    q, k, v = torch.randn(3, 5, 2, 4), torch.randn(3, 5, 2, 4), torch.randn(3, 5, 2, 4)
    fq, fk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    scores = torch.einsum("nkhd,nshd->nhks", fq, fk)
    expected = torch.einsum("nhks,nshd->nkhd", scores / (scores.sum(-1, keepdim=True) + 1e-6), v)
    torch.testing.assert_close(linear_attention(q, k, v), expected, rtol=1e-4, atol=1e-5)


def _exact_linear_attention(q, k, v, eps=1e-6):
    """The definition in float64 (reference for the rounding tests)."""
    q, k, v = (t.double() for t in (q, k, v))
    fq, fk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    scores = torch.einsum("nkhd,nshd->nhks", fq, fk)
    return torch.einsum("nhks,nshd->nkhd", scores / (scores.sum(-1, keepdim=True) + eps), v)


def test_linear_attention_accumulates_in_fp32_under_autocast():
    # bf16 inputs, 300 classes: accumulated in fp32, the only error left is the final rounding
    # to bf16, so nearly every element equals the correctly rounded exact value.
    # Measured on these inputs (N=64, K=300, 2 heads of 8; 2-core CPU, torch 2.14):
    #   fp32 accumulation:  max |error| 4.9e-4, 99.99 % of elements correctly rounded;
    #   bf16 accumulation (the same code with autocast left on, or every .float() -> bf16):
    #                       max |error| 1.9e-3, 46.7 % correctly rounded.
    # (outputs: max |value| 0.22). Tolerances sit between the two with a 2x margin each side.
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(64, 300, 2, 8, generator=g).bfloat16() for _ in range(3))
    exact = _exact_linear_attention(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = linear_attention(q, k, v)
    assert low.dtype == torch.bfloat16
    correctly_rounded = (low == exact.to(torch.bfloat16)).double().mean().item()
    assert correctly_rounded > 0.95, f"only {correctly_rounded:.1%} of outputs correctly rounded"
    assert (low.double() - exact).abs().max() < 1e-3


def test_decoder_chunking_changes_only_rounding_and_shapes():
    decoder = _randomise(UpsamplingDecoder(dim=32, clip_width=24, guidance_dims=(32, 16),
                                           guidance_proj_dims=(16, 8), decoder_dims=(32, 16)))
    taps = [torch.randn(2, 24, 6, 8), torch.randn(2, 24, 6, 8)]
    x = torch.randn(2, 5, 6, 8, 32)
    with torch.no_grad():
        guidance = decoder.prepare_guidance(taps)
        decoder.class_chunk = 100
        whole = decoder(x, guidance)
        decoder.class_chunk = 2
        chunked = decoder(x, guidance)
    assert whole.shape == (2, 5, 24, 32)
    # Channels-last GroupNorm sums in a batch-size-dependent order: equal up to rounding.
    torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=1e-6)


def test_inplace_aggregation_equals_out_of_place():
    from lmseg.aggregation import AggregationLayer, CostAggregator

    layers = [AggregationLayer(spatial=SpatialAggregation(dim=16, guidance_dim=8, num_heads=2, window_size=4, class_chunk=2),
                               classes=ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=8, token_chunk=64))
              for _ in range(2)]
    agg = _randomise(CostAggregator(layers=layers, embed_dim=12, appearance_guidance_dim=8, text_guidance_dim=8))
    x, image, text = torch.randn(1, 5, 8, 8, 16), torch.randn(1, 12, 8, 8), torch.randn(1, 5, 3, 12)
    with torch.no_grad():
        copy = x.clone()
        expected = agg(x, image, text)
        assert torch.equal(x, copy)  # out of place by default
        out = agg(x, image, text, inplace=True)
    assert out.data_ptr() == x.data_ptr()
    assert torch.equal(out, expected)
