"""Training recipe, exact resume, configs, evaluation and the train/eval commands (tiny models)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lmseg.cli.train import main as cli_main
from lmseg.data import SegmentationDataset
from lmseg.eval.evaluate import (
    SWEEP_DATASETS,
    EvalOptions,
    evaluate,
    format_summary,
)
from lmseg.eval.metrics import SegmentationMetrics
from lmseg.factory import create_model, load_model
from lmseg.prompts import encode_prompts, prompts_for
from lmseg.segmenter import Segmenter, SlidingWindow
from lmseg.train.config import (
    ConfigError,
    TrainConfig,
    config_from_dict,
    list_configs,
    load_config,
)
from lmseg.train.optim import (
    WarmupCosine,
    build_optimizer,
    build_param_groups,
    configure_trainable,
)
from lmseg.train.trainer import (
    DataPosition,
    SampleStream,
    TensorSegmentationDataset,
    Trainer,
    TrainingPrompts,
    capture_rng_state,
    restore_rng_state,
)
from lmseg.vocabularies import load_vocabulary

K = 5


def tiny_dataset(n: int = 6, size: tuple[int, int] = (72, 80)) -> TensorSegmentationDataset:
    """Random images and labels (with an ignored band), in memory."""
    g = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (n, 3, *size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, K, (n, *size), generator=g)
    labels[:, :4] = 255
    return TensorSegmentationDataset(images, labels, class_names=[f"thing{i}" for i in range(K)])


def tiny_config(output_dir: Path, *overrides: str) -> TrainConfig:
    return load_config(
        None,
        [
            "model.name=catseg_tiny",
            "model.vision_language_weights=null",
            "solver.iterations=6",
            "solver.batch_size=2",
            "data.min_size=[64]",
            "data.crop_size=64",
            "data.num_workers=0",
            f"train.output_dir={output_dir}",
            "train.checkpoint_period=3",
            "train.log_period=2",
            "train.precision=fp32",
            "train.progress=false",
            *overrides,
        ],
    )


def seeded_model(name: str = "catseg_tiny"):
    torch.manual_seed(0)
    return create_model(name)


# -- configs --------------------------------------------------------------------------------
def test_shipped_configs_hold_catseg_recipe():
    assert {"catseg_vitb16_coco", "lmseg_vitb16_coco"} <= set(list_configs())
    for name in ("catseg_vitb16_coco", "lmseg_vitb16_coco"):
        c = load_config(name)
        s = c.solver
        assert (s.iterations, s.batch_size, s.lr, s.weight_decay) == (80000, 4, 2e-4, 1e-4)
        assert (s.vision_language_lr_multiplier, s.vision_language_finetune, s.schedule, s.warmup_iters) == (
            0.01,
            "qv",
            "cosine",
            0,
        )
        assert s.grad_clip == 0.01 and c.data.crop_size == 384 and c.data.dataset == "coco_train"
        assert c.loss.name == "bce" and c.loss.ignore_mode == "negative"
        # POOLING_SIZES [2, 2] of CAT-Seg's vitb_384.yaml: a training setting, not the model's
        assert c.train.class_pool_size == 2 and c.model.overrides == {}
        assert c.train.precision == "fp32"  # CAT-Seg trains without AMP
    assert load_config("lmseg_vitb16_coco").model.name == "lmseg_vitb16_samb"
    assert load_config("catseg_vitb16_coco").model.name == "catseg_vitb16"


def test_overrides_and_errors(tmp_path):
    c = load_config(
        "catseg_vitb16_coco",
        [
            "solver.lr=1e-4",
            "data.min_size=[320, 384]",
            "model.overrides.class_attention=softmax",
            "eval.datasets=[ade150]",
            "train.tensorboard=true",
            "solver.grad_clip=null",
        ],
    )
    assert c.solver.lr == 1e-4 and isinstance(c.solver.lr, float)  # YAML reads 1e-4 as a string
    assert c.data.min_size == [320, 384] and c.model.overrides["class_attention"] == "softmax"
    assert (
        c.eval.datasets == ["ade150"] and c.train.tensorboard is True and c.solver.grad_clip is None
    )
    with pytest.raises(ConfigError, match="solver.foo"):
        load_config("catseg_vitb16_coco", ["solver.foo=1"])
    with pytest.raises(ConfigError, match="solver.iterations"):
        load_config("catseg_vitb16_coco", ["solver.iterations=many"])
    with pytest.raises(ConfigError, match="precision"):
        load_config("catseg_vitb16_coco", ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="model"):
        load_config("catseg_vitb16_coco", ["model.overrides.nope=1"])
    with pytest.raises(ConfigError, match="top_k is a runtime option"):
        load_config("catseg_vitb16_coco", ["model.overrides.top_k=null"])
    # The keys of earlier releases still read, mapped onto the role names.
    old = load_config(
        "catseg_vitb16_coco",
        ["solver.clip_finetune=none", "model.clip_pretrained=x.pt",
         "model.overrides.aggregator.train_pool_size=3"],
    )
    assert old.solver.vision_language_finetune == "none"
    assert old.model.vision_language_weights == "x.pt"
    assert old.train.class_pool_size == 2  # the shipped config's own value wins over the old key
    with pytest.raises(ConfigError, match="same setting"):
        config_from_dict({"model": {"clip_pretrained": "a", "vision_language_weights": "b"}})
    assert "aggregator" not in old.model.overrides
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


# -- freezing policy and optimizer ------------------------------------------------------------
def test_trainable_parameters_follow_recipe():
    model = seeded_model("lmseg_tiny")
    configure_trainable(model, "qv")
    for name, p in model.named_parameters():
        if name.startswith("vision_language_encoder."):
            assert p.requires_grad == name.endswith("attn.in_proj_weight"), name
        elif name.startswith("spatial_encoder."):
            assert not p.requires_grad, name
        else:
            assert p.requires_grad, name  # aggregator, decoder, SAM adapter, fusion weights
    groups = build_param_groups(model, lr=2e-4, weight_decay=1e-4, encoder_lr_multiplier=0.01)
    by_name = {g["name"]: g for g in groups}
    assert by_name["vision_language"]["lr"] == pytest.approx(2e-6) and by_name["head"]["lr"] == 2e-4
    assert by_name["head_no_decay"]["weight_decay"] == 0.0  # LayerNorm / GroupNorm
    head = {id(p) for p in by_name["head"]["params"]}
    assert id(model.fusion.weight_logit) in head
    assert all(id(p) in head for p in model.spatial_adapter.parameters() if p.ndim > 1)
    grouped = sum(len(g["params"]) for g in groups)
    assert grouped == sum(p.requires_grad for p in model.parameters())


def test_qv_mask_trains_only_q_and_v_rows():
    model = seeded_model()
    mask = configure_trainable(model, "qv")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.5, encoder_lr_multiplier=1.0)
    text = encode_prompts(model.text_encoder, prompts_for(["a cat", "a dog", "grass"], mode="template"))
    model(torch.rand(2, 3, 96, 96), text).square().mean().backward()
    visual = model.vision_language_encoder.model.visual.transformer.resblocks
    w = visual[0].attn.embed_dim
    assert visual[0].attn.in_proj_weight.grad[w : 2 * w].abs().sum() == 0  # k rows masked
    optimizer.step()
    mask.restore()
    for name, p in model.named_parameters():
        old = before[name]
        if name.endswith("attn.in_proj_weight"):
            last_visual = name.startswith(
                f"vision_language_encoder.model.visual.transformer.resblocks.{len(visual) - 1}."
            )
            assert torch.equal(p[w : 2 * w], old[w : 2 * w]), f"k rows changed: {name}"
            assert not torch.equal(p[2 * w :], old[2 * w :]), f"v rows frozen: {name}"
            # the dense last vision block never uses q: frozen (no weight decay either)
            assert torch.equal(p[:w], old[:w]) == last_visual, name
        elif name.startswith("vision_language_encoder."):
            assert torch.equal(p, old), f"frozen CLIP parameter changed: {name}"
    assert mask.num_trainable() > 0


def test_cosine_schedule_without_warmup():
    f = WarmupCosine(100)
    assert f(0) == 1.0 and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    assert f(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    warm = WarmupCosine(100, warmup_steps=10)
    assert warm(0) == pytest.approx(0.001) and warm(10) == pytest.approx(f(10))


def test_training_prompts_equal_encode_prompts_and_carry_gradients():
    model = seeded_model("lmseg_tiny")
    names = load_vocabulary("voc20")  # a shipped bank: template + three attribute sentences
    prompts = prompts_for(names, mode="attributes")
    assert len(prompts[0]) == 4 and prompts[0][1] != prompts[0][0]
    tp = TrainingPrompts(prompts, model.text_encoder, class_names=names)
    configure_trainable(model, "qv")
    emb = tp.encode(model.text_encoder)
    torch.testing.assert_close(emb, encode_prompts(model.text_encoder, prompts), rtol=0, atol=1e-6)
    emb.sum().backward()
    text_attn = model.vision_language_encoder.model.transformer.resblocks[0].attn.in_proj_weight
    assert text_attn.grad is not None and text_attn.grad.abs().sum() > 0


# -- data stream and RNG ----------------------------------------------------------------------
def test_sample_stream_partitions_and_resumes():
    def take(stream, n):
        it = iter(stream)
        return [next(it) for _ in range(n)]

    single = take(SampleStream(5, seed=1, micro_batch=4), 12)
    r0 = take(SampleStream(5, seed=1, micro_batch=2, rank=0, world_size=2), 6)
    r1 = take(SampleStream(5, seed=1, micro_batch=2, rank=1, world_size=2), 6)
    assert single == [*r0[0:2], *r1[0:2], *r0[2:4], *r1[2:4], *r0[4:6], *r1[4:6]]
    assert sorted(k[2] for k in single[:5]) == list(range(5))  # an epoch is a permutation
    assert [k[2] for k in single[:5]] != [k[2] for k in single[5:10]]  # new order per epoch
    pos = DataPosition().advance(7, 5)
    assert pos == DataPosition(1, 2)
    assert take(SampleStream(5, seed=1, micro_batch=4, start=pos), 5) == single[7:12]


def test_rng_state_round_trip():
    state = capture_rng_state()
    expected = (np.random.rand(), torch.rand(2), __import__("random").random())
    restore_rng_state(state)
    got = (np.random.rand(), torch.rand(2), __import__("random").random())
    assert expected[0] == got[0] and torch.equal(expected[1], got[1]) and expected[2] == got[2]


# -- the loop ---------------------------------------------------------------------------------
def test_killed_run_resumes_exactly(tmp_path):
    dataset = tiny_dataset()
    full = Trainer(tiny_config(tmp_path / "full"), model=seeded_model(), dataset=dataset)
    reference = [h["loss"] for h in full.train()]
    assert len(reference) == 6 and all(math.isfinite(x) for x in reference)

    # Killed after iteration 4: the last checkpoint is iteration 3, so iteration 4 is redone.
    killed = Trainer(tiny_config(tmp_path / "run"), model=seeded_model(), dataset=dataset)
    first = [h["loss"] for h in killed.train(until=4)]
    assert first == reference[:4]
    torch.manual_seed(999)  # a fresh process: other weights until the checkpoint is loaded
    resumed = Trainer(
        tiny_config(tmp_path / "run"), model=create_model("catseg_tiny"), dataset=dataset
    )
    assert resumed.resume() and resumed.iteration == 3
    rest = [h["loss"] for h in resumed.train()]
    np.testing.assert_allclose(rest, reference[3:], rtol=0, atol=1e-6)
    assert rest == reference[3:]  # in practice bit-exact on CPU

    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").glob("iter_*")) == [
        "iter_0000003",
        "iter_0000006",
    ]
    state = torch.load(run / "checkpoints/iter_0000006/state.pt", weights_only=True)
    assert state["iteration"] == 6 and state["data"]["epoch"] == 2 and state["data"]["index"] == 0
    final = load_model(run / "model_final.safetensors")
    torch.testing.assert_close(final.state_dict(), resumed.model.state_dict())
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"iteration", "loss", "lr", "lr_vision_language", "grad_norm", "time"} <= set(logs[0])
    assert load_config(run / "config.yaml").to_dict() == tiny_config(run).to_dict()


class RecordingDataset(torch.utils.data.Dataset):
    """Serves a dataset's items, records which it served, and draws from the global torch,
    numpy and Python RNGs for each item (as user datasets and augmentations do), so the data
    depend on the RNG state a resumed run starts from."""

    def __init__(self, base: TensorSegmentationDataset) -> None:
        self.base = base
        self.class_names = base.class_names
        self.ignore_value = base.ignore_value
        self.served: list[int] = []

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        import random

        self.served.append(int(index))
        item = dict(self.base[index])
        shift = int(torch.randint(0, 40, ())) + int(np.random.randint(0, 40)) + random.randrange(40)
        item["image"] = (item["image"].int() + shift).clamp(0, 255).to(torch.uint8)
        return item


def _rng_fingerprint() -> tuple:
    import random

    return torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate()


def test_run_killed_mid_epoch_resumes_exactly(tmp_path):
    # 5 samples, batch 2: the checkpoint at iteration 3 lies mid-epoch (epoch 1, sample 1).
    def run(folder, until=None, model=None):
        dataset = RecordingDataset(tiny_dataset(5))
        trainer = Trainer(tiny_config(folder), model=model or seeded_model(), dataset=dataset)
        return trainer, dataset

    full, full_data = run(tmp_path / "full")
    reference = [h["loss"] for h in full.train()]
    full_rng = _rng_fingerprint()
    assert len(full_data.served) == 12

    killed, killed_data = run(tmp_path / "run")
    first = [h["loss"] for h in killed.train(until=4)]
    assert first == reference[:4] and killed_data.served == full_data.served[:8]
    state = torch.load(tmp_path / "run/checkpoints/iter_0000003/state.pt", weights_only=True)
    assert (state["data"]["epoch"], state["data"]["index"]) == (1, 1)

    torch.manual_seed(999)  # a fresh process: other weights and RNG states until the checkpoint
    np.random.seed(999)
    resumed, resumed_data = run(tmp_path / "run", model=create_model("catseg_tiny"))
    assert resumed.resume() and resumed.iteration == 3
    rest = [h["loss"] for h in resumed.train()]
    # the same samples in the same order from the middle of epoch 1 ...
    assert resumed_data.served == full_data.served[6:]
    # ... drawing the same random numbers: the RNG states continue where the checkpoint left them
    for a, b in zip(_rng_fingerprint(), full_rng, strict=True):
        assert (a == b).all() if isinstance(a, (torch.Tensor, np.ndarray)) else a == b
    assert rest == reference[3:]  # bit-exact on CPU
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    final = load_model(tmp_path / "run/model_final.safetensors")
    for name, value in full.model.state_dict().items():
        assert torch.equal(final.state_dict()[name], value), name


def test_grad_accumulation_matches_full_batch(tmp_path):
    dataset = tiny_dataset()
    one = Trainer(
        tiny_config(tmp_path / "a", "solver.batch_size=4"), model=seeded_model(), dataset=dataset
    )
    two = Trainer(
        tiny_config(tmp_path / "b", "solver.batch_size=4", "solver.grad_accum=2"),
        model=seeded_model(),
        dataset=dataset,
    )
    assert two.micro_batch == 2
    a, b = one.step(), two.step()
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    for (name, p), q in zip(one.model.named_parameters(), two.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_lmseg_step_keeps_sam_frozen_and_trains_fusion(tmp_path):
    trainer = Trainer(
        tiny_config(tmp_path, "train.precision=bf16", "model.name=lmseg_tiny"),
        model=seeded_model("lmseg_tiny"),
        dataset=tiny_dataset(),
    )
    model = trainer.model
    sam = {k: v.clone() for k, v in model.spatial_encoder.state_dict().items()}
    fusion = model.fusion.weight_logit.detach().clone()
    stats = trainer.step()
    assert math.isfinite(stats["loss"]) and stats["grad_norm"] > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(v, sam[k]) for k, v in model.spatial_encoder.state_dict().items())
    assert not torch.equal(model.fusion.weight_logit, fusion)
    assert not model.spatial_encoder.training and model.aggregator.training


def test_tensorboard_is_optional(tmp_path):
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed")
    with pytest.raises(ImportError, match="lmseg\\[tensorboard\\]"):
        Trainer(
            tiny_config(tmp_path, "train.tensorboard=true"),
            model=seeded_model(),
            dataset=tiny_dataset(),
        )


# -- evaluation ---------------------------------------------------------------------------------
def write_fake_voc(root: Path, sizes=((60, 80), (60, 80), (72, 50))) -> None:
    """A tiny VOC-20 in CAT-Seg's prepared layout (JPEG images, PNG labels 0..19 and 255)."""
    rng = np.random.default_rng(0)
    images = root / "VOCdevkit/VOC2012/JPEGImages"
    labels = root / "VOCdevkit/VOC2012/annotations_detectron2/val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            images / f"{i:04d}.jpg"
        )
        label = rng.integers(0, 20, (h, w)).astype(np.uint8)
        label[:3] = 255
        Image.fromarray(label).save(labels / f"{i:04d}.png")


@pytest.mark.parametrize("sliding", [True, False])
def test_batched_evaluation_equals_segmenter(tmp_path, sliding):
    write_fake_voc(tmp_path)
    model = seeded_model()
    # A smaller geometry than CAT-Seg's (640, 384; stride 256) keeps the test fast: 2 × 2 windows
    # of 96 px with stride 64 tile 160 px exactly, as CAT-Seg's tile 640.
    options = EvalOptions(
        sliding_window=sliding,
        window_resize=160,
        window_size=96,
        batch_size=2,
        test_short_edge=None,
        num_workers=0,
        progress=False,
    )
    result = evaluate(model, "voc20", root=tmp_path, options=options)
    dataset = SegmentationDataset("voc20", root=tmp_path)
    segmenter = Segmenter(model, sliding_window=sliding)
    segmenter.window = SlidingWindow(resize=160, window=96, overlap=0.333)
    expected = SegmentationMetrics.for_dataset(dataset.spec)
    for sample in dataset:
        expected.update(segmenter.predict(sample["image"], dataset.class_names).labels, sample["label"])
    assert result.num_images == 3 and len(result.class_names) == 20
    assert torch.equal(result.confusion_matrix, expected.confusion_matrix)
    assert result.metrics["mIoU"] == expected.compute()["mIoU"]


def test_eval_command_sweep_and_summary(tmp_path, capsys):
    write_fake_voc(tmp_path / "data")
    torch.manual_seed(0)
    out = tmp_path / "out"
    code = cli_main(
        [
            "eval",
            "--model",
            "catseg_tiny",
            "--sweep",
            "--root",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--num-workers",
            "0",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    header = "| model | A-847 | PC-459 | A-150 | PC-59 | VOC-20 | VOC-20b |"
    assert header in printed and "| catseg_tiny | n/a | n/a | n/a | n/a |" in printed
    voc = json.loads((out / "voc20.json").read_text())
    assert voc["num_images"] == 3 and len(voc["per_class"]) == 20
    assert {"mIoU", "fwIoU", "mAcc", "pAcc"} <= set(voc)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == list(SWEEP_DATASETS) and summary["ade150"] is None
    assert (out / "summary.md").read_text().startswith(header)
    # a named dataset that is missing is an error, not a skip
    assert (
        cli_main(
            [
                "eval",
                "--model",
                "catseg_tiny",
                "--dataset",
                "ade150",
                "--root",
                str(tmp_path / "data"),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 1
    )


def test_format_summary_column_order():
    table = format_summary({"voc20": None, "ade847": None}, model="m")
    assert table.splitlines()[0] == "| model | A-847 | VOC-20 |"


# -- the train command end to end ----------------------------------------------------------------
def write_fake_coco(root: Path, n: int = 3) -> None:
    """A tiny COCO-Stuff train split in CAT-Seg's layout (171 classes, 255 ignored)."""
    rng = np.random.default_rng(1)
    images = root / "coco-stuff/images/train2017"
    labels = root / "coco-stuff/annotations_detectron2/train2017"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
        label = rng.integers(0, 171, (50, 70)).astype(np.uint8)
        label[:, :5] = 255
        Image.fromarray(label).save(labels / f"{i}.png")


def test_train_command_end_to_end(tmp_path, capsys):
    write_fake_coco(tmp_path / "data")
    write_fake_voc(tmp_path / "data")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "catseg_tiny", "vision_language_weights": None},
                "data": {
                    "root": str(tmp_path / "data"),
                    "min_size": [48],
                    "crop_size": 48,
                    "num_workers": 0,
                },
                "solver": {"iterations": 2, "batch_size": 2},
                "train": {"precision": "fp32", "progress": False, "checkpoint_period": 1},
                "eval": {"datasets": ["voc20"], "sliding_window": False, "limit": 2},
            }
        )
    )
    run = tmp_path / "run"
    args = ["train", str(config), "--output-dir", str(run), "--device", "cpu"]
    assert cli_main(args) == 0
    assert (run / "model_final.safetensors").is_file()
    assert (run / "checkpoints/last").read_text().strip() == "iter_0000002"
    evaluated = json.loads((run / "eval/iter_0000002/voc20.json").read_text())
    assert evaluated["num_images"] == 2 and evaluated["options"]["sliding_window"] is False
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert set(logged[-1]["eval"]["voc20"]) == {"mIoU", "fwIoU", "mAcc", "pAcc"}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["solver"]["iterations"] == 2 and saved["solver"]["lr"] == 2e-4
    # a finished run folder is not overwritten by accident
    assert cli_main(args) == 1
    assert "--resume" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "train",
                str(config),
                "solver.iterations=3",
                "--output-dir",
                str(run),
                "--device",
                "cpu",
                "--resume",
            ]
        )
        == 0
    )
    assert (run / "checkpoints/last").read_text().strip() == "iter_0000003"
    assert (run / "config_resume_0000002.yaml").is_file()
