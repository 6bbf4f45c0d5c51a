"""``lmseg demo``: a web page to segment an image with any class list, served on this machine.

:mod:`lmseg.demo.logic` holds what the page does (models kept between requests, segmentation,
overlay, class table, pixel lookup) in plain Python; :mod:`lmseg.demo.app` builds the Gradio page
on top of it and needs the ``demo`` extra (``pip install 'lmseg[demo]'``).
"""

from lmseg.demo.logic import (
    RANDOM_WEIGHTS_NOTICE,
    DemoError,
    ModelCache,
    Segmentation,
    class_table,
    parse_classes,
    pixel_info,
    render,
    segment,
)

__all__ = [
    "RANDOM_WEIGHTS_NOTICE",
    "DemoError",
    "ModelCache",
    "Segmentation",
    "class_table",
    "parse_classes",
    "pixel_info",
    "render",
    "segment",
]
