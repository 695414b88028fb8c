"""The partial-label soft Dice: unannotated organs get no gradient; a fully annotated batch is the soft Dice."""

from __future__ import annotations

import pytest
import torch

from l2r_submit.training.losses import one_hot
from l2r_submit.training.seg_losses import partial_dice_loss

SPLEEN, LIVER = 1, 6


def softmax_batch(b: int = 2, classes: int = 12, shape=(4, 5, 6), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(b, classes, *shape, generator=g), 1).requires_grad_(True)
    seg = torch.randint(0, classes, (b, 1, *shape), generator=g)
    return probs, one_hot(seg, classes)


def test_case_annotated_only_for_the_spleen_gives_the_liver_channel_zero_gradient():
    probs, target = softmax_batch(b=1)
    annotated = torch.zeros(1, 12)
    annotated[0, SPLEEN] = 1
    partial_dice_loss(probs, target, annotated).backward()
    assert torch.count_nonzero(probs.grad[:, LIVER]) == 0
    assert torch.count_nonzero(probs.grad[:, SPLEEN]) > 0
    assert torch.count_nonzero(probs.grad[:, 0]) == 0  # the background never counts


def test_in_a_mixed_batch_only_the_annotated_image_teaches_the_liver():
    probs, target = softmax_batch(b=2)
    annotated = torch.zeros(2, 12)
    annotated[0, SPLEEN] = 1
    annotated[1, 1:] = 1
    partial_dice_loss(probs, target, annotated).backward()
    assert torch.count_nonzero(probs.grad[0, LIVER]) == 0
    assert torch.count_nonzero(probs.grad[1, LIVER]) > 0


def test_fully_annotated_case_is_the_ordinary_soft_dice_analytic():
    """Two classes, 4 voxels. Class 1: p = (0.8, 0.6, 0.1, 0.3), t = (1, 1, 0, 0):
    sum p t = 1.4, sum p^2 = 1.1, sum t^2 = 2 -> loss 1 - (2.8 + 1) / (3.1 + 1) = 1 - 3.8 / 4.1."""
    p1 = torch.tensor([0.8, 0.6, 0.1, 0.3]).reshape(1, 1, 4, 1, 1)
    probs = torch.cat([1 - p1, p1], 1)
    target = torch.cat([torch.tensor([0.0, 0, 1, 1]), torch.tensor([1.0, 1, 0, 0])]).reshape(1, 2, 4, 1, 1)
    loss = partial_dice_loss(probs, target, torch.ones(1, 2))
    assert float(loss) == pytest.approx(1 - 3.8 / 4.1, abs=1e-6)
    assert float(partial_dice_loss(probs, target, torch.tensor([[1.0, 0.0]]))) == 0.0  # nothing annotated


def test_fully_annotated_batch_equals_monai_dice_loss():
    monai_losses = pytest.importorskip("monai.losses")
    probs, target = softmax_batch(b=3)
    ours = partial_dice_loss(probs, target, torch.ones(3, 12))
    theirs = monai_losses.DiceLoss(include_background=False, squared_pred=True, smooth_nr=1.0,
                                   smooth_dr=1.0)(probs, target)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


def test_shapes_must_agree():
    probs, target = softmax_batch(b=1)
    with pytest.raises(ValueError, match="annotated"):
        partial_dice_loss(probs, target, torch.ones(1, 11))
