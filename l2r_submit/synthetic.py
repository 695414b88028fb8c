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


def augmentation_control_points(rng: np.random.Generator, max_disp: float,
                                grid: Sequence[int] = (4, 4, 5)) -> np.ndarray:
    """Control points of one training deformation: standard normal, scaled so that the largest
    component is max_disp * U(0.3, 1) / sqrt(3) voxels. Shape: -> (3, *grid) float64."""
    coarse = rng.standard_normal((3, *grid))
    return coarse * (max_disp * rng.uniform(0.3, 1.0) / (np.abs(coarse).max() * np.sqrt(3)))


def upsample_coarse(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Cubic B-spline interpolation of control points spread evenly over a volume, corners on corners.

    Shape: (3, gi, gj, gk) -> (3, I, J, K) float64.
    """
    from scipy.ndimage import map_coordinates

    axes = [np.linspace(0.0, g - 1.0, n) for g, n in zip(coarse.shape[1:], shape)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    return np.stack([map_coordinates(c, coords, order=3, mode="nearest") for c in coarse])


def field_from_truth(entry: dict) -> np.ndarray:
    """The exact generating field of one synthetic pair, from its entry in ``test_data/truth.json``
    (control points ``coarse`` and the full ``shape``). Shape: -> (3, I, J, K) float32 voxels."""
    return upsample_coarse(np.asarray(entry["coarse"], np.float64), entry["shape"]).astype(np.float32)


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


def windows_fixed(ct_hu: np.ndarray, n_windows: int) -> np.ndarray:
    """CT windows normalised by the window bounds (equal to the per-image min-max of
    :func:`l2r_submit.model.preprocess` whenever the image spans the window, as body CT does).

    Shape: (...) HU -> (n_windows, ...) float32 in [0, 1].
    """
    from .model import CT_WINDOWS

    out = []
    for width, level in CT_WINDOWS[:n_windows]:
        lo = level - width / 2
        out.append((np.clip(ct_hu, lo, lo + width) - lo) / width)
    return np.stack(out).astype(np.float32)


class SyntheticPairs:
    """Training pairs made from a few anatomies: both images are the same anatomy under two independent
    smooth random deformations, with intensity augmentation; some images are re-painted from the labels.

    Only the crop is computed (the B-spline field and the warps are evaluated at the crop's voxels), so
    an item costs a fraction of a second. Items follow :class:`l2r_submit.data.PairDataset`'s keys.

    Args:
        anatomies: list of (image HU, labels) full volumes, all the same shape.
        n_items: items per epoch.
        crop: crop size (I, J, K).
        seed, epoch: every draw comes from (seed, epoch, index).
        max_disp: largest displacement per image, in voxels.
        paint_prob: probability that an item uses a label-painted version of its anatomy.
        n_windows: CT windows of the network input.
        painted: pre-painted images per anatomy (list of lists), made once by the caller.
        organ_prob: probability that a crop is centred on an organ voxel (else anywhere in the volume).
    """

    def __init__(self, anatomies: list[tuple[np.ndarray, np.ndarray]], n_items: int, crop: Sequence[int],
                 seed: int, epoch: int, max_disp: float = 8.0, paint_prob: float = 0.3, n_windows: int = 3,
                 painted: list[list[np.ndarray]] | None = None, organ_prob: float = 1.0) -> None:
        self.anatomies, self.n_items, self.crop = anatomies, n_items, tuple(crop)
        self.seed, self.epoch, self.max_disp, self.paint_prob = seed, epoch, max_disp, paint_prob
        self.n_windows, self.painted = n_windows, painted or [[] for _ in anatomies]
        self.organ_prob = organ_prob

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, index: int) -> dict:
        import torch
        from scipy.ndimage import map_coordinates, zoom

        rng = np.random.default_rng([self.seed, self.epoch, index, 7])
        a = int(rng.integers(len(self.anatomies)))
        image, labels = self.anatomies[a]
        shape = image.shape
        # crop centred near the labelled organs, or (with probability 1 - organ_prob) anywhere, so that the
        # network also sees air and body wall, which whole-volume inference integrates through
        organ_idx = np.argwhere(labels[::4, ::4, ::4] > 0) * 4
        if len(organ_idx) and rng.random() < self.organ_prob:
            centre = organ_idx[rng.integers(len(organ_idx))]
        else:
            centre = np.array([rng.integers(k // 2, n - k // 2 + 1) for k, n in zip(self.crop, shape)])
        start = [int(np.clip(c - k // 2 + rng.integers(-8, 9), 0, n - k)) for c, k, n in zip(centre, self.crop, shape)]
        axes = [np.arange(s, s + k, dtype=np.float64) for s, k in zip(start, self.crop)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"))
        item = {}
        for role in ("moving", "fixed"):
            coarse = augmentation_control_points(rng, self.max_disp)
            # the cubic field at every 4th voxel of the crop, then linear in between (smooth enough, ~10x faster)
            sub = grid[:, ::4, ::4, ::4]
            cgrid = np.stack([sub[d] * (coarse.shape[d + 1] - 1) / (shape[d] - 1) for d in range(3)])
            disp_sub = np.stack([map_coordinates(c, cgrid, order=3, mode="nearest") for c in coarse])
            disp = np.stack([zoom(c, [k / m for k, m in zip(self.crop, c.shape)], order=1, grid_mode=False)
                             for c in disp_sub])
            pos = grid + disp
            source = image
            if self.painted[a] and rng.random() < self.paint_prob:
                source = self.painted[a][int(rng.integers(len(self.painted[a])))]
            hu = map_coordinates(source, pos, order=1, cval=-1024.0)
            hu = hu * rng.uniform(0.92, 1.08) + rng.uniform(-30, 30) + rng.normal(0, rng.uniform(0, 20), hu.shape)
            seg = map_coordinates(labels, pos, order=0)
            item[role] = torch.from_numpy(windows_fixed(hu, self.n_windows))
            item[f"{role}_seg"] = torch.from_numpy(seg.astype(np.int64))[None]
        return item
