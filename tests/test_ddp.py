"""Two-process DDP (gloo, CPU) equals one process with the whole batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lmseg.factory import create_model
from lmseg.train.config import load_config
from lmseg.train.trainer import TensorSegmentationDataset, Trainer

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
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_step_matches_single_process(tmp_path):
    # A fork server imports torch and lmseg once for both workers (spawn would import them in
    # each, ~2x slower on a 2-core machine); its children start from a clean, single-threaded
    # process, unlike plain fork of the test process.
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["lmseg.train.trainer"])
    mp.start_processes(
        _worker,
        args=(2, _free_port(), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="forkserver",
    )
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)

    single = _trainer(str(tmp_path / "single"))
    assert single.micro_batch == BATCH
    grads = _record_gradients(single)
    before = {k: v.clone() for k, v in single.model.state_dict().items()}
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
        scale = grad.abs().max().item()
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-3, atol=1e-8 + 1e-4 * scale, msg=name)
    # Adam's first step moves each element by about ±lr wherever |grad| >> eps, so trained
    # parameters agree except at the few elements whose gradient is ~eps (a key bias's is ~0 in
    # exact arithmetic), and even there by at most 2·lr; frozen ones are identical.
    trainable = {n for n, p in single.model.named_parameters() if p.requires_grad}
    close = total = 0
    for name, value in single.model.state_dict().items():
        other = ddp["state"][name]
        if name not in trainable:
            assert torch.equal(other, value) and torch.equal(value, before[name]), name
            continue
        assert (other - value).abs().max() <= 2.01 * single.config.solver.lr, name
        close += int(torch.isclose(other, value, rtol=1e-5, atol=1e-7).sum())
        total += value.numel()
    # (~0.2 % of elements have a gradient within rounding of 0 whose sign flips between the
    # half-batch and full-batch sums; a missing all-reduce or a wrong scale moves nearly all.)
    assert close / total > 0.99
