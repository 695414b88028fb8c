"""The official Learn2Reg metrics, per label and per case. Pure numpy/scipy; no file I/O.

Semantics are those of the official evaluator (MDL-UzL/L2R ``evaluation/utils.py``), re-derived:

* warping: ``map_coordinates(moving_seg, identity + disp, order=0)`` -- nearest neighbour, 0 outside;
* Dice and HD95 of label l are NaN when l is absent from the fixed OR the unwarped moving labels;
* HD95: DeepMind ``surface-distance`` in voxels (spacing 1), 95th robust Hausdorff; inf when the
  label vanished after warping;
* SDlogJ: central differences (zero padding), +identity, crop 2, ``std(log(clip(J + 3, 1e-9, 1e9)))``.

Speed without changing a value: labels are cropped to their bounding boxes (found for all labels in
one pass) before Dice and surface distances; the surfel sort uses ``np.lexsort`` instead of Python's
``sorted``, which orders (distance, area) tuples identically.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

Slices = tuple[slice, slice, slice]


# -------------------------------------------------------------------------------------- warping


def warp_labels(moving_seg: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """Warp a label map exactly as the official evaluator does.

    Shape: moving_seg (I, J, K) int, disp (3, I, J, K) voxels -> (I, J, K) same dtype as moving_seg.
    """
    from scipy.ndimage import map_coordinates

    ident = np.meshgrid(*[np.arange(n) for n in disp.shape[1:]], indexing="ij")
    return map_coordinates(moving_seg, ident + disp, order=0)


# --------------------------------------------------------------------------------- bounding boxes


def label_boxes(seg: np.ndarray, max_label: int) -> list[Slices | None]:
    """Bounding box of every label 1..max_label in one pass; None where the label is absent.

    Returns:
        A list indexed by ``label - 1``.
    """
    from scipy.ndimage import find_objects

    boxes = find_objects(seg, max_label=max_label)
    return list(boxes) + [None] * (max_label - len(boxes))


def union_box(a: Slices | None, b: Slices | None, shape: Sequence[int], margin: int = 0) -> Slices:
    """Smallest box holding both boxes, grown by ``margin`` voxels and clipped to ``shape``."""
    boxes = [x for x in (a, b) if x is not None]
    return tuple(
        slice(max(min(x[d].start for x in boxes) - margin, 0), min(max(x[d].stop for x in boxes) + margin, shape[d]))
        for d in range(3)
    )  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ per label


def dice(fixed_mask: np.ndarray, warped_mask: np.ndarray) -> float:
    """Dice of two boolean masks: 2|F & W| / (|F| + |W|); NaN when both are empty (as surface-distance)."""
    total = fixed_mask.sum() + warped_mask.sum()
    if total == 0:
        return float("nan")
    return float(2 * (fixed_mask & warped_mask).sum() / total)


@lru_cache(maxsize=4)
def _surfel_table(spacing: tuple[float, float, float]) -> np.ndarray:
    from surface_distance import lookup_tables

    return lookup_tables.create_table_neighbour_code_to_surface_area(spacing)


def surface_distances(mask_gt: np.ndarray, mask_pred: np.ndarray,
                      spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict[str, np.ndarray]:
    """``surface_distance.compute_surface_distances`` with a vectorised sort; identical output.

    Both masks must be non-empty (the package itself fails on an empty mask under numpy 2).
    Shape: two (I, J, K) bool masks -> dict of four 1-D arrays (the package's keys).
    """
    from scipy.ndimage import correlate, distance_transform_edt
    from surface_distance import lookup_tables

    union = mask_gt | mask_pred
    nz = [np.nonzero(union.any(axis=tuple(a for a in range(3) if a != d)))[0] for d in range(3)]
    lo = np.array([v[0] for v in nz])
    hi = np.array([v[-1] for v in nz])
    kernel = lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL
    table = _surfel_table(tuple(float(s) for s in spacing))
    out: dict[str, np.ndarray] = {}
    codes, borders = [], []
    for mask in (mask_gt, mask_pred):
        crop = np.zeros(hi - lo + 2, np.uint8)  # one voxel of zero padding on the high side, as the package
        crop[:-1, :-1, :-1] = mask[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1]
        code = correlate(crop, kernel, mode="constant", cval=0)
        codes.append(code)
        borders.append((code != 0) & (code != 0b11111111))
    dist_gt = distance_transform_edt(~borders[0], sampling=spacing)
    dist_pred = distance_transform_edt(~borders[1], sampling=spacing)
    for key, dist, border, code in (("gt_to_pred", dist_pred, borders[0], codes[0]),
                                    ("pred_to_gt", dist_gt, borders[1], codes[1])):
        d = dist[border]
        area = table[code][border]
        order = np.lexsort((area, d))
        out[f"distances_{key}"] = d[order]
        out["surfel_areas_" + ("gt" if key == "gt_to_pred" else "pred")] = area[order]
    return out


def hd95(fixed_mask: np.ndarray, warped_mask: np.ndarray) -> float:
    """Robust (95th percentile) Hausdorff distance in voxels; inf when one mask is empty."""
    from surface_distance import compute_robust_hausdorff

    if not fixed_mask.any() or not warped_mask.any():
        return float("inf")
    return float(compute_robust_hausdorff(surface_distances(fixed_mask, warped_mask), 95.0))


# ------------------------------------------------------------------------------------ jacobian


def jacobian_determinant(disp: np.ndarray) -> np.ndarray:
    """Determinant of the Jacobian of x + disp(x), as the official evaluator computes it.

    Central differences ``0.5 (u[i+1] - u[i-1])`` (bit-identical to correlating with [-0.5, 0, 0.5]),
    identity added, 2 voxels cropped on every side, float64.

    Shape: (3, I, J, K) -> (I-4, J-4, K-4).
    """
    def grad(c: int, axis: int) -> np.ndarray:
        a = disp[c]
        hi = [slice(2, -2)] * 3
        lo = [slice(2, -2)] * 3
        hi[axis], lo[axis] = slice(3, a.shape[axis] - 1), slice(1, a.shape[axis] - 3)
        return 0.5 * (a[tuple(hi)] - a[tuple(lo)])

    # j[a][c] = d disp_c / d axis_a + delta_ac, in float64 as the official code
    j = [[grad(c, a).astype(np.float64) + (1.0 if a == c else 0.0) for c in range(3)] for a in range(3)]
    return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
            - j[1][0] * (j[0][1] * j[2][2] - j[0][2] * j[2][1])
            + j[2][0] * (j[0][1] * j[1][2] - j[0][2] * j[1][1]))


def sdlogj_official(jac_det: np.ndarray) -> tuple[float, float]:
    """The official SDlogJ and its fold count: std(log(clip(J + 3, 1e-9, 1e9))) and #(clipped <= 0) (always 0)."""
    clipped = (jac_det + 3).clip(0.000000001, 1000000000)
    return float(np.log(clipped).std()), float((clipped <= 0).astype(float).sum())


def jacobian_stats(jac_det: np.ndarray) -> tuple[float, float]:
    """Honest companions of the official number: std(log J) over J > 0, and the fraction of J <= 0."""
    positive = jac_det > 0
    std = float(np.log(jac_det[positive]).std()) if positive.any() else float("nan")
    return std, float(1.0 - positive.mean())
