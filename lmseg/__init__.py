"""lmseg: composable building blocks for open-vocabulary semantic segmentation.

The three-line API::

    import lmseg
    segmenter = lmseg.Segmenter(lmseg.create_model("lmseg_tiny"))
    labels = segmenter.predict("photo.jpg", ["cat", "sofa", "wall"])
"""

import os
import sys

# Idle OpenMP threads sleep instead of spinning, unless the caller chose otherwise. lmseg's chunked
# kernels open many short parallel regions; with OpenMP's default spinning, a second busy process
# on a 2-core machine made one K = 150 decode 10x slower (docs/performance.md). OpenMP reads this
# once, when torch loads it, so it only takes effect when lmseg is imported before torch.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lmseg.checkpoint import save_model  # noqa: E402  (after the OpenMP setting)
from lmseg.factory import create_model, list_models, load_model, register_model  # noqa: E402
from lmseg.hub import push_to_hub  # noqa: E402
from lmseg.model import LMSeg  # noqa: E402
from lmseg.runtime import RuntimeOptions  # noqa: E402
from lmseg.segmenter import Segmenter  # noqa: E402

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
