"""Registration stages that compose: network -> global transform -> global search -> Adam refinement.

A stage takes ``(moving, fixed, disp_in)`` and returns the whole field of the same pair (moving -> fixed,
a pull map in voxels), never an increment. How each one consumes ``disp_in``:

* ``network`` (:func:`l2r_submit.nets.regnet.register`): registers ``warp(moving, disp_in)`` to ``fixed`` and
  composes, ``compose(disp_in, net_field)`` (with a zero ``disp_in``, its own field);
* ``affine`` (:mod:`l2r_submit.registration.affine`, off by default): a robust affine map (or translation) of
  ``warp(moving, disp_in)`` to ``fixed``, composed with ``disp_in``;
* ``search`` (:mod:`l2r_submit.registration.search`): the same, by composition: large displacements must not be added;
  as the first stage with centre axes (``SearchConfig.axes``) it also tries a second start (:mod:`l2r_submit.registration.start`);
* ``adam`` (:func:`l2r_submit.registration.instance.refine`): optimises the total field itself, initialised at
  ``disp_in`` (its regulariser acts on the total; the residual is a small local update).

``warp(warp(m, a), b) == warp(m, compose(a, b))`` (:func:`l2r_submit.core.spatial.compose`), so chaining
stages by composition equals warping with each in turn, up to interpolation.

Shared descriptors: when the search runs first and the refinement compares pooled MIND-SSC, both read the
full-resolution MIND-SSC of the same two unwarped images. :func:`run` then computes it once per image and
hands each stage its pooled view (:class:`SharedViews`); the fields are the same as with each stage
computing its own, and two of the four full-resolution MIND computations per pair are saved.

Tensor contract: moving/fixed (1, 1, I, J, K) (HU for CT), disp (1, 3, I, J, K) voxels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from ..core.spatial import compose, warp_image
from ..nets import regnet
from .affine import AffineConfig, global_field
from .features import CT, PairFlags, image_descriptors, pair_modes
from .instance import IOConfig, for_pair, level_iterations, level_size, pool_descriptors, refine
from .search import SearchConfig, across_header, pool_to_grid, search_stage
from .start import centred_search

STAGE_NAMES = ("network", "affine", "search", "adam")


@dataclass(frozen=True)
class SharedViews:
    """Pooled MIND-SSC views of one pair's unwarped images, each ``(moving, fixed)``: ``search`` on the
    search's control grid (:func:`search.pool_to_grid`), ``half`` on the refinement's half-resolution grid
    (:func:`instance.pool_descriptors`). Shapes: (1, 12, *grid shape) and (1, 12, *half shape)."""

    search: tuple[torch.Tensor, torch.Tensor]
    half: tuple[torch.Tensor, torch.Tensor]


class Stage(Protocol):
    """One registration stage. Shape: moving, fixed (1, 1, I, J, K), disp_in (1, 3, I, J, K) -> (1, 3, I, J, K).
    ``views``: descriptors of the unwarped pair that :func:`run` computed once for several stages.
    ``details``: where a stage that chooses between alternatives records its choice (JSON-ready values,
    under its own keys); None: nobody asked."""

    name: str

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor, disp_in: torch.Tensor,
                 views: SharedViews | None = None, details: dict | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class NetworkStage:
    """The network, applied to ``warp(moving, disp_in)`` and composed with ``disp_in``."""

    net: regnet.RegistrationNet
    name: str = "network"

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor, disp_in: torch.Tensor,
                 views: SharedViews | None = None, details: dict | None = None) -> torch.Tensor:
        with torch.inference_mode():
            if not disp_in.any():
                return regnet.register(self.net, moving, fixed)
            warped = warp_image(moving.float(), disp_in, padding_mode="border")
            return compose(disp_in, regnet.register(self.net, warped, fixed))


@dataclass(frozen=True)
class AffineStage:
    """A robust global transform of ``warp(moving, disp_in)`` to ``fixed``, composed with ``disp_in``; what
    was fitted goes to ``details["affine"]`` (:func:`l2r_submit.registration.affine.global_field`)."""

    cfg: AffineConfig
    ct: PairFlags = True  # as SearchStage's
    name: str = "affine"

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor, disp_in: torch.Tensor,
                 views: SharedViews | None = None, details: dict | None = None) -> torch.Tensor:
        with torch.no_grad():
            modes = pair_modes(moving, fixed, self.ct)  # decided on the unwarped pair
            warped = warp_image(moving.float(), disp_in, padding_mode="border") if disp_in.any() else moving
            field, record = global_field(warped, fixed, self.cfg, modes)
            if details is not None:
                details["affine"] = record
            return compose(disp_in, field) if disp_in.any() else field


@dataclass(frozen=True)
class SearchStage:
    """The global discrete search, composed with ``disp_in``. ``ct``: images in HU (CT window), or
    ``(moving, fixed)`` flags or modes for a pair of two modalities (:func:`features.pair_modes`)."""

    cfg: SearchConfig
    ct: PairFlags = True
    name: str = "search"

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor, disp_in: torch.Tensor,
                 views: SharedViews | None = None, details: dict | None = None) -> torch.Tensor:
        if self.cfg.axes and not disp_in.any():  # first stage: it may also start from the centroids
            field, decision = centred_search(moving, fixed, self.cfg, self.ct, views.search if views else None,
                                             views.half if views else None)
            if details is not None:
                details["search_start"] = start_record(decision)
            return field
        return search_stage(moving, fixed, disp_in, self.cfg, self.ct, views.search if views else None)


@dataclass(frozen=True)
class AdamStage:
    """Instance optimisation of the total field, started at ``disp_in``; the iterations this pair gets
    (:func:`instance.for_pair`) go to ``details["io_iters"]``."""

    cfg: IOConfig
    ct: PairFlags = True  # as SearchStage's
    name: str = "adam"

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor, disp_in: torch.Tensor,
                 views: SharedViews | None = None, details: dict | None = None) -> torch.Tensor:
        if details is not None:
            details["io_iters"] = for_pair(self.cfg, pair_modes(moving, fixed, self.ct)).iters  # modes: kept
        return refine(disp_in.clone(), moving, fixed, self.cfg, self.ct, views.half if views else None)


def start_record(decision: dict) -> dict:
    """:func:`centred_search`'s decision as ``run.json`` records it: ``shift`` (voxels, the centroid
    translation computed; tried as a second start only when it reaches one grid step, and then ``gap`` is
    there), ``kept`` (``"zero"`` or ``"centre"``), ``gap`` (each start's mean squared MIND-SSC
    difference over the fixed body; 6 significant digits, finer than the keep margin) and ``axes`` (the
    centre axes: from the fixed image's header or as set, :func:`with_header`)."""
    out = {"shift": [round(float(v), 1) for v in decision["shift"]], "kept": decision["kept"],
           "axes": [int(a) for a in decision["axes"]]}
    if "gap" in decision:
        out["gap"] = {k: float(f"{float(v):.6g}") for k, v in decision["gap"].items()}
    return out


def parse_stages(text: str) -> tuple[str, ...]:
    """``"network,search,adam"`` -> the names in pipeline order.

    Raises:
        ValueError: an unknown or repeated name, or none.
    """
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"stages: '{text}' received, expected a comma list of distinct names among "
                         f"{', '.join(STAGE_NAMES)}")
    return tuple(n for n in STAGE_NAMES if n in names)


def build(names: tuple[str, ...], net: regnet.RegistrationNet | None, search_cfg: SearchConfig,
          io_cfg: IOConfig, ct: PairFlags = True,
          affine_cfg: AffineConfig | None = None) -> list[Stage]:
    """The stages named, in pipeline order (network, affine, search, adam). ``ct``: the images are CT in HU,
    one flag for both or ``(moving, fixed)``; how a non-CT image is normalised is decided per pair by
    :func:`run` (:func:`features.pair_modes`).
    ``affine_cfg`` None: :class:`AffineConfig`'s defaults.

    Raises:
        ValueError: an unknown stage name, or ``network`` named without a network.
    """
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise ValueError(f"stages: unknown {', '.join(map(repr, unknown))}, expected names among {', '.join(STAGE_NAMES)}")
    stages: list[Stage] = []
    for name in STAGE_NAMES:
        if name not in names:
            continue
        if name == "network":
            if net is None:
                raise ValueError("stage 'network' needs a network")
            stages.append(NetworkStage(net))
        elif name == "affine":
            stages.append(AffineStage(affine_cfg or AffineConfig(), ct))
        elif name == "search":
            stages.append(SearchStage(search_cfg, ct))
        else:
            stages.append(AdamStage(io_cfg, ct))
    return stages


def shared_views(stages: list[Stage], moving: torch.Tensor, fixed: torch.Tensor) -> SharedViews | None:
    """The views two stages share, or None when they would not: the search must run first (it then sees
    the unwarped images) and the refinement compare pooled MIND-SSC at half resolution, both with the same
    modality flags. One full-resolution MIND-SSC per image, pooled twice, then freed.

    Shape: moving, fixed (1, 1, I, J, K) -> views as :class:`SharedViews`.
    """
    search = stages[0] if stages and isinstance(stages[0], SearchStage) else None
    adam = next((s for s in stages if isinstance(s, AdamStage)), None)
    if search is None or adam is None:
        return None
    modes = pair_modes(moving, fixed, search.ct)
    adam_modes = pair_modes(moving, fixed, adam.ct)
    cfg = for_pair(adam.cfg, adam_modes)
    if (cfg.similarity, cfg.half_features) != ("mind", "pooled") or level_iterations(cfg)[1][1] <= 0 \
            or modes != adam_modes:
        return None
    size = level_size(tuple(fixed.shape[2:]), 2)
    grid_views, half_views = [], []
    with torch.no_grad():
        for image, mode in zip((moving, fixed), modes):
            full = image_descriptors(image, mode)
            grid_views.append(pool_to_grid(full, search.cfg.grid))
            half_views.append(pool_descriptors(full, size))
            del full
    return SharedViews(search=(grid_views[0], grid_views[1]), half=(half_views[0], half_views[1]))


def for_images(stages: list[Stage], moving: torch.Tensor, fixed: torch.Tensor,
               details: dict | None = None) -> list[Stage]:
    """The stages with this pair's normalisation decided once (:func:`features.pair_modes`, from the unwarped
    images) in place of their flags, so that every stage compares the same descriptors; the modes go to
    ``details["intensity"]`` (``{"moving": mode, "fixed": mode}``) when either image is not CT. Stages of
    other flags (several, built apart) are each decided from their own."""
    decided: dict = {}
    out: list[Stage] = []
    for stage in stages:
        flags = getattr(stage, "ct", None)
        if flags is None:
            out.append(stage)
            continue
        key = flags if isinstance(flags, tuple) else (flags, flags)
        if key not in decided:
            decided[key] = pair_modes(moving, fixed, flags)
        out.append(replace(stage, ct=decided[key]))
    modes = next(iter(decided.values()), (CT, CT))
    if details is not None and modes != (CT, CT):
        details["intensity"] = {"moving": modes[0], "fixed": modes[1]}
    return out


def with_header(stages: list[Stage], long_axis: int | None) -> list[Stage]:
    """The stages for a pair whose fixed image's header points array axis ``long_axis`` head to feet (None:
    it cannot say): the search's centre axes as :func:`search.across_header` sets them."""
    return [replace(s, cfg=across_header(s.cfg, long_axis)) if isinstance(s, SearchStage) else s for s in stages]


def run(stages: list[Stage], moving: torch.Tensor, fixed: torch.Tensor, disp: torch.Tensor | None = None,
        details: dict | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Chain the stages from ``disp`` (None: a zero field); returns the field and each stage's seconds.
    Descriptors that two stages share (:func:`shared_views`) are computed once, before the first stage,
    and their seconds are counted in the first stage's; so is each image's normalisation (:func:`for_images`).
    ``details``: filled with what the stages chose (``search_start``: :func:`start_record`; ``intensity``),
    when given.

    Shape: moving, fixed (1, 1, I, J, K), disp (1, 3, I, J, K) -> (1, 3, I, J, K), {name: seconds}.
    """
    if disp is None:
        disp = torch.zeros((1, 3, *fixed.shape[2:]), device=fixed.device)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    stages = for_images(stages, moving, fixed, details)
    views = shared_views(stages, moving, fixed) if not disp.any() else None
    for stage in stages:
        disp = stage(moving, fixed, disp, views, details)
        if disp.is_cuda:
            torch.cuda.synchronize(disp.device)
        seconds[stage.name] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
    return disp, seconds
