import numpy as np
import pytest
import torch

from l2r_submit.nets import inputs
from l2r_submit.training.synthetic import coarse_random_disp, upsample_coarse
from l2r_submit.training.volume_pairs import VolumePairs, bspline_field


@pytest.fixture
def anatomy():
    image = np.full((24, 20, 28), -1024.0, np.float32)
    image[3:21, 3:17, 3:25] = 0.0  # body
    labels = np.zeros(image.shape, np.int64)
    image[8:16, 7:14, 9:20] = 150.0
    labels[8:16, 7:14, 9:20] = 2
    return image, labels


def test_bspline_field_equals_the_test_data_generator():
    coarse = coarse_random_disp(5)
    got = bspline_field(torch.as_tensor(coarse), (17, 11, 23)).numpy()
    assert got.dtype == np.float32 and got.shape == (3, 17, 11, 23)
    assert np.allclose(got, upsample_coarse(coarse, (17, 11, 23)), atol=1e-5)


def test_items_are_whole_volumes_reproducible_per_index(anatomy):
    pairs = VolumePairs([anatomy], 3, seed=1, epoch=2, max_disp=3.0)
    a, again, other = pairs[0], pairs[0], pairs[1]
    assert set(a) == {"moving", "fixed", "moving_seg", "fixed_seg"}
    assert a["moving"].shape == (3, 24, 20, 28) and a["moving"].dtype == torch.float32
    assert a["fixed_seg"].shape == (1, 24, 20, 28) and a["fixed_seg"].dtype == torch.int64
    for key in a:
        assert torch.equal(a[key], again[key]), key
    assert not torch.equal(a["moving"], other["moving"])
    assert not torch.equal(a["moving_seg"], a["fixed_seg"])  # two independent deformations
    assert float(a["moving"].min()) >= 0.0 and float(a["moving"].max()) <= 1.0
    with pytest.raises(IndexError):
        pairs[3]


def test_labels_move_with_the_image(anatomy):
    item = VolumePairs([anatomy], 1, seed=0, epoch=0, max_disp=3.0)[0]
    for role in ("moving", "fixed"):
        organ = item[f"{role}_seg"][0] == 2
        bright = item[role][0] > 0.65  # W400/L40 min-max: the organ (150 HU) maps to 0.8-1, body (0 HU) to ~0.5
        assert organ.sum() > 0
        assert (organ & bright).sum() / organ.sum() > 0.8  # the rest: the organ's blurred rim
        assert (~organ & bright).sum() / bright.sum() < 0.2


def test_zero_deformation_keeps_labels_and_matches_inference_preprocessing(anatomy):
    image, labels = anatomy
    item = VolumePairs([anatomy], 1, seed=0, epoch=0, max_disp=0.0)[0]
    assert np.array_equal(item["moving_seg"][0].numpy(), labels)
    # intensity augmentation aside, the windows are model.preprocess of the whole volume
    expected = inputs.preprocess(torch.from_numpy(image)[None, None], 3)[0]
    assert float((item["moving"] - expected).abs().mean()) < 0.1


def test_painted_versions_are_used_with_paint_prob_one(anatomy):
    image, labels = anatomy
    painted = np.where(labels > 0, -100.0, image).astype(np.float32)  # organ darker than the body (0 HU)
    body = torch.from_numpy((image == 0.0) & (labels == 0))
    organ = torch.from_numpy(labels > 0)
    for prob, darker in ((1.0, True), (0.0, False)):
        item = VolumePairs([anatomy], 1, seed=0, epoch=0, max_disp=0.0, paint_prob=prob, painted=[[painted]])[0]
        window = item["moving"][0]
        assert (float(window[organ].mean()) < float(window[body].mean())) == darker


def test_bad_inputs_are_refused(anatomy):
    image, labels = anatomy
    with pytest.raises(ValueError, match="shape"):
        VolumePairs([anatomy, (image[:-1], labels[:-1])], 1, seed=0, epoch=0)
    with pytest.raises(ValueError, match="no anatomies"):
        VolumePairs([], 1, seed=0, epoch=0)
    with pytest.raises(ValueError, match="painted lists"):
        VolumePairs([anatomy], 1, seed=0, epoch=0, painted=[[image], [image]])


def test_train_run_takes_whole_volume_items(tmp_path):
    from l2r_submit.core import dataset, io
    from l2r_submit.training import train

    from conftest import write_tiny_dataset

    ds = dataset.load(write_tiny_dataset(tmp_path / "data", n_subjects=2))
    case = ds.training[0]
    anatomy = (io.read_volume(case.image, np.float32).array, io.read_labels(case.label))
    cfg = train.preset_config("symmetric", "tiny", epochs=1, crop=None, val_every=1, num_workers=0, device="cpu",
                              batch_size=2, **{"model.in_channels": 3, "loss.n_classes": 5})
    row = train.run(cfg, ds, tmp_path / "run", progress=False,
                    epoch_data=lambda epoch: VolumePairs([anatomy], 2, cfg.seed, epoch, max_disp=2.0))
    assert row["epoch"] == 1 and np.isfinite(row["train_total"]) and "DSC" in row
