"""Where the global search starts: from the zero field, and optionally also from the translation that lines up
the two bodies across the patient, keeping the start whose searched field matches the descriptors better
inside the fixed body.

The search's range is +/- ``hw`` x ``grid`` voxels (24 by default); patients of the challenge can lie further
apart, mostly because they lie differently on the table. Lining up the centres of mass first is the classic
start of intensity-based registration (ITK's ``CenteredTransformInitializer`` in moments mode, elastix's
``AutomaticTransformInitialization`` with ``CenterOfGravity``). Here it is done on the body mask and only along
``centre_axes``, the axes across the patient: along the patient's long axis the centroid follows where each
scan starts and ends (a chest-to-upper-abdomen scan against an abdomen-pelvis one), not the anatomy. The
translation is rounded to whole voxels, so the shifted image is not blurred by interpolation. A translation
shorter than one control-grid step (``grid`` voxels along every axis) is not tried: the search from zero
reaches it with its own labels, and a start that only moves the label lattice by a few voxels changed the
result by chance (on a synthetic pair of ``test_data``, 1 voxel apart, it lost 0.011 Dice: README).

A centroid is a coarse guess, and lining up the bodies can misalign the organs (a differently shaped body).
So the search runs from both starts and the one whose field leaves the smaller mean squared MIND-SSC
difference, at half resolution and over the fixed image's body only, is kept (the centred one only when
smaller by more than ``SearchConfig.keep_margin``, 0.5%: a near tie is no evidence for moving the image):
both fields come from the same search with the same freedom, so the comparison is fair (a wider range, by
contrast, always matches the descriptors better: README, "The global search"). Air is left out of the
comparison because air against air is matched equally well by any field that moves the body out of the way.

Tensor contract: moving/fixed (1, 1, I, J, K) (HU for CT), disp (1, 3, I, J, K) voxels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.spatial import compose, warp_image
from .features import CT_MODES, PairFlags, image_descriptors, intensity_mode, normalise_intensity, pair_modes
from .instance import level_size, pool_descriptors, resize_disp
from .search import SearchConfig, grid_features, search

BODY_HU = -500.0  # CT: the body is what is denser than this (lungs and air are not)
BODY_NORMALISED = 0.1  # other modalities: above 10% of the normalised range (features.normalise_intensity)


def body_mask(image: torch.Tensor, mode: bool | str) -> torch.Tensor:
    """The body: CT above ``BODY_HU``; any other modality above ``BODY_NORMALISED`` of its range as ``mode``
    normalises it (:func:`features.normalise_intensity`: 1st-99th percentile, above the noise floor when
    floored). Shape: (1, 1, I, J, K) -> (1, 1, I, J, K) bool."""
    if intensity_mode(mode) in CT_MODES:
        return image > BODY_HU
    return normalise_intensity(image, mode) > BODY_NORMALISED


def centroid_shift(moving: torch.Tensor, fixed: torch.Tensor, axes: tuple[int, ...],
                   ct: PairFlags = True) -> torch.Tensor:
    """The translation (a pull map: moving position minus fixed position) that lines up the centroids of
    the two body masks along ``axes``, rounded to whole voxels; 0 along the other axes, and everywhere when
    either body is empty.

    Shape: moving, fixed (1, 1, I, J, K) -> (3,) float32 voxels.
    """
    shift = torch.zeros(3, device=fixed.device)
    bodies = [torch.nonzero(body_mask(img, mode)[0, 0]).float()
              for img, mode in zip((moving, fixed), pair_modes(moving, fixed, ct))]
    if any(len(b) == 0 for b in bodies):
        return shift
    delta = (bodies[0].mean(dim=0) - bodies[1].mean(dim=0)).round()
    for axis in axes:
        shift[axis] = delta[axis]
    return shift


def descriptor_gap(disp: torch.Tensor, half: tuple[torch.Tensor, torch.Tensor], body: torch.Tensor) -> float:
    """Mean squared difference of the half-resolution descriptors of ``warp(moving, disp)`` and ``fixed``
    over ``body``. Shape: disp (1, 3, I, J, K) voxels, half (1, C, *h) twice, body (1, 1, *h) -> float."""
    size = tuple(half[1].shape[2:])
    warped = warp_image(half[0], resize_disp(disp, size), padding_mode="border")
    gap = ((warped - half[1]) ** 2).mean(dim=1, keepdim=True)
    return float((gap * body).sum() / body.sum().clamp_min(1.0))


def half_views(moving: torch.Tensor, fixed: torch.Tensor, ct: PairFlags):
    """Pooled MIND-SSC of both images on the half-resolution grid (what the refinement compares).
    Shape: (1, 1, I, J, K) twice -> ((1, 12, *h), (1, 12, *h))."""
    size = level_size(tuple(fixed.shape[2:]), 2)
    return tuple(pool_descriptors(image_descriptors(img, mode), size)
                 for img, mode in zip((moving, fixed), pair_modes(moving, fixed, ct)))


def centred_search(moving: torch.Tensor, fixed: torch.Tensor, cfg: SearchConfig,
                   ct: PairFlags = True,
                   features: tuple[torch.Tensor, torch.Tensor] | None = None,
                   half: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
    """The search from the zero field and, when ``cfg.axes`` names axes and the bodies' centroids differ
    along one of them by at least ``cfg.grid`` voxels, also from :func:`centroid_shift`; the centred field is
    kept when its :func:`descriptor_gap` is smaller than the other's by more than ``cfg.keep_margin``.
    ``features``: the search's grid features of the unshifted images; ``half``: :func:`half_views` (both
    computed here when None). Returns the field and what was decided: ``{"shift": [..], "kept": "zero" or
    "centre", "gap": {start: value}, "axes": [..]}`` (``shift`` is the centroid translation computed along
    ``axes``, ``cfg.axes``, tried only when ``gap`` is there).

    Shape: moving, fixed (1, 1, I, J, K) -> (1, 3, I, J, K) voxels.
    """
    ct = pair_modes(moving, fixed, ct)  # decided once, on the unshifted pair
    mode_moving, mode_fixed = ct
    with torch.no_grad():
        if features is None:
            features = grid_features(moving, cfg.grid, mode_moving), grid_features(fixed, cfg.grid, mode_fixed)
        field = search(moving, fixed, cfg, ct, features)
        shift = centroid_shift(moving, fixed, cfg.axes, ct) if cfg.axes else None
        if shift is None or shift.abs().max().item() < cfg.grid:  # within one label step: nothing to gain
            return field, {"shift": [0.0, 0.0, 0.0] if shift is None else shift.tolist(), "kept": "zero",
                           "axes": list(cfg.axes)}
        start = shift.view(1, 3, 1, 1, 1).expand(1, 3, *fixed.shape[2:]).contiguous()
        shifted = warp_image(moving.float(), start, padding_mode="border")
        # the fixed image's grid features are those of the first search: only the shifted moving image's are new
        centred = compose(start, search(shifted, fixed, cfg, ct, (grid_features(shifted, cfg.grid, mode_moving),
                                                                    features[1])))
        del shifted
        half = half if half is not None else half_views(moving, fixed, ct)
        size = tuple(half[1].shape[2:])
        body = F.interpolate(body_mask(fixed, mode_fixed).float(), size=size, mode="trilinear", align_corners=True)
        body = (body > 0.5).float()
        gaps = {"zero": descriptor_gap(field, half, body), "centre": descriptor_gap(centred, half, body)}
        kept = "centre" if gaps["centre"] < (1.0 - cfg.keep_margin) * gaps["zero"] else "zero"
        return (centred if kept == "centre" else field), {"shift": shift.tolist(), "kept": kept, "gap": gaps,
                                                          "axes": list(cfg.axes)}
