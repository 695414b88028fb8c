"""The one augmentation module: deformations and warps against SciPy, crops normalised as inference."""

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from l2r_submit.training import augment
from l2r_submit.nets import inputs
from l2r_submit.training.synthetic import SyntheticPairs, coarse_random_disp, upsample_coarse

SHAPE = (30, 26, 34)


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    image = rng.normal(0, 200, SHAPE).astype(np.float32)
    labels = rng.integers(0, 5, SHAPE).astype(np.int64)
    return image, labels


@pytest.mark.parametrize("start, size", [((0, 0, 0), SHAPE), ((7, 3, 11), (12, 16, 10)), ((0, 10, 24), (9, 16, 10))])
def test_a_deformed_box_equals_scipy_on_the_whole_volume(volume, start, size):
    """Trilinear image warp (air beyond the edge, blended within one voxel as grid_sample zero padding) and the evaluator's label rule (0 outside), at the box's voxels,
    with the test_data generator's field (synthetic.upsample_coarse) evaluated by SciPy on the whole volume."""
    image, labels = volume
    coarse = coarse_random_disp(3) * 4.0  # up to ~10 voxels: the box reads well outside itself
    field = upsample_coarse(coarse, SHAPE)
    box = tuple(slice(s, s + k) for s, k in zip(start, size))
    pos = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in SHAPE], indexing="ij")) + field
    pos = pos[(slice(None), *box)]
    want_img = map_coordinates(image.astype(np.float64), pos, order=1, mode="grid-constant", cval=augment.AIR_HU)
    want_lab = map_coordinates(labels, pos, order=0, mode="constant", cval=0)
    c = torch.as_tensor(coarse)
    got_img = augment.deform(torch.from_numpy(image)[None, None], c, start, size)[0, 0].numpy()
    got_lab = augment.deform(torch.from_numpy(labels)[None, None], c, start, size, labels=True)[0, 0].numpy()
    assert np.allclose(got_img, want_img, atol=2e-3 * 200)  # float32 grid arithmetic on a noise image
    assert np.mean(got_lab == want_lab) > 0.999  # positions within float32 rounding of a half voxel may differ


def test_a_crop_normalised_by_its_images_extremes_equals_inference_preprocessing_cropped():
    rng = np.random.default_rng(1)
    hu = torch.as_tensor(rng.uniform(-1100, 1400, (1, 1, 20, 18, 22)), dtype=torch.float32)
    scale, shift = 1.05, -20.0
    aug = hu * scale + shift
    whole = inputs.preprocess(aug, 3)[..., 4:14, 2:12, 5:17]
    ends = augment.hu_extremes(float(hu.min()), float(hu.max()), scale, shift)
    crop = inputs.preprocess(aug[..., 4:14, 2:12, 5:17], 3, range_of=ends)
    torch.testing.assert_close(crop, whole, rtol=1e-5, atol=1e-5)


def test_synthetic_crops_use_the_inference_windows_on_images_that_do_not_span_them():
    """An organ of 40 HU in air: inference's per-image min-max puts it near 1 in the 1000-wide window
    (-100 .. 140 HU after clipping), where a fixed division by the window width gave 0.14."""
    image = np.full((40, 36, 44), -1024.0, np.float32)
    labels = np.zeros(image.shape, np.int64)
    image[12:28, 10:26, 14:30], labels[12:28, 10:26, 14:30] = 40.0, 3
    item = SyntheticPairs([(image, labels)], 1, (16, 16, 16), seed=0, epoch=0, max_disp=1.0)[0]
    organ = item["moving_seg"][0] > 0
    assert organ.float().mean() > 0.2
    assert float(item["moving"][2][organ].mean()) > 0.8
    whole = inputs.preprocess(torch.from_numpy(image)[None, None], 3)[0, 2]
    assert float(whole[labels > 0].mean()) == pytest.approx(1.0)  # what inference gives that organ
