"""lmseg: composable building blocks for open-vocabulary semantic segmentation."""

__version__ = "0.1.0"
