"""SegmentationMetrics on hand-computed confusion matrices and each benchmark's ignore rule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from lmseg.data import get_dataset_spec
from lmseg.eval import SegmentationMetrics, format_table, results_to_json


def reference_metrics(pred: np.ndarray, label: np.ndarray, k: int, ignore: int) -> dict:
    """Per-class loops over pixels: detectron2's definitions written out longhand."""
    valid = label != ignore
    iou, acc = [], []
    for c in range(k):
        gt_c, pred_c = (label == c) & valid, (pred == c) & valid
        tp = (gt_c & pred_c).sum()
        if gt_c.sum() == 0:
            iou.append(math.nan)
            acc.append(math.nan)
        else:
            iou.append(tp / (gt_c | pred_c).sum())
            acc.append(tp / gt_c.sum())
    present = [c for c in range(k) if not math.isnan(iou[c])]
    weights = [((label == c) & valid).sum() / valid.sum() for c in range(k)]
    return {
        "mIoU": 100 * np.mean([iou[c] for c in present]),
        "mAcc": 100 * np.mean([acc[c] for c in present]),
        "fwIoU": 100 * sum(iou[c] * weights[c] for c in present),
        "pAcc": 100 * ((pred == label) & valid).sum() / valid.sum(),
    }


def test_hand_computed_example() -> None:
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    metrics = SegmentationMetrics(3, 255)
    metrics.update(pred, label)
    assert metrics.confusion_matrix.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
    r = metrics.compute()
    # tp = [2, 2, 1], gt = [3, 2, 2], pred = [3, 3, 1], union = [4, 3, 2].
    assert r["IoU"] == pytest.approx([50.0, 200 / 3, 50.0])
    assert r["Acc"] == pytest.approx([200 / 3, 100.0, 50.0])
    assert r["mIoU"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3 * 100)
    assert r["mAcc"] == pytest.approx((2 / 3 + 1 + 0.5) / 3 * 100)
    assert r["pAcc"] == pytest.approx(5 / 7 * 100)
    assert r["fwIoU"] == pytest.approx((0.5 * 3 + 2 / 3 * 2 + 0.5 * 2) / 7 * 100)
    assert r["num_pixels"] == 7 and r["valid"] == [True, True, True]


def test_batched_numpy_and_torch_inputs_agree_with_reference() -> None:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 6, (3, 17, 13))
    label[rng.random(label.shape) < 0.1] = 255
    label[label == 4] = 3  # class 4 absent from the ground truth ...
    pred = rng.integers(0, 6, (3, 17, 13))  # ... but predicted
    metrics = SegmentationMetrics(6, 255)
    metrics.update(torch.from_numpy(pred[:2]), torch.from_numpy(label[:2]))
    metrics.update(pred[2], label[2].astype(np.uint8))  # numpy, (H, W)
    r = metrics.compute()
    ref = reference_metrics(pred, label, 6, 255)
    for key in ("mIoU", "mAcc", "fwIoU", "pAcc"):
        assert r[key] == pytest.approx(ref[key])
    assert math.isnan(r["IoU"][4]) and r["valid"][4] is False


def test_absent_class_rules() -> None:
    label = torch.tensor([0, 0, 1])
    pred = torch.tensor([0, 3, 1])  # class 3 predicted but absent from the ground truth
    current = SegmentationMetrics(4, 255)
    current.update(pred, label)
    r = current.compute()
    assert r["IoU"][:2] == [50.0, 100.0] and all(math.isnan(x) for x in r["IoU"][2:])
    assert r["mIoU"] == pytest.approx(75.0)  # detectron2 today: only ground-truth classes count
    legacy = SegmentationMetrics(4, 255, count_pred_only_classes=True)
    legacy.update(pred, label)
    # detectron2 v0.6: class 3 enters the mean with IoU 0; class 2 (absent from both) does not.
    assert legacy.compute()["mIoU"] == pytest.approx(50.0)


def test_voc20b_background_rule() -> None:
    spec = get_dataset_spec("voc20b")
    metrics = SegmentationMetrics.for_dataset(spec)
    assert (metrics.num_classes, metrics.background_index) == (21, 20)
    label = torch.tensor([[20, 0, 255], [5, 20, 20]])
    pred = torch.tensor([[45, 0, 58], [5, 20, 19]])  # argmax over the 59 voc20b prompts
    metrics.update(pred, label)
    r = metrics.compute()
    assert r["IoU"][20] == pytest.approx(200 / 3)  # two of three background pixels found
    assert r["IoU"][0] == 100.0 and r["IoU"][5] == 100.0 and math.isnan(r["IoU"][19])
    assert r["mIoU"] == pytest.approx((1 + 1 + 2 / 3) / 3 * 100)
    assert r["pAcc"] == pytest.approx(80.0)
    without_rule = SegmentationMetrics(21, 255)
    with pytest.raises(ValueError, match="prediction"):
        without_rule.update(pred, label)


def test_ignore_value_65535_ade847() -> None:
    metrics = SegmentationMetrics.for_dataset(get_dataset_spec("ade847"))
    label = np.array([[846, 65535], [300, 65535]], dtype=np.uint16)
    pred = torch.tensor([[846, 0], [0, 12]])
    metrics.update(pred, label)
    r = metrics.compute()
    assert r["num_pixels"] == 2
    assert r["IoU"][846] == 100.0 and r["IoU"][300] == 0.0
    assert math.isnan(r["IoU"][0])  # predicted on a non-ignored pixel but not in the ground truth
    assert r["mIoU"] == pytest.approx(50.0) and r["pAcc"] == pytest.approx(50.0)


def test_pc459_ignore_value_never_occurs() -> None:
    metrics = SegmentationMetrics.for_dataset(get_dataset_spec("pc459"))
    assert metrics.ignore_value == 459 == metrics.num_classes
    label = torch.tensor([[0, 458, 1], [99, 0, 0]])
    metrics.update(label.clone(), label)
    r = metrics.compute()
    assert r["num_pixels"] == label.numel()  # every pixel is scored
    assert r["mIoU"] == 100.0 and r["pAcc"] == 100.0
    with pytest.raises(ValueError, match="label"):
        metrics.update(torch.tensor([460]), torch.tensor([460]))


def test_ignore_value_255_ade150_and_all_ignored() -> None:
    metrics = SegmentationMetrics.for_dataset(get_dataset_spec("ade150"))
    metrics.update(torch.tensor([3, 999]), torch.tensor([255, 255]))  # ignored: not checked
    r = metrics.compute()
    assert r["num_pixels"] == 0 and math.isnan(r["mIoU"]) and math.isnan(r["pAcc"])
    metrics.update(torch.tensor([3, 4]), torch.tensor([3, 255]))
    assert metrics.compute()["mIoU"] == 100.0


def test_input_validation() -> None:
    metrics = SegmentationMetrics(3, 255)
    with pytest.raises(ValueError, match="shape"):
        metrics.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="argmax"):
        metrics.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="argmax"):
        metrics.update(np.zeros((2, 2)), np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metrics.update(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(ValueError, match="background_index"):
        SegmentationMetrics(3, 255, background_index=3)


def test_merge_reset_and_all_reduce(tmp_path: Path) -> None:
    label = torch.tensor([[0, 1], [1, 255]])
    pred = torch.tensor([[0, 1], [0, 1]])
    whole = SegmentationMetrics(2, 255)
    whole.update(pred, label)
    part_a, part_b = SegmentationMetrics(2, 255), SegmentationMetrics(2, 255)
    part_a.update(pred[:1], label[:1])
    part_b.update(pred[1:], label[1:])
    assert torch.equal(part_a.merge(part_b).confusion_matrix, whole.confusion_matrix)
    with pytest.raises(ValueError, match="merge"):
        part_a.merge(SegmentationMetrics(2, 65535))

    whole.all_reduce()  # no process group: a no-op
    assert whole.confusion_matrix.sum() == 3
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        whole.all_reduce()
        assert whole.confusion_matrix.tolist() == [[1, 0], [1, 1]]
    finally:
        dist.destroy_process_group()
    whole.reset()
    assert whole.confusion_matrix.sum() == 0


def test_json_and_table() -> None:
    metrics = SegmentationMetrics(3, 255)
    metrics.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    r = metrics.compute()
    names = ["wall", "bed ", "sky"]
    out = results_to_json(r, names)
    text = json.dumps(out, allow_nan=False)  # NaN became null
    assert json.loads(text)["per_class"][2] == {"name": "sky", "IoU": None, "Acc": None}
    assert out["mIoU"] == pytest.approx(50.0) and out["num_pixels"] == 3
    table = format_table(r, names)
    lines = table.splitlines()
    assert lines[0].startswith("mIoU 50.00") and "pAcc 66.67" in lines[0]
    assert lines[-1].split() == ["sky", "-", "-"]
    assert lines[3].split() == ["wall", "50.00", "50.00"]
    with pytest.raises(ValueError, match="class names"):
        results_to_json(r, names[:2])


# -- evaluation reports ------------------------------------------------------------------------
def _result(conf: np.ndarray, names: list[str]):
    from lmseg.eval.evaluate import EvalResult

    metrics = SegmentationMetrics(len(names), 255)
    metrics.confusion_matrix += torch.from_numpy(conf)
    return EvalResult(
        dataset="mine_val",
        metrics=metrics.compute(),
        class_names=names,
        num_images=3,
        seconds=0.1,
        model="catseg_tiny",
        confusion_matrix=metrics.confusion_matrix,
    )


def test_confused_pairs_by_hand() -> None:
    from lmseg.eval.report import confused_pairs

    conf = np.array([[50, 10, 0], [30, 40, 5], [0, 10, 0]])  # [truth, prediction]
    pairs = confused_pairs(conf, ["a", "b", "c"], top=3)
    # errors: b->a 30, a->b 10, c->b 10 (index order on ties), b->c 5; 55 in all
    assert [(p["truth"], p["predicted"], p["pixels"]) for p in pairs] == [
        ("b", "a", 30), ("a", "b", 10), ("c", "b", 10),
    ]  # fmt: skip
    assert pairs[0]["share_of_truth"] == round(100 * 30 / 75, 4)
    assert pairs[0]["share_of_errors"] == round(100 * 30 / 55, 4)
    assert pairs[2]["share_of_truth"] == 100.0
    assert confused_pairs(np.diag([3, 4]), ["a", "b"]) == []


def test_write_report_files(tmp_path: Path) -> None:
    from PIL import Image

    from lmseg.eval.report import write_report

    conf = np.array([[50, 10, 0], [30, 40, 5], [0, 0, 0]])
    names = ["sky", "sea | lake", "sand"]
    paths = write_report(_result(conf, names), tmp_path)
    assert {p.name for p in paths.values()} == {
        "mine_val_report.json", "mine_val_report.md", "mine_val_confusion.png",
    }  # fmt: skip
    report = json.loads(paths["json"].read_text())
    iou_sky, iou_sea = 50 / (60 + 80 - 50), 40 / (75 + 50 - 40)
    assert report["metrics"]["mIoU"] == pytest.approx(100 * (iou_sky + iou_sea) / 2, abs=1e-4)
    assert report["metrics"]["pAcc"] == pytest.approx(100 * 90 / 135, abs=1e-4)
    assert [r["truth_pixels"] for r in report["per_class"]] == [60, 75, 0]
    assert [r["predicted_pixels"] for r in report["per_class"]] == [80, 50, 5]
    assert report["per_class"][2]["IoU"] is None  # absent from the ground truth
    assert report["confused_pairs"][0] == {
        "truth": "sea | lake", "predicted": "sky", "truth_index": 1, "predicted_index": 0,
        "pixels": 30, "share_of_truth": 40.0, "share_of_errors": round(100 * 30 / 45, 4),
    }  # fmt: skip
    page = paths["markdown"].read_text()
    assert "| 1 | sea \\| lake | 47.06 | 53.33 | 75 | 50 |" in page
    assert "![confusion matrix](mine_val_confusion.png)" in page
    with Image.open(paths["image"]) as image:
        assert image.mode == "RGB" and image.width > 100 and image.height > 100


def test_confusion_image_of_many_classes_shows_the_most_confused() -> None:
    from lmseg.eval.report import _image_classes

    k = 300
    conf = np.diag(np.full(k, 100))
    conf[10, 200] = 50
    conf[7, 299] = 40
    conf[200, 10] = 30
    conf[42, 43] = 1
    # the pairs by pixels: (10,200) (7,299) (200,10) (42,43): classes 7, 10, 42, 43, 200, 299
    assert _image_classes(conf, max_classes=30, top_pairs=40) == [7, 10, 42, 43, 200, 299]
    assert _image_classes(conf, max_classes=3, top_pairs=40) == [10, 200]  # whole pairs only
    assert _image_classes(conf[:5, :5], max_classes=30, top_pairs=40) == [0, 1, 2, 3, 4]
