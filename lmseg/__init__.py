"""lmseg: composable building blocks for open-vocabulary semantic segmentation.

The three-line API::

    import lmseg
    segmenter = lmseg.Segmenter(lmseg.create_model("lmseg_tiny"))
    labels = segmenter.predict("photo.jpg", ["cat", "sofa", "wall"])
"""

from lmseg.checkpoint import save_model
from lmseg.factory import create_model, list_models, load_model, register_model
from lmseg.hub import push_to_hub
from lmseg.model import LMSeg
from lmseg.runtime import RuntimeOptions
from lmseg.segmenter import Segmenter

__version__ = "0.1.0"

__all__ = [
    "LMSeg",
    "RuntimeOptions",
    "Segmenter",
    "__version__",
    "create_model",
    "list_models",
    "load_model",
    "push_to_hub",
    "register_model",
    "save_model",
]
