"""Instance optimisation: refine one pair's network displacement at test time.

A residual displacement is optimised with Adam on an image dissimilarity plus a diffusion regulariser
on the total field: first on a quarter-resolution grid (``coarse_fraction`` of the iterations), then on
a half-resolution grid; it is then upsampled and added to the incoming full-resolution field.

As a stage (:mod:`l2r_submit.registration.stages`) it consumes ``disp_in`` by initialisation: the variable is the
total field ``disp_in + residual`` (the regulariser acts on that total), started at ``disp_in``; the
result is again the whole field of the pair. Adding is right here because the residual is small and
smooth (a local refinement); large moves are composed by the stages before it.

Field model (``field``):
  * ``displacement``: the variable is a displacement; the regulariser acts on the total field, so it must
    stay strong enough to keep det J > 0;
  * ``velocity``: the variable is a stationary velocity field v, and the update is its exponential,
    exp(v), computed by scaling and squaring (``steps`` compositions of v / 2^steps with itself; Arsigny
    et al., MICCAI 2006; Ashburner, NeuroImage 2007). The update is then invertible (det J > 0 up to
    interpolation) whatever its size, so a weaker regulariser (on v) can be used; the result is
    ``compose(disp_in, exp(v))``: warping with ``disp_in`` and then with the update.

The half-resolution level compares MIND descriptors of the full-resolution images pooled onto its grid
(``half_features="pooled"``); the quarter level, those of the images resampled to its grid.

Dissimilarity (``similarity``):
  * ``mind`` (default): mean squared difference of MIND-SSC descriptors (:mod:`l2r_submit.registration.features`)
    of the soft-tissue window, computed at each grid's resolution; insensitive to how tissue maps to HU
    (contrast phase, scanner), which is what inter-patient abdominal CT needs;
  * ``mse``: mean squared difference of the network's three CT windows (CT), of the normalised image
    otherwise.

Tensor contract: disp (1, 3, I, J, K) voxels, moving/fixed (1, 1, I, J, K) HU (or any unit when not CT)
-> (1, 3, I, J, K).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..core.contract import check_disp_tensor, check_volume_batch
from ..core.spatial import compose, warp_image
from ..nets.inputs import preprocess
from .features import (CT, CT_MODES, FLOORED, PairFlags, box_mean, ct_flags, image_descriptors, intensity_mode,
                       normalise_intensity, pair_modes)

SIMILARITIES = ("mind", "mse")
FIELDS = ("displacement", "velocity")
# How the half-resolution level's MIND descriptors are made: ``pooled``, computed on the full-resolution
# image and box-averaged onto the level's grid (fine structure kept: on test_data's synthetic pairs the
# end-point error halves); ``resampled``, computed on the image resampled to that grid (as the quarter level
# always is: coarse descriptors, which the inter-patient pairs need to be found at all).
HALF_FEATURES = ("pooled", "resampled")


@dataclass(frozen=True)
class IOConfig:
    """Settings of the refinement. iters = 0 turns it off (``l2r predict`` then drops the stage for every
    pair). ``iters_non_ct``: the iterations instead of ``iters`` for a pair in which an image is not CT, unless
    it is floored against a CT in the soft-tissue window (None: ``iters`` for every pair); :func:`refine` applies it
    (:func:`for_pair`)."""

    iters: int = 0
    lr: float = 0.3
    reg: float = 1.0
    coarse_fraction: float = 0.7  # quarter-resolution iterations cost ~1/5 of half-resolution ones (chosen: README)
    similarity: str = "mind"
    field: str = "displacement"
    steps: int = 4  # scaling-and-squaring steps of the velocity model
    half_features: str = "pooled"  # MIND of the half-resolution level: see HALF_FEATURES
    iters_non_ct: int | None = None

    def __post_init__(self) -> None:
        if self.half_features not in HALF_FEATURES:
            raise ValueError(f"half_features: '{self.half_features}' received, expected one of "
                             f"{', '.join(HALF_FEATURES)}")
        if self.field not in FIELDS:
            raise ValueError(f"field: '{self.field}' received, expected one of {', '.join(FIELDS)}")
        if not 1 <= self.steps <= 12:
            raise ValueError(f"steps: {self.steps} received, expected 1 to 12")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity: '{self.similarity}' received, expected one of {', '.join(SIMILARITIES)}")
        if self.iters_non_ct is not None and self.iters_non_ct < 0:
            raise ValueError(f"iters_non_ct: {self.iters_non_ct} received, expected >= 0 or None")
        if not 0 < self.lr < float("inf"):  # also refuses NaN: every pair would fail after its work
            raise ValueError(f"refinement lr: {self.lr} received, expected a finite number > 0")
        if not 0 <= self.reg < float("inf"):
            raise ValueError(f"refinement reg: {self.reg} received, expected a finite number >= 0 (--io-reg)")
        if self.iters < 0 or not 0.0 <= self.coarse_fraction <= 1.0:
            raise ValueError(f"iters {self.iters} and coarse_fraction {self.coarse_fraction}: expected iters >= 0 "
                             "and 0 <= coarse_fraction <= 1")


def diffusion(disp: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of a displacement along each axis. Shape: (B, 3, I, J, K) -> scalar."""
    return sum((torch.diff(disp, dim=d) ** 2).mean() for d in (2, 3, 4)) / 3.0


def exponential(velocity: torch.Tensor, steps: int) -> torch.Tensor:
    """The displacement of exp(v) by scaling and squaring: u = v / 2^steps, then ``steps`` times u = u o u.

    Shape: (B, 3, I, J, K) voxels -> the same.
    """
    u = velocity / (2 ** steps)
    for _ in range(steps):
        u = compose(u, u)
    return u


def resize_disp(disp: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resample a voxel displacement to another grid spanning the same volume (corners on corners),
    rescaling each channel to the new voxel size."""
    out = F.interpolate(disp, size=size, mode="trilinear", align_corners=True)
    scale = [(m - 1) / max(n - 1, 1) for m, n in zip(size, disp.shape[2:])]
    return out * out.new_tensor(scale).view(1, 3, 1, 1, 1)


def level_size(shape: tuple[int, ...], level: int) -> tuple[int, ...]:
    """The grid of a refinement level: ``shape`` divided by ``level``, rounded up."""
    return tuple((n + level - 1) // level for n in shape)


def pool_descriptors(full: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Full-resolution descriptors averaged over a box about one grid step wide and sampled on a grid of
    ``size`` spanning the volume (corners on corners): the half level's ``pooled`` features.

    Shape: (1, C, I, J, K) -> (1, C, *size).
    """
    step = max(1, round(full.shape[2] / size[0]))
    k = step + 1 if step % 2 == 0 else step  # odd, so the box is centred on each voxel
    # one channel at a time: the box mean of all 12 full-resolution channels at once would double the peak
    return torch.cat([F.interpolate(box_mean(full[:, c:c + 1], k // 2), size=size, mode="trilinear",
                                    align_corners=True) for c in range(full.shape[1])], dim=1)


def features(image: torch.Tensor, size: tuple[int, ...], similarity: str, mode: bool | str = True,
             pooled: bool = False) -> torch.Tensor:
    """What the dissimilarity compares, on a grid of ``size`` spanning the volume (corners on corners).

    ``mode``: the image's normalisation (:func:`l2r_submit.registration.features.intensity_mode`: a CT
    window for ``ct`` or ``ct_lung``; otherwise robust percentiles,
    :func:`~l2r_submit.registration.features.normalise_intensity`). ``mse`` on a CT image compares the
    network's three CT windows (:func:`preprocess`) whichever CT mode it is given. ``pooled`` (mind only): the
    descriptors of the full-resolution image, averaged over a box about one grid step wide and sampled on
    the grid, instead of the descriptors of the image resampled to the grid.

    Shape: (1, 1, I, J, K) -> (1, C, *size); C = 12 (mind), 3 (mse, CT) or 1 (mse, not CT).
    """
    if pooled and similarity == "mind":
        return pool_descriptors(image_descriptors(image, mode), size)
    small = F.interpolate(image.float(), size=size, mode="trilinear", align_corners=True)
    if similarity == "mse":
        return preprocess(small, 3) if intensity_mode(mode) in CT_MODES else normalise_intensity(small, mode)
    return image_descriptors(small, mode)


def for_sampling(features: torch.Tensor) -> torch.Tensor:
    """The moving features laid out for the trilinear sampler: on CPU channels-last (the 12 channels of a
    voxel side by side), so each of the 8 corners a sample reads is one run of memory instead of 12 reads
    a volume apart; measured on 2 threads, the refinement of one 192x160x256 pair took about 5 s less
    (25 s -> 20 s), the same values to the last bit. On GPU the layout is left as it is.

    Shape: (1, C, I, J, K) -> the same values, possibly other strides.
    """
    if features.device.type != "cpu":
        return features
    return features.contiguous(memory_format=torch.channels_last_3d)


def for_pair(cfg: IOConfig, ct: PairFlags) -> IOConfig:
    """``cfg`` as it applies to a pair with these modality flags or modes: ``iters`` for two CT images and for
    an image ``FLOORED`` against a CT image in the soft-tissue window ``CT`` (MR against abdominal CT: with the
    floor, 40 iterations were level with 120 there); ``iters_non_ct`` (when set) for any other pair with a
    non-CT image (two MR images read by their percentiles still gain from 120, and so did a chest CT read by
    its percentiles, alone or against the chest in the lung window; README, "More iterations when an image
    is not CT"). Flags that are not modes (bools) cannot say whether an image is
    floored: decide the modes first (:func:`l2r_submit.registration.features.pair_modes`) to apply the rule."""
    modes = [m for m in (ct if isinstance(ct, tuple) else (ct, ct)) if isinstance(m, str)]
    against_ct = FLOORED in modes and CT in modes
    if cfg.iters_non_ct is not None and not all(ct_flags(ct)) and not against_ct:
        return replace(cfg, iters=cfg.iters_non_ct)
    return cfg


def level_iterations(cfg: IOConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """How the iterations split between the levels: ``((4, quarter), (2, half))``, ``coarse_fraction`` of
    them at quarter resolution."""
    n_coarse = int(round(cfg.iters * cfg.coarse_fraction))
    return (4, n_coarse), (2, cfg.iters - n_coarse)


def _levels(disp: torch.Tensor, moving_hu: torch.Tensor, fixed_hu: torch.Tensor, cfg: IOConfig,
            ct: PairFlags, half: tuple[torch.Tensor, torch.Tensor] | None = None):
    """The refinement's levels, coarse first: quarter resolution for ``coarse_fraction`` of the iterations,
    then half. Yields (level, iterations, moving features, fixed features, ``disp`` resized), each computed
    without gradients on that level's grid; levels with no iteration are skipped. ``half``: the half
    level's ``(moving, fixed)`` features when the caller already has them (:func:`pool_descriptors`).

    Shape: disp (1, 3, I, J, K) -> features (1, C, *size), disp (1, 3, *size) in voxels of that grid.
    """
    full = tuple(disp.shape[2:])
    mode_moving, mode_fixed = pair_modes(moving_hu, fixed_hu, ct)
    for level, iters in level_iterations(cfg):
        if iters <= 0:
            continue
        size = level_size(full, level)
        with torch.no_grad():  # not around the yield: the caller's grad mode stays its own
            pooled = level == 2 and cfg.half_features == "pooled"
            if level == 2 and half is not None:
                m, f = for_sampling(half[0]), half[1]
            else:
                m = for_sampling(features(moving_hu, size, cfg.similarity, mode_moving, pooled))
                f = features(fixed_hu, size, cfg.similarity, mode_fixed, pooled)
            base = resize_disp(disp, size)
        yield level, iters, m, f, base


def refine(disp: torch.Tensor, moving_hu: torch.Tensor, fixed_hu: torch.Tensor, cfg: IOConfig,
           ct: PairFlags = True,
           half: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Refine ``disp`` so that ``warp(moving, disp)`` matches ``fixed`` better.

    ``ct``: both images in HU, or ``(moving, fixed)`` flags or modes for a pair of two modalities
    (:func:`l2r_submit.registration.features.pair_modes`); when an image is not CT, unless it is floored
    against a CT in the soft-tissue window, ``cfg.iters_non_ct`` (when set) replaces ``cfg.iters``
    (:func:`for_pair`). ``half``: the half level's ``(moving, fixed)``
    features of these images, already computed (``mind``, ``pooled``: :func:`pool_descriptors` of their
    MIND-SSC on the grid :func:`level_size` ``(shape, 2)``); they are then not computed again.

    Shape: disp (1, 3, I, J, K) voxels; moving_hu, fixed_hu (1, 1, I, J, K) HU (``ct``; any unit
    otherwise) -> (1, 3, I, J, K).

    Raises:
        ValueError: shapes that break the contract; ``mse`` asked for a pair of two modalities.
    """
    check_disp_tensor(disp)
    for name, img in (("moving_hu", moving_hu), ("fixed_hu", fixed_hu)):
        check_volume_batch(img, name, disp.shape[2:])
        if img.shape[1] != 1:
            raise ValueError(f"{name}: {img.shape[1]} channels received, expected 1 (HU)")
    if cfg.iters <= 0 and not cfg.iters_non_ct:
        return disp
    ct = pair_modes(moving_hu, fixed_hu, ct)  # decided once, for every level (and the iterations)
    cfg = for_pair(cfg, ct)
    if cfg.iters <= 0:
        return disp
    if cfg.similarity == "mse" and len(set(ct_flags(ct))) > 1:
        raise ValueError("similarity 'mse' compares intensities, and this pair is CT against another modality: "
                         "use 'mind'")
    if half is not None and (cfg.similarity, cfg.half_features) != ("mind", "pooled"):
        raise ValueError("half: precomputed features are pooled MIND-SSC; this refinement uses "
                         f"{cfg.similarity} ({cfg.half_features})")
    if cfg.field == "velocity":
        return _refine_velocity(disp, moving_hu, fixed_hu, cfg, ct, half)
    full = tuple(disp.shape[2:])
    residual = None
    for level, iters, m, f, base in _levels(disp, moving_hu, fixed_hu, cfg, ct, half):
        start = torch.zeros_like(base) if residual is None else resize_disp(residual, base.shape[2:])
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
        return disp + resize_disp(residual, full)


def _refine_velocity(disp: torch.Tensor, moving_hu: torch.Tensor, fixed_hu: torch.Tensor, cfg: IOConfig,
                     ct: PairFlags,
                     half: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The velocity model of :func:`refine`: one velocity field on the quarter-resolution grid for all the
    iterations; its exponential is computed there (cheap) and resampled to the grid of the data term,
    quarter then half resolution. The moving image is warped by ``disp`` once, up front.

    Shape: as :func:`refine`.
    """
    full = tuple(disp.shape[2:])
    grid = level_size(full, 4)
    velocity = torch.zeros((1, 3, *grid), device=disp.device, requires_grad=True)
    opt = torch.optim.Adam([velocity], lr=cfg.lr / 2)  # the step is in voxels of the quarter grid
    for _, iters, m, f, base in _levels(disp, moving_hu, fixed_hu, cfg, ct, half):
        size = tuple(base.shape[2:])
        if base.any():
            with torch.no_grad():
                m = for_sampling(warp_image(m, base, padding_mode="border"))
        with torch.enable_grad():
            for _ in range(iters):
                update = exponential(velocity, cfg.steps)
                if size != grid:
                    update = resize_disp(update, size)
                loss = F.mse_loss(warp_image(m, update), f) + cfg.reg * diffusion(velocity)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    with torch.no_grad():
        update = resize_disp(exponential(velocity.detach(), cfg.steps), full)
        return compose(disp, update) if disp.any() else update
