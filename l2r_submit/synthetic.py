"""Synthetic deformations and label-painted images, for test data and training augmentation.

Pure numpy/scipy functions; every random draw comes from an explicit seed or Generator.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Plausible portal-venous CT intensities (mean HU, std HU) per Learn2Reg label, for painting images
# from label maps. Values are rough textbook figures, not measurements.
ORGAN_HU: dict[int, tuple[float, float]] = {
    1: (120, 15), 2: (160, 20), 3: (160, 20), 4: (10, 10), 5: (45, 15), 6: (110, 15), 7: (35, 25),
    8: (170, 15), 9: (140, 15), 10: (150, 15), 11: (95, 15), 12: (60, 15), 13: (60, 15),
}
BODY_HU = (-90.0, 40.0)  # subcutaneous / visceral fat and muscle mix
AIR_HU = -1024.0


def coarse_random_disp(seed: int, grid: Sequence[int] = (4, 4, 5)) -> np.ndarray:
    """Standard-normal control-point displacements. Shape: (3, *grid) float64."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, *grid))


def upsample_coarse(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Cubic B-spline interpolation of control points spread evenly over a volume, corners on corners.

    Shape: (3, gi, gj, gk) -> (3, I, J, K) float64.
    """
    from scipy.ndimage import map_coordinates

    axes = [np.linspace(0.0, g - 1.0, n) for g, n in zip(coarse.shape[1:], shape)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    return np.stack([map_coordinates(c, coords, order=3, mode="nearest") for c in coarse])


def smooth_random_disp(seed: int, shape: Sequence[int], max_disp: float,
                       grid: Sequence[int] = (4, 4, 5)) -> np.ndarray:
    """A smooth random displacement whose largest vector is exactly ``max_disp`` voxels long.

    Shape: (3, I, J, K) float32, voxels (contract of :mod:`l2r_submit.contract`).
    """
    disp = upsample_coarse(coarse_random_disp(seed, grid), shape)
    disp *= max_disp / np.sqrt((disp ** 2).sum(0)).max()
    return disp.astype(np.float32)


def paint_from_labels(labels: np.ndarray, rng: np.random.Generator, body_margin_vox: float = 12.0,
                      noise_hu: float = 12.0) -> np.ndarray:
    """A CT-like image painted from a Learn2Reg label map.

    Each organ gets one HU value drawn around :data:`ORGAN_HU`; a body region (the organs dilated by
    ``body_margin_vox``) gets fat/muscle values; the rest is air. Gaussian noise and a light blur follow.

    Shape: (I, J, K) int labels -> (I, J, K) float32 HU.
    """
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    organs = labels > 0
    body = distance_transform_edt(~organs) <= body_margin_vox
    body_tissue = gaussian_filter(rng.normal(0.0, 1.0, labels.shape), 4.0)
    body_tissue = BODY_HU[0] + BODY_HU[1] * body_tissue / (np.abs(body_tissue).max() + 1e-6)
    image = np.where(body, body_tissue, AIR_HU)
    for label, (mean, std) in ORGAN_HU.items():
        image[labels == label] = rng.normal(mean, std)
    image = gaussian_filter(image, 0.7)
    image[body] += rng.normal(0.0, noise_hu, int(body.sum()))
    return image.astype(np.float32)
