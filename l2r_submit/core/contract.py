"""The one tensor contract of l2r_submit. Every other module imports it.

Axes
    Array axes (i, j, k) of the FIXED image, in the order ``nibabel.load(f).get_fdata()`` returns them.
    Images and label maps in torch are (B, C, I, J, K); in numpy a single volume is (I, J, K).

Displacement (``disp``)
    torch: (B, 3, I, J, K) float32; numpy, one pair: (3, I, J, K) float32. Units: voxels of the fixed grid.
    Channel c is the offset along array axis c. It is a PULL map on the fixed grid:
    ``warped(p) = moving(p + disp(p))`` -- the meaning of the official Learn2Reg evaluator, which
    samples the moving label map at ``identity + disp`` with ``scipy.ndimage.map_coordinates``.

Normalised grid
    ``torch.nn.functional.grid_sample`` wants (B, I, J, K, 3) positions in [-1, 1] with the LAST
    dimension reversed (x = axis k, y = axis j, z = axis i). We always use ``align_corners=True``:
    -1 and +1 are the centres of the first and last voxels, so position p along an axis of N voxels is
    ``2 p / (N - 1) - 1``. :func:`disp_to_grid` and :func:`grid_to_disp` are the only conversions.

Names mean one thing: ``fixed``, ``moving``, ``disp``, ``fixed_seg``, ``moving_seg``, ``warped``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

ALIGN_CORNERS = True
"""The grid_sample convention used everywhere in this package."""

L2R_SHAPE: tuple[int, int, int] = (192, 160, 256)
"""Shape of every AbdomenCTCT volume (2 mm isotropic)."""

L2R_LABELS: tuple[int, ...] = tuple(range(1, 14))
"""Organ labels scored on the validation protocol (1 spleen ... 13 left adrenal gland)."""

LABEL_NAMES: dict[int, str] = {
    1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 5: "esophagus", 6: "liver",
    7: "stomach", 8: "aorta", 9: "inferior vena cava", 10: "portal and splenic vein", 11: "pancreas",
    12: "right adrenal gland", 13: "left adrenal gland",
}


def check_disp_array(disp: np.ndarray, spatial_shape: Sequence[int] | None = None, name: str = "disp") -> None:
    """Check a numpy displacement of one pair against the contract.

    Shape: (3, I, J, K), float32 or float64, finite.

    Raises:
        ValueError: wrong type, rank, channel count, spatial shape, dtype, or non-finite values;
            the message quotes what was received and what was expected.
    """
    if not isinstance(disp, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(disp).__name__}")
    expected = "(3, " + ", ".join(map(str, spatial_shape)) + ")" if spatial_shape is not None else "(3, I, J, K)"
    if disp.ndim != 4 or disp.shape[0] != 3:
        raise ValueError(f"{name}: shape {tuple(disp.shape)} received, expected {expected} (channel first)")
    if spatial_shape is not None and tuple(disp.shape[1:]) != tuple(spatial_shape):
        raise ValueError(f"{name}: shape {tuple(disp.shape)} received, expected {expected}")
    if disp.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name}: dtype {disp.dtype} received, expected float32")
    if not np.isfinite(disp).all():
        bad = int(np.size(disp) - np.count_nonzero(np.isfinite(disp)))
        raise ValueError(f"{name}: {bad} non-finite values (NaN or inf); a displacement must be finite")


def check_disp_tensor(disp: "torch.Tensor", name: str = "disp") -> None:
    """Check a torch displacement batch: (B, 3, I, J, K), floating point.

    Raises:
        ValueError: wrong rank, channel count or dtype, quoting the shape received.
    """
    if disp.dim() != 5 or disp.shape[1] != 3:
        raise ValueError(f"{name}: shape {tuple(disp.shape)} received, expected (B, 3, I, J, K)")
    if not disp.is_floating_point():
        raise ValueError(f"{name}: dtype {disp.dtype} received, expected a floating dtype (float32)")


def check_volume_batch(x: "torch.Tensor", name: str, spatial_shape: Sequence[int] | None = None) -> None:
    """Check an image or label batch: (B, C, I, J, K), optionally with a given spatial shape.

    Raises:
        ValueError: wrong rank or spatial shape, quoting both.
    """
    if x.dim() != 5:
        raise ValueError(f"{name}: shape {tuple(x.shape)} received, expected (B, C, I, J, K)")
    if spatial_shape is not None and tuple(x.shape[2:]) != tuple(spatial_shape):
        raise ValueError(
            f"{name}: spatial shape {tuple(x.shape[2:])} received, expected {tuple(spatial_shape)}"
        )


def identity_grid(spatial_shape: Sequence[int], dtype: "torch.dtype | None" = None,
                  device: "torch.device | str | None" = None) -> "torch.Tensor":
    """Voxel coordinates of every voxel: (1, 3, I, J, K), channel c = index along axis c."""
    import torch

    axes = [torch.arange(n, dtype=dtype or torch.float32, device=device) for n in spatial_shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)[None]


def disp_to_grid(disp: "torch.Tensor") -> "torch.Tensor":
    """Convert a voxel displacement to grid_sample's normalised sampling grid (align_corners=True).

    Shape: (B, 3, I, J, K) -> (B, I, J, K, 3), last dimension ordered (k, j, i).
    Units: voxels -> [-1, 1] per axis.

    Raises:
        ValueError: if ``disp`` is not (B, 3, I, J, K).
    """
    check_disp_tensor(disp)
    shape = disp.shape[2:]
    pos = identity_grid(shape, dtype=disp.dtype, device=disp.device) + disp
    scale = disp.new_tensor([2.0 / max(n - 1, 1) for n in shape]).view(1, 3, 1, 1, 1)
    grid = pos * scale - 1.0
    return grid.permute(0, 2, 3, 4, 1).flip(-1)


def grid_to_disp(grid: "torch.Tensor") -> "torch.Tensor":
    """Inverse of :func:`disp_to_grid`.

    Shape: (B, I, J, K, 3) with last dimension (k, j, i), normalised -> (B, 3, I, J, K) voxels.

    Raises:
        ValueError: if ``grid`` is not (B, I, J, K, 3).
    """
    if grid.dim() != 5 or grid.shape[-1] != 3:
        raise ValueError(f"grid: shape {tuple(grid.shape)} received, expected (B, I, J, K, 3)")
    shape = grid.shape[1:4]
    pos = grid.flip(-1).permute(0, 4, 1, 2, 3)
    scale = grid.new_tensor([max(n - 1, 1) / 2.0 for n in shape]).view(1, 3, 1, 1, 1)
    return (pos + 1.0) * scale - identity_grid(shape, dtype=grid.dtype, device=grid.device)
