"""A robust global transform before the deformable search, for pairs whose misalignment is mostly global
(the ``affine`` stage; off by default).

Steps for one pair (moving -> fixed, a pull map as everywhere in this package):
  1. a wide global search (:func:`l2r_submit.registration.search.search_nodes`; by default grid 8, hw 5:
     +/-40 voxels) gives one displacement per control node;
  2. the nodes inside the fixed body (:func:`l2r_submit.registration.start.body_mask`, at least half of the
     node's block) are kept: air matches air under any displacement;
  3. an affine map ``u(p) = A p + t`` (or a translation ``u = t``) is fitted to their displacements by least
     trimmed squares (Rousseeuw, JASA 1984): the fit keeps the ``keep`` share of nodes it explains best,
     found by concentration steps (Rousseeuw & Van Driessen, Data Min. Knowl. Discov. 2006) started from the
     least-squares fit of all nodes, so organs that moved on their own and the parts one scan does not
     show carry no weight;
  4. an affine map whose linear part ``I + A`` has a determinant outside [``DET_RANGE``] (a flip, a collapse,
     a doubling of the volume: not two abdomens) is replaced by the translation fitted the same way.

The fitted map, as a dense field, is the stage's output; the default search and refinement go on from it
(by composition: :mod:`l2r_submit.registration.stages`). What the stage measured against the default, and
why it is off by default, is in the README ("A global transform first").

Tensor contract: moving/fixed (1, 1, I, J, K) (HU for CT), disp (1, 3, I, J, K) voxels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .features import ct_flags
from .search import SearchConfig, pool_to_grid, search_nodes
from .start import body_mask

MODELS = ("affine", "translation")
DET_RANGE = (0.5, 2.0)  # det(I + A) outside this: the affine fit is not trusted, the translation is used
MIN_NODES = 8  # fewer body nodes than this: no fit (the stage returns its input field)


@dataclass(frozen=True)
class AffineConfig:
    """Settings of the ``affine`` stage.

    Attributes:
        model: ``affine`` (12 parameters) or ``translation`` (3).
        grid: control-grid spacing of the wide search, in voxels.
        hw: its half-width in grid steps (range +/- hw * grid voxels per axis).
        keep: share of the body's nodes the trimmed fit keeps (0.5: up to half may be outliers).
        steps: concentration steps at most (they stop earlier once the kept nodes no longer change).
    """

    model: str = "affine"
    grid: int = 8
    hw: int = 5
    keep: float = 0.5
    steps: int = 20

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"affine model: '{self.model}' received, expected one of {', '.join(MODELS)}")
        if not 0.2 <= self.keep <= 1.0:
            raise ValueError(f"affine keep: {self.keep} received, expected a share in [0.2, 1]")
        if self.steps < 1:
            raise ValueError(f"affine steps: {self.steps} received, expected >= 1")
        SearchConfig(grid=self.grid, hw=self.hw)  # the search's own checks of grid and hw

    def search_config(self) -> SearchConfig:
        """The wide search's settings: this grid and range, the search's other defaults, one start."""
        return SearchConfig(grid=self.grid, hw=self.hw, centre_axes=())


def design(points: torch.Tensor, model: str) -> torch.Tensor:
    """The least-squares design matrix of ``points``: ``[p, 1]`` (affine) or ``[1]`` (translation).

    Shape: (N, 3) -> (N, 4) or (N, 1).
    """
    ones = torch.ones(len(points), 1, dtype=points.dtype, device=points.device)
    return torch.cat([points, ones], dim=1) if model == "affine" else ones


def lts_fit(points: torch.Tensor, disp: torch.Tensor, model: str, keep: float,
            steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Least trimmed squares fit of ``disp ~ design(points) @ params``: the parameters that minimise the sum
    of the ``ceil(keep N)`` smallest squared residual norms, by concentration steps from the least-squares
    fit of all points (each step refits the kept points, which cannot raise that sum).

    Shape: points (N, 3), disp (N, 3) -> params (4, 3) (affine: rows A^T then t) or (1, 3), and the kept
    points' indices (h,).
    """
    x = design(points.double(), model)
    y = disp.double()
    h = max(x.shape[1] + 1, math.ceil(keep * len(points)))
    kept = torch.arange(len(points), device=points.device)
    params = torch.linalg.lstsq(x, y).solution
    for _ in range(steps):
        residual = ((x @ params - y) ** 2).sum(dim=1)
        new = residual.argsort()[:h].sort().values
        if len(new) == len(kept) and torch.equal(new, kept):
            break
        kept = new
        params = torch.linalg.lstsq(x[kept], y[kept]).solution
    return params.float(), kept


def node_centres(grid_shape: tuple[int, ...], grid: int, device: torch.device | None = None) -> torch.Tensor:
    """Centre of each control node in voxels, ``n grid + (grid - 1) / 2`` (where
    :func:`l2r_submit.registration.search.upsample` puts it), nodes in C order. Shape: () -> (N, 3)."""
    axes = [torch.arange(n, dtype=torch.float32, device=device) * grid + (grid - 1) / 2 for n in grid_shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def dense(params: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The field of fitted ``params`` (:func:`lts_fit`) at every voxel. Shape: -> (1, 3, *shape) voxels."""
    if params.shape[0] == 1:
        return params[0].view(1, 3, 1, 1, 1).expand(1, 3, *shape).contiguous()
    axes = [torch.arange(n, dtype=torch.float32, device=params.device) for n in shape]
    out = params[3].view(3, 1, 1, 1).expand(3, *shape).clone()
    for axis, coord in enumerate(axes):
        view = [1, 1, 1]
        view[axis] = shape[axis]
        out += params[axis].view(3, 1, 1, 1) * coord.view(1, *view)
    return out[None]


def global_field(moving: torch.Tensor, fixed: torch.Tensor, cfg: AffineConfig,
                 ct: bool | tuple[bool, bool] = True) -> tuple[torch.Tensor, dict]:
    """The global transform of the pair as a dense field, and what was fitted: ``model`` (the one used),
    ``fallback`` (True when the affine fit was replaced by the translation), ``matrix`` (3 x 4, rows
    ``[A | t]`` per axis, voxels), ``nodes`` (body nodes, kept nodes). With fewer than ``MIN_NODES`` body
    nodes the field is zero and ``model`` is ``none``.

    Shape: moving, fixed (1, 1, I, J, K) -> (1, 3, I, J, K) voxels.
    """
    shape = tuple(fixed.shape[2:])
    with torch.no_grad():
        nodes = search_nodes(moving, fixed, cfg.search_config(), ct)  # grid steps
        grid_shape = tuple(nodes.shape[2:])
        disp = nodes[0].reshape(3, -1).T * cfg.grid
        body = pool_to_grid(body_mask(fixed, ct_flags(ct)[1]).float(), cfg.grid)  # share of each block
        inside = body.reshape(-1) >= 0.5
        points = node_centres(grid_shape, cfg.grid, fixed.device)[inside]
        disp = disp[inside]
        record: dict = {"model": "none", "fallback": False, "nodes": [int(inside.sum()), 0]}
        if len(points) < MIN_NODES:
            return torch.zeros((1, 3, *shape), device=fixed.device), record
        model = cfg.model
        params, kept = lts_fit(points, disp, model, cfg.keep, cfg.steps)
        if model == "affine":
            det = float(torch.det(torch.eye(3, device=params.device) + params[:3].T))
            if not DET_RANGE[0] <= det <= DET_RANGE[1]:
                model, record["fallback"] = "translation", True
                params, kept = lts_fit(points, disp, model, cfg.keep, cfg.steps)
        record.update(model=model, nodes=[len(points), len(kept)], matrix=matrix_rows(params))
        return dense(params, shape), record


def matrix_rows(params: torch.Tensor) -> list[list[float]]:
    """Fitted ``params`` as three rows ``[A_i0, A_i1, A_i2, t_i]`` (voxels; A zero for a translation),
    rounded for run.json."""
    full = torch.zeros(4, 3)
    full[3] = params[-1].cpu()
    if params.shape[0] == 4:
        full[:3] = params[:3].cpu()
    return [[round(float(v), 4) for v in row] for row in full.T]
