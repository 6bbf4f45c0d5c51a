"""``torch.compile`` for the class-dependent blocks, one chunk-sized kernel at a time.

Compiling :meth:`~lmseg.model.LMSeg.decode` whole makes dynamo unroll the class-chunk loops
(one graph per vocabulary size, K / chunk copies of every block in it: minutes of compilation
on two cores). The blocks' per-chunk functions see few shapes: a full chunk and the last one,
whose size varies with K; after the second shape torch.compile builds a dynamic-shape graph, so
compilation costs about a minute once (two cores) and not again for each new vocabulary.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lmseg.aggregation.class_aggregation import ClassAggregation
from lmseg.aggregation.spatial_aggregation import GuidedSwinBlock
from lmseg.aggregation.upsampling_decoder import UpsamplingDecoder


def compile_blocks(module: nn.Module, **options: Any) -> nn.Module:
    """Compile, in place, the per-chunk kernels of every aggregation block inside ``module``.

    Swin blocks (:class:`GuidedSwinBlock` forward), class aggregation (its per-chunk attention
    and MLP) and the decoder (its per-chunk decoding) are wrapped with ``torch.compile``; the
    chunk loops, guidance projections and everything else stay eager.

    Args:
        module: an :class:`~lmseg.model.LMSeg`, a :class:`~lmseg.aggregation.CostAggregator` or
            any module containing the blocks.
        **options: passed to ``torch.compile`` (``mode``, ``dynamic``, ``backend``...).

    Returns:
        ``module`` itself. Outputs equal the eager ones up to float rounding (tested).
    """
    import torch

    for block in module.modules():
        if isinstance(block, GuidedSwinBlock):
            block.forward = torch.compile(block.forward, **options)  # type: ignore[method-assign]
        elif isinstance(block, ClassAggregation):
            block._attend = torch.compile(block._attend, **options)  # type: ignore[method-assign]
        elif isinstance(block, UpsamplingDecoder):
            block._decode = torch.compile(block._decode, **options)  # type: ignore[method-assign]
    return module
