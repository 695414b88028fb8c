"""A robust global transform before the deformable search, for pairs whose misalignment is mostly global
(the ``affine`` stage; off by default).

Steps for one pair (moving -> fixed, a pull map as everywhere in this package):
  1. a wide global search (:func:`l2r_submit.registration.search.search_nodes`; by default grid 8, hw 5:
     +/-40 voxels) gives one displacement per control node;
  2. the nodes inside the fixed body (:func:`l2r_submit.registration.start.body_mask`, at least half of the
     node's block) are kept: air matches air under any displacement;
  3. an affine map ``u(p) = A p + t`` (or a translation ``u = t``; p the voxel index, so t is the
     displacement at voxel (0, 0, 0)) is fitted to their displacements by least trimmed squares
     (Rousseeuw, JASA 1984): the fit keeps the ``keep`` share of nodes it explains best, found by
     concentration steps from several starts (FAST-LTS: Rousseeuw & Van Driessen, Data Min. Knowl. Discov.
     2006), so organs that moved on their own and the parts one scan does not show carry no weight as long
     as they are fewer than the nodes dropped and the best start is found (not guaranteed: a heuristic);
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

from .features import PairFlags, pair_modes
from .search import SearchConfig, pool_to_grid, search_nodes
from .start import body_mask

MODELS = ("affine", "translation")
DET_RANGE = (0.5, 2.0)  # det(I + A) outside this: the affine fit is not trusted, the translation is used
MIN_NODES = 8  # fewer body nodes than this: no fit (the stage returns its input field)
STARTS = 200  # random elemental starts of the trimmed fit (FAST-LTS uses 500; each costs two cheap steps here)
FINALISTS = 10  # starts whose concentration steps run to the end


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


def lts_fit(points: torch.Tensor, disp: torch.Tensor, model: str, keep: float, steps: int,
            starts: int = STARTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Least trimmed squares fit of ``disp ~ design(points) @ params``: the parameters that minimise the sum
    of the ``h = ceil(keep N)`` smallest squared residual norms.

    Concentration steps (each refits the ``h`` points the current fit explains best, which cannot raise
    that sum) run from several starts, as FAST-LTS does (Rousseeuw & Van Driessen 2006): the least-squares
    fit of all points, for ``affine`` the trimmed translation, and ``starts`` exact fits of random
    elemental subsets (as many points as parameters per axis; a fixed seed, so a pair always gets the same
    fit). Every start gets two steps, the ``FINALISTS`` lowest go on for up to ``steps``, the lowest sum
    wins. One start is not enough: a block of nodes that moved alike (the part of the body only one scan
    shows) can hold the least-squares start in a local minimum that keeps them. Fitted on the CPU in
    float64 (a handful of parameters; no rank assumption, unlike CUDA's ``lstsq``).

    Shape: points (N, 3), disp (N, 3) -> params (4, 3) (affine: rows A^T then t) or (1, 3), and the kept
    points' indices (h,), on the CPU.
    """
    x = design(points.detach().cpu().double(), model)
    y = disp.detach().cpu().double()
    n, p = x.shape
    h = min(n, max(p + 1, math.ceil(keep * n)))
    candidates = [torch.linalg.lstsq(x, y).solution]
    if model == "affine":
        shift, _ = lts_fit(points, disp, "translation", keep, steps, starts)
        candidates.append(torch.cat([torch.zeros(3, 3, dtype=x.dtype), shift.double()]))
    generator = torch.Generator().manual_seed(0)
    for _ in range(starts if n > p else 0):
        subset = torch.randperm(n, generator=generator)[:p]
        candidates.append(torch.linalg.lstsq(x[subset], y[subset]).solution)
    short = sorted((_concentrate(x, y, c, h, 2) for c in candidates), key=lambda r: r[2])
    final = [_concentrate(x, y, params, h, steps) for params, _, _ in short[:FINALISTS]]
    params, kept, _ = min(final, key=lambda r: r[2])
    return params.float(), kept


def _concentrate(x: torch.Tensor, y: torch.Tensor, params: torch.Tensor, h: int,
                 steps: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Up to ``steps`` concentration steps from ``params``: (params, kept indices, trimmed sum)."""
    kept = None
    for _ in range(steps):
        new = ((x @ params - y) ** 2).sum(dim=1).argsort()[:h].sort().values
        if kept is not None and torch.equal(new, kept):
            break
        kept = new
        params = torch.linalg.lstsq(x[kept], y[kept]).solution
    residual = ((x @ params - y) ** 2).sum(dim=1)
    kept = residual.argsort()[:h].sort().values
    return params, kept, float(residual[kept].sum())


def node_centres(grid_shape: tuple[int, ...], grid: int, shape: tuple[int, ...],
                 device: torch.device | None = None) -> torch.Tensor:
    """Centre of each control node's block of voxels, ``[n grid, min((n + 1) grid, size))`` along each axis
    (the voxels :func:`l2r_submit.registration.search.pool_to_grid` averages; a last partial block's centre
    lies nearer its start), nodes in C order. Shape: () -> (N, 3) voxels."""
    axes = [(torch.arange(n, dtype=torch.float32, device=device) * grid
             + (torch.arange(n, dtype=torch.float32, device=device) * grid + grid).clamp(max=size) - 1) / 2
            for n, size in zip(grid_shape, shape)]
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
                 ct: PairFlags = True) -> tuple[torch.Tensor, dict]:
    """The global transform of the pair as a dense field, and what was fitted: ``model`` (the one used),
    ``fallback`` (True when the affine fit was replaced by the translation), ``matrix`` (3 x 4, rows
    ``[A | t]`` per axis, voxels), ``nodes`` (body nodes, kept nodes). With fewer than ``MIN_NODES`` body
    nodes the field is zero and ``model`` is ``none``.

    Shape: moving, fixed (1, 1, I, J, K) -> (1, 3, I, J, K) voxels.
    """
    shape = tuple(fixed.shape[2:])
    ct = pair_modes(moving, fixed, ct)
    with torch.no_grad():
        nodes = search_nodes(moving, fixed, cfg.search_config(), ct)  # grid steps
        grid_shape = tuple(nodes.shape[2:])
        disp = nodes[0].reshape(3, -1).T * cfg.grid
        body = pool_to_grid(body_mask(fixed, ct[1]).float(), cfg.grid)  # share of each block
        inside = body.reshape(-1) >= 0.5
        points = node_centres(grid_shape, cfg.grid, shape, fixed.device)[inside]
        disp = disp[inside]
        record: dict = {"model": "none", "fallback": False, "nodes": [int(inside.sum()), 0]}
        if len(points) < MIN_NODES:
            return torch.zeros((1, 3, *shape), device=fixed.device), record
        model = cfg.model
        params, kept = lts_fit(points, disp, model, cfg.keep, cfg.steps)
        if model == "affine":
            det = float(torch.det(torch.eye(3) + params[:3].T))
            if not DET_RANGE[0] <= det <= DET_RANGE[1]:
                model, record["fallback"] = "translation", True
                params, kept = lts_fit(points, disp, model, cfg.keep, cfg.steps)
        record.update(model=model, nodes=[len(points), len(kept)], matrix=matrix_rows(params))
        return dense(params.to(fixed.device), shape), record


def matrix_rows(params: torch.Tensor) -> list[list[float]]:
    """Fitted ``params`` as three rows ``[A_i0, A_i1, A_i2, t_i]`` (voxels; A zero for a translation),
    rounded for run.json."""
    full = torch.zeros(4, 3)
    full[3] = params[-1].cpu()
    if params.shape[0] == 4:
        full[:3] = params[:3].cpu()
    return [[round(float(v), 4) + 0.0 for v in row] for row in full.T]  # + 0.0: no -0.0 in run.json
