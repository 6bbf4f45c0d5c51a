"""The class-attention × fusion ablation on the synthetic world (benchmarks/ablation.py): variants
built through the factory's overrides, results saved as they come, resumed without rerunning."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from lmseg.aggregation import CLASS_ATTENTIONS
from lmseg.aggregation.class_attention import LinearClassAttention, SoftmaxClassAttention
from lmseg.fusion import FUSION_MODES
from lmseg.synthetic.model import build_demo_model
from lmseg.synthetic.runner import Job
from lmseg.synthetic.settings import ROWS

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def ablation():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports benchmarks/report.py
    try:
        spec = importlib.util.spec_from_file_location("ablation", BENCHMARKS / "ablation.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_variants_cover_the_registries_demo_model_first(ablation) -> None:
    fusions = ["none", *FUSION_MODES]
    plan = ablation.variants(CLASS_ATTENTIONS.names(), fusions)
    assert sorted(plan) == sorted((a, f) for a in CLASS_ATTENTIONS.names() for f in fusions)
    assert plan[0] == ("linear", "scalar")  # the demo's attributes + fusion model
    # then every single change from it, before any double change
    assert {v for v in plan[1:6]} == {("linear", f) for f in fusions if f != "scalar"} | {
        ("softmax", "scalar")
    }


def test_variants_are_built_through_factory_overrides(ablation) -> None:
    job = ablation.job("softmax", "pixel", 3)
    assert job == Job(
        "softmax/pixel",
        "attributes+fusion",
        3,
        {"class_attention": "softmax", "fusion": {"mode": "pixel"}},
    )
    row = ROWS[job.row]
    model = build_demo_model(64, row.prompts, row.fusion, overrides=job.overrides)
    assert all(
        isinstance(layer.classes.attention, SoftmaxClassAttention)
        for layer in model.aggregator.layers
    )
    assert model.fusion.mode == "pixel" and model.fusion.weight_logit.shape == (1, 1, 8, 8)
    assert model.config["fusion"] == {
        "type": "weighted",
        "mode": "pixel",
        "init": 0.5,
        "hidden_dim": 16,
    }
    plain = ablation.job("linear", "none", 0)
    assert plain.row == "attributes+clip" and "fusion" not in plain.overrides
    model = build_demo_model(64, "attributes_only", False, overrides=plain.overrides)
    assert model.fusion is None and model.spatial_encoder is None
    assert isinstance(model.aggregator.layers[0].classes.attention, LinearClassAttention)


def fake_result(job: Job) -> dict:
    """What run_job returns, with mIoUs that identify the job."""
    unseen = 10.0 * len(job.key) + job.seed
    return {
        "row": job.key,
        "seed": job.seed,
        "unseen_mIoU": unseen,
        "seen_mIoU": unseen / 2,
        "unseen_background_IoU": 90.0,
        "seen_background_IoU": 90.0,
        "unseen_per_class": {},
        "seen_per_class": {},
        "clip_fusion_weight": None,
        "final_loss": 1.0,
        "loss_every_25_steps": [1.0],
        "train_seconds": 2.0,
        "eval_seconds": 1.0,
        "_predictions": None,
    }


def test_runs_are_saved_as_they_come_and_skipped_on_resume(
    ablation, tmp_path, monkeypatch, capsys
) -> None:
    ran: list[tuple[str, int]] = []

    def run_jobs(settings, jobs, *, show_progress, on_result, longest_first):
        assert not longest_first  # the plan's order
        for job in jobs:
            ran.append((job.key, job.seed))
            on_result(fake_result(job))
            saved = json.loads(out.read_text())  # saved after every run
            assert (job.key, job.seed) in {(r["variant"], r["seed"]) for r in saved["runs"]}

    monkeypatch.setattr(ablation, "run_jobs", run_jobs)
    out, md = tmp_path / "ablation.json", tmp_path / "ablation.md"
    args = [
        "--smoke",
        "--seeds",
        "0,1",
        "--fusions",
        "none,scalar",
        "--out",
        str(out),
        "--markdown",
        str(md),
    ]
    assert ablation.main([*args, "--max-jobs", "3"]) == 0
    assert ran == [("linear/scalar", 0), ("linear/scalar", 1), ("linear/none", 0)]
    report = json.loads(out.read_text())
    assert report["benchmark"] == ablation.BENCHMARK and report["settings"]["steps"] == 1
    rows = {r["variant"]: r for r in report["results"]}
    assert list(rows) == ["linear/none", "linear/scalar", "softmax/none", "softmax/scalar"]
    assert rows["linear/scalar"]["unseen_by_seed"] == {"0": 130.0, "1": 131.0}
    assert rows["linear/scalar"]["unseen_mIoU"]["mean"] == pytest.approx(130.5)
    assert rows["linear/scalar"]["seconds_per_run"] == pytest.approx(3.0)
    assert rows["linear/none"]["seeds_missing"] == [1] and rows["softmax/none"]["seeds_done"] == []
    assert {"variant": "softmax/none", "seeds": [0, 1]} in report["missing"]
    table = md.read_text().splitlines()
    assert table[2] == "| linear | none | 110.0 ± 0.0 | 55.0 ± 0.0 | 110.0 (seed 1 not run) | 3 |"
    assert table[4] == "| softmax | none | not run | | | |"

    ran.clear()
    assert ablation.main(args) == 0  # resumes: only the five missing runs
    assert ran == [
        ("linear/none", 1),
        ("softmax/scalar", 0),
        ("softmax/scalar", 1),
        ("softmax/none", 0),
        ("softmax/none", 1),
    ]
    report = json.loads(out.read_text())
    assert len(report["runs"]) == 8 and report["missing"] == []
    assert "3 runs in" in capsys.readouterr().out

    with pytest.raises(SystemExit, match="other settings.*steps"):
        ablation.main([*args, "--steps", "2"])  # never mixes runs of other settings


def test_one_real_run_end_to_end(ablation, tmp_path) -> None:
    out, md = tmp_path / "a.json", tmp_path / "a.md"
    argv = ["--smoke", "--attentions", "softmax", "--fusions", "adaptive", "--no-progress"]
    assert ablation.main([*argv, "--out", str(out), "--markdown", str(md)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["variant"] == "softmax/adaptive" and run["fusion"] == "adaptive"
    assert 0.0 <= run["unseen_mIoU"] <= 100.0 and len(run["unseen_per_class"]) == 24
    assert md.read_text().startswith("| class attention | fusion | unseen mIoU")
