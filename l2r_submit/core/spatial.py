"""Spatial core in torch: warping images and label maps, composing displacements.

Every function takes displacements in the contract of :mod:`l2r_submit.core.contract`: (B, 3, I, J, K)
voxels, a pull map on the fixed grid. Conversions to grid_sample's coordinates go through
:func:`l2r_submit.core.contract.disp_to_grid` only (align_corners=True).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .contract import ALIGN_CORNERS, check_disp_tensor, check_volume_batch, disp_to_grid, identity_grid


def warp_image(moving: torch.Tensor, disp: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Trilinear warp: ``warped(p) = moving(p + disp(p))``.

    Shape: moving (B, C, I', J', K'), disp (B, 3, I, J, K) -> (B, C, I, J, K). The moving grid may
    differ from the fixed grid only when the displacement already maps into it.
    Float32 grid arithmetic makes a zero field reproduce ``moving`` to about 1e-6, not bit-exactly.
    Outside the moving volume: ``padding_mode`` of grid_sample (``zeros`` blends with 0 within one
    voxel of the border; the official evaluator's label warp is :func:`warp_labels`).

    Raises:
        ValueError: shapes that break the contract or differ in batch size.
    """
    check_volume_batch(moving, "moving")
    check_disp_tensor(disp)
    if moving.shape[0] != disp.shape[0]:
        raise ValueError(f"moving batch {moving.shape[0]} and disp batch {disp.shape[0]} differ")
    if tuple(moving.shape[2:]) != tuple(disp.shape[2:]):
        raise ValueError(f"moving: spatial shape {tuple(moving.shape[2:])} received, expected "
                         f"{tuple(disp.shape[2:])} (the displacement's grid)")
    grid = disp_to_grid(disp.to(moving.dtype) if moving.is_floating_point() else disp)
    return grid_sample(moving, grid, padding_mode)


def grid_sample(moving: torch.Tensor, grid: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """``F.grid_sample`` (trilinear, align_corners=True), with the work of one CPU volume spread over threads.

    PyTorch's 3-D grid sampler on CPU parallelises over the batch only, so a single volume uses one core.
    For a batch of one on a CPU with T > 1 threads, the output grid is cut into T slabs along its first
    axis that become a batch of T over the same source (a view when no gradient flows to it, else a copy):
    the same arithmetic per output voxel, in parallel (on 2 threads about 1.5x faster, forward and
    backward). Otherwise it is ``F.grid_sample`` itself.

    Shape: moving (1, C, I', J', K'), grid (1, I, J, K, 3) -> (1, C, I, J, K).
    """
    threads = torch.get_num_threads()
    n = grid.shape[1]
    if moving.device.type != "cpu" or grid.shape[0] != 1 or threads < 2 or n < 2 * threads:
        return F.grid_sample(moving, grid, mode="bilinear", padding_mode=padding_mode, align_corners=ALIGN_CORNERS)
    rows = -(-n // threads)
    if rows * threads > n:  # the last slab is completed with copies of the grid's last row
        grid = torch.cat([grid, grid[:, -1:].expand(1, rows * threads - n, *grid.shape[2:])], dim=1)
    source = moving.expand(threads, *moving.shape[1:])
    if moving.requires_grad:  # the sampler's input gradient is written per batch entry
        source = source.contiguous()
    out = F.grid_sample(source, grid.reshape(threads, rows, *grid.shape[2:]), mode="bilinear",
                        padding_mode=padding_mode, align_corners=ALIGN_CORNERS)
    out = out.transpose(0, 1).reshape(1, moving.shape[1], rows * threads, *out.shape[3:])
    return out[:, :, :n]


def warp_labels(moving_seg: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour label warp with the official evaluator's exact rule.

    Position x = p + disp(p) (float64); along each axis it is inside iff 0 <= x <= N - 1 and then takes
    index floor(x + 0.5); outside gives 0. This is ``scipy.ndimage.map_coordinates(order=0)``.

    Shape: moving_seg (B, 1, I, J, K) integer, disp (B, 3, I, J, K) -> (B, 1, I, J, K) same dtype.

    Raises:
        ValueError: shapes that break the contract.
    """
    check_disp_tensor(disp)
    check_volume_batch(moving_seg, "moving_seg", disp.shape[2:])
    if moving_seg.shape[1] != 1:
        raise ValueError(f"moving_seg: shape {tuple(moving_seg.shape)} received, expected (B, 1, I, J, K)")
    shape = moving_seg.shape[2:]
    pos = identity_grid(shape, dtype=torch.float64, device=disp.device) + disp.to(torch.float64)
    inside = torch.ones_like(pos[:, 0], dtype=torch.bool)
    index = torch.zeros_like(pos[:, 0], dtype=torch.long)
    for axis, n in enumerate(shape):
        x = pos[:, axis]
        inside &= (x >= 0) & (x <= n - 1)
        idx = torch.floor(x + 0.5).clamp_(0, n - 1).long()
        index = index * n + idx
    flat = moving_seg.reshape(moving_seg.shape[0], -1)
    out = torch.gather(flat, 1, index.reshape(index.shape[0], -1)).reshape(index.shape)
    return torch.where(inside, out, torch.zeros_like(out))[:, None]


def compose(disp_first: torch.Tensor, disp_second: torch.Tensor) -> torch.Tensor:
    """The single displacement equal to warping with ``disp_first`` and then with ``disp_second``.

    ``warp(warp(m, first), second) == warp(m, compose(first, second))`` up to interpolation:
    ``compose(p) = second(p) + first(p + second(p))``, ``first`` sampled trilinearly with border padding.

    Shape: (B, 3, I, J, K) twice -> (B, 3, I, J, K).
    """
    check_disp_tensor(disp_first, "disp_first")
    check_disp_tensor(disp_second, "disp_second")
    if disp_first.shape != disp_second.shape:
        raise ValueError(f"disp_first {tuple(disp_first.shape)} and disp_second {tuple(disp_second.shape)} differ")
    return disp_second + warp_image(disp_first, disp_second, padding_mode="border")
