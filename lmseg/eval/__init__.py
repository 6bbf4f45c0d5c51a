"""Evaluation: detectron2-compatible semantic segmentation metrics."""

from lmseg.eval.metrics import SegmentationMetrics, format_table, results_to_json

__all__ = ["SegmentationMetrics", "format_table", "results_to_json"]
