"""The official per-case computation written the plain way: full volumes, no cropping, the
surface-distance package called as the official evaluator calls it.

Used to cross-check :func:`l2r_submit.evaluation.scoring.score_case` (tests) and as the baseline of
``benchmarks/evaluate_bench.py``. Not used by the product. Labels that vanish after warping are not
supported here (surface-distance 0.1 uses ``np.Inf``, which numpy 2 removed).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def plain_case(fixed_seg: np.ndarray, moving_seg: np.ndarray, disp: np.ndarray,
               labels: Sequence[int]) -> dict[str, tuple[float, list[float]]]:
    """Dice, HD95 and SDlogJ of one pair, the official evaluator's way.

    Shape: label maps (I, J, K); disp (3, I, J, K) voxels.

    Returns:
        ``{"DSC": (mean, per_label), "HD95": (mean, per_label), "LogJacDetStd": (value, [value])}``.
    """
    import surface_distance as sd
    from scipy.ndimage import correlate, map_coordinates

    ident = np.meshgrid(*[np.arange(n) for n in fixed_seg.shape], indexing="ij")
    fixed = fixed_seg.astype(np.float64)
    moving = moving_seg.astype(np.float64)
    warped = map_coordinates(moving, ident + disp, order=0)
    dice, hd = [], []
    for i in labels:
        if (fixed == i).sum() == 0 or (moving == i).sum() == 0:
            dice.append(np.nan)
            hd.append(np.nan)
            continue
        dice.append(sd.compute_dice_coefficient(fixed == i, warped == i))
        dists = sd.compute_surface_distances(fixed == i, warped == i, np.ones(3))
        hd.append(sd.compute_robust_hausdorff(dists, 95.0))
    kernel = np.array([-0.5, 0.0, 0.5])
    grads = []
    for a in range(3):
        k = kernel.reshape([1] + [3 if d == a else 1 for d in range(3)])
        grads.append(np.stack([correlate(disp[None, c], k, mode="constant", cval=0.0) for c in range(3)], axis=1))
    jac = np.concatenate(grads, 0) + np.eye(3).reshape(3, 3, 1, 1, 1)
    jac = jac[:, :, 2:-2, 2:-2, 2:-2]
    det = (jac[0, 0] * (jac[1, 1] * jac[2, 2] - jac[1, 2] * jac[2, 1])
           - jac[1, 0] * (jac[0, 1] * jac[2, 2] - jac[0, 2] * jac[2, 1])
           + jac[2, 0] * (jac[0, 1] * jac[1, 2] - jac[0, 2] * jac[1, 1]))
    sdlogj = float(np.log((det + 3).clip(1e-9, 1e9)).std())
    return {"DSC": (float(np.nanmean(dice)), dice), "HD95": (float(np.nanmean(hd)), hd),
            "LogJacDetStd": (sdlogj, [sdlogj])}
