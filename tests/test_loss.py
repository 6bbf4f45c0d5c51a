"""Segmentation losses: hand-computed values, ignore handling, CAT-Seg parity, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmseg.train import segmentation_bce_loss, segmentation_ce_loss

LN2, LN43, LN4 = math.log(2), math.log(4 / 3), math.log(4)


def two_class_logits() -> torch.Tensor:
    """(1, 2, 1, 1) logits [0, ln 3]: sigmoid = [1/2, 3/4], softmax = [1/4, 3/4]."""
    return torch.tensor([0.0, math.log(3)], dtype=torch.float64).view(1, 2, 1, 1)


def test_bce_hand_computed() -> None:
    target = torch.ones(1, 2, 2, dtype=torch.int64)  # logits are upsampled 1x1 -> 2x2
    loss = segmentation_bce_loss(two_class_logits(), target, ignore_value=255)
    # Class 0 is a negative at logit 0: ln 2; class 1 a positive at ln 3: ln(1 + 1/3).
    assert loss.item() == pytest.approx((LN2 + LN43) / 2)


def test_bce_ignore_modes() -> None:
    target = torch.tensor([[[1, 255], [1, 1]]])
    logits = two_class_logits()
    negative = segmentation_bce_loss(logits, target, ignore_value=255, ignore_mode="negative")
    # The ignored pixel is a negative for both classes: ln 2 + ln(1 + 3); mean over all 8 entries.
    assert negative.item() == pytest.approx((3 * (LN2 + LN43) + LN2 + LN4) / 8)
    exclude = segmentation_bce_loss(logits, target, ignore_value=255, ignore_mode="exclude")
    assert exclude.item() == pytest.approx((LN2 + LN43) / 2)  # only the 3 labelled pixels
    with pytest.raises(ValueError, match="ignore_mode"):
        segmentation_bce_loss(logits, target, ignore_value=255, ignore_mode="drop")  # type: ignore[arg-type]


def catseg_loss(outputs: torch.Tensor, targets: torch.Tensor, ignore_value: int) -> torch.Tensor:
    """CAT-Seg's CATSeg.forward training branch, restated for the parity check."""
    outputs = F.interpolate(outputs, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    num_classes = outputs.shape[1]
    mask = targets != ignore_value
    outputs = outputs.permute(0, 2, 3, 1)
    _targets = torch.zeros(outputs.shape)
    _targets[mask] = F.one_hot(targets[mask], num_classes=num_classes).float()
    return F.binary_cross_entropy_with_logits(outputs, _targets)


@pytest.mark.parametrize("ignore_value", [255, 65535, 5])
def test_bce_negative_matches_catseg_bit_for_bit(ignore_value: int) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=gen)
    target = torch.randint(0, 5, (2, 23, 29), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.2] = ignore_value
    ours = segmentation_bce_loss(logits, target, ignore_value=ignore_value)
    assert torch.equal(ours, catseg_loss(logits, target, ignore_value))


def test_upsampling_is_bilinear_without_corner_alignment() -> None:
    logits = torch.tensor([[[[0.0, 4.0], [-2.0, 1.0]]]])  # (1, 1, 2, 2), one class
    target = torch.zeros(1, 4, 4, dtype=torch.int64)
    up = F.interpolate(logits, size=(4, 4), mode="bilinear", align_corners=False)
    expected = F.binary_cross_entropy_with_logits(up, torch.ones_like(up))
    assert segmentation_bce_loss(logits, target, ignore_value=255).item() == pytest.approx(
        expected.item()
    )


def test_ce_hand_computed_and_ignore() -> None:
    target = torch.tensor([[[1, 255], [1, 1]]])
    loss = segmentation_ce_loss(two_class_logits(), target, ignore_value=255)
    assert loss.item() == pytest.approx(LN43)  # -log softmax = -log(3/4), ignored pixel skipped
    target = torch.tensor([[[0, 65535]]])
    loss = segmentation_ce_loss(two_class_logits(), target, ignore_value=65535)
    assert loss.item() == pytest.approx(LN4)


def test_gradients_flow_and_respect_ignore() -> None:
    target = torch.tensor([[[0, 2], [255, 1]]])
    for mode in ("negative", "exclude"):
        logits = torch.randn(1, 3, 2, 2, requires_grad=True)  # label size: no upsampling
        segmentation_bce_loss(logits, target, ignore_value=255, ignore_mode=mode).backward()
        grad = logits.grad
        assert grad is not None and torch.isfinite(grad).all()
        assert (grad[..., 0, 0] != 0).all()
        ignored = grad[0, :, 1, 0]
        assert (ignored == 0).all() if mode == "exclude" else (ignored > 0).all()
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    segmentation_ce_loss(logits, target, ignore_value=255).backward()
    assert logits.grad is not None and (logits.grad[0, :, 1, 0] == 0).all()
    assert logits.grad[0, :, 0, 0].abs().sum() > 0

    low_res = torch.randn(2, 3, 3, 3, requires_grad=True)  # gradient through the upsampling
    segmentation_bce_loss(low_res, torch.randint(0, 3, (2, 8, 8)), ignore_value=255).backward()
    assert low_res.grad is not None and (low_res.grad.abs() > 0).all()


def test_all_ignored_gives_zero_with_graph() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), 255)
    for loss in (
        segmentation_bce_loss(logits, target, ignore_value=255, ignore_mode="exclude"),
        segmentation_ce_loss(logits, target, ignore_value=255),
    ):
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
    negative = segmentation_bce_loss(logits, target, ignore_value=255)
    assert negative.item() > 0  # every entry is a negative


def test_input_validation() -> None:
    logits = torch.randn(1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        segmentation_bce_loss(logits, torch.tensor([[[0, 3], [1, 1]]]), ignore_value=255)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        segmentation_ce_loss(logits, torch.tensor([[[0, -1], [1, 1]]]), ignore_value=255)
    with pytest.raises(ValueError, match="int64"):
        segmentation_bce_loss(logits, torch.zeros(1, 2, 2, dtype=torch.int32), ignore_value=255)
    with pytest.raises(ValueError, match=r"\(B, K, h, w\)"):
        segmentation_ce_loss(logits, torch.zeros(2, 2, dtype=torch.int64), ignore_value=255)
