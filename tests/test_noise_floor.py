"""Other modalities: the noise of an image's air is flattened before descriptors (features.noise_sigma and the
floor in features.normalise_intensity), so that a noisy fixed MR does not lure a clean moving CT's body into
its air."""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from l2r_submit.core import io
from l2r_submit.evaluation import metrics
from l2r_submit.registration import features, search

from test_search import smooth_volume

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import modality_bench  # noqa: E402


def rician(signal: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """Magnitude of the signal plus complex Gaussian noise of standard deviation ``sigma``: MR's noise."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((2, *signal.shape), generator=g) * sigma
    return torch.hypot(signal + noise[0], noise[1])


def body_in_air(shape=(40, 36, 44)) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured ellipsoid (signal 0.2-0.8) in air (0) and its mask. Shape: -> (1, 1, *shape), (*shape)."""
    tex = smooth_volume(shape, seed=5, scale=1.0)
    axes = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = sum((a / 0.7) ** 2 for a in axes) < 1
    return torch.where(body, (0.5 + 0.15 * tex).clamp(0.2, 0.8), torch.zeros(())), body


def test_noise_sigma_of_white_gaussian_noise_on_a_smooth_image():
    """An analytic answer: for white Gaussian noise of standard deviation s on a smooth image, s."""
    smooth = smooth_volume((48, 40, 56), seed=1, scale=0.02)  # neighbours differ by much less than the noise
    for s in (0.01, 0.05, 0.2):
        g = torch.Generator().manual_seed(int(s * 1000))
        noisy = smooth + torch.randn(smooth.shape, generator=g) * s
        assert abs(features.noise_sigma(noisy[0]) - s) < 0.08 * s


def test_noise_sigma_ignores_zero_padding_and_one_axis_of_interpolated_slices():
    """Two layouts of real MR: noisy air inside a field of view zero-padded to a larger grid (padding pairs
    carry no noise and are left out), and slices interpolated along one axis (that axis reads low; the
    median of the three axes does not follow it)."""
    clean, _ = body_in_air((48, 40, 56))
    noisy = rician(clean, 0.02, seed=3)[0]
    alone = features.noise_sigma(noisy)
    for rows in (15, 30):  # about 30% and 60% of the volume zero-filled
        padded = noisy.clone()
        padded[:, :rows] = 0.0
        assert abs(features.noise_sigma(padded) - alone) < 0.1 * alone
    g = torch.Generator().manual_seed(4)
    white = torch.randn((1, 60, 40, 50), generator=g)
    smoothed = (white[:, :-2] + white[:, 1:-1] + white[:, 2:]) / 3.0  # 3 slices averaged along axis 0
    per_voxel = 3.0 ** -0.5  # its standard deviation
    assert abs(features.noise_sigma(smoothed) - per_voxel) < 0.1 * per_voxel


def test_the_floor_flattens_noisy_air_and_keeps_the_range():
    clean, body = body_in_air()
    out = features.normalise_intensity(rician(clean * 800.0, 16.0, seed=6), mode=False)
    assert out.min() == 0 and out.max() == 1
    assert (out[0, 0][~body] == 0).float().mean() > 0.9  # air: one value, but for a few noise peaks
    assert (out[0, 0][body] > 0).float().mean() > 0.99  # tissue (signal 0.2-0.8, noise 0.02) is kept


def test_noise_sigma_is_zero_where_neighbours_are_equal():
    blocks = torch.zeros((1, 1, 40, 36, 44))
    blocks[..., 10:30, 8:20, 5:40] = 700.0  # piecewise constant: a zero-filled background and one organ
    assert features.noise_sigma(blocks[0]) == 0.0
    # an image without noise is normalised by its percentiles alone, as before the floor existed
    lo, hi = torch.quantile(blocks.reshape(-1), torch.tensor([0.01, 0.99]))
    plain = (blocks.clamp(lo, hi) - lo) / max((hi - lo).item(), 1e-6)
    assert torch.equal(features.normalise_intensity(blocks, mode=False), plain)


def test_the_noise_of_the_air_gives_flat_descriptors():
    """MIND-SSC divides by the local variance: noise alone in the air looks like texture (the 12 descriptors
    of a voxel spread over most of (0, 1]). After the floor most of the air is one flat value, as in a CT's
    air (what is left: the few noise peaks above the floor, about 4% of the air voxels); the body keeps its
    texture."""
    clean, body = body_in_air()
    noisy = rician(clean * 800.0, 16.0, seed=2)  # 2% of the range, as benchmarks/modality_bench.py
    d = features.image_descriptors(noisy, mode=False)[0]
    spread = d.amax(dim=0) - d.amin(dim=0)  # 0 where all 12 descriptors are equal
    air = ~body & (torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in body.shape],
                                              indexing="ij")).pow(2).sum(0) > 0.8)  # well away from the body
    assert spread[air].mean() < 0.25
    assert spread[body].mean() > 0.8
    raw = features.mind_ssc(noisy)[0]  # the descriptors of the same image without the floor
    assert (raw.amax(dim=0) - raw.amin(dim=0))[air].mean() > 0.8


def test_a_fixed_mr_with_noisy_air_against_a_moving_ct_does_not_end_below_the_zero_field():
    """test_data's synthetic pair 0001 <- 0004 at half resolution, the fixed image made MR-like (T1 contrast,
    bias field, noise of 2% in the air; benchmarks/modality_bench.py), the moving one the CT: the search
    alone ends above the zero field (without the floor it ended below it: 0.781 against 0.786; at full
    resolution with the refinement 0.715 against 0.789)."""
    def read(case):
        hu = io.read_volume(ROOT / "test_data" / "imagesTr" / f"AbdomenCTCT_{case}_0000.nii.gz", np.float32).array
        labels = io.read_labels(ROOT / "test_data" / "labelsTr" / f"AbdomenCTCT_{case}_0000.nii.gz")
        return F.avg_pool3d(torch.from_numpy(hu)[None, None], 2), labels[::2, ::2, ::2]

    fixed_hu, fixed_labels = read("0001")
    moving, moving_labels = read("0004")
    fixed = torch.from_numpy(modality_bench.mr_like(fixed_hu[0, 0].numpy(), "T1", seed=0))[None, None]
    organs = [k for k in range(1, 14) if (fixed_labels == k).any() and (moving_labels == k).any()]

    def dice(disp: np.ndarray) -> float:
        warped = metrics.warp_labels(moving_labels, disp)
        return float(np.mean([metrics.dice(fixed_labels == k, warped == k) for k in organs]))

    zero = dice(np.zeros((3, *fixed_labels.shape), np.float32))
    found = search.search(moving, fixed, search.SearchConfig(grid=3, hw=4), ct=(True, False))
    assert dice(found[0].numpy()) > zero + 0.004


def test_flat_share_counts_the_background_at_the_lowest_normalised_value():
    """A CT's air below the window, a masked MR's zeros: their share of the voxels; a noisy MR's air puts
    only the 1% at or below its 1st percentile there."""
    clean, body = body_in_air()
    air = float((~body).float().mean())  # about 0.8 of this volume
    ct = torch.where(body, clean * 400.0 - 100.0, torch.full((), -1000.0))
    assert abs(features.flat_share(ct, mode=True) - air) < 1e-6
    masked = torch.where(body, rician(clean * 800.0, 16.0, seed=7), torch.zeros(()))
    assert abs(features.flat_share(masked, mode=False) - air) < 1e-6
    assert features.flat_share(rician(clean * 800.0, 16.0, seed=8), mode=False) < 0.02


def test_an_image_is_floored_only_against_a_partner_with_a_flat_background():
    """The floor flattens one image's noisy air as the other image's air is flat: a noisy MR against a CT
    or a masked MR is floored; two noisy MR images keep their own percentiles (the floor only cost them
    dark tissue: README, "The noise floor of other modalities"). Modes given are kept."""
    clean, body = body_in_air()
    ct = torch.where(body, clean * 400.0 - 100.0, torch.full((), -1000.0))
    mr = rician(clean * 800.0, 16.0, seed=9)
    other_mr = rician(clean * 600.0, 12.0, seed=10)
    masked = torch.where(body, other_mr, torch.zeros(()))
    P, F_, C = features.PERCENTILES, features.FLOORED, features.CT
    assert features.pair_modes(mr, ct, (False, True)) == (F_, C)
    assert features.pair_modes(ct, mr, (True, False)) == (C, F_)
    assert features.pair_modes(mr, other_mr, False) == (P, P)
    assert features.pair_modes(mr, masked, False) == (F_, P)
    # a flat background of its own does not matter: its air inside the field of view may still be noisy
    assert features.pair_modes(masked, ct, (False, True)) == (F_, C)
    assert features.pair_modes(ct, masked, False) == (F_, F_)
    assert features.pair_modes(mr, other_mr, (P, F_)) == (P, F_)
    assert features.pair_modes(mr, ct, True) == (C, C)
    assert features.pair_modes(mr, ct, (np.False_, np.True_)) == (F_, C)  # NumPy bools are flags too
    assert features.ct_flags((np.True_, 0)) == (True, False)


def test_the_stages_decide_the_modes_once_per_pair_and_record_them():
    """stages.run decides each image's normalisation from the unwarped pair, hands the modes to every stage
    and records them (run.json's per-pair ``intensity``); a CT pair records nothing."""
    from l2r_submit.registration import defaults, stages

    clean, body = body_in_air((32, 32, 32))
    ct = torch.where(body, clean * 400.0 - 100.0, torch.full((), -1000.0))
    mr = rician(clean * 800.0, 16.0, seed=11)
    io_cfg = defaults.io_for_stages(("search", "adam"), None, 2)
    cfg = search.SearchConfig(grid=4, hw=2)
    built = stages.build(("search", "adam"), None, cfg, io_cfg, (False, True))
    decided = stages.for_images(built, mr, ct)
    assert [s.ct for s in decided] == [(features.FLOORED, features.CT)] * 2
    details: dict = {}
    stages.run(built, mr, ct, details=details)
    assert details["intensity"] == {"moving": "floored", "fixed": "ct"}
    both_mr: dict = {}
    stages.run(stages.build(("search",), None, cfg, io_cfg, False), mr, rician(clean * 800.0, 16.0, 12),
               details=both_mr)
    assert both_mr["intensity"] == {"moving": "percentiles", "fixed": "percentiles"}
    ct_pair: dict = {}
    stages.run(stages.build(("search",), None, cfg, io_cfg, True), ct, ct, details=ct_pair)
    assert "intensity" not in ct_pair
