"""Global discrete search: large displacements found by a dense cost volume and coupled convex optimisation.

The ideas are published ones, the code is ours: MIND-SSC descriptors (Heinrich et al., MICCAI 2013) compared
over a dense set of discrete displacements on a coarse control grid (Heinrich et al., "MRF-based deformable
registration and ventilation estimation of lung CT", IEEE TMI 2013), and the coupled convex optimisation of
that cost volume used by ConvexAdam (Siebert, Hansen & Heinrich, "Fast 3D registration with accurate
optimisation and little learning for Learn2Reg 2021", MICCAI 2021 challenges, LNCS 13166; Heinrich et al.,
"Non-parametric discrete registration with convex optimisation", WBIR 2014).

Steps for one pair (moving -> fixed, a pull map as everywhere in this package):
  1. both images normalised (a CT window, or robust percentiles for other modalities);
  2. MIND-SSC at full resolution, average-pooled onto the control grid (one node per ``grid``^3 block; a
     block cut by the image's edge averages the voxels it has);
  3. cost volume: for every integer displacement l in [-hw, hw]^3 grid steps, the squared descriptor
     difference between fixed(n) and moving(n + l), box-filtered twice over 3^3 nodes;
  4. coupled convex optimisation: u = smooth(argmin_l cost); then for an increasing alpha,
     u = smooth(argmin_l cost(n, l) + alpha |l - u(n)|^2), the square expanded so that all nodes and
     labels are one matrix product (no per-node loops); ``smooth`` is one 3^3 box filter;
  5. the same for the swapped pair and an inverse-consistency update of both fields (on by default);
  6. the grid field (grid steps) scaled to voxels and upsampled trilinearly to the image.

Where ConvexAdam's published code (``convexAdam`` 0.2.0 on PyPI, read for facts) made another choice than
our first version, ours now follows it, after measurement (README, "The global search"): descriptors at
full resolution (at half resolution the real pair 0004 <-> 0006 of ``test_data`` ended below its zero
field), two box filters of the cost and one of the field, the coupling weights 0.003 to 1 (absolute) and
15 inverse-consistency iterations (without them the field folded up to 5% of the voxels). Borders are
replicated (ConvexAdam pads with zeros): on ``test_data`` the two measured within 0.01 Dice of each other,
and replication keeps a translation of the whole image a translation.

Memory: one cost volume (labels x nodes float32) is kept at a time (about 110 MB for hw 4, 330 MB for hw 6
at 192x160x256 and grid 6); every temporary of the size of the cost volume is built in chunks of at most
``chunk_mb`` MB (:func:`chunk_size`).

Tensor contract: moving/fixed (1, 1, I, J, K) (HU for CT), disp (1, 3, I, J, K) voxels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..core.contract import check_disp_tensor, check_volume_batch
from ..core.spatial import compose, warp_image
from .features import PairFlags, box_mean, image_descriptors, pair_modes


TIE_BREAK = 1e-4  # weight of |l|^2 in the first label choice, relative to the mean cost


DEFAULT_CENTRE_AXES = (0, 1)  # across the patient in the challenge's frame, whose axis 2 runs head to feet


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the global search.

    Attributes:
        grid: control-grid spacing in voxels.
        hw: half-width of the displacement range in grid steps (range +/- hw * grid voxels per axis).
        alphas: coupling weights of the convex steps, increasing; cost units (a squared difference summed over
            12 descriptors in (0, 1]) per grid step^2.
        smooth: passes of a 3^3 box filter that smooth the field after each step.
        inverse_consistent: also search the swapped pair and make the two fields inverse-consistent.
        ic_iters: iterations of the inverse-consistency update.
        chunk_mb: largest temporary of the cost-volume size, in MB.
        prior: a pull towards small displacements, off by default (0): the cost of label l is raised by
            ``prior`` x (the mean cost) x (|l| / hw)^2, so by ``prior`` times the mean cost at the edge of
            the range along one axis (:func:`add_prior`). For pairs known to be roughly aligned. After
            another stage the search looks for the increment, so the pull is towards that stage's field.
        centre_axes: array axes across the patient along which the search also starts from the translation
            that lines up the two bodies' centroids, keeping the better of the two starts
            (:mod:`l2r_submit.registration.start`); empty: the search starts from the zero field only; None
            (the default): the two axes other than the one the fixed image's header points head to feet,
            where the header is known (``l2r predict`` reads it: :func:`across_header`), else
            ``DEFAULT_CENTRE_AXES``, (0, 1): in the challenge's frame (192x160x256) axis 2 runs along the
            patient. :attr:`axes` is what the search uses.
        keep_margin: the centred start is kept only when its descriptor difference is lower than the zero
            start's by more than this fraction (a near tie keeps the unmoved image).
    """

    grid: int = 6
    hw: int = 4
    alphas: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    smooth: int = 1
    inverse_consistent: bool = True
    ic_iters: int = 15
    chunk_mb: int = 256
    prior: float = 0.0
    centre_axes: tuple[int, ...] | None = None  # on by default: README, "A second start: the bodies lined up"
    keep_margin: float = 0.005  # README, "A second start": gaining starts were >= 1.3% lower, near ties < 0.5%

    def __post_init__(self) -> None:
        if self.grid < 2:
            raise ValueError(f"search grid: {self.grid} received, expected a number >= 2")
        if not 1 <= self.hw <= 12:
            raise ValueError(f"search hw: {self.hw} received, expected 1 to 12 grid steps")
        if any(a < 0 for a in self.alphas) or list(self.alphas) != sorted(self.alphas):
            raise ValueError(f"search alphas: {self.alphas} received, expected non-negative and increasing")
        if not 0 <= self.prior < float("inf"):  # also refuses NaN
            raise ValueError(f"search prior: {self.prior} received, expected a finite number >= 0")
        if self.centre_axes is not None and (len(set(self.centre_axes)) != len(self.centre_axes)
                                             or any(a not in (0, 1, 2) for a in self.centre_axes)):
            raise ValueError(f"search centre_axes: {self.centre_axes} received, expected distinct axes among 0, 1, 2")
        if not 0.0 <= self.keep_margin < 1.0:
            raise ValueError(f"search keep_margin: {self.keep_margin} received, expected 0 <= margin < 1")
        if self.chunk_mb < 1 or self.smooth < 0 or self.ic_iters < 0:
            raise ValueError("search chunk_mb >= 1, smooth >= 0 and ic_iters >= 0 expected")

    @property
    def axes(self) -> tuple[int, ...]:
        """The centre axes the search uses: ``centre_axes``, or ``DEFAULT_CENTRE_AXES`` when not set."""
        return DEFAULT_CENTRE_AXES if self.centre_axes is None else self.centre_axes


def across_header(cfg: SearchConfig, long_axis: int | None) -> SearchConfig:
    """``cfg`` for a pair whose fixed image's header points array axis ``long_axis`` head to feet (None: the
    header cannot say): when ``centre_axes`` is None (not set), the centre axes become the other two; axes
    set (or empty) are kept as they are, and so is ``cfg`` when the header gives the default axes."""
    if cfg.centre_axes is not None or long_axis is None:
        return cfg
    axes = tuple(a for a in range(3) if a != long_axis)
    return cfg if axes == DEFAULT_CENTRE_AXES else replace(cfg, centre_axes=axes)


def label_offsets(hw: int, device: torch.device | None = None) -> torch.Tensor:
    """The displacements searched, in grid steps, axis 0 slowest. Shape: () -> (L, 3), L = (2 hw + 1)^3."""
    r = torch.arange(-hw, hw + 1, dtype=torch.float32, device=device)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)


def chunk_size(n_labels: int, n_items: int, chunk_mb: int) -> int:
    """How many items (nodes or labels) of ``n_labels`` float32 values fit in ``chunk_mb`` MB (at least 1)."""
    return max(1, min(n_items, (chunk_mb << 20) // (4 * n_labels)))


def pool_to_grid(descriptors: torch.Tensor, grid: int) -> torch.Tensor:
    """The mean of each ``grid``^3 block; a last block cut by the image's edge averages the voxels it has.

    Shape: (1, C, I, J, K) -> (1, C, ceil(I / grid), ceil(J / grid), ceil(K / grid)).
    """
    kernel = tuple(min(grid, n) for n in descriptors.shape[2:])  # an axis shorter than a block: one node
    return F.avg_pool3d(descriptors, kernel, stride=grid, ceil_mode=True)


def grid_features(image: torch.Tensor, grid: int, mode: bool | str) -> torch.Tensor:
    """MIND-SSC at full resolution, averaged over each ``grid``^3 block (:func:`pool_to_grid`); ``mode``: the
    image's normalisation (:func:`features.intensity_mode`).

    Shape: (1, 1, I, J, K) -> (1, 12, ceil(I / grid), ceil(J / grid), ceil(K / grid)).
    """
    return pool_to_grid(image_descriptors(image, mode), grid)


def cost_volume(fixed_feat: torch.Tensor, moving_feat: torch.Tensor, hw: int, chunk_mb: int) -> torch.Tensor:
    """Squared descriptor difference of fixed(n) and moving(n + l) for every label l, box-filtered twice (3^3).

    Outside the moving grid the moving descriptors are replicated from its border; so are the costs
    outside the node grid in the box filters.

    Shape: (1, C, A, B, D) twice -> (L, A * B * D) float32, labels in :func:`label_offsets` order.
    """
    _, c, a, b, d = fixed_feat.shape
    n_nodes = a * b * d
    side = 2 * hw + 1
    padded = F.pad(moving_feat, (hw,) * 6, mode="replicate")[0]
    fixed_row = fixed_feat[0, :, :, :, None, :]  # (C, A, B, 1, D)
    cost = torch.empty(side ** 3, n_nodes, dtype=torch.float32, device=fixed_feat.device)
    for i in range(side):
        for j in range(side):  # the side labels l = (i, j, *) at once: a window view along the last axis
            window = padded[:, i:i + a, j:j + b, :].unfold(3, d, 1)  # (C, A, B, side, D)
            ssd = ((fixed_row - window) ** 2).sum(dim=0).permute(2, 0, 1, 3)  # (side, A, B, D)
            start = (i * side + j) * side
            cost[start:start + side] = ssd.reshape(side, n_nodes)
    per_chunk = chunk_size(n_nodes, side ** 3, chunk_mb)
    for start in range(0, side ** 3, per_chunk):  # box filters, in place, a chunk of labels at a time
        block = cost[start:start + per_chunk].view(-1, 1, a, b, d)
        cost[start:start + per_chunk] = box_mean(box_mean(block, 1), 1).reshape(-1, n_nodes)
    return cost


def add_prior(cost: torch.Tensor, hw: int, weight: float) -> torch.Tensor:
    """The cost volume with a quadratic pull towards the zero displacement, in place:
    cost(n, l) + weight * mean(cost) * |l|^2 / hw^2 (l in grid steps). Relative to the mean cost, so the
    pull does not depend on the descriptors' scale; ``weight`` 0 leaves the cost as it is.

    Shape: (L, N), labels in :func:`label_offsets` order -> the same tensor.
    """
    if weight <= 0:
        return cost
    pull = (label_offsets(hw, cost.device) ** 2).sum(dim=1, keepdim=True) / hw ** 2  # (L, 1)
    return cost.add_(pull * (weight * cost.mean().item()))


def coupled_argmin(cost: torch.Tensor, labels: torch.Tensor, u: torch.Tensor, alpha: float,
                   chunk_mb: int) -> torch.Tensor:
    """Per node, the label minimising cost(n, l) + alpha |l - u(n)|^2.

    |l - u|^2 = |l|^2 - 2 l.u + |u|^2; the last term does not depend on l, so the argmin is that of
    cost + alpha |l|^2 - 2 alpha u @ l^T: one matrix product per chunk of nodes.

    Shape: cost (L, N), labels (L, 3), u (N, 3) -> (N,) label indices.
    """
    n_labels, n_nodes = cost.shape
    per_chunk = chunk_size(n_labels, n_nodes, chunk_mb)
    label_sq = alpha * (labels ** 2).sum(dim=1, keepdim=True)  # (L, 1)
    out = torch.empty(n_nodes, dtype=torch.long, device=cost.device)
    for start in range(0, n_nodes, per_chunk):
        stop = min(n_nodes, start + per_chunk)
        total = torch.addmm(cost[:, start:stop] + label_sq, labels, u[start:stop].T, alpha=-2.0 * alpha)
        out[start:stop] = total.argmin(dim=0)
    return out


def _smooth(field: torch.Tensor, passes: int) -> torch.Tensor:
    """``passes`` 3^3 box filters with replicated borders. Shape: (1, 3, A, B, D) -> same."""
    for _ in range(passes):
        field = box_mean(field, 1)
    return field


def coupled_convex(cost: torch.Tensor, grid_shape: tuple[int, int, int], hw: int, alphas: tuple[float, ...],
                   smooth: int, chunk_mb: int) -> torch.Tensor:
    """Coupled convex optimisation of a cost volume: alternate per-node label choice and smoothing.

    Shape: cost (L, N), N = prod(grid_shape) -> field (1, 3, *grid_shape) in grid steps.
    """
    labels = label_offsets(hw, cost.device)
    scale = cost.mean().clamp_min(1e-12).item()

    def as_field(index: torch.Tensor) -> torch.Tensor:
        return _smooth(labels[index].T.reshape(1, 3, *grid_shape), smooth)

    # first choice: the cheapest label; a tiny pull towards zero breaks the ties of featureless regions
    # (air on both sides: every label costs the same), which would otherwise all pick the first label
    zero = torch.zeros(cost.shape[1], 3, device=cost.device)
    field = as_field(coupled_argmin(cost, labels, zero, TIE_BREAK * scale, chunk_mb))
    for alpha in alphas:
        field = as_field(coupled_argmin(cost, labels, field.reshape(3, -1).T, alpha, chunk_mb))
    return field


def inverse_consistency(forward: torch.Tensor, backward: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Make two pull maps of one pair each other's inverse: each becomes the mean of itself and minus the
    other sampled along it (the average of u(p) and -v(p + u(p))), repeated ``iters`` times.

    Shape: (1, 3, A, B, D) twice, same units -> the same.
    """
    for _ in range(iters):
        f = 0.5 * (forward - warp_image(backward, forward, padding_mode="border"))
        b = 0.5 * (backward - warp_image(forward, backward, padding_mode="border"))
        forward, backward = f, b
    return forward, backward


def upsample(field: torch.Tensor, grid: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Grid field in grid steps -> voxel field on the image grid.

    Node n is the mean of voxels [n grid, (n + 1) grid), centred at n grid + (grid - 1) / 2; trilinear
    interpolation with ``align_corners=False`` and a factor ``grid`` puts it exactly there.

    Shape: (1, 3, A, B, D) -> (1, 3, *shape).
    """
    full = F.interpolate(field * grid, scale_factor=grid, mode="trilinear", align_corners=False)
    return full[:, :, :shape[0], :shape[1], :shape[2]].contiguous()


def search(moving: torch.Tensor, fixed: torch.Tensor, cfg: SearchConfig,
           ct: PairFlags = True,
           features: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The displacement found by the global search, ``warp(moving, disp) ~ fixed``. ``ct``: both images in
    HU (CT window), or ``(moving, fixed)`` flags or modes for a pair of two modalities
    (:func:`features.pair_modes`). ``features``: ``(moving, fixed)`` :func:`grid_features` of these two
    images, already computed (they are then not computed again).

    Shape: moving, fixed (1, 1, I, J, K) -> (1, 3, I, J, K) voxels.

    Raises:
        ValueError: shapes that break the contract.
    """
    return upsample(search_nodes(moving, fixed, cfg, ct, features), cfg.grid, tuple(fixed.shape[2:]))


def search_nodes(moving: torch.Tensor, fixed: torch.Tensor, cfg: SearchConfig,
                 ct: PairFlags = True,
                 features: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """:func:`search`'s field on its control grid, before upsampling: node n (the mean of voxels
    [n grid, (n + 1) grid) along each axis) holds its displacement in grid steps.

    Shape: moving, fixed (1, 1, I, J, K) -> (1, 3, ceil(I / grid), ceil(J / grid), ceil(K / grid)).

    Raises:
        ValueError: shapes that break the contract.
    """
    check_volume_batch(fixed, "fixed")
    check_volume_batch(moving, "moving", fixed.shape[2:])
    if moving.shape[:2] != (1, 1) or fixed.shape[:2] != (1, 1):
        raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)}: expected (1, 1, I, J, K)")
    with torch.no_grad():
        if features is None:
            mode_moving, mode_fixed = pair_modes(moving, fixed, ct)
            features = grid_features(moving, cfg.grid, mode_moving), grid_features(fixed, cfg.grid, mode_fixed)
        moving_feat, fixed_feat = features
        grid_shape = tuple(fixed_feat.shape[2:])

        def run(f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            cost = add_prior(cost_volume(f, m, cfg.hw, cfg.chunk_mb), cfg.hw, cfg.prior)
            return coupled_convex(cost, grid_shape, cfg.hw, cfg.alphas, cfg.smooth, cfg.chunk_mb)

        field = run(fixed_feat, moving_feat)
        if cfg.inverse_consistent:
            field, _ = inverse_consistency(field, run(moving_feat, fixed_feat), cfg.ic_iters)
        return field


def search_stage(moving: torch.Tensor, fixed: torch.Tensor, disp_in: torch.Tensor, cfg: SearchConfig,
                 ct: PairFlags = True,
                 features: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The search as a stage: it searches between ``warp(moving, disp_in)`` and ``fixed`` and returns the
    composition, i.e. the field that equals warping with ``disp_in`` then with the searched field.
    ``features``: as :func:`search`, of the unwarped images; used only when ``disp_in`` is zero.

    Shape: moving, fixed (1, 1, I, J, K), disp_in (1, 3, I, J, K) -> (1, 3, I, J, K) voxels.
    """
    check_disp_tensor(disp_in, "disp_in")
    ct = pair_modes(moving, fixed, ct)  # decided on the unwarped pair, as stages.run does
    with torch.no_grad():
        if not disp_in.any():
            return search(moving, fixed, cfg, ct, features)
        warped = warp_image(moving.float(), disp_in, padding_mode="border")
        return compose(disp_in, search(warped, fixed, cfg, ct))
