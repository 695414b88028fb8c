"""The official Learn2Reg metrics, per label and per case. Pure numpy/scipy; no file I/O.

Semantics are those of the official evaluator (MDL-UzL/L2R ``evaluation/utils.py``), re-derived:

* warping: ``map_coordinates(moving_seg, identity + disp, order=0)`` -- nearest neighbour, 0 outside;
* Dice and HD95 of label l are NaN when l is absent from the fixed OR the unwarped moving labels;
* HD95: DeepMind ``surface-distance`` in voxels (spacing 1), 95th robust Hausdorff; inf when the
  label vanished after warping;
* SDlogJ: central differences (zero padding), +identity, crop 2, ``std(log(clip(J + 3, 1e-9, 1e9)))``.

Speed without changing a value: labels are cropped to their bounding boxes (found for all labels in
one pass) before Dice and surface distances; surfel-to-surface distances come from a k-d tree over
the surfels instead of a distance transform of the whole box when the masks overlap (same float64 values); the surfel sort
uses ``np.lexsort`` instead of Python's ``sorted`` (same order); the Jacobian is computed in slabs
with reused buffers (same operations in the same order).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

Slices = tuple[slice, slice, slice]


# -------------------------------------------------------------------------------------- warping


def warp_labels(moving_seg: np.ndarray, disp: np.ndarray, slab: int = 2) -> np.ndarray:
    """Warp a label map exactly as the official evaluator does.

    The official call is ``map_coordinates(moving_seg, identity + disp, order=0)``: position
    x = p + disp(p) in float64; inside along an axis iff 0 <= x <= N - 1, then index floor(x + 0.5);
    0 outside. Done here in slabs of ``slab`` planes across the field's slowest-varying spatial axis
    (axis 0 for a C-ordered field, axis 2 for a Fortran-ordered one): same values, several times faster.

    Shape: moving_seg (I, J, K), disp (3, I, J, K) voxels -> (I, J, K), dtype of moving_seg, in the
    field's memory order.
    """
    shape = moving_seg.shape
    axis = _slab_axis(disp)
    out = np.empty_like(moving_seg, order="C" if axis == 0 else "F")
    seg = moving_seg if moving_seg.flags.c_contiguous or moving_seg.flags.f_contiguous else np.ascontiguousarray(moving_seg)
    flat = seg.ravel(order="K")  # no copy: the buffer in memory order, indexed with the strides below
    strides = [s // seg.itemsize for s in seg.strides]
    for start in range(0, shape[axis], slab):
        stop = min(start + slab, shape[axis])
        region = [slice(None)] * 3
        region[axis] = slice(start, stop)
        valid = index = None
        for a in range(3):
            n = shape[a]
            base_shape = [1, 1, 1]
            base_shape[a] = (stop - start) if a == axis else n
            first = start if a == axis else 0
            base = np.arange(first, first + base_shape[a], dtype=np.float64).reshape(base_shape)
            x = disp[(a, *region)].astype(np.float64)
            x += base
            inside = (x >= 0) & (x <= n - 1)
            valid = inside if valid is None else valid & inside
            x += 0.5
            np.floor(x, out=x)
            np.clip(x, 0, n - 1, out=x)
            idx = x.astype(np.intp)
            idx *= strides[a]
            index = idx if index is None else index + idx
        values = flat[index]
        values[~valid] = 0
        out[tuple(region)] = values
    return out


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
    """Dice of two boolean masks: 2|F & W| / (|F| + |W|); NaN when both are empty.

    (PyPI surface-distance 0.1 also gives NaN there; the copy vendored in MDL-UzL/L2R gives 0. The
    evaluator never asks: it skips a label absent from the fixed map, so |F| > 0 whenever it is called.)
    """
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
    from scipy.spatial import cKDTree
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
    # Distance from each surfel to the nearest surfel of the other surface. The package reads it from a
    # Euclidean distance transform of the whole box. When the surfaces overlap, a k-d tree over the
    # surfels gives the same float64 values (sqrt of the same integer sums) with far less work; when
    # they are apart, tree queries get slow and the transform is used as in the package.
    use_tree = bool((mask_gt & mask_pred).any())
    points = [np.argwhere(b) * np.asarray(spacing, np.float64) for b in borders] if use_tree else []
    for key, own, other in (("gt_to_pred", 0, 1), ("pred_to_gt", 1, 0)):
        if use_tree:
            d = cKDTree(points[other]).query(points[own], k=1)[0]
        else:
            d = distance_transform_edt(~borders[other], sampling=spacing)[borders[own]]
        area = table[codes[own][borders[own]]]
        order = np.lexsort((area, d))
        out[f"distances_{key}"] = d[order]
        out["surfel_areas_" + ("gt" if own == 0 else "pred")] = area[order]
    return out


def hd95(fixed_mask: np.ndarray, warped_mask: np.ndarray) -> float:
    """Robust (95th percentile) Hausdorff distance in voxels; inf when one mask is empty."""
    from surface_distance import compute_robust_hausdorff

    if not fixed_mask.any() or not warped_mask.any():
        return float("inf")
    return float(compute_robust_hausdorff(surface_distances(fixed_mask, warped_mask), 95.0))


# ------------------------------------------------------------------------------------ jacobian


def jacobian_determinant(disp: np.ndarray, slab: int = 2) -> np.ndarray:
    """Determinant of the Jacobian of x + disp(x), as the official evaluator computes it.

    Central differences ``0.5 (u[i+1] - u[i-1])`` (bit-identical to correlating with [-0.5, 0, 0.5]),
    identity added, 2 voxels cropped on every side, float64. Computed in slabs of ``slab`` planes
    along the spatial axis whose planes are contiguous in memory (axis 0 for a C-ordered field,
    axis 2 for the Fortran order nibabel reads a NIfTI file in), to stay in cache; the values do not
    depend on ``slab`` nor on the axis.

    Shape: (3, I, J, K) -> (I-4, J-4, K-4), in the memory order of the slabs (Fortran for a Fortran
    field); :func:`sdlogj_official` sums in the C order of the official array whatever the layout.
    """
    axis = _slab_axis(disp)
    n0 = disp.shape[1 + axis]
    order = "C" if axis == 0 else "F"
    out = np.empty(tuple(n - 4 for n in disp.shape[1:]), np.float64, order=order)
    for start in range(2, n0 - 2, slab):
        stop = min(start + slab, n0 - 2)
        block = [slice(None)] * 4
        block[1 + axis] = slice(start - 1, stop + 1)
        dest = [slice(None)] * 3
        dest[axis] = slice(start - 2, stop - 2)
        out[tuple(dest)] = _jacobian_slab(disp[tuple(block)], axis, order)
    return out


def _slab_axis(disp: np.ndarray) -> int:
    """The spatial axis of ``disp`` (3, I, J, K) with the largest stride: slabs across it are compact."""
    return 2 if abs(disp.strides[3]) > abs(disp.strides[1]) else 0


def _jacobian_slab(block: np.ndarray, axis: int = 0, order: str = "C") -> np.ndarray:
    """Determinant for the inner planes of ``block`` along ``axis``; 2 voxels cropped on the other axes.

    Shape: (3, n + 2, J, K) -> (n, J - 4, K - 4) for axis 0 (likewise for axis 2).

    Every elementwise operation and its order match the official code, so results are bit-identical;
    buffers are reused (``out=``) because the work is memory-bound, and laid out in ``order``.
    """
    inner = [slice(2, n - 2) for n in block.shape[1:]]
    inner[axis] = slice(1, block.shape[1 + axis] - 1)
    shape = tuple(s.stop - s.start for s in inner)
    jac = [[np.empty(shape, np.float64, order=order) for _ in range(3)] for _ in range(3)]
    diff = np.empty(shape, block.dtype, order=order)
    for a in range(3):
        hi, lo = list(inner), list(inner)
        hi[a] = slice(inner[a].start + 1, inner[a].stop + 1)
        lo[a] = slice(inner[a].start - 1, inner[a].stop - 1)
        for c in range(3):
            np.subtract(block[c][tuple(hi)], block[c][tuple(lo)], out=diff)  # in the field's dtype
            np.multiply(diff, 0.5, out=jac[a][c])  # x 0.5 is exact, so float64(0.5 d) == 0.5 float64(d)
        jac[a][a] += 1.0
    det = np.empty(shape, np.float64, order=order)
    minor = np.empty_like(det)
    tmp = np.empty_like(det)
    # J00 (J11 J22 - J12 J21) - J10 (J01 J22 - J02 J21) + J20 (J01 J12 - J02 J11), evaluated left to right
    for r, (a, b, c, d), combine in ((0, ((1, 1), (2, 2), (1, 2), (2, 1)), None),
                                     (1, ((0, 1), (2, 2), (0, 2), (2, 1)), np.subtract),
                                     (2, ((0, 1), (1, 2), (0, 2), (1, 1)), np.add)):
        np.multiply(jac[a[0]][a[1]], jac[b[0]][b[1]], out=minor)
        np.multiply(jac[c[0]][c[1]], jac[d[0]][d[1]], out=tmp)
        np.subtract(minor, tmp, out=minor)
        np.multiply(jac[r][0], minor, out=minor)
        if combine is None:
            det[...] = minor
        else:
            combine(det, minor, out=det)
    return det


def sdlogj_official(jac_det: np.ndarray) -> tuple[float, float]:
    """The official SDlogJ and its fold count: std(log(clip(J + 3, 1e-9, 1e9))) and #(clipped <= 0) (always 0)."""
    # the operations of (jac_det + 3).clip(...), in one C-ordered buffer: the official array is C-ordered,
    # and std adds its elements in memory order, so the layout decides the last bits of the result
    clipped = np.empty(jac_det.shape, np.float64, order="C")
    np.add(jac_det, 3, out=clipped)
    np.clip(clipped, 0.000000001, 1000000000, out=clipped)
    folds = float(np.count_nonzero(clipped <= 0))  # an exact count either way
    return float(np.log(clipped, out=clipped).std()), folds


def sdlogj_masked(jac_det: np.ndarray, mask: np.ndarray) -> float:
    """The official masked SDlogJ (``masked_evaluation: true``): std of log(clip(J + 3)) over the voxels
    where the fixed image's mask, cropped by 2, equals 1 (MDL-UzL/L2R since e8c7b85, 2022-05-24:
    ``np.ma.MaskedArray(log_jac_det, 1 - mask[2:-2, 2:-2, 2:-2]).std()``); NaN when no voxel is kept.

    Shape: jac_det (I-4, J-4, K-4), mask (I, J, K).
    """
    keep = np.asarray(mask)[2:-2, 2:-2, 2:-2] == 1
    if not keep.any():
        return float("nan")
    return float(np.log((jac_det[keep] + 3).clip(0.000000001, 1000000000)).std())


def jacobian_stats(jac_det: np.ndarray) -> tuple[float, float]:
    """Honest companions of the official number: std(log J) over J > 0, and the fraction of J <= 0."""
    positive = jac_det > 0
    count = int(np.count_nonzero(positive))
    std = float(np.log(jac_det[positive]).std()) if count else float("nan")
    return std, float(1.0 - count / positive.size) if positive.size else float("nan")
