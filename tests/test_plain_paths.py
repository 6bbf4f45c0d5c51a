"""The fast blocks compute what CAT-Seg's straightforward formulation computes.

Each reference below is written the plain way, as CAT-Seg's code does it: explicit padding
tokens, guidance concatenated before Q/K, per-head elu + 1 linear attention with CAT-Seg's value
scaling, cyclic shift + window partition, guidance concatenated before the decoder convs in NCHW.
The blocks (closed-form padding, block-diagonal heads, window-order gathers, split guidance
products, channels-last, chunks, in-place residuals) must agree to float rounding.
"""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from lmseg.aggregation import ClassAggregation, SpatialAggregation, UpsamplingDecoder
from lmseg.aggregation.spatial_aggregation import SHIFT_MASK_VALUE


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(3)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return module.eval()


def plain_class_aggregation(
    block: ClassAggregation, x: torch.Tensor, guidance: torch.Tensor, pool: int = 1
) -> torch.Tensor:
    b, k, h, w, c = x.shape
    pooled = x
    if pool > 1:  # CAT-Seg's AvgPool2d before the attention (training only)
        pooled = rearrange(x, "b k h w c -> (b k) c h w")
        pooled = rearrange(F.avg_pool2d(pooled, pool), "(b k) c h w -> b k h w c", b=b)
    hp, wp = pooled.shape[2:4]
    tokens = rearrange(pooled, "b k h w c -> (b h w) k c")
    g = repeat(guidance, "b k c -> (b h w) k c", h=hp, w=wp)
    missing = block.pad_len - k
    if missing > 0:
        tokens = torch.cat([tokens, block.padding_tokens.expand(len(tokens), missing, c)], 1)
        g = torch.cat([g, block.padding_guidance.expand(len(g), missing, g.shape[-1])], 1)
    y = block.norm1(tokens)
    q = block.q(torch.cat([y, g], -1))
    key = block.k(torch.cat([y, g], -1))
    v = block.v(y)
    q, key, v = (rearrange(t, "n s (h d) -> n s h d", h=block.num_heads) for t in (q, key, v))
    q, key = F.elu(q) + 1, F.elu(key) + 1
    length = v.shape[1]
    kv = torch.einsum("nshd,nshe->nhde", key, v / length)
    z = 1 / (torch.einsum("nlhd,nhd->nlh", q, key.sum(1)) + 1e-6)
    out = torch.einsum("nlhd,nhde,nlh->nlhe", q, kv, z) * length
    t = tokens + rearrange(out, "n s h d -> n s (h d)")
    t = t + block.mlp(block.norm2(t))
    y = rearrange(t[:, :k], "(b h w) k c -> (b k) c h w", b=b, h=hp, w=wp)
    if pool > 1:  # back to the full grid, corners aligned, as CAT-Seg
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=True)
    return x + rearrange(y, "(b k) c h w -> b k h w c", b=b)


def plain_spatial_aggregation(spatial: SpatialAggregation, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    b, k, h, w, c = x.shape
    t = rearrange(x, "b k h w c -> (b k) h w c")
    g = repeat(spatial.guidance_norm(guidance), "b h w c -> (b k) h w c", k=k)
    # CAT-Seg's geometry, not the blocks' own: the first block unshifted, the second shifted by
    # half a window, and neither shifted when one window covers the map.
    window = min(spatial.blocks[0].window_size, h, w)
    for block, shift in zip(spatial.blocks, (0, window // 2), strict=True):
        if window == min(h, w):
            shift = 0
        y = block.norm1(t)
        yg = torch.cat([y, g], -1)
        if shift:
            yg = torch.roll(yg, (-shift, -shift), (1, 2))
        parts = rearrange(yg, "n (a i) (e j) c -> (n a e) (i j) c", i=window, j=window)
        q = block.q(parts)
        key = block.k(parts)
        v = block.v(parts[..., : block.dim])
        q, key, v = (rearrange(p, "m s (h d) -> m h s d", h=block.num_heads) for p in (q, key, v))
        attn = (q * q.shape[-1] ** -0.5) @ key.transpose(-2, -1)
        if shift:
            region = torch.zeros(h, w)
            cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
            for r, rows in enumerate(cuts):
                for s, cols in enumerate(cuts):
                    region[rows, cols] = 3 * r + s
            labels = rearrange(region, "(a i) (e j) -> (a e) (i j)", i=window, j=window)
            mask = (labels[:, None, :] != labels[:, :, None]).float() * SHIFT_MASK_VALUE
            attn = attn + mask.repeat(b * k, 1, 1)[:, None]
        out = rearrange(attn.softmax(-1) @ v, "m h s d -> m s (h d)")
        out = rearrange(block.proj(out), "(n a e) (i j) c -> n (a i) (e j) c",
                        a=h // window, e=w // window, i=window, j=window)
        if shift:
            out = torch.roll(out, (shift, shift), (1, 2))
        t = t + out
        t = t + block.mlp(block.norm2(t))
    return rearrange(t, "(b k) h w c -> b k h w c", b=b)


def plain_decoder(decoder: UpsamplingDecoder, x: torch.Tensor, taps: list[torch.Tensor]) -> torch.Tensor:
    b, k = x.shape[:2]
    y = rearrange(x, "b k h w c -> (b k) c h w").contiguous()
    for stage, up, proj, tap in zip(decoder.stages, decoder.guidance_upsamplers,
                                    decoder.guidance_projections, taps, strict=True):
        g = repeat(proj(up(tap)), "b c h w -> (b k) c h w", k=k)
        y = stage.conv.conv1(torch.cat([stage.up(y), g], 1))
        y = F.relu(stage.conv.norm1(y))
        y = F.relu(stage.conv.norm2(stage.conv.conv2(y)))
    return rearrange(decoder.head(y), "(b k) 1 h w -> b k h w", b=b)


def test_training_pooled_class_aggregation_matches_plain_formulation():
    # CAT-Seg pools the cost map 2x2 before the class attention in training, then upsamples the
    # attended map bilinearly with aligned corners before the residual.
    block = _randomise(ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=7, train_pool_size=2))
    x, g = torch.randn(2, 3, 6, 8, 16), torch.randn(2, 3, 8)
    block.train()
    with torch.no_grad():
        expected = plain_class_aggregation(block, x, g, pool=2)
    torch.testing.assert_close(block(x, g), expected, rtol=1e-5, atol=1e-5)
    block.eval()  # no pooling at test time
    with torch.no_grad():
        torch.testing.assert_close(block(x, g), plain_class_aggregation(block, x, g), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("classes", [3, 7, 12])  # below, at and above pad_len
def test_class_aggregation_matches_plain_formulation(classes):
    block = _randomise(ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=7, token_chunk=40))
    x, g = torch.randn(2, classes, 4, 5, 16), torch.randn(2, classes, 8)
    with torch.no_grad():
        expected = plain_class_aggregation(block, x, g)
        out_of_place = block(x, g)
        inplace = block(x.clone(), g, inplace=True)
    with torch.enable_grad():  # the autograd path (training) too
        trained = block(x, g)
    for out in (out_of_place, inplace, trained):
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_spatial_aggregation_matches_plain_formulation():
    spatial = _randomise(SpatialAggregation(dim=16, guidance_dim=8, num_heads=2, window_size=4, class_chunk=2))
    x, g = torch.randn(2, 5, 8, 12, 16), torch.randn(2, 8, 12, 8)
    with torch.no_grad():
        expected = plain_spatial_aggregation(spatial, x, g)
        out_of_place = spatial(x, g)
        inplace = spatial(x.clone(), g, inplace=True)
    with torch.enable_grad():
        trained = spatial(x, g)
    for out in (out_of_place, inplace, trained):
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_decoder_matches_plain_formulation():
    decoder = _randomise(UpsamplingDecoder(dim=32, clip_width=24, guidance_dims=(32, 16),
                                           guidance_proj_dims=(16, 8), decoder_dims=(32, 16), class_chunk=2))
    x = torch.randn(2, 5, 6, 8, 32)
    taps = [torch.randn(2, 24, 6, 8), torch.randn(2, 24, 6, 8)]
    with torch.no_grad():
        expected = plain_decoder(decoder, x, taps)
        out = decoder(x, decoder.prepare_guidance(taps))
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
        block = _randomise(SpatialAggregation(dim=16, guidance_dim=8, num_heads=2, window_size=4, class_chunk=2))
        x, g = torch.randn(2, 3, 8, 8, 16), torch.randn(2, 8, 8, 8)
        plain = plain_spatial_aggregation
    weight = torch.randn_like(x)
    grads = []
    for forward in (block, lambda a, b: plain(block, a, b)):
        block.zero_grad()
        xi = x.clone().requires_grad_(True)
        (forward(xi, g) * weight).sum().backward()
        grads.append([xi.grad] + [p.grad.clone() for p in block.parameters()])
    for fast, reference in zip(*grads, strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
