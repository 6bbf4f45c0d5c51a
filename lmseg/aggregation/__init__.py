"""Cost aggregation blocks: spatial (guided Swin) and class (linear attention) aggregation,
their stack, and the upsampling decoder."""

from lmseg.aggregation.aggregator import AggregationLayer, CostAggregator
from lmseg.aggregation.class_aggregation import ClassAggregation, linear_attention
from lmseg.aggregation.common import (
    attention_backend,
    get_attention_backend,
    set_attention_backend,
    softmax_attention,
)
from lmseg.aggregation.compile import compile_blocks
from lmseg.aggregation.spatial_aggregation import GuidedSwinBlock, SpatialAggregation
from lmseg.aggregation.upsampling_decoder import UpsamplingDecoder

__all__ = [
    "AggregationLayer",
    "ClassAggregation",
    "CostAggregator",
    "GuidedSwinBlock",
    "SpatialAggregation",
    "UpsamplingDecoder",
    "attention_backend",
    "compile_blocks",
    "get_attention_backend",
    "linear_attention",
    "set_attention_backend",
    "softmax_attention",
]
