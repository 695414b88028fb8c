"""The partial-label soft Dice of the segmenter (the authors' ``masked_mean_dice_loss``; our code).

A case from a cohort that annotates only some organs (its ``annotated`` list) teaches those organs and
nothing about the others: the voxels of an organ it does not annotate are unknown, not background.
So for each organ k >= 1 the Dice loss is averaged over the images of the batch annotated for k only,
and the organs' terms are summed and divided by the number of organs (L - 1), as the authors do; an
organ no image of the batch annotates adds 0. The background (class 0) never counts: in a partly
annotated label map it holds the unannotated organs.

Each term is one image's soft Dice (``smooth`` 1, squared-sum denominator, as the registration loss's
:func:`l2r_submit.training.losses.soft_dice_loss`, but per image, as the authors' masked loss).
A fully annotated batch therefore gets the ordinary soft Dice loss without background, averaged over
images and organs (MONAI's ``DiceLoss(include_background=False, squared_pred=True)`` with smoothing 1).
"""

from __future__ import annotations

from typing import Callable

import torch


def per_image_dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2 sum(p t) + smooth) / (sum(p^2) + sum(t^2) + smooth)`` per image and class.

    Shape: probs, target (B, L, I, J, K) -> (B, L).
    """
    dims = tuple(range(2, probs.ndim))
    inter = (probs * target).sum(dims)
    denom = (probs * probs).sum(dims) + (target * target).sum(dims)
    return 1.0 - (2 * inter + smooth) / (denom + smooth)


def partial_dice_loss(probs: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor, smooth: float = 1.0,
                      reduce_counts: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Soft Dice loss over the foreground classes, each class's term over the images annotated for it.

    ``annotated[b, k]`` is 1 when image b's label map annotates class k (column 0, the background, is
    not read). ``reduce_counts`` (distributed training) turns this rank's per-class counts of annotated
    images into the global batch's (e.g. an all-reduce sum): the loss is then this rank's part of the
    global one, and DDP's gradient average, times the world size, gives the single-process gradient.

    Shape: probs (B, L, I, J, K) softmax outputs, target (B, L, I, J, K) one-hot, annotated (B, L) -> scalar.

    Raises:
        ValueError: shapes that do not agree.
    """
    if probs.shape != target.shape or annotated.shape != probs.shape[:2]:
        raise ValueError(f"probs {tuple(probs.shape)}, target {tuple(target.shape)}, annotated "
                         f"{tuple(annotated.shape)}: expected (B, L, ...), the same, and (B, L)")
    mask = annotated[:, 1:].to(probs.dtype)
    terms = per_image_dice_loss(probs[:, 1:], target[:, 1:].to(probs.dtype), smooth)
    counts = mask.sum(0).detach()
    if reduce_counts is not None:
        counts = reduce_counts(counts)
    per_class = (mask * terms).sum(0) / counts.clamp_min(1.0)
    return per_class.sum() / (probs.shape[1] - 1)
