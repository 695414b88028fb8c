"""Instance optimisation: refine one pair's network displacement at test time.

A residual displacement on a half-resolution grid is optimised with Adam on the image similarity
(MSE of the network's CT windows) plus a diffusion regulariser on the total half-resolution field,
then upsampled and added to the network's full-resolution field.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .contract import check_disp_tensor
from .spatial import warp_image


@dataclass(frozen=True)
class IOConfig:
    """Settings of the refinement. iters = 0 turns it off."""

    iters: int = 0
    lr: float = 0.1
    reg: float = 1.0


def diffusion(disp: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of a displacement along each axis. Shape: (B, 3, I, J, K) -> scalar."""
    return sum((torch.diff(disp, dim=d) ** 2).mean() for d in (2, 3, 4)) / 3.0


def _resize_disp(disp: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resample a voxel displacement to another grid spanning the same volume (corners on corners),
    rescaling each channel to the new voxel size."""
    out = F.interpolate(disp, size=size, mode="trilinear", align_corners=True)
    scale = [(m - 1) / max(n - 1, 1) for m, n in zip(size, disp.shape[2:])]
    return out * out.new_tensor(scale).view(1, 3, 1, 1, 1)


def refine(disp: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor, cfg: IOConfig) -> torch.Tensor:
    """Refine ``disp`` so that ``warp(moving, disp)`` matches ``fixed`` better.

    Shape: disp (1, 3, I, J, K) voxels; moving, fixed (1, C, I, J, K) network inputs -> (1, 3, I, J, K).
    """
    check_disp_tensor(disp)
    if cfg.iters <= 0:
        return disp
    full = tuple(disp.shape[2:])
    half = tuple((n + 1) // 2 for n in full)
    with torch.no_grad():
        m2 = F.interpolate(moving, size=half, mode="trilinear", align_corners=True)
        f2 = F.interpolate(fixed, size=half, mode="trilinear", align_corners=True)
        d2 = _resize_disp(disp, half)
    residual = torch.zeros_like(d2, requires_grad=True)
    opt = torch.optim.Adam([residual], lr=cfg.lr)
    with torch.enable_grad():
        for _ in range(cfg.iters):
            total = d2 + residual
            loss = F.mse_loss(warp_image(m2, total), f2) + cfg.reg * diffusion(total)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return disp + _resize_disp(residual.detach(), full)
