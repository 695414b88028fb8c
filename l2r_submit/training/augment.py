"""Training augmentation, one implementation of each transform, in torch (the training device or
DataLoader workers): a smooth random deformation, its warp of an image or label map (whole volume or
a crop), and the intensity augmentation. :class:`l2r_submit.training.synthetic.SyntheticPairs` (crops in CPU
workers) and :class:`l2r_submit.training.volume_pairs.VolumePairs` (whole volumes on the device) both use them.

Deformations are the family of ``test_data``'s synthetic pairs: a cubic B-spline on a grid of control
points spread corner to corner over the whole volume (:func:`l2r_submit.training.synthetic.upsample_coarse`),
evaluated exactly as three separable interpolation matrices, at any box of voxels.

Why not TorchIO or MONAI: TorchIO's ``RandomElasticDeformation`` runs SimpleITK on the CPU, on whole
images only, and its control grid (locked borders) is not the family of ``test_data``'s truth fields;
MONAI's ``Rand3DElastic`` smooths per-voxel noise with a Gaussian (another family) and makes the whole
volume. Measured speeds are in the README ("Train").
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from ..core.spatial import warp_image, warp_labels
from .synthetic import augmentation_control_points

AIR_HU = -1024.0


@lru_cache(maxsize=32)
def bspline_matrix(n_ctrl: int, n_out: int) -> np.ndarray:
    """The (n_out, n_ctrl) matrix of :func:`l2r_submit.training.synthetic.upsample_coarse` along one axis.

    Cubic spline interpolation (with its prefilter, ``mode="nearest"``) is separable, so the 3-D field
    is ``einsum("cabd,ia,jb,kd->cijk", coarse, M_i, M_j, M_k)``.
    """
    from scipy.ndimage import map_coordinates

    coords = np.linspace(0.0, n_ctrl - 1.0, n_out)[None]
    cols = [map_coordinates(np.eye(n_ctrl)[a], coords, order=3, mode="nearest") for a in range(n_ctrl)]
    out = np.stack(cols, axis=1)
    out.setflags(write=False)
    return out


def bspline_field(coarse: torch.Tensor, shape: Sequence[int], start: Sequence[int] | None = None,
                  size: Sequence[int] | None = None) -> torch.Tensor:
    """Control points spread over a volume of ``shape`` to the dense field at the box ``start``,
    ``size`` (default: the whole volume), on ``coarse``'s device.

    Shape: (3, gi, gj, gk) -> (3, *size), float32.
    """
    start = tuple(start) if start is not None else (0, 0, 0)
    size = tuple(size) if size is not None else tuple(shape)
    mats = [torch.tensor(bspline_matrix(g, n)[s:s + k], dtype=torch.float32, device=coarse.device)
            for g, n, s, k in zip(coarse.shape[1:], shape, start, size)]
    return torch.einsum("cabd,ia,jb,kd->cijk", coarse.float(), *mats)


def random_control_points(rng: np.random.Generator, max_disp: float, grid: Sequence[int],
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """One deformation's control points (:func:`l2r_submit.training.synthetic.augmentation_control_points`).

    Shape: -> (3, *grid) float64 on ``device``.
    """
    return torch.as_tensor(augmentation_control_points(rng, max_disp, grid), device=device)


def deform(volume: torch.Tensor, coarse: torch.Tensor, start: Sequence[int] | None = None,
           size: Sequence[int] | None = None, labels: bool = False, fill: float = AIR_HU) -> torch.Tensor:
    """The box ``start``/``size`` (default: everything) of ``volume`` warped by the B-spline field of
    ``coarse`` (control points over the whole volume): equal to warping the whole volume and cropping, at
    the cost of the box plus the field's largest displacement around it. Images: trilinear, ``fill``
    outside the volume (air); labels: :func:`l2r_submit.core.spatial.warp_labels` (the official evaluator's
    rule, 0 outside).

    Shape: volume (1, C, I, J, K), coarse (3, gi, gj, gk) -> (1, C, *size); images float32.
    """
    shape = tuple(volume.shape[2:])
    start = tuple(start) if start is not None else (0, 0, 0)
    size = tuple(size) if size is not None else shape
    if start == (0, 0, 0) and size == shape:
        lo, hi = [0, 0, 0], list(shape)
    else:
        reach = math.ceil(float(bspline_field(coarse, shape, start, size).abs().max())) + 1
        lo = [max(0, s - reach) for s in start]
        hi = [min(n, s + k + reach) for n, s, k in zip(shape, start, size)]
    sub = volume[(slice(None), slice(None), *(slice(a, b) for a, b in zip(lo, hi)))]
    disp = bspline_field(coarse, shape, lo, [b - a for a, b in zip(lo, hi)])[None]
    out = warp_labels(sub, disp) if labels else warp_image(sub.float() - fill, disp) + fill
    return out[(slice(None), slice(None), *(slice(s - a, s - a + k) for s, a, k in zip(start, lo, size)))]


def intensity_params(rng: np.random.Generator) -> tuple[float, float, float, int]:
    """One image's intensity augmentation: (scale in [0.92, 1.08], shift in [-30, 30] HU, noise sigma in
    [0, 20] HU, noise seed)."""
    return rng.uniform(0.92, 1.08), rng.uniform(-30, 30), rng.uniform(0, 20), int(rng.integers(2**62))


def augment_intensity(hu: torch.Tensor, params: tuple[float, float, float, int]) -> torch.Tensor:
    """``hu * scale + shift + N(0, sigma^2)`` noise drawn from the params' seed on ``hu``'s device.

    Shape: (...) -> (...) float32.
    """
    scale, shift, sigma, seed = params
    noise = torch.Generator(device=hu.device).manual_seed(seed)
    return hu * scale + shift + sigma * torch.randn(hu.shape, generator=noise, device=hu.device)


def hu_extremes(hu_min: float, hu_max: float, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """A two-voxel image holding an image's extremes after ``hu * scale + shift`` (``scale`` > 0): as
    ``range_of`` of :func:`l2r_submit.nets.inputs.preprocess` it normalises a crop as the whole image would be
    (noise aside). Shape: -> (1, 1, 2, 1, 1) float32."""
    return (torch.tensor([hu_min, hu_max], dtype=torch.float32) * scale + shift).reshape(1, 1, 2, 1, 1)


FlipRot = tuple[tuple[int, ...], int, tuple[int, int]]
"""One draw of the segmenter's spatial augmentation: (flipped axes, quarter turns, rotation plane)."""


def random_flip_rot(rng: np.random.Generator, shape: Sequence[int]) -> FlipRot:
    """The authors' segmentation augmentation (their ``AxialFlip`` and ``RandomRotation90``): each axis
    flipped with probability 1/2, then 1 to 4 quarter turns (4 = none) in a random plane of two axes.
    A quarter turn swaps the plane's sizes, so on a volume that is not a cube only the planes whose two
    sizes are equal are drawn from (none: no rotation), and every item of a batch keeps its shape.

    Shape: ``shape`` (I, J, K) -> parameters for :func:`flip_rot`.
    """
    flips = tuple(int(a) for a in range(3) if rng.integers(2))
    turns = int(rng.integers(1, 5))
    planes = [(a, b) for a in range(3) for b in range(a + 1, 3) if shape[a] == shape[b]]
    if not planes:
        return flips, 0, (0, 1)
    return flips, turns % 4, planes[int(rng.integers(len(planes)))]


def flip_rot(volume: torch.Tensor, params: FlipRot) -> torch.Tensor:
    """``volume``'s last three axes flipped and rotated as ``params`` say (images and labels alike).

    Shape: (..., I, J, K) -> (..., I', J', K') (sizes of the rotation plane swapped for odd turns).
    """
    flips, turns, (a, b) = params
    offset = volume.ndim - 3
    if flips:
        volume = torch.flip(volume, [offset + f for f in flips])
    if turns:
        volume = torch.rot90(volume, turns, [offset + a, offset + b])
    return volume.contiguous()
