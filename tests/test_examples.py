"""Every example script runs offline on CPU (CI runs them through this test)."""

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ARGS = {
    "segment_image.py": [],
    "segment_vocabulary.py": ["--vocabulary", "voc20", "--sliding-window"],
    "compose_blocks.py": None,
    "swap_fusion.py": None,
    "prompt_bank.py": None,
    "synthetic_zero_shot.py": ["--quick", "--steps", "3", "--no-progress", "--out", "out"],
    "add_your_own_block.py": ["--steps", "2", "--out", "out"],
}


def test_every_example_is_covered():
    assert {p.name for p in EXAMPLES.glob("*.py")} <= set(ARGS)


@pytest.mark.parametrize("name", sorted(ARGS))
def test_example_runs(name, tmp_path, monkeypatch, capsys):
    path = EXAMPLES / name
    if not path.exists():
        pytest.skip(f"{name} is not part of this checkout")
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "argv", [str(path)])
    spec.loader.exec_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ARGS[name]
        rc = module.main() if args is None else module.main(args)
    assert rc == 0
    out = capsys.readouterr().out
    assert out.strip()
    if name in CHECKS:
        CHECKS[name](out, tmp_path)


def check_add_your_own_block(out, tmp_path):
    """The new blocks are built, trained, saved in the config, refused without their
    registration, and the reloaded model gives the same logits."""
    import json
    import re

    from safetensors import safe_open

    from lmseg.aggregation import CLASS_ATTENTIONS
    from lmseg.encoders import SPATIAL_ENCODERS

    try:
        assert "unknown option(s) ['widht'] for spatial encoder 'tiny_conv'" in out
        padding = re.search(r"3 explicit padding tokens: max \|difference\| (\S+)", out)
        assert padding and float(padding.group(1)) < 1e-5
        assert "spatial encoder TinyConvEncoder, class attention CosineClassAttention" in out
        assert "the new encoder's weights changed" in out
        assert "without the registration:" in out and "unknown spatial encoder type 'tiny_conv'" in out
        assert "max |difference| 0: identical" in out
        with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
            config = json.loads(f.metadata()["lmseg_config"])
        assert config["spatial_encoder"] == {"type": "tiny_conv", "width": 16}
        assert config["aggregator"]["class_attention"] == {"type": "cosine"}
    finally:  # leave the registries as the other tests expect them
        SPATIAL_ENCODERS.unregister("tiny_conv")
        CLASS_ATTENTIONS.unregister("cosine")


CHECKS = {"add_your_own_block.py": check_add_your_own_block}
