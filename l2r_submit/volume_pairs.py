"""Whole-volume synthetic training pairs, made with torch on the training device (GPU or CPU).

:class:`l2r_submit.synthetic.SyntheticPairs` makes crops with numpy/scipy in DataLoader workers; this
module makes whole volumes where the network trains, so a GPU is not left waiting for CPU workers and
the network sees what whole-volume inference sees (a crop cut through the body has displacements at its
first voxels that the network's cumulative-sum field cannot reach).

Deformations are the family of ``test_data``'s synthetic pairs: a cubic B-spline on a 4x4x5 grid of
control points spread corner to corner over the volume (:func:`l2r_submit.synthetic.upsample_coarse`),
evaluated exactly as three separable interpolation matrices.

Items follow :class:`l2r_submit.data.PairDataset`'s keys: ``moving``, ``fixed`` (C, I, J, K) float32
CT windows as :func:`l2r_submit.model.preprocess` makes them at inference (per-image min-max of the
whole volume), ``moving_seg``, ``fixed_seg`` (1, I, J, K) int64, all on ``device``. Use them with
``DataLoader(num_workers=0)``: the tensors already live on the device.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from .model import preprocess
from .spatial import warp_image, warp_labels
from .synthetic import augmentation_control_points

AIR_HU = -1024.0


@lru_cache(maxsize=32)
def bspline_matrix(n_ctrl: int, n_out: int) -> np.ndarray:
    """The (n_out, n_ctrl) matrix of :func:`l2r_submit.synthetic.upsample_coarse` along one axis.

    Cubic spline interpolation (with its prefilter, ``mode="nearest"``) is separable, so the 3-D field
    is ``einsum("cabd,ia,jb,kd->cijk", coarse, M_i, M_j, M_k)``.
    """
    from scipy.ndimage import map_coordinates

    coords = np.linspace(0.0, n_ctrl - 1.0, n_out)[None]
    cols = [map_coordinates(np.eye(n_ctrl)[a], coords, order=3, mode="nearest") for a in range(n_ctrl)]
    out = np.stack(cols, axis=1)
    out.setflags(write=False)
    return out


def bspline_field(coarse: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Control points to a dense field on ``coarse``'s device.

    Shape: (3, gi, gj, gk) -> (3, I, J, K), float32.
    """
    mats = [torch.tensor(bspline_matrix(g, n), dtype=torch.float32, device=coarse.device)
            for g, n in zip(coarse.shape[1:], shape)]
    return torch.einsum("cabd,ia,jb,kd->cijk", coarse.float(), *mats)


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
        coarse = augmentation_control_points(rng, self.max_disp, self.grid)
        return bspline_field(torch.as_tensor(coarse, device=self.device), self.shape)[None]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.n_items:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.epoch, index, 11])
        noise = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
        a = int(rng.integers(len(self.images)))
        item = {}
        for role in ("moving", "fixed"):
            disp = self.random_disp(rng)
            versions = self.images[a]
            source = versions[0]
            if len(versions) > 1 and rng.random() < self.paint_prob:
                source = versions[1 + int(rng.integers(len(versions) - 1))]
            # air outside the volume: warp HU + 1024 with zero padding
            hu = warp_image(source - AIR_HU, disp) + AIR_HU
            sigma = rng.uniform(0, 20)
            hu = hu * rng.uniform(0.92, 1.08) + rng.uniform(-30, 30)
            hu = hu + sigma * torch.randn(hu.shape, generator=noise, device=self.device)
            item[role] = preprocess(hu, self.n_windows)[0]
            item[f"{role}_seg"] = warp_labels(self.labels[a], disp)[0]
        return item
