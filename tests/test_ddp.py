"""Two processes (gloo, CPU) compute what one process computes on all the data: a DDP training
step (gradients, loss, the optimizer's update) and the evaluation metrics' reduction."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lmseg.eval.metrics import SegmentationMetrics
from lmseg.factory import create_model
from lmseg.train.config import load_config
from lmseg.train.trainer import TensorSegmentationDataset, Trainer

pytestmark = pytest.mark.slow  # two processes started through a fork server

BATCH = 4  # global: 2 per process under DDP


def _dataset() -> TensorSegmentationDataset:
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (6, 64, 64), generator=g)
    labels[:, :, :3] = 255
    return TensorSegmentationDataset(images, labels, class_names=["a", "b", "c", "d"])


def _trainer(output_dir: str) -> Trainer:
    config = load_config(
        None,
        [
            "model.name=catseg_tiny",
            "model.clip_pretrained=null",
            "solver.iterations=10",
            f"solver.batch_size={BATCH}",
            # without clipping (CAT-Seg clips the norm to 0.01, which rescales any gradient to
            # the same norm), the optimizer sees the all-reduced gradients as they are, so a
            # wrong averaging scale shows
            "solver.grad_clip=null",
            "data.num_workers=0",
            "train.precision=fp32",
            "train.progress=false",
            f"train.output_dir={output_dir}",
        ],
    )
    torch.manual_seed(0)
    return Trainer(config, model=create_model("catseg_tiny"), dataset=_dataset(), augment=False)


def _record_gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Gradients as the optimizer sees them (after all-reduce and clipping) at the next step."""
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    grads: dict[str, torch.Tensor] = {}

    def hook(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grads[names[id(p)]] = p.grad.detach().clone()

    trainer.optimizer.register_step_pre_hook(hook)
    return grads


METRIC_CLASSES = 5


def _metric_shard(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and labels (with ignored pixels) of one process's share of an evaluation."""
    g = torch.Generator().manual_seed(100 + rank)
    label = torch.randint(0, METRIC_CLASSES, (2 + rank, 9, 11), generator=g)
    label[torch.rand(label.shape, generator=g) < 0.1] = 255
    # rank 1 never predicts class 4, rank 0 never sees class 3: only the sum has every count
    pred = torch.randint(0, METRIC_CLASSES - rank, label.shape, generator=g)
    if rank == 0:
        label[label == 3] = 255
    return pred, label


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        trainer = _trainer(out)
        assert trainer.micro_batch == BATCH // world_size
        grads = _record_gradients(trainer)
        stats = trainer.step()
        loss = torch.tensor(stats["loss"])
        dist.all_reduce(loss)
        if rank == 0:
            state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            torch.save(
                {"grads": grads, "state": state, "loss": loss / world_size}, Path(out) / "ddp.pt"
            )
        metrics = SegmentationMetrics(METRIC_CLASSES, 255)
        metrics.update(*_metric_shard(rank))
        metrics.all_reduce()
        torch.save(
            {"confusion": metrics.confusion_matrix, "metrics": metrics.compute()},
            Path(out) / f"metrics_{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """Run the two-process job once: a DDP training step, then a metrics reduction."""
    out = tmp_path_factory.mktemp("ddp")
    # A fork server imports torch and lmseg once for both workers (spawn would import them in
    # each, ~2x slower on a 2-core machine); its children start from a clean, single-threaded
    # process, unlike plain fork of the test process.
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["lmseg.train.trainer"])
    mp.start_processes(
        _worker,
        args=(2, _free_port(), str(out)),
        nprocs=2,
        join=True,
        start_method="forkserver",
    )
    return out


def test_ddp_step_matches_single_process(two_processes, tmp_path):
    ddp = torch.load(two_processes / "ddp.pt", weights_only=True)

    single = _trainer(str(tmp_path / "single"))
    assert single.micro_batch == BATCH
    grads = _record_gradients(single)
    stats = single.step()

    torch.testing.assert_close(ddp["loss"], torch.tensor(stats["loss"]), rtol=0, atol=1e-6)
    assert (
        set(ddp["grads"])
        == set(grads)
        == {n for n, p in single.model.named_parameters() if p.requires_grad}
    )
    for name, grad in grads.items():
        # two half-batch means averaged vs one full-batch mean: equal up to float rounding, which
        # for elements whose gradient is a near-cancelling sum is relative to the tensor's scale
        # (measured: at most 1.9e-4 of it, in the decoder guidance's sums over classes and batch)
        scale = grad.abs().max().item()
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-3, atol=1e-8 + 5e-4 * scale, msg=name)
    # The DDP process's update is exactly one optimizer step (AdamW, then the QV row restore)
    # on those averaged gradients, from the same initial weights: replay it in this process.
    replay = _trainer(str(tmp_path / "replay"))
    named = dict(replay.model.named_parameters())
    for name, grad in ddp["grads"].items():
        named[name].grad = grad.clone()
    replay.optimizer.step()
    replay.qv_mask.restore()
    trainable = {n for n, p in single.model.named_parameters() if p.requires_grad}
    for name, value in replay.model.state_dict().items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=0, atol=0, msg=name)
    # And it agrees with the single process's step wherever the gradient is not within rounding
    # of zero. (Adam's first step moves an element by ~lr·sign(grad); ~0.2 % of elements have a
    # gradient within rounding of 0 whose sign flips between the half-batch and full-batch
    # sums. A missing all-reduce or a wrong scale moves nearly all.)
    close = total = 0
    for name, value in single.model.state_dict().items():
        if name in trainable:
            close += int(torch.isclose(ddp["state"][name], value, rtol=1e-5, atol=1e-7).sum())
            total += value.numel()
        else:
            assert torch.equal(ddp["state"][name], value), name
    assert close / total > 0.99


def test_metrics_reduce_across_processes(two_processes):
    union = SegmentationMetrics(METRIC_CLASSES, 255)
    for rank in (0, 1):
        union.update(*_metric_shard(rank))
    expected = union.compute()
    assert all(expected["valid"])  # every class occurs in the union's ground truth
    for rank in (0, 1):  # every process holds the totals
        got = torch.load(two_processes / f"metrics_{rank}.pt", weights_only=True)
        assert torch.equal(got["confusion"], union.confusion_matrix)
        assert got["metrics"] == expected
    alone = SegmentationMetrics(METRIC_CLASSES, 255)
    alone.update(*_metric_shard(0))
    assert not torch.equal(alone.confusion_matrix, union.confusion_matrix)
