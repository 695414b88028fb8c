"""QC pictures of other modalities: grey levels by each image's own range, air outside the warped image."""

import numpy as np

from l2r_submit.registration import qc


def _ct() -> np.ndarray:
    vol = np.full((20, 18, 16), -1000.0, np.float32)  # air around a body of soft tissue
    vol[4:16, 4:14, :] = 40.0
    return vol


def test_a_ct_in_hounsfield_units_is_shown_through_the_soft_tissue_window():
    assert qc.display_range(_ct()) == qc.QC_WINDOW_HU


def test_an_mr_image_is_shown_by_its_own_percentiles_not_saturated():
    rng = np.random.default_rng(0)
    mr = rng.uniform(0.0, 800.0, (20, 18, 16)).astype(np.float32)  # all above the CT window's top (240)
    lo, hi = qc.display_range(mr)
    assert 0.0 <= lo < 30.0 and 770.0 < hi <= 800.0
    offset_ct = _ct() + 1024.0  # a CT stored as HU + 1024: no voxel below 0
    assert qc.display_range(offset_ct) != qc.QC_WINDOW_HU


def test_outside_the_warped_image_is_the_images_own_air():
    mr = np.full((12, 10, 8), 300.0, np.float32)
    mr[0, 0, 0] = 5.0  # the image's lowest value
    disp = np.zeros((3, 12, 10, 8), np.float32)
    disp[0] = 50.0  # pulls every voxel from outside the image
    assert np.all(qc._warp_image_np(mr, disp) == 5.0)
