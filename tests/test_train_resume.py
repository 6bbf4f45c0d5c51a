"""Nothing of a run is lost or overwritten: resuming, refusing, cleaning up (tiny models).

Each test damages or reuses a run folder the way a killed run, a deleted file or a repeated
command would, and checks what the next run does with it.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from lmseg.checkpoint import read_header
from lmseg.cli import main as lmseg_main
from lmseg.factory import create_model, load_model
from lmseg.train.config import TrainConfig, load_config
from lmseg.train.trainer import TensorSegmentationDataset, Trainer

K = 4


def tiny_dataset(n: int = 4) -> TensorSegmentationDataset:
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, K, (n, 64, 64), generator=g)
    labels[:, :3] = 255
    return TensorSegmentationDataset(images, labels, class_names=[f"thing{i}" for i in range(K)])


def tiny_config(output_dir: Path, *overrides: str) -> TrainConfig:
    return load_config(
        None,
        [
            "model.name=catseg_tiny",
            "model.vision_language_weights=null",
            "solver.iterations=6",
            "solver.batch_size=1",
            "data.num_workers=0",
            f"train.output_dir={output_dir}",
            "train.checkpoint_period=1",
            "train.keep_checkpoints=0",
            "train.log_period=1",
            "train.progress=false",
            *overrides,
        ],
    )


def trainer(output_dir: Path, *overrides: str, seed: int = 0) -> Trainer:
    torch.manual_seed(seed)  # another seed: other weights until a checkpoint is loaded
    return Trainer(
        tiny_config(output_dir, *overrides),
        model=create_model("catseg_tiny"),
        dataset=tiny_dataset(),
        augment=False,
    )


def log_iterations(run: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run / "log.jsonl").read_text().splitlines()]


def checkpoint_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("iter_*"))


def assert_weights_equal(model: torch.nn.Module, path: Path) -> None:
    saved = load_file(str(path))
    own = model.state_dict()
    assert set(saved) == set(own)
    for name, value in saved.items():
        assert torch.equal(own[name], value), name


# -- which checkpoint a resume takes ----------------------------------------------------------
DAMAGES = ["folder_removed", "state_missing", "state_truncated", "weights_truncated"]


def damage(folder: Path, how: str) -> None:
    """What a deleted folder, a disk error or a hand-edited run leaves behind."""
    if how == "folder_removed":
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    elif how == "state_missing":
        (folder / "state.pt").unlink()
    else:
        file = folder / ("state.pt" if how == "state_truncated" else "model.safetensors")
        data = file.read_bytes()
        file.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("how", DAMAGES)
def test_resume_takes_the_newest_complete_checkpoint(tmp_path, how):
    run = tmp_path / "run"
    trainer(run).train(until=3)  # killed after iteration 3: no final model
    assert (run / "checkpoints/last").read_text().strip() == "iter_0000003"
    damage(run / "checkpoints/iter_0000003", how)

    resumed = trainer(run, seed=999)
    with pytest.warns(UserWarning, match="iter_0000003") as caught:
        assert resumed.resume()
    assert resumed.iteration == 2
    assert all("\n" not in str(w.message) for w in caught)  # one line each
    assert_weights_equal(resumed.model, run / "checkpoints/iter_0000002/model.safetensors")


def test_a_resumed_run_replaces_later_incomplete_folders_and_prunes_only_older_ones(tmp_path):
    run = tmp_path / "run"
    trainer(run).train(until=4)  # keeps every checkpoint
    for name in ("iter_0000003", "iter_0000004"):
        damage(run / "checkpoints" / name, "state_missing")
    resumed = trainer(run, "train.keep_checkpoints=1", seed=999)
    with pytest.warns(UserWarning, match="iter_0000004.*iter_0000003.*resuming from .*iter_0000002"):
        assert resumed.resume() and resumed.iteration == 2
    resumed.train(until=3)
    # the new iteration 3 replaced the incomplete folder and is the one kept; iteration 4 waits
    # to be replaced when training gets there
    assert checkpoint_names(run) == ["iter_0000003", "iter_0000004"]
    state = torch.load(run / "checkpoints/iter_0000003/state.pt", weights_only=True)
    assert state["iteration"] == 3
    assert_weights_equal(resumed.model, run / "checkpoints/iter_0000003/model.safetensors")
    assert (run / "checkpoints/last").read_text().strip() == "iter_0000003"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_resume_refuses_when_no_checkpoint_is_complete(tmp_path):
    run = tmp_path / "run"
    trainer(run).train(until=2)
    for name in ("iter_0000001", "iter_0000002"):
        (run / "checkpoints" / name / "state.pt").unlink()
    resumed = trainer(run, seed=999)
    with pytest.raises(ValueError, match="no complete checkpoint") as error:
        resumed.resume()
    message = str(error.value)
    assert "\n" not in message and str(run / "checkpoints") in message
    assert "iter_0000002" in message and "state.pt" in message


# -- through the command line -----------------------------------------------------------------
def write_fake_coco(root: Path, n: int = 2) -> None:
    """A tiny COCO-Stuff train split in CAT-Seg's layout (171 classes, 255 ignored)."""
    rng = np.random.default_rng(1)
    images = root / "coco-stuff/images/train2017"
    labels = root / "coco-stuff/annotations_detectron2/train2017"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
        label = rng.integers(0, 171, (40, 48)).astype(np.uint8)
        label[:, :5] = 255
        Image.fromarray(label).save(labels / f"{i}.png")


@pytest.fixture
def command(tmp_path):
    """``lmseg train CONFIG --output-dir RUN --device cpu`` on a tiny COCO-Stuff, plus options."""
    write_fake_coco(tmp_path / "data")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "catseg_tiny", "vision_language_weights": None},
                "data": {
                    "root": str(tmp_path / "data"),
                    "min_size": [32],
                    "crop_size": 32,
                    "num_workers": 0,
                },
                "solver": {"iterations": 3, "batch_size": 1},
                "train": {"progress": False, "checkpoint_period": 1, "log_period": 1},
            }
        )
    )
    run = tmp_path / "run"

    def lmseg_train(*args: str) -> int:
        torch.manual_seed(0)
        return lmseg_main(
            ["train", str(config), *args, "--output-dir", str(run), "--device", "cpu"]
        )

    return lmseg_train, run


def test_cli_resume_with_a_dangling_last_pointer_continues_the_run(command, capsys):
    lmseg_train, run = command
    assert lmseg_train() == 0
    assert checkpoint_names(run) == ["iter_0000001", "iter_0000002", "iter_0000003"]
    damage(run / "checkpoints/iter_0000003", "folder_removed")  # `last` still names it
    capsys.readouterr()

    assert lmseg_train("solver.iterations=4", "--resume") == 0
    err = capsys.readouterr().err
    assert "iter_0000003" in err and "iter_0000002" in err  # said which one it took
    # continued from iteration 2: nothing redone from 1, nothing logged twice
    assert log_iterations(run) == [1, 2, 3, 4]
    assert checkpoint_names(run) == ["iter_0000002", "iter_0000003", "iter_0000004"]
    assert (run / "checkpoints/last").read_text().strip() == "iter_0000004"
    assert read_header(run / "model_final.safetensors").metadata["iteration"] == "4"


def test_cli_resume_without_a_complete_checkpoint_is_refused(command, capsys):
    lmseg_train, run = command
    folder = run / "checkpoints/iter_0000002"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"not a checkpoint")
    (run / "checkpoints/last").write_text("iter_0000002\n")
    assert lmseg_train("--resume") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert "no complete checkpoint" in err and "--overwrite" in err
    assert not (run / "log.jsonl").exists() and not (run / "model_final.safetensors").exists()


@pytest.mark.parametrize("earlier", ["checkpoints", "final_model"])
def test_cli_never_overwrites_an_earlier_run_unless_asked(command, capsys, earlier):
    lmseg_train, run = command
    # An earlier run's outputs without `checkpoints/last` (deleted, or never written).
    if earlier == "checkpoints":
        folder = run / "checkpoints/iter_0000003"
        folder.mkdir(parents=True)
        kept = [folder / "model.safetensors", folder / "state.pt"]
    else:
        run.mkdir()
        kept = [run / "model_final.safetensors"]
    for file in kept:
        file.write_bytes(b"an earlier run's " + file.name.encode())
    (run / "log.jsonl").write_text('{"iteration": 3, "loss": 1.0}\n')

    assert lmseg_train() == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(run) in err and "--resume" in err and "--overwrite" in err
    for file in kept:
        assert file.read_bytes() == b"an earlier run's " + file.name.encode()
    assert log_iterations(run) == [3]

    assert lmseg_train("solver.iterations=1", "--overwrite") == 0
    assert checkpoint_names(run) == ["iter_0000001"]  # the earlier run's checkpoints are gone
    assert log_iterations(run) == [1]
    assert read_header(run / "model_final.safetensors").metadata["iteration"] == "1"
    # a rerun of the saved config does not replace the run by itself
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["overwrite"] is False


def test_overwrite_config_key_and_python_api_follow_the_same_rule(tmp_path):
    run = tmp_path / "run"
    trainer(run, "solver.iterations=1").train()
    final = (run / "model_final.safetensors").read_bytes()
    with pytest.raises(ValueError, match="--overwrite"):
        trainer(run, "solver.iterations=1").train()
    assert (run / "model_final.safetensors").read_bytes() == final
    trainer(run, "solver.iterations=2", "train.overwrite=true").train()
    assert log_iterations(run) == [1, 2]


# -- resuming past the end, the log, leftovers ------------------------------------------------
def test_resume_past_the_requested_iterations_leaves_a_final_model(tmp_path):
    run = tmp_path / "run"
    trainer(run, "train.checkpoint_period=2").train(until=2)
    assert not (run / "model_final.safetensors").exists()
    resumed = trainer(run, "solver.iterations=1", seed=999)
    assert resumed.resume() and resumed.iteration == 2
    with pytest.warns(UserWarning, match="iteration 2.*solver.iterations=1") as caught:
        assert resumed.train() == []  # nothing trained
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    final = run / "model_final.safetensors"
    assert_weights_equal(load_model(final), run / "checkpoints/iter_0000002/model.safetensors")
    assert read_header(final).metadata["iteration"] == "2"


def test_resumed_log_drops_the_killed_runs_later_lines(tmp_path):
    run = tmp_path / "run"
    trainer(run, "train.checkpoint_period=3").train(until=4)
    lines = (run / "log.jsonl").read_text().splitlines()
    assert log_iterations(run) == [1, 2, 3, 4]
    with open(run / "log.jsonl", "a") as f:
        f.write('{"iteration": 5, "loss": 0.')  # killed in the middle of a line

    resumed = trainer(run, "train.checkpoint_period=3", seed=999)
    assert resumed.resume() and resumed.iteration == 3
    resumed.train(until=5)
    after = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in after] == [1, 2, 3, 4, 5]
    assert after[:3] == lines[:3]  # the lines up to the checkpoint are kept as they were
    assert not list(run.glob(".*.tmp"))


def test_resumed_tensorboard_purges_the_killed_runs_later_events(tmp_path, monkeypatch):
    writers = []

    class SummaryWriter:  # records what lmseg asks of TensorBoard's writer
        def __init__(self, log_dir, purge_step=None):
            self.purge_step, self.steps = purge_step, []
            writers.append(self)

        def add_scalar(self, tag, value, step):
            if tag == "loss":
                self.steps.append(step)

        def flush(self):
            pass

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = SummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    options = ("train.tensorboard=true", "train.checkpoint_period=2")
    trainer(run := tmp_path / "run", *options).train(until=3)
    resumed = trainer(run, *options, seed=999)
    assert resumed.resume() and resumed.iteration == 2
    resumed.train(until=4)
    # TensorBoard hides the killed run's events from the resumed step on
    assert [(w.purge_step, w.steps) for w in writers] == [(1, [1, 2, 3]), (3, [3, 4])]


@pytest.mark.parametrize("resume", [False, True])
def test_leftover_temporary_files_are_removed(tmp_path, resume):
    run = tmp_path / "run"
    if resume:
        trainer(run).train(until=1)
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    leftovers = [
        run / "checkpoints/.iter_0000002.tmp/model.safetensors",  # a checkpoint being written
        run / "checkpoints/.iter_0000001.old.tmp/state.pt",  # one being replaced
        run / "checkpoints/.last.k2j4h1.tmp",  # lmseg.io.atomic_write's temporary files
        run / ".log.jsonl.a8f3k1.tmp",
        run / ".model_final.safetensors.0xq2c9.tmp",
        run / ".config.yaml.ms81lp.tmp",
        run / "eval/iter_0000001/.voc20.json.3kd8a0.tmp",
    ]
    # files the run does not write stay, even hidden temporary-looking ones
    mine = [run / "notes.txt", run / "checkpoints/README", run / ".hidden", run / ".draft.tmp"]
    for file in leftovers + mine:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"x")

    again = trainer(run, seed=999)
    assert again.resume() == resume
    again.train(until=2)
    assert [f for f in leftovers if f.exists()] == []
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert all(f.read_bytes() == b"x" for f in mine)
    assert checkpoint_names(run) == ["iter_0000001", "iter_0000002"]


# -- a run that dies inside a checkpoint write ------------------------------------------------
class Crash(Exception):
    """Stands for the process being killed at that point."""


def crash_on_call(monkeypatch, owner, name: str, nth: int, when=lambda *a, **k: True) -> None:
    """Make ``owner.name`` raise :class:`Crash` at its ``nth`` call for which ``when`` holds."""
    real = getattr(owner, name)
    calls = []

    def fake(*args, **kwargs):
        if when(*args, **kwargs):
            calls.append(1)
            if len(calls) == nth:
                raise Crash(f"killed inside {name}")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, fake)


@pytest.mark.parametrize("stage", ["weights", "state", "folder_rename", "pointer"])
def test_a_run_killed_inside_a_checkpoint_write_stays_resumable(tmp_path, monkeypatch, stage):
    import os

    import lmseg.checkpoint

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        # the second checkpoint's write dies: in its weights, its state, its folder's rename
        # into place, or the replacement of `last` after that
        if stage == "weights":
            crash_on_call(m, lmseg.checkpoint, "save_file", 2)
        elif stage == "state":
            crash_on_call(m, torch, "save", 2)
        elif stage == "folder_rename":
            crash_on_call(m, os, "replace", 1, when=lambda src, dst: Path(dst).name == "iter_0000002")
        else:
            crash_on_call(m, os, "replace", 2, when=lambda src, dst: Path(dst).name == "last")
        with pytest.raises(Crash):
            trainer(run).train()

    # Every checkpoint there is complete and `last` names one of them.
    for folder in (run / "checkpoints").glob("iter_*"):
        torch.load(folder / "state.pt", weights_only=True)
        load_model(folder / "model.safetensors")
    assert (run / "checkpoints" / (run / "checkpoints/last").read_text().strip()).is_dir()

    resumed = trainer(run, seed=999)
    assert resumed.resume()
    # a folder renamed into place is complete: after a crash replacing `last` it is the newest
    assert resumed.iteration == (2 if stage == "pointer" else 1)
    resumed.train(until=3)
    assert not list((run / "checkpoints").glob(".*"))
    assert log_iterations(run) == [1, 2, 3]
    assert (run / "checkpoints/last").read_text().strip() == "iter_0000003"


@pytest.mark.slow  # ~12 s on a 2-core CPU VM: a second Python process imports torch
def test_a_killed_training_process_leaves_a_resumable_run(tmp_path):
    """SIGKILL at an arbitrary moment of a run that checkpoints and prunes every iteration."""
    import os
    import random
    import signal
    import subprocess
    import time

    run = tmp_path / "run"
    here = Path(__file__).resolve().parent
    script = (
        f"import sys; sys.path.insert(0, {str(here)!r})\n"
        "from pathlib import Path\n"
        "from test_train_resume import trainer\n"
        f"trainer(Path({str(run)!r}), 'solver.iterations=100000', 'train.keep_checkpoints=2')"
        ".train()\n"
    )
    paths = [str(here.parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    env["OMP_NUM_THREADS"] = "1"
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        log = run / "log.jsonl"
        while not (log.is_file() and log.read_text().count("\n") >= 3):
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the training process made no progress"
            time.sleep(0.02)
        delay = random.uniform(0.0, 0.5)  # somewhere in an iteration, maybe inside a write
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stderr.close()

    when = f"killed {delay:.3f} s after the third log line"
    for folder in (run / "checkpoints").glob("iter_*"):  # every one of them loads
        torch.load(folder / "state.pt", weights_only=True)
        load_model(folder / "model.safetensors")
    resumed = trainer(run, "solver.iterations=100000", "train.keep_checkpoints=2", seed=999)
    assert resumed.resume(), when
    done = resumed.iteration
    assert done >= 2, when
    resumed.train(until=done + 1)
    assert log_iterations(run) == list(range(1, done + 2)), when
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], when
