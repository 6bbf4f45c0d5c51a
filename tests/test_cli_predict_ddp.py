"""``lmseg predict`` under torchrun: two gloo processes (CPU) share the images and write the same
outputs, counts and summary as one process."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from PIL import Image

from lmseg.cli import main

CLASSES = "sky,grass,box"


def _args(folder: Path, out: Path) -> list[str]:
    return ["predict", str(folder), "--classes", CLASSES, "--model", "lmseg_tiny", "--workers",
            "0", "--batch-size", "1", "--device", "cpu", "--outputs", "all", "--out", str(out)]


def _worker(rank: int, world_size: int, port: int, folder: str, out: str) -> None:
    # What torchrun sets for each process.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    log = Path(out).parent / f"rank{rank}.txt"
    with open(log, "w") as f, contextlib.redirect_stdout(f):
        rc = main(_args(Path(folder), Path(out)))
    (Path(out).parent / f"rc{rank}").write_text(str(rc))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_write_what_one_process_writes(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    rng = np.random.default_rng(0)
    for name, size in [("a.png", (40, 60)), ("b/c.png", (30, 30)), ("b/d.jpg", (36, 48)),
                       ("e.png", (40, 60)), ("f.png", (24, 40))]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"not a png")

    (tmp_path / "ddp").mkdir()
    # As tests/test_ddp.py: a fork server imports torch and lmseg once for both processes.
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["lmseg.cli.predict", "lmseg.batch"])
    mp.start_processes(
        _worker,
        args=(2, _free_port(), str(folder), str(tmp_path / "ddp" / "out")),
        nprocs=2,
        join=True,
        start_method="forkserver",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes: the same float rounding
    try:
        assert main(_args(folder, tmp_path / "single" / "out")) == 1  # the broken image fails
    finally:
        torch.set_num_threads(threads)
    single_summary = [line for line in capsys.readouterr().out.splitlines() if "written" in line]

    # Every process knows a file failed; process 0 reports the counts of both.
    assert [(tmp_path / "ddp" / f"rc{r}").read_text() for r in range(2)] == ["1", "1"]
    rank0 = (tmp_path / "ddp" / "rank0.txt").read_text().splitlines()
    assert [line for line in rank0 if "written" in line][0].startswith(
        "5 written, 0 skipped as done, 1 failed"
    )
    assert single_summary[0].startswith("5 written, 0 skipped as done, 1 failed")
    assert not (tmp_path / "ddp" / "rank1.txt").read_text().strip()

    one, two = tmp_path / "single" / "out", tmp_path / "ddp" / "out"
    files = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file())
    assert len(files) == 5 * 4 + 2  # four outputs per image, the run's settings, the CSV
    for name in files:
        if name.endswith(".png"):
            assert np.array_equal(np.asarray(Image.open(one / name)), np.asarray(Image.open(two / name))), name
        elif name.endswith(".npz"):
            with np.load(one / name) as a, np.load(two / name) as b:
                assert np.array_equal(a["probabilities"], b["probabilities"]), name
        else:  # the JSON summaries, the run's settings and summary.csv
            assert (one / name).read_text() == (two / name).read_text(), name
