"""The synthetic zero-shot world and demo: split, coverage, bank, textures, training, end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmseg.prompts.bank import validate_bank
from lmseg.prompts.embedding import check_prompt_lengths
from lmseg.prompts.templates import clip_tokenizer
from lmseg.synthetic import SyntheticWorld
from lmseg.synthetic.demo import (
    ROWS,
    DemoSettings,
    alignment_loss,
    batch_loss,
    build_demo_model,
    class_prompts,
    make_world,
    prompt_ids,
    run_demo,
    select_rows,
    train_row,
    training_vocabulary,
)
from lmseg.synthetic.world import COLORS, IGNORE_VALUE, SHAPES, TEXTURES

WORLD_SEEDS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return make_world(DemoSettings())


def test_world_is_deterministic() -> None:
    a, b = SyntheticWorld.generate(3), SyntheticWorld.generate(3)
    assert a.classes == b.classes and a.seen_ids == b.seen_ids
    xa, ya = a.sample(np.random.default_rng(7), a.seen_ids, 4)
    xb, yb = b.sample(np.random.default_rng(7), b.seen_ids, 4)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert SyntheticWorld.generate(4).classes != a.classes
    assert xa.shape == (4, 3, 64, 64) and xa.dtype == torch.float32
    assert ya.shape == (4, 64, 64) and ya.dtype == torch.int64
    assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0


@pytest.mark.parametrize("seed", WORLD_SEEDS)
def test_split_keeps_unseen_classes_out_of_training(seed: int) -> None:
    world = SyntheticWorld.generate(seed)
    seen, unseen = set(world.seen_ids), set(world.unseen_ids)
    assert len(seen) == 72 and len(unseen) == 24 and not seen & unseen and 0 not in seen | unseen
    assert world.unseen_pairs_in_training() == []  # no unseen colour+shape pair is ever seen
    assert len(set(world.names)) == len(world.names)
    rng = np.random.default_rng(seed)
    _, labels = world.sample(rng, world.seen_ids, 64)
    assert set(torch.unique(labels).tolist()) <= seen | {0}
    unseen_names = {world.classes[k].name for k in unseen}
    for y in labels[:16]:
        vocab = training_vocabulary(world, rng, torch.unique(y).tolist(), 6)
        assert len(vocab) == 6 and vocab[0] == 0 and set(vocab[1:]) <= seen
        assert set(torch.unique(y).tolist()) <= set(vocab)
        for kind in ("template", "attributes_only"):
            text = " ".join(p for slots in class_prompts(world, vocab, kind) for p in slots)
            assert not set(text.replace(".", " ").split()) & unseen_names


@pytest.mark.parametrize("seed", WORLD_SEEDS)
def test_every_attribute_value_is_covered_by_several_seen_classes(seed: int) -> None:
    world = SyntheticWorld.generate(seed)
    seen = world.coverage()
    assert set(seen["color"]) == set(COLORS) and set(seen["shape"]) == set(SHAPES)
    assert set(seen["texture"]) == set(TEXTURES)
    assert min(min(counts.values()) for counts in seen.values()) >= 3
    unseen = world.coverage(world.unseen_ids)
    assert all(set(unseen[a]) <= set(seen[a]) for a in seen)
    assert set(unseen["texture"]) == set(TEXTURES)
    for k in world.seen_ids:  # a hard negative differing only in texture, for every class
        mine = world.classes[k]
        assert any(world.classes[p].texture != mine.texture for p in world.partners(k))


def test_unseen_classes_need_every_attribute(world: SyntheticWorld) -> None:
    """Among unseen classes, some pairs differ only in colour, some only in shape, some only
    in texture, so no attribute can be skipped at test time."""
    differs = set()
    for i, a in enumerate(world.unseen_ids):
        for b in world.unseen_ids[i + 1 :]:
            diff = [
                x != y
                for x, y in zip(
                    world.classes[a].attributes, world.classes[b].attributes, strict=True
                )
            ]
            if sum(diff) == 1:
                differs.add(diff.index(True))
    assert differs == {0, 1, 2}


def test_bank_validates_and_prompts_fit(world: SyntheticWorld) -> None:
    bank = world.bank()
    assert validate_bank(bank, world.names, clip_tokenizer(), name_free=True) == []
    assert bank.names == world.names
    assert bank.get(world.classes[1].name).color == f"It is {world.classes[1].color}."
    for kind in ("template", "attributes_only"):
        prompts = class_prompts(world, range(len(world.classes)), kind)
        assert check_prompt_lengths(prompts, 16) == []  # the demo's text context length
    attributes = class_prompts(world, world.seen_ids, "attributes_only")
    assert all(
        world.classes[k].name not in " ".join(p)
        for k, p in zip(world.seen_ids, attributes, strict=True)
    )


def test_textures_vanish_at_half_resolution_only() -> None:
    """The CLIP role's bilinear 2x downsampling averages every texture away exactly; at full
    resolution (the SAM role) textured and plain renderings differ."""
    textured = SyntheticWorld.generate(0)
    plain = SyntheticWorld(classes=textured.classes, texture_amplitude=0.0)
    ids = [k for k in textured.seen_ids if textured.classes[k].texture != "plain"][:3]
    x, y = textured.render(np.random.default_rng(1), ids)
    x0, y0 = plain.render(np.random.default_rng(1), ids)
    assert np.array_equal(y, y0) and np.abs(x - x0).max() > 0.1

    def half(image: np.ndarray) -> torch.Tensor:
        return F.interpolate(torch.from_numpy(image)[None], scale_factor=0.5, mode="bilinear")

    assert torch.allclose(half(x), half(x0), atol=1e-6)


def test_alignment_loss_merges_classes_that_share_a_prompt() -> None:
    """Two classes with the same prompt are one candidate; with distinct prompts the loss is
    plain softmax CE over scale * cosine."""
    torch.manual_seed(0)
    embedding = torch.randn(1, 4, 1, 1)
    text = torch.randn(1, 3, 1, 4)
    text[0, 2] = text[0, 1]
    target = torch.tensor([[[1]]])
    cos = F.cosine_similarity(embedding[0, :, 0, 0][None], text[0, :, 0], dim=-1)  # (3,)
    merged = alignment_loss(embedding, text, torch.tensor([[[0], [1], [1]]]), target, 5.0)
    assert merged.item() == pytest.approx(F.cross_entropy(5 * cos[None, :2], target[0, 0]).item())
    distinct = alignment_loss(embedding, text, torch.tensor([[[0], [1], [2]]]), target, 5.0)
    assert distinct.item() == pytest.approx(F.cross_entropy(5 * cos[None], target[0, 0]).item())
    ignored = alignment_loss(
        embedding, text, torch.tensor([[[0], [1], [2]]]), torch.tensor([[[IGNORE_VALUE]]]), 5.0
    )
    assert ignored.item() == 0.0


def test_demo_model_trains_every_parameter() -> None:
    model = build_demo_model(64, "attributes_only", fusion=True)
    assert model.spatial_encoder is not None and model.num_prompts == 3
    assert all(p.requires_grad for p in model.parameters())
    assert model.vision_language_encoder.grid_size == (8, 8) and model.vision_language_encoder.image_size == (32, 32)
    assert build_demo_model(64, "template", fusion=False).spatial_encoder is None


def test_one_step_reduces_the_loss_on_its_batch(world: SyntheticWorld) -> None:
    settings = DemoSettings()
    torch.manual_seed(0)
    model = build_demo_model(64, "attributes_only", fusion=True)
    rng = np.random.default_rng(0)
    images, labels = world.sample(rng, world.seen_ids, 4)
    vocabs = [training_vocabulary(world, rng, torch.unique(y).tolist(), 6) for y in labels]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = batch_loss(model, world, "attributes_only", images, labels, vocabs, settings)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = batch_loss(model, world, "attributes_only", images, labels, vocabs, settings)
    assert math.isfinite(before.item()) and after.item() < before.item()


def test_a_few_steps_reduce_the_loss(world: SyntheticWorld) -> None:
    settings = DemoSettings(steps=8, batch_size=4, warmup=1)
    model, losses = train_row(world, ROWS["attributes+fusion"], settings, seed=0)
    assert len(losses) == 8 and not model.training
    assert np.mean(losses[-3:]) < losses[0] - 0.5


def test_prompt_ids_mark_shared_sentences(world: SyntheticWorld) -> None:
    blue = [k for k in world.seen_ids if world.classes[k].color == "blue"][:2]
    ids = prompt_ids(world, blue, "attributes_only")
    assert ids.shape == (2, 3) and ids[0, 0] == ids[1, 0]
    assert prompt_ids(world, blue, "template")[:, 0].unique().numel() == 2


def test_select_rows() -> None:
    assert select_rows("default") == ("template+fusion", "attributes+clip", "attributes+fusion")
    assert select_rows("all") == tuple(ROWS)
    assert select_rows("attributes+fusion") == ("attributes+fusion",)
    with pytest.raises(ValueError, match="unknown rows"):
        select_rows("attributes+sam")


def test_demo_runs_end_to_end(tmp_path) -> None:
    settings = DemoSettings(
        steps=2, seeds=(0, 1), batch_size=2, eval_unseen=4, eval_seen=4, figure_images=2, workers=1
    )
    lines: list[str] = []
    results = run_demo(settings, tmp_path, show_progress=False, echo=lines.append)
    assert set(results["summary"]) == set(settings.rows)
    for row in results["summary"].values():
        assert set(row["unseen_by_seed"]) == {"0", "1"}
        for split in ("unseen_mIoU", "seen_mIoU"):
            assert set(row[split]) == {"mean", "std", "min", "max"}
            assert 0.0 <= row[split]["mean"] <= 100.0
    assert len(results["runs"]) == 6
    run = results["runs"][0]
    assert len(run["unseen_per_class"]) == 24 and len(run["seen_per_class"]) == 72
    assert set(results["reference"]["unseen"]) == {"chance", "texture_blind"}
    assert set(results["targets"]) == {
        "attributes_minus_template",
        "attributes_beat_template_by_15",
        "fusion_minus_clip_only",
        "fusion_beats_clip_only",
    }
    table = lines[0].splitlines()
    assert table[0].startswith("| configuration | unseen mIoU | seen mIoU")
    assert len(table) == 2 + 3 + 2  # header, 3 rows, chance and texture-blind oracle
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["settings"]["steps"] == 2 and saved["summary"] == results["summary"]
    from PIL import Image

    with Image.open(tmp_path / "unseen_predictions.png") as figure:
        assert figure.width > 5 * 64 and figure.height > 2 * 64  # 5 columns, 2 scenes
