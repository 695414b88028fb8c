"""MIND-SSC: modality-independent self-similarity descriptors for the test-time refinement.

Facts from Heinrich et al., "Towards realtime multimodal fusion for image-guided interventions using
self-similarities" (MICCAI 2013): for each voxel, the patch distances between the 12 pairs of its
six-neighbourhood that are sqrt(2) apart ("self-similarity context"), turned into descriptors by
exp(-distance / local variance). Descriptors of two scans are compared with their squared difference;
they ignore how the scanner or contrast agent maps tissue to intensity, which plain intensity
differences do not (a painted or non-contrast scan against a portal-venous one).
Our own implementation.

Tensor contract: image (B, 1, I, J, K) float -> descriptors (B, 12, I, J, K) float in (0, 1].
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from ..core.contract import check_volume_batch

_SIX = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))
SSC_PAIRS = tuple((a, b) for a, b in itertools.combinations(_SIX, 2)
                  if sum((x - y) ** 2 for x, y in zip(a, b)) == 2)  # the 12 sqrt(2)-apart pairs


def _shifted(padded: torch.Tensor, offset: tuple[int, ...], pad: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``x(p + offset)`` from ``x`` padded by ``pad`` on every side."""
    index = tuple(slice(pad + o, pad + o + n) for o, n in zip(offset, shape))
    return padded[(slice(None), slice(None)) + index]


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the cube of half-width ``radius`` around each voxel, edges replicated; equal to
    ``avg_pool3d(pad(x, radius, "replicate"), 2 * radius + 1, stride=1)`` up to rounding, as three 1-D
    sums of shifted slices (on CPU about 7x faster than avg_pool3d's 3-D kernel at 192x160x256).

    Shape: (B, C, I, J, K) -> the same.
    """
    if radius <= 0:
        return x
    n = 2 * radius + 1
    x = F.pad(x, (radius,) * 6, mode="replicate")
    for dim in (2, 3, 4):
        size = x.shape[dim] - 2 * radius
        total = x.narrow(dim, 0, size).clone()
        for o in range(1, n):
            total += x.narrow(dim, o, size)
        x = total
    return x.div_(n ** 3)


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptors of an image.

    Args:
        image: (B, 1, I, J, K) intensities (any affine scaling: the result does not depend on it).
        radius: half-width of the cubic patch of the patch distances, in voxels.
        dilation: distance of the six neighbours from the centre voxel, in voxels.

    Returns:
        (B, 12, I, J, K) float descriptors; each voxel's largest entry is 1.

    Raises:
        ValueError: an image that breaks the contract.
    """
    check_volume_batch(image, "image")
    if image.shape[1] != 1:
        raise ValueError(f"image: {image.shape[1]} channels received, expected 1")
    shape = tuple(image.shape[2:])
    image = image.float()
    padded = F.pad(image, (dilation,) * 6, mode="replicate")
    d = image.new_empty((image.shape[0], len(SSC_PAIRS), *shape))
    for c, (a, b) in enumerate(SSC_PAIRS):  # one channel at a time: a full-resolution image stays small
        diff = (_shifted(padded, tuple(dilation * v for v in a), dilation, shape)
                - _shifted(padded, tuple(dilation * v for v in b), dilation, shape)) ** 2
        d[:, c:c + 1] = box_mean(diff, radius)
    del padded
    d -= d.amin(dim=1, keepdim=True)
    variance = d.mean(dim=1, keepdim=True)
    mean_var = variance.mean()
    # bounded around its volume mean, so flat regions (air) neither divide by zero nor blow noise up
    variance = variance.clamp(min=(mean_var * 1e-3).item() + 1e-12, max=(mean_var * 1e3).item() + 1e-12)
    d.div_(variance).neg_().exp_()
    return d.div_(d.amax(dim=1, keepdim=True))


CT_WINDOW_HU = (-200.0, 300.0)  # fat to contrast-enhanced organs; bone and air are clipped
LUNG_WINDOW_HU = (-1000.0, 300.0)  # the same, and lung parenchyma (-950..-500) with it: for two chest scans
ROBUST_PERCENTILES = (1.0, 99.0)
_QUANTILE_SAMPLES = 1 << 20  # percentiles from a regular subsample: torch.quantile is limited to 2^24 values


# How one image's intensities become [0, 1] (normalise_intensity): the soft-tissue or the lung CT window; its
# own percentiles; its own percentiles with the noise of its air flattened (the noise floor). A flag True is CT
# (soft tissue); False, another modality whose pair is not known (floored). pair_modes decides per pair.
CT, CT_LUNG, PERCENTILES, FLOORED = "ct", "ct_lung", "percentiles", "floored"
MODES = (CT, CT_LUNG, PERCENTILES, FLOORED)
CT_MODES = (CT, CT_LUNG)
# A pair's flags: one flag or mode for both images, or (moving, fixed)
PairFlags = bool | str | tuple[bool | str, bool | str]


def intensity_mode(flag: bool | str) -> str:
    """One image's normalisation (``MODES``) from its flag: True -> ``CT``, False -> ``FLOORED`` (any
    flag that is not a string is read as a bool: a NumPy bool, 0 or 1), a mode as it is.

    Raises:
        ValueError: a string that is not a mode.
    """
    if not isinstance(flag, str):
        return CT if bool(flag) else FLOORED
    if flag not in MODES:
        raise ValueError(f"intensity mode: {flag!r} received, expected True, False or one of {', '.join(MODES)}")
    return flag


def ct_flags(ct: PairFlags) -> tuple[bool, bool]:
    """``(moving, fixed)``: whether each image of a pair is CT in HU, from one flag (or mode) for both or a
    pair of them (a dataset of two modalities, e.g. MR moving and CT fixed)."""
    moving, fixed = ct if isinstance(ct, tuple) else (ct, ct)
    return intensity_mode(moving) in CT_MODES, intensity_mode(fixed) in CT_MODES


# Other modalities: intensities below this many noise sigmas (noise_sigma) are one flat value. Where air fills
# most of the volume the estimate reads about 0.64 sigma (the noise of air is Rayleigh-distributed), so the
# floor sits near 2.6 sigma there and about 4% of the air's noise stays above it; 6 clipped dark tissue and
# lost on the real pairs of test_data (benchmarks/modality_bench.py, T1: 0.399 against 0.432), 2 left a fixed
# MR against a moving CT below its zero field. 4 costs two noisy MR contrasts against each other (README).
NOISE_FLOOR_SIGMAS = 4.0
# A floor above this fraction of the robust range is not the noise of air (or the image is mostly noise):
# texture read as noise (a noise-free image, a coarse resampling); no floor then.
FLOOR_CAP = 0.25
_MAD_TO_SIGMA = 1.0 / (0.6745 * 2.0 ** 0.5)  # Gaussian noise: median |x_i - x_{i+1}| = 0.6745 * sqrt(2) * sigma


def noise_sigma(image: torch.Tensor) -> float:
    """The standard deviation of an image's voxel noise, estimated from the median absolute difference of
    neighbouring voxels along each axis (robust to edges, which are few), the median of the three axes'
    estimates (one axis of interpolated, hence correlated, slices reads low; of thick slices, high). Pairs
    of neighbours that both hold the image's minimum are left out: a zero-filled background or padding
    carries no noise to measure and would pull the median towards 0. For white Gaussian noise of standard
    deviation s on a smooth image it returns about s; on an image whose neighbours are mostly equal, 0.
    On a noise-free image with fine texture it measures the texture instead. The median absolute deviation
    as a noise scale is Donoho & Johnstone's (Biometrika 1994); applying it to neighbour differences here is
    ours.

    Shape: (1, I, J, K) or (I, J, K) -> a float in the image's units.
    """
    volume = image.reshape(image.shape[-3:]).float()
    low = volume.min()
    estimates = []
    for dim in range(3):
        n = volume.shape[dim]
        if n < 2:
            continue
        a, b = volume.narrow(dim, 1, n - 1), volume.narrow(dim, 0, n - 1)
        diff = (a - b).abs()[(a > low) | (b > low)]
        if diff.numel():
            estimates.append(diff[:: max(1, diff.numel() // _QUANTILE_SAMPLES)].median().item())
    return float(torch.tensor(estimates).median().item()) * _MAD_TO_SIGMA if estimates else 0.0


def _sample(image: torch.Tensor) -> torch.Tensor:
    """A regular subsample of an image's voxels, at most about ``_QUANTILE_SAMPLES``. Shape: any -> (N,)."""
    flat = image.reshape(-1).float()
    return flat[:: max(1, flat.numel() // _QUANTILE_SAMPLES)]


def _percentile_range(one: torch.Tensor) -> tuple[float, float]:
    """An image's ``ROBUST_PERCENTILES``, from a regular subsample. Shape: (1, I, J, K) -> (low, high)."""
    sample = _sample(one)
    q = torch.quantile(sample, sample.new_tensor([p / 100.0 for p in ROBUST_PERCENTILES]))
    return q[0].item(), q[1].item()


def normalise_intensity(image: torch.Tensor, mode: bool | str) -> torch.Tensor:
    """Intensities mapped to [0, 1] before descriptors are computed; ``mode``: :func:`intensity_mode`.

    ``CT`` (or True): the soft-tissue window ``CT_WINDOW_HU`` clipped and scaled, the same for every scan,
    so Hounsfield units keep their meaning; ``CT_LUNG``: ``LUNG_WINDOW_HU`` instead. ``PERCENTILES``: the
    image's own 1st and 99th percentiles, clipped and scaled, so nothing assumes a unit. ``FLOORED`` (or
    False): the same, then everything below
    ``NOISE_FLOOR_SIGMAS`` x :func:`noise_sigma` set to 0 (the rest rescaled to [0, 1]), so that the noise
    of an MR image's air is one flat value, as the CT window makes a CT's air: MIND-SSC divides by the
    local variance, and noise alone in the air of one image gave it a texture that the other image's body
    matched better than its own flat air (a fixed MR with noisy air against a moving CT ended below its
    zero field; README, "Another modality"). Which of the two a non-CT image of a pair gets is
    :func:`pair_modes`' choice. An image whose neighbours are mostly equal (no noise) is unchanged by the
    floor; a noise-free image with fine texture may get a small floor from its texture, and a floor above
    ``FLOOR_CAP`` of the range is not applied. Each image (and each resolution the refinement resamples
    it to) gets its own floor.

    Shape: (B, 1, I, J, K) -> (B, 1, I, J, K) float32 in [0, 1].
    """
    mode = intensity_mode(mode)
    image = image.float()
    if mode in CT_MODES:
        lo, hi = CT_WINDOW_HU if mode == CT else LUNG_WINDOW_HU
        return (image.clamp(lo, hi) - lo) / (hi - lo)
    out = []
    for one in image:
        lo, hi = _percentile_range(one)
        scaled = (one.clamp(lo, hi) - lo) / max(hi - lo, 1e-6)
        floor = NOISE_FLOOR_SIGMAS * noise_sigma(scaled) if mode == FLOORED else 0.0
        floor = floor if floor <= FLOOR_CAP else 0.0
        out.append((scaled.clamp(min=floor) - floor) / (1.0 - floor) if floor > 0 else scaled)
    return torch.stack(out)


# A background is flat when at least this share of an image's voxels sit at the lowest value of its
# normalisation without a floor: a CT's air and lungs below the window (a third or more of an abdominal CT
# crop), an MR's zero-filled or masked background. The 1st percentile of a noisy MR puts about 1% there.
FLAT_SHARE = 0.05
# Lung parenchyma in HU, and the share of it (against the voxels denser than it) from which a CT image counts as
# a chest: 0.41 in the raw chest-to-upper-abdomen scan of ../shared/data (0.30 placed in the challenge frame),
# 0.13-0.15 in the raw abdominal one (benchmarks/lung_window_bench.py; README, "Lung CT and the CT window").
LUNG_HU = (-950.0, -500.0)
LUNG_SHARE = 0.25
# An image of another modality with a voxel below this is in units like HU (a CBCT): its percentiles show the
# lungs as a CT's lung window does. MR and PET magnitudes are not negative (z-scored MR rarely below -5).
HU_LIKE_BELOW = -500.0


def flat_share(image: torch.Tensor, mode: bool | str) -> float:
    """The share of an image's voxels at the lowest value of its normalisation in ``mode`` without a floor:
    below its CT window, at or below its 1st percentile otherwise; from a regular subsample.

    Shape: (1, 1, I, J, K) -> a float in [0, 1].
    """
    mode, sample = intensity_mode(mode), _sample(image)
    if mode in CT_MODES:
        low = (CT_WINDOW_HU if mode == CT else LUNG_WINDOW_HU)[0]
    else:
        low = _percentile_range(sample)[0]
    return float((sample <= low).float().mean())


def lung_share(image: torch.Tensor) -> float:
    """Voxels of a CT image (HU) in ``LUNG_HU`` over those above it (the body's other tissue), from a regular
    subsample; 0 when nothing is above it. Shape: (1, 1, I, J, K) -> a float >= 0."""
    sample = _sample(image)
    lung = ((sample >= LUNG_HU[0]) & (sample <= LUNG_HU[1])).sum().item()
    return lung / max((sample > LUNG_HU[1]).sum().item(), 1)


def hu_like(image: torch.Tensor) -> bool:
    """Whether an image has voxels below ``HU_LIKE_BELOW`` (from a regular subsample): HU-like units, as a
    CBCT's. Shape: (1, 1, I, J, K) -> bool."""
    return float(_sample(image).min()) < HU_LIKE_BELOW


def pair_modes(moving: torch.Tensor, fixed: torch.Tensor, ct: PairFlags) -> tuple[str, str]:
    """Each image's normalisation (``(moving, fixed)`` modes) for this pair; a mode given is kept.

    Flags that are not strings are read as bools (NumPy bools, 0 or 1). Two images flagged True (CT) share
    one window: ``CT_LUNG`` when the :func:`lung_share` of each is at least ``LUNG_SHARE`` (two chests:
    inside the lungs the soft-tissue window left twice the error), else ``CT`` (a chest against an abdomen
    lost organ overlap with the lung window). A CT image against an image of another modality (flagged False,
    or given a mode that is not a CT window) is ``CT_LUNG`` when its own lung share is at least ``LUNG_SHARE``
    or the other image is :func:`hu_like` (a CT against a CBCT-like image read by percentiles, which shows the
    lungs: with the soft-tissue window the lungs of a chest ended further from the truth than the zero field,
    7.9 voxels against 2.8, and 0.9 with the lung window; of an abdomen 8.8 against 2.4, and 2.0;
    benchmarks/lung_window_bench.py, ``mixed``), else ``CT`` (MR against abdominal CT).
    A mode given is kept as it is, even where it differs from its partner's window.
    An image flagged False (not CT) is ``FLOORED`` when the other image's background is flat
    (:func:`flat_share` at least ``FLAT_SHARE``: a CT, a masked MR), else ``PERCENTILES``. The floor makes
    the noisy air of one image as flat as the other's; where both images have noisy air it only removes
    dark tissue (two noisy MR contrasts registered worse with it; README, "The noise floor of other
    modalities"). An image with a flat background of its own may still have noisy air inside its field of
    view, so its own flatness is not asked: a chest CT read by its percentiles had half the error in the
    lungs with both images floored than with one (benchmarks/lung_window_bench.py, ``pct``: 0.93 against
    1.78 voxels, seed 0).

    Shape: moving, fixed (1, 1, I, J, K) -> two of ``MODES``.
    """
    flags = tuple(f if isinstance(f, str) else bool(f) for f in (ct if isinstance(ct, tuple) else (ct, ct)))
    images = (moving, fixed)
    if any(f is True for f in flags):
        chest = [f is True and lung_share(img) >= LUNG_SHARE for img, f in zip(images, flags)]
        windows = []
        for i, f in enumerate(flags):
            other = flags[1 - i]
            if f is not True:
                windows.append(f)
            elif other is True:  # two CT images: one window for both
                windows.append(CT_LUNG if all(chest) else CT)
            elif other is False or intensity_mode(other) not in CT_MODES:  # a CT against another modality
                windows.append(CT_LUNG if chest[i] or hu_like(images[1 - i]) else CT)
            else:  # against a CT window given
                windows.append(CT)
        flags = tuple(windows)
    modes = [intensity_mode(f) if isinstance(f, str) else f for f in flags]  # CT images decided first
    for i, other in ((0, 1), (1, 0)):
        if modes[i] is False:
            other_mode = intensity_mode(modes[other]) if isinstance(modes[other], str) else PERCENTILES
            modes[i] = FLOORED if flat_share(images[other], other_mode) >= FLAT_SHARE else PERCENTILES
    return modes[0], modes[1]


def image_descriptors(image: torch.Tensor, mode: bool | str) -> torch.Tensor:
    """The descriptors both the search and the refinement compare: MIND-SSC of the normalised image
    (:func:`normalise_intensity` in ``mode``, then :func:`mind_ssc` with its defaults), at the image's
    resolution.

    Shape: (B, 1, I, J, K) -> (B, 12, I, J, K) float32 in (0, 1].
    """
    return mind_ssc(normalise_intensity(image.float(), mode))
