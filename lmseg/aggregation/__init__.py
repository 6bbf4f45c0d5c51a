"""Cost aggregation blocks: spatial (guided Swin) and class (linear or softmax attention)
aggregation, their stack, the upsampling decoder, and the plain reference formulation."""

from lmseg.aggregation.aggregator import AggregationLayer, CostAggregator
from lmseg.aggregation.class_aggregation import ClassAggregation
from lmseg.aggregation.class_attention import (
    CLASS_ATTENTIONS,
    LinearClassAttention,
    SoftmaxClassAttention,
    linear_attention,
)
from lmseg.aggregation.common import map_chunks, softmax_attention
from lmseg.aggregation.compile import compile_blocks
from lmseg.aggregation.spatial_aggregation import GuidedSwinBlock, SpatialAggregation
from lmseg.aggregation.upsampling_decoder import UpsamplingDecoder

__all__ = [
    "CLASS_ATTENTIONS",
    "AggregationLayer",
    "ClassAggregation",
    "CostAggregator",
    "GuidedSwinBlock",
    "LinearClassAttention",
    "SoftmaxClassAttention",
    "SpatialAggregation",
    "UpsamplingDecoder",
    "compile_blocks",
    "linear_attention",
    "map_chunks",
    "softmax_attention",
]
