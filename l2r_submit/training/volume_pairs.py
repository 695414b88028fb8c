"""Whole-volume synthetic training pairs, made with torch on the training device (GPU or CPU).

:class:`l2r_submit.training.synthetic.SyntheticPairs` makes crops in CPU DataLoader workers; this
module makes whole volumes where the network trains, so a GPU is not left waiting for CPU workers and
the network sees what whole-volume inference sees (a crop cut through the body has displacements at its
first voxels that the network's cumulative-sum field cannot reach).

Deformations and intensity augmentation are those of :mod:`l2r_submit.training.augment` (shared with
:class:`l2r_submit.training.synthetic.SyntheticPairs`).

Items follow :class:`l2r_submit.training.data.PairDataset`'s keys: ``moving``, ``fixed`` (C, I, J, K) float32
CT windows as :func:`l2r_submit.nets.inputs.preprocess` makes them at inference (per-image min-max of the
whole volume), ``moving_seg``, ``fixed_seg`` (1, I, J, K) int64, all on ``device``. Use them with
``DataLoader(num_workers=0)``: the tensors already live on the device.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .augment import augment_intensity, bspline_field, bspline_matrix, deform, intensity_params, random_control_points  # noqa: F401
from ..nets.inputs import preprocess


class VolumePairs(torch.utils.data.Dataset):
    """One epoch of whole-volume training pairs: an anatomy under two independent smooth random
    deformations, with intensity augmentation; some images are label-painted versions of the anatomy.

    Args:
        anatomies: list of (image HU, labels), (I, J, K) arrays, all the same shape.
        n_items: items per epoch.
        seed, epoch: every draw comes from (seed, epoch, index).
        max_disp: largest control-point displacement per image, in voxels (each image draws a scale in
            [0.3, 1] of it).
        paint_prob: probability that an image uses a painted version of its anatomy.
        painted: painted images per anatomy (list of lists of (I, J, K) HU arrays).
        n_windows: CT windows of the network input.
        grid: control points per axis.
        device: where the volumes live and the items are made.
    """

    def __init__(self, anatomies: list[tuple[np.ndarray, np.ndarray]], n_items: int, seed: int, epoch: int,
                 max_disp: float = 10.0, paint_prob: float = 0.3, painted: list[list[np.ndarray]] | None = None,
                 n_windows: int = 3, grid: Sequence[int] = (4, 4, 5), device: str | torch.device = "cpu") -> None:
        if not anatomies:
            raise ValueError("VolumePairs: no anatomies given")
        shape = anatomies[0][0].shape
        for image, labels in anatomies:
            if image.shape != shape or labels.shape != shape:
                raise ValueError(f"VolumePairs: every image and label map must have shape {shape}, "
                                 f"got {image.shape} and {labels.shape}")
        painted = painted or [[] for _ in anatomies]
        if len(painted) != len(anatomies):
            raise ValueError(f"VolumePairs: {len(painted)} painted lists for {len(anatomies)} anatomies")
        self.device = torch.device(device)
        as_image = lambda a: torch.as_tensor(np.asarray(a, np.float32), device=self.device)[None, None]  # noqa: E731
        self.images = [[as_image(img)] + [as_image(p) for p in extra] for (img, _), extra in zip(anatomies, painted)]
        self.labels = [torch.as_tensor(np.asarray(lab, np.int64), device=self.device)[None, None] for _, lab in anatomies]
        self.shape, self.n_items, self.seed, self.epoch = tuple(shape), n_items, seed, epoch
        self.max_disp, self.paint_prob, self.n_windows, self.grid = max_disp, paint_prob, n_windows, tuple(grid)

    def __len__(self) -> int:
        return self.n_items

    def random_disp(self, rng: np.random.Generator) -> torch.Tensor:
        """One deformation. Shape: -> (1, 3, I, J, K) voxels on the device."""
        return bspline_field(random_control_points(rng, self.max_disp, self.grid, self.device), self.shape)[None]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.n_items:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.epoch, index, 11])
        a = int(rng.integers(len(self.images)))
        item = {}
        for role in ("moving", "fixed"):
            coarse = random_control_points(rng, self.max_disp, self.grid, self.device)
            versions = self.images[a]
            source = versions[0]
            if len(versions) > 1 and rng.random() < self.paint_prob:
                source = versions[1 + int(rng.integers(len(versions) - 1))]
            hu = augment_intensity(deform(source, coarse), intensity_params(rng))
            item[role] = preprocess(hu, self.n_windows)[0]
            item[f"{role}_seg"] = deform(self.labels[a], coarse, labels=True)[0]
        return item
