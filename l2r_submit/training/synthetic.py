"""Synthetic deformations and label-painted images, for test data and training augmentation.

numpy/scipy functions (the training crops use the torch transforms of :mod:`l2r_submit.training.augment`);
every random draw comes from an explicit seed or Generator.
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

    Shape: (3, I, J, K) float32, voxels (contract of :mod:`l2r_submit.core.contract`).
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


class SyntheticPairs:
    """Training pairs made from a few anatomies: both images are the same anatomy under two independent
    smooth random deformations, with intensity augmentation; some images are re-painted from the labels.

    Only the crop is computed (:func:`l2r_submit.training.augment.deform`: the exact B-spline field and warps of
    the whole volume, evaluated on the crop and the field's reach around it). The CT windows are
    :func:`l2r_submit.nets.inputs.preprocess`'s, normalised by the whole augmented image's range, as at
    inference (up to the noise: values it pushes past the noise-free range are clipped to [0, 1]). Items follow :class:`l2r_submit.training.data.PairDataset`'s keys.

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
        grid: control points per axis of the deformations.
    """

    def __init__(self, anatomies: list[tuple[np.ndarray, np.ndarray]], n_items: int, crop: Sequence[int],
                 seed: int, epoch: int, max_disp: float = 8.0, paint_prob: float = 0.3, n_windows: int = 3,
                 painted: list[list[np.ndarray]] | None = None, organ_prob: float = 1.0,
                 grid: Sequence[int] = (4, 4, 5)) -> None:
        self.anatomies, self.n_items, self.crop = anatomies, n_items, tuple(crop)
        self.seed, self.epoch, self.max_disp, self.paint_prob = seed, epoch, max_disp, paint_prob
        self.n_windows, self.painted = n_windows, painted or [[] for _ in anatomies]
        self.organ_prob, self.grid = organ_prob, tuple(grid)

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, index: int) -> dict:
        import torch

        from .augment import augment_intensity, deform, hu_extremes, intensity_params, random_control_points
        from ..nets.inputs import preprocess

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
        label_volume = torch.from_numpy(np.ascontiguousarray(labels))[None, None]
        item = {}
        for role in ("moving", "fixed"):
            coarse = random_control_points(rng, self.max_disp, self.grid)
            source = image
            if self.painted[a] and rng.random() < self.paint_prob:
                source = self.painted[a][int(rng.integers(len(self.painted[a])))]
            params = intensity_params(rng)
            hu = augment_intensity(deform(torch.from_numpy(np.asarray(source, np.float32))[None, None], coarse,
                                          start, self.crop), params)
            whole = hu_extremes(float(source.min()), float(source.max()), params[0], params[1])
            item[role] = preprocess(hu, self.n_windows, range_of=whole)[0].clamp_(0.0, 1.0)  # noise past the range
            item[f"{role}_seg"] = deform(label_volume, coarse, start, self.crop, labels=True)[0].long()
        return item
