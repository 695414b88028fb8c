"""Network inputs and outputs: CT windows, gradient integration, the original weights' frame."""

from __future__ import annotations

import torch

from ..core.contract import check_volume_batch
from .config import CT_WINDOWS


def preprocess(ct_hu: torch.Tensor, n_windows: int, range_of: torch.Tensor | None = None) -> torch.Tensor:
    """CT windows of the paper: clip HU to [L - W/2, L + W/2], then min-max of that image to [0, 1].

    ``range_of``: take the min and max from this image instead (e.g. a crop normalised as its whole
    image is, training and inference alike: :func:`l2r_submit.training.augment.hu_extremes`).

    Shape: (B, 1, I, J, K) HU [, range_of (B, 1, ...)] -> (B, n_windows, I, J, K) float32.
    """
    check_volume_batch(ct_hu, "ct_hu")
    out = []
    for width, level in CT_WINDOWS[:n_windows]:
        x = ct_hu.float().clamp(level - width / 2, level + width / 2)
        r = x if range_of is None else range_of.float().clamp(level - width / 2, level + width / 2)
        lo = r.amin(dim=(2, 3, 4), keepdim=True)
        hi = r.amax(dim=(2, 3, 4), keepdim=True)
        out.append((x - lo) / (hi - lo).clamp_min(1e-6))
    return torch.cat(out, dim=1)


def integrate(gradients: torch.Tensor) -> torch.Tensor:
    """Spatial gradients to a voxel displacement: ``p_k(i) = 2 cumsum_k(g_k)(i) - 1``, ``disp = p - i``.

    Shape: (B, 3, I, J, K), channel k integrated along array axis k -> (B, 3, I, J, K) voxels.
    g = 0.5 everywhere gives exactly 0.
    """
    out = []
    for k in range(3):
        pos = 2.0 * torch.cumsum(gradients[:, k], dim=k + 1) - 1.0
        n = gradients.shape[k + 2]
        shape = [1, 1, 1]
        shape[k] = n
        out.append(pos - torch.arange(n, dtype=pos.dtype, device=pos.device).view(1, *shape))
    return torch.stack(out, dim=1)


def to_model_frame(x: torch.Tensor, orientation: str) -> torch.Tensor:
    """Our (B, C, I, J, K) volume in the frame the network was trained in.

    ``estienne2020``: the authors read volumes with SimpleITK (array axes k, j, i) and flipped the first
    two of those axes. ``l2r``: unchanged.
    """
    if orientation == "l2r":
        return x
    return x.permute(0, 1, 4, 3, 2).flip(2, 3)


def from_model_frame(x: torch.Tensor, orientation: str) -> torch.Tensor:
    """A volume (e.g. class scores) in the network's frame back on our axes: the inverse of
    :func:`to_model_frame` (channels unchanged). Shape: (B, C, ...) -> (B, C, I, J, K)."""
    if orientation == "l2r":
        return x
    return x.flip(2, 3).permute(0, 1, 4, 3, 2)


def disp_from_model_frame(disp: torch.Tensor, orientation: str) -> torch.Tensor:
    """A displacement predicted in the network's frame, back in our contract (axes, channel order, signs)."""
    if orientation == "l2r":
        return disp
    back = disp.flip(2, 3).permute(0, 1, 4, 3, 2)  # spatial axes back to (i, j, k)
    return torch.stack([back[:, 2], -back[:, 1], -back[:, 0]], dim=1)  # flipped axes change sign
