import numpy as np
import pytest

from l2r_submit.training.synthetic import SyntheticPairs, field_from_truth, smooth_random_disp, upsample_coarse


@pytest.fixture
def anatomy():
    image = np.full((48, 40, 44), -1024.0, np.float32)
    labels = np.zeros(image.shape, np.int64)
    image[25:39, 25:37, 29:41] = 40.0
    labels[25:39, 25:37, 29:41] = 6  # one organ off-centre; its first voxels are not multiples of 4
    return image, labels


def test_items_follow_the_pair_dataset_keys_and_are_reproducible(anatomy):
    items = SyntheticPairs([anatomy], 2, (16, 16, 16), seed=3, epoch=1, max_disp=2.0)
    a, b = items[0], items[0]
    assert set(a) == {"moving", "fixed", "moving_seg", "fixed_seg"}
    assert a["moving"].shape == (3, 16, 16, 16) and a["moving_seg"].shape == (1, 16, 16, 16)
    assert float(a["moving"].min()) >= 0.0 and float(a["moving"].max()) <= 1.0  # CT windows in [0, 1]
    for key in a:
        assert np.array_equal(a[key].numpy(), b[key].numpy()), key
    other_epoch = SyntheticPairs([anatomy], 2, (16, 16, 16), seed=3, epoch=2, max_disp=2.0)[0]
    assert not np.array_equal(a["moving"].numpy(), other_epoch["moving"].numpy())


def test_organ_prob_chooses_where_crops_are_centred(anatomy):
    def with_organ(organ_prob: float) -> list[bool]:
        items = SyntheticPairs([anatomy], 12, (16, 16, 16), seed=0, epoch=0, max_disp=1.0, organ_prob=organ_prob)
        return [bool((items[i]["fixed_seg"] > 0).any()) for i in range(len(items))]

    assert all(with_organ(1.0))  # every crop holds part of the organ
    assert not all(with_organ(0.0))  # crops anywhere: some miss the small organ


def test_smooth_random_disp_has_the_asked_largest_vector():
    disp = smooth_random_disp(1, (20, 16, 24), 5.0)
    assert disp.shape == (3, 20, 16, 24)
    assert np.sqrt((disp ** 2).sum(0)).max() == pytest.approx(5.0, rel=1e-5)


def test_field_from_truth_interpolates_its_control_points():
    coarse = np.random.default_rng(0).standard_normal((3, 3, 4, 5))
    entry = {"coarse": coarse.tolist(), "shape": [9, 13, 17]}
    field = field_from_truth(entry)
    assert field.dtype == np.float32 and field.shape == (3, 9, 13, 17)
    # corners on corners: the control points are reproduced at their grid positions
    assert np.allclose(field[:, ::4, ::4, ::4], coarse, atol=1e-5)
    assert np.allclose(field, upsample_coarse(coarse, (9, 13, 17)), atol=1e-6)
