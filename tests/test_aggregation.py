"""Aggregation blocks: equivariance, chunking equivalence, attention backends, shift mask."""

import warnings

import pytest
import torch

from lmseg.aggregation import (
    ClassAggregation,
    SoftmaxClassAttention,
    SpatialAggregation,
    UpsamplingDecoder,
    linear_attention,
)
from lmseg.aggregation import reference as plain
from lmseg.aggregation.spatial_aggregation import shifted_window_mask
from lmseg.runtime import RuntimeOptions


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
    reference = block(x, g, runtime=RuntimeOptions(attention_backend="math"))
    # xformers falls back to sdpa (with one warning) where it is missing or cannot run.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = block(x, g, runtime=RuntimeOptions(attention_backend=backend))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_spatial_is_independent_per_class_and_chunking_is_exact():
    block = _randomise(SpatialAggregation(dim=16, guidance_dim=8, num_heads=2, window_size=4))
    x, g = torch.randn(1, 7, 8, 8, 16), torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        whole = block(x, g, runtime=RuntimeOptions(class_chunk=100))
        chunked = block(x, g, runtime=RuntimeOptions(class_chunk=3))
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
    block = _randomise(ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=10))
    x, t = torch.randn(1, 4, 3, 3, 16), torch.randn(1, 4, 8)
    with torch.no_grad():
        before = block(x, t)
        # a constant shift would vanish in the LayerNorm: perturb per channel
        block.padding_tokens.add_(torch.randn_like(block.padding_tokens))
        block.padding_guidance.add_(torch.randn_like(block.padding_guidance))
        after = block(x, t)
        # the 6 padding slots hold the new tokens, attended to like classes (CAT-Seg's concatenation)
        torch.testing.assert_close(after, plain.class_aggregation(block, x, t), rtol=1e-5, atol=1e-5)
    assert (after - before).abs().max() > 1e-3


def test_class_aggregation_pixel_chunks_are_exact():
    block = _randomise(ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=0))
    x, t = torch.randn(2, 5, 6, 6, 16), torch.randn(2, 5, 8)
    with torch.no_grad():
        whole = block(x, t, runtime=RuntimeOptions(token_chunk=10_000_000))
        chunked = block(x, t, runtime=RuntimeOptions(token_chunk=140))  # 14 pixels of 2 x 5 tokens
    # Pixels are independent; only the GEMM tail handling of odd chunk sizes can differ, by an
    # ulp or so (chunks that are multiples of 8 pixels come out bit-identical here).
    torch.testing.assert_close(whole, chunked, rtol=0, atol=2e-6)


@pytest.mark.parametrize("grad", [False, True])
def test_class_aggregation_pooling_is_a_runtime_option(grad):
    # CAT-Seg trains with 2x2 pooling and evaluates with none: whatever the module's mode, the
    # runtime option decides, and pooled results equal CAT-Seg's formulation.
    block = _randomise(ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=5))
    x, t = torch.randn(1, 3, 4, 4, 16), torch.randn(1, 3, 8)
    with torch.set_grad_enabled(grad):
        block.train()
        unpooled_in_training = block(x, t)
        pooled = block(x, t, runtime=RuntimeOptions(class_pool_size=2))
        block.eval()
        unpooled = block(x, t)
        expected = plain.class_aggregation(block, x, t, pool_size=2)
    torch.testing.assert_close(unpooled_in_training, unpooled)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(pooled, unpooled, atol=1e-3)


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
        whole = decoder(x, guidance, runtime=RuntimeOptions(class_chunk=100))
        chunked = decoder(x, guidance, runtime=RuntimeOptions(class_chunk=2))
    assert whole.shape == (2, 5, 24, 32)
    # Channels-last GroupNorm sums in a batch-size-dependent order: equal up to rounding.
    torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=1e-6)


def test_inplace_aggregation_equals_out_of_place():
    from lmseg.aggregation import AggregationLayer, CostAggregator

    layers = [AggregationLayer(spatial=SpatialAggregation(dim=16, guidance_dim=8, num_heads=2, window_size=4),
                               classes=ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=8))
              for _ in range(2)]
    agg = _randomise(CostAggregator(layers=layers, embed_dim=12, appearance_guidance_dim=8, text_guidance_dim=8))
    x, image, text = torch.randn(1, 5, 8, 8, 16), torch.randn(1, 12, 8, 8), torch.randn(1, 5, 3, 12)
    runtime = RuntimeOptions(class_chunk=2, token_chunk=64)
    with torch.no_grad():
        copy = x.clone()
        expected = agg(x, image, text, runtime=runtime)
        assert torch.equal(x, copy)  # out of place by default
        out = agg(x, image, text, inplace=True, runtime=runtime)
    assert out.data_ptr() == x.data_ptr()
    assert torch.equal(out, expected)


@pytest.mark.parametrize("classes", [3, 7, 12])  # below, at and above pad_len
def test_softmax_class_attention_matches_catseg_full_attention(classes):
    # CAT-Seg's attention_type="full": explicit padding tokens and softmax(q k^T / sqrt(d)) v.
    # The block adds the identical padding keys as one key with a log(count) bias.
    block = _randomise(
        ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=7, attention=SoftmaxClassAttention())
    )
    x, g = torch.randn(2, classes, 4, 5, 16), torch.randn(2, classes, 8)
    with torch.no_grad():
        expected = plain.class_aggregation(block, x, g)
        for runtime in (RuntimeOptions(token_chunk=40), RuntimeOptions(attention_backend="math")):
            torch.testing.assert_close(block(x, g, runtime=runtime), expected, rtol=1e-5, atol=1e-5)
    trained = block(x, g, runtime=RuntimeOptions(token_chunk=40))
    torch.testing.assert_close(trained, expected, rtol=1e-5, atol=1e-5)
    # The same weights with CAT-Seg's linear attention compute something else.
    linear = ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=7)
    linear.load_state_dict(block.state_dict())
    with torch.no_grad():
        assert not torch.allclose(expected, plain.class_aggregation(linear, x, g), atol=1e-3)


def test_softmax_class_attention_memory_is_bounded_by_the_token_chunk():
    # Every intermediate of a chunk holds at most token_chunk tokens: with 600 classes and a
    # budget of one pixel's classes, no tensor of the attention call has more than 600 x heads
    # x (K + 1) elements (a full per-pixel K x K map for all 12 pixels would be 12 times that).
    block = _randomise(ClassAggregation(dim=8, guidance_dim=0, num_heads=2, pad_len=0,
                                        attention=SoftmaxClassAttention()))
    x = torch.randn(1, 600, 3, 4, 8)
    largest = 0

    def track(*tensors):
        nonlocal largest
        largest = max([largest] + [t.numel() for t in tensors if isinstance(t, torch.Tensor)])

    original = block.attention.forward

    def watched(q, k, v, **kwargs):
        track(q, k, v)
        out = original(q, k, v, **kwargs)
        track(out)
        return out

    block.attention.forward = watched
    with torch.no_grad():
        block(x, None, runtime=RuntimeOptions(token_chunk=600))
    assert 0 < largest <= 600 * 8
