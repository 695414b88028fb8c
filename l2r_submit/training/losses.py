"""Training losses of the seed method, on displacements in our contract (B, 3, I, J, K voxels, pull).

All functions are device-agnostic (no ``.to(device)`` inside) and return scalar tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..core.spatial import warp_image
from .checks import check_number

SIMILARITIES = ("mse", "ncc")


def mse(warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """Mean squared error. Shape: two (B, C, I, J, K) -> scalar."""
    return F.mse_loss(warped, fixed)


def local_ncc(warped: torch.Tensor, fixed: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean local normalised cross-correlation (squared, as in VoxelMorph's NCC) over ``window``^3 boxes.

    Shape: two (B, 1, I, J, K) -> scalar in [0, 1]; 0 for identical images.
    """
    kernel = warped.new_ones((1, 1, window, window, window))
    pad = window // 2
    n = float(window ** 3)

    def box(x: torch.Tensor) -> torch.Tensor:
        return F.conv3d(x, kernel, padding=pad)

    s_w, s_f = box(warped), box(fixed)
    s_ww, s_ff, s_wf = box(warped * warped), box(fixed * fixed), box(warped * fixed)
    cross = s_wf - s_w * s_f / n
    var_w = s_ww - s_w * s_w / n
    var_f = s_ff - s_f * s_f / n
    ncc = cross * cross / (var_w * var_f + eps)
    return 1.0 - ncc.mean()


def one_hot(seg: torch.Tensor, n_classes: int, background: bool = True) -> torch.Tensor:
    """Shape: (B, 1, I, J, K) integer labels -> (B, n_classes, I, J, K) float32 (class 0 = background), or
    with ``background=False`` (B, n_classes - 1, I, J, K): classes 1 .. n_classes - 1 only. Labels
    outside [0, n_classes) count as the nearest class.

    Written straight into float32 (``F.one_hot`` makes an int64 (B, I, J, K, n_classes) tensor first, then
    a float copy: 3x the memory traffic of this result, on every training step), laid out channels last
    as that copy was (memory (B, I, J, K, classes)): ``grid_sample`` then reads a voxel's classes side by
    side; on separate class planes its warp of the one-hot was 2-3x slower (CPU, 128^3).
    """
    index = seg[:, 0, ..., None].long().clamp(0, n_classes - 1)
    first = 0 if background else 1
    out = torch.zeros((*index.shape[:-1], n_classes - first), dtype=torch.float32, device=seg.device)
    if background:
        out.scatter_(-1, index, 1.0)
    else:
        out.scatter_(-1, (index - 1).clamp_(min=0), (index > 0).to(out.dtype))  # background voxels: all 0
    return out.permute(0, 4, 1, 2, 3)


def soft_dice_loss(warped_onehot: torch.Tensor, fixed_onehot: torch.Tensor, smooth: float = 1.0,
                   reduce_sums: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """1 - soft Dice averaged over foreground classes; squared-sum denominator, ``smooth`` added.

    As the authors' ``mean_dice_loss``: each class's sums run over the whole batch (one Dice per class,
    not one per image and class). ``reduce_sums`` (distributed training) turns this rank's per-class
    sums into the global batch's, e.g. :meth:`l2r_submit.training.distributed.Dist.sum_with_grad`.

    Shape: two (B, L, I, J, K) -> scalar. Class 0 (background) is left out.
    """
    dims = (0, 2, 3, 4)
    w, f = warped_onehot[:, 1:], fixed_onehot[:, 1:]
    return _dice_from_sums((w * f).sum(dims), (w * w).sum(dims) + (f * f).sum(dims), smooth, reduce_sums)


def _dice_from_sums(inter: torch.Tensor, denom: torch.Tensor, smooth: float,
                    reduce_sums: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """1 - mean over classes of (2 inter + smooth) / (denom + smooth); the sums made global first by
    ``reduce_sums``. Shape: (L,) twice -> scalar."""
    if reduce_sums is not None:
        inter, denom = reduce_sums(inter), reduce_sums(denom)
    return 1.0 - ((2 * inter + smooth) / (denom + smooth)).mean()


def soft_dice_loss_labels(warped_foreground: torch.Tensor, fixed_seg: torch.Tensor, smooth: float = 1.0,
                          reduce_sums: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """:func:`soft_dice_loss` of a warped foreground one-hot against the fixed LABEL MAP: the same value,
    with the fixed one-hot made for the foreground classes only and ``sum f f`` read as ``sum f`` (f is 0
    or 1), one product fewer over the whole batch.

    Shape: warped_foreground (B, L - 1, I, J, K), the warped one-hot of classes 1 .. L - 1 (no background,
    :func:`one_hot` with ``background=False``); fixed_seg (B, 1, I, J, K) integer labels (outside [0, L):
    the nearest class, as :func:`one_hot`) -> scalar.
    """
    dims = (0, 2, 3, 4)
    f = one_hot(fixed_seg, warped_foreground.shape[1] + 1, background=False)
    inter = (warped_foreground * f).sum(dims)
    denom = (warped_foreground * warped_foreground).sum(dims) + f.sum(dims)
    return _dice_from_sums(inter, denom, smooth, reduce_sums)


def spatial_gradients(disp: torch.Tensor) -> torch.Tensor:
    """The network's gradients g recovered from a displacement: ``g_k(i) = (p_k(i) - p_k(i-1)) / 2``
    with ``p = disp + i`` and ``p_k(-1) = -1``; 0.5 everywhere is the identity.

    Shape: (B, 3, I, J, K) -> (B, 3, I, J, K).
    """
    out = []
    for k in range(3):
        d = disp[:, k]
        first = d.narrow(k + 1, 0, 1) + 1.0  # p(0) - p(-1) = disp(0) + 0 + 1
        rest = torch.diff(d, dim=k + 1) + 1.0
        out.append(torch.cat([first, rest], dim=k + 1) / 2.0)
    return torch.stack(out, dim=1)


def gradient_l1(disp: torch.Tensor) -> torch.Tensor:
    """The paper's regulariser: mean |g - 0.5| of the spatial gradients. Shape: (B, 3, I, J, K) -> scalar."""
    return (spatial_gradients(disp) - 0.5).abs().mean()


def folded_fraction(disp: torch.Tensor) -> torch.Tensor:
    """Fraction of interior voxels with a non-positive Jacobian determinant (central differences)."""
    d = disp.detach().float()
    grads = []
    for a in range(3):
        hi = d.narrow(a + 2, 2, d.shape[a + 2] - 2)
        lo = d.narrow(a + 2, 0, d.shape[a + 2] - 2)
        g = (hi - lo) / 2.0
        crop = [slice(None), slice(None)] + [slice(1, -1) if b != a else slice(None) for b in range(3)]
        grads.append(g[tuple(crop)])
    j = [[grads[a][:, c] + (1.0 if a == c else 0.0) for c in range(3)] for a in range(3)]
    det = (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1]) - j[1][0] * (j[0][1] * j[2][2] - j[0][2] * j[2][1])
           + j[2][0] * (j[0][1] * j[1][2] - j[0][2] * j[1][1]))
    return (det <= 0).float().mean()


@dataclass(frozen=True)
class LossWeights:
    """Weights of the paper for abdominal CT; ``similarity`` is ``mse`` or ``ncc``.

    Raises:
        ValueError: another similarity, a weight that is not a finite number of 0 or more, fewer than 2 classes.
    """

    similarity: str = "mse"
    sim: float = 1.0
    dice: float = 1.0
    reg: float = 1e-2
    n_classes: int = 14

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"loss.similarity: '{self.similarity}' received, expected {' or '.join(SIMILARITIES)}")
        for name in ("sim", "dice", "reg"):
            check_number(f"loss.{name}", getattr(self, name), "a finite weight of 0 or more", positive=False)
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise ValueError(f"loss.n_classes: {self.n_classes} received, expected 2 or more (background + labels)")


def similarity_term(disp: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor, w: LossWeights) -> torch.Tensor:
    """Similarity of moving warped by ``disp`` to fixed (``w.similarity``: mse, or local NCC of window 0).

    Shape: disp (B, 3, I, J, K), images (B, C, I, J, K) -> scalar.
    """
    warped = warp_image(moving, disp)
    return mse(warped, fixed) if w.similarity == "mse" else local_ncc(warped[:, :1], fixed[:, :1])


def direction_terms(disp: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor,
                    moving_seg: torch.Tensor | None, fixed_seg: torch.Tensor | None,
                    w: LossWeights, reduce_sums: Callable[[torch.Tensor], torch.Tensor] | None = None
                    ) -> dict[str, torch.Tensor]:
    """Similarity, Dice and regulariser of one direction (moving warped onto fixed); ``reduce_sums``: see
    :func:`soft_dice_loss`."""
    terms = {"sim": similarity_term(disp, moving, fixed, w), "reg": gradient_l1(disp)}
    if moving_seg is not None and fixed_seg is not None and w.dice > 0:
        # the Dice leaves the background out: warp classes 1 .. n - 1 only (the step's largest label cost)
        warped_fg = warp_image(one_hot(moving_seg, w.n_classes, background=False), disp)
        terms["dice"] = soft_dice_loss_labels(warped_fg, fixed_seg, reduce_sums=reduce_sums)
    return terms


def registration_loss(disps: list[torch.Tensor], moving: torch.Tensor, fixed: torch.Tensor,
                      moving_seg: torch.Tensor | None, fixed_seg: torch.Tensor | None, w: LossWeights,
                      disps_back: list[torch.Tensor] | None = None,
                      reduce_sums: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Named loss terms, as the authors combine them, averaged over the two directions when ``disps_back``
    is given (the symmetric loss: fixed->moving uses the swapped roles).

    Deep supervision (``disps`` = [full, coarser ...]): only the similarity is averaged over all levels;
    the Dice term and the regulariser use the full-resolution (first) displacement only.

    ``reduce_sums``: the Dice term's per-class sums over the global batch (distributed training; see
    :func:`soft_dice_loss`); the other terms are this batch's means.

    Shape: displacements (B, 3, I, J, K); images (B, C, I, J, K); labels (B, 1, I, J, K).

    Returns:
        ``{"sim", "reg", ["dice"], "total", "folded"}``, scalars; ``total`` carries the gradient.
    """
    directions = [(disps, moving, fixed, moving_seg, fixed_seg)]
    if disps_back is not None:
        directions.append((disps_back, fixed, moving, fixed_seg, moving_seg))
    acc: dict[str, list[torch.Tensor]] = {}
    for levels, src, dst, src_seg, dst_seg in directions:
        full = direction_terms(levels[0], src, dst, src_seg, dst_seg, w, reduce_sums)
        sims = [full["sim"]] + [similarity_term(d, src, dst, w) for d in levels[1:]]
        full["sim"] = torch.stack(sims).mean()
        for name, value in full.items():
            acc.setdefault(name, []).append(value)
    terms = {name: torch.stack(values).mean() for name, values in acc.items()}
    total = w.sim * terms["sim"] + w.reg * terms["reg"]
    if "dice" in terms:
        total = total + w.dice * terms["dice"]
    terms["total"] = total
    terms["folded"] = folded_fraction(disps[0])
    return terms
