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
}

# Examples that need files another step writes, run by their own tests.
TESTED_ELSEWHERE = {"onnx_inference.py": "tests/test_export.py (after an ONNX export)"}


def test_every_example_is_covered():
    assert {p.name for p in EXAMPLES.glob("*.py")} <= set(ARGS) | set(TESTED_ELSEWHERE)


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
    assert capsys.readouterr().out.strip()
