"""The challenge's frame in numpy: axis orientation from the affine, the 2 mm grid, crop/pad, label tables.

Used by ``scripts/make_test_data.py`` (which built test_data/ with these helpers) and by the cohort
preparation (:mod:`l2r_submit.recipe.prepare`). Affines are nibabel's: voxel index -> RAS world (mm).
Reorientation permutes and flips array axes only (exact, no interpolation); resampling is
``scipy.ndimage.map_coordinates`` on a grid that shares the first voxel centre.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .contract import L2R_SHAPE

SPACING_MM = 2.0
"""Voxel size of every challenge volume."""


def remap(labels: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Label values through ``table`` (source id -> new id); every value not in it becomes 0.

    Shape: any integer array -> same shape, uint8.
    """
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.uint8)
    for src, dst in table.items():
        if 0 <= src < lut.size:
            lut[src] = dst
    return lut[labels]


def resample_to_2mm(array: np.ndarray, spacing: Sequence[float], order: int, cval: float) -> np.ndarray:
    """Resample onto a 2 mm grid sharing the first voxel centre (``order`` 1 linear, 0 nearest).

    Shape: (I, J, K) with voxel size ``spacing`` (mm) -> (floor((I-1) s_i / 2) + 1, ...) float32.
    """
    axes = [np.arange(0.0, (n - 1) * s + 1e-6, SPACING_MM) / s for n, s in zip(array.shape, spacing)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    return map_coordinates_f32(array, coords, order, cval)


def map_coordinates_f32(array: np.ndarray, coords: np.ndarray, order: int, cval: float) -> np.ndarray:
    """``scipy.ndimage.map_coordinates`` of ``array`` as float32 (the one sampler of this module)."""
    from scipy.ndimage import map_coordinates

    return map_coordinates(array.astype(np.float32), coords, order=order, cval=cval)


def resampled_affine(affine: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The affine of :func:`resample_to_2mm`'s output: same first voxel centre and axis directions, 2 mm.

    Shape: (4, 4) -> (4, 4).
    """
    out = np.array(affine, dtype=np.float64)
    out[:3, :3] = out[:3, :3] * (SPACING_MM / np.asarray(spacing, dtype=np.float64))[None, :]
    return out


def place(array: np.ndarray, centre: Sequence[float], fill: float,
          shape: Sequence[int] = L2R_SHAPE) -> np.ndarray:
    """Put ``centre`` of ``array`` at the centre (``shape // 2``) of a ``shape`` volume, padding with ``fill``.

    Output index o takes source index o + round(centre) - shape // 2 (outside the source: ``fill``).

    Shape: (I, J, K) -> ``shape``, same dtype.
    """
    out = np.full(tuple(shape), fill, array.dtype)
    src, dst = [], []
    for n, c, m in zip(array.shape, centre, shape):
        start = int(round(c)) - m // 2  # source index that lands on output index 0
        lo, hi = max(start, 0), min(start + m, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = array[tuple(src)]
    return out


def centroid(mask: np.ndarray) -> np.ndarray:
    """Mean voxel index of a mask, per axis."""
    return np.array([np.mean(ix) for ix in np.nonzero(mask)])


def reorient_like(array: np.ndarray, affine: np.ndarray, target_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute and flip array axes so that each points the way the target's does (nibabel's orientations).

    Only the closest axis-aligned orientation is matched (an oblique direction stays as it is); no value is
    interpolated.

    Shape: (I, J, K) -> the permuted shape; affine (4, 4) -> the affine of the returned array.
    """
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    transform = ornt_transform(io_orientation(affine), io_orientation(target_affine))
    out = apply_orientation(array, transform)
    return np.ascontiguousarray(out), np.asarray(affine, np.float64) @ inv_ornt_aff(transform, array.shape)


def world_axis(affine: np.ndarray, world: int) -> int:
    """The array axis that runs closest to world axis ``world`` (0 x left-right, 1 y, 2 z head-feet)."""
    from nibabel.orientations import io_orientation

    return int(np.nonzero(io_orientation(affine)[:, 0] == world)[0][0])


def head_feet_axis(affine: np.ndarray) -> int | None:
    """The array axis that runs closest to the patient's head-feet (world z) axis by the header's affine
    (:func:`world_axis`), or None when the affine cannot say (not finite, or singular)."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    if not np.isfinite(matrix).all() or abs(np.linalg.det(matrix)) < 1e-12:
        return None
    return world_axis(affine, 2)
