"""Instance optimisation: refine one pair's network displacement at test time.

A residual displacement is optimised with Adam on the image similarity (MSE of the network's CT
windows) plus a diffusion regulariser on the total field: first on a quarter-resolution grid
(``coarse_fraction`` of the iterations), then on a half-resolution grid; it is then upsampled and
added to the network's full-resolution field.
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
    lr: float = 0.3
    reg: float = 1.0
    coarse_fraction: float = 0.5


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
    n_coarse = int(round(cfg.iters * cfg.coarse_fraction))
    residual = None
    for level, iters in ((4, n_coarse), (2, cfg.iters - n_coarse)):
        if iters <= 0:
            continue
        size = tuple((n + level - 1) // level for n in full)
        with torch.no_grad():
            m = F.interpolate(moving, size=size, mode="trilinear", align_corners=True)
            f = F.interpolate(fixed, size=size, mode="trilinear", align_corners=True)
            base = _resize_disp(disp, size)
            start = torch.zeros_like(base) if residual is None else _resize_disp(residual, size)
        residual = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([residual], lr=cfg.lr * 2 / level)  # the step is in voxels of this grid
        with torch.enable_grad():
            for _ in range(iters):
                total = base + residual
                loss = F.mse_loss(warp_image(m, total), f) + cfg.reg * diffusion(total)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        residual = residual.detach()
    with torch.no_grad():
        return disp + _resize_disp(residual, full)
