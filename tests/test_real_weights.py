"""Opt-in checks with released weights (skipped by default: nothing here is downloaded).

Run with::

    LMSEG_REAL_WEIGHTS=1 LMSEG_CATSEG_CHECKPOINT=/path/to/model_base.pth \\
    LMSEG_SAM_CHECKPOINT=/path/to/sam_vit_b_01ec64.pth python -m pytest -m real_weights

- A released CAT-Seg checkpoint (ViT-B/16 ``model_base.pth`` or ViT-L ``model_large.pth``)
  converts strictly, and the converted model segments a drawn scene of sky over grass into sky
  above and grass below: a check that needs no recorded numbers.
- A slice of its logits is compared with the slice recorded for that file (by sha256) in
  ``tests/data/real_weights_slices.json``; a file without a record skips that comparison and
  says how to record one (``LMSEG_RECORD_REAL_WEIGHTS=1``), after checking the output by eye.
- SAM's official ``sam_vit_b_01ec64.pth``: lmseg's encoder equals ``segment_anything``'s own
  image encoder built from the same file, at SAM's 1024 px input.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.real_weights, pytest.mark.slow]

SLICES = Path(__file__).parent / "data" / "real_weights_slices.json"

if os.environ.get("LMSEG_REAL_WEIGHTS") != "1":
    pytest.skip(
        "real-weight checks are opt-in: set LMSEG_REAL_WEIGHTS=1 and LMSEG_CATSEG_CHECKPOINT / "
        "LMSEG_SAM_CHECKPOINT to local files",
        allow_module_level=True,
    )


def _path(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} is not set")
    path = Path(value)
    if not path.is_file():
        pytest.fail(f"{variable}={value} is not a file")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sky_over_grass(height: int = 384, width: int = 512) -> np.ndarray:
    """A drawn photo-like scene: a blue gradient sky over textured green grass."""
    rng = np.random.default_rng(0)
    image = np.zeros((height, width, 3), np.float64)
    rows = np.linspace(0, 1, height // 2)[:, None]
    image[: height // 2] = np.stack([90 + 60 * rows, 150 + 50 * rows, 235 + 0 * rows], -1)
    grass = np.array([70, 140, 50]) + rng.normal(0, 18, (height - height // 2, width, 3))
    image[height // 2 :] = grass
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def catseg():
    from lmseg.convert import convert_catseg

    path = _path("LMSEG_CATSEG_CHECKPOINT")
    return path, convert_catseg(path)  # strict: every key used or expected-unused


def test_converted_catseg_segments_sky_over_grass(catseg):
    from lmseg.segmenter import Segmenter

    _, model = catseg
    labels = Segmenter(model).predict(sky_over_grass(), ["sky", "grass"])
    h = labels.shape[0]
    # away from the horizon, each half is its class
    assert (labels[: h // 2 - 32] == 0).mean() > 0.9
    assert (labels[h // 2 + 32 :] == 1).mean() > 0.9


def test_converted_catseg_matches_its_recorded_slice(catseg):
    from lmseg.segmenter import Segmenter

    path, model = catseg
    segmenter = Segmenter(model)
    classes = ["sky", "grass", "tree", "road"]
    image = torch.from_numpy(sky_over_grass()).permute(2, 0, 1).float().div(255)
    with torch.no_grad():
        logits = model(image[None], segmenter.text_embeddings(classes))
    got = logits[0, :, ::24, ::24].flatten().tolist()  # K x 4 x 4 values of the 96x96 map
    digest = _sha256(path)
    records = json.loads(SLICES.read_text()) if SLICES.is_file() else {}
    if os.environ.get("LMSEG_RECORD_REAL_WEIGHTS") == "1":
        records[digest] = {"file": path.name, "classes": classes, "slice": got,
                           "torch": torch.__version__}
        SLICES.write_text(json.dumps(records, indent=1) + "\n")
        pytest.skip(f"recorded the slice of {path.name} in {SLICES}")
    if digest not in records:
        pytest.skip(f"no recorded slice for {path.name} (sha256 {digest[:12]}); record one with "
                    "LMSEG_RECORD_REAL_WEIGHTS=1 after checking the segmentation test passes")
    np.testing.assert_allclose(got, records[digest]["slice"], rtol=1e-3, atol=1e-3)


def test_sam_encoder_equals_segment_anything_on_official_weights():
    from segment_anything import sam_model_registry

    from lmseg.encoders import build_sam_encoder

    path = _path("LMSEG_SAM_CHECKPOINT")
    ours = build_sam_encoder("vit_b", checkpoint=str(path)).eval()
    theirs = sam_model_registry["vit_b"](checkpoint=str(path)).eval()
    image = torch.from_numpy(sky_over_grass(1024, 1024)).permute(2, 0, 1).float()[None]
    with torch.no_grad():
        # segment_anything normalises 0-255 pixels itself (pixel_mean / pixel_std)
        expected = theirs.image_encoder(theirs.preprocess(image[0])[None])
        got = ours(image / 255)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
