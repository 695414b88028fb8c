import pytest
import torch

from l2r_submit.registration.features import SSC_PAIRS, mind_ssc


def _volume(seed: int = 0, shape=(16, 14, 18)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 1, *shape), generator=g)
    return torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1)  # some structure, not white noise


def test_twelve_pairs_of_six_neighbours_sqrt2_apart():
    assert len(SSC_PAIRS) == 12 and len(set(SSC_PAIRS)) == 12
    for a, b in SSC_PAIRS:
        assert sum((x - y) ** 2 for x, y in zip(a, b)) == 2


def test_shape_range_and_maximum_one():
    d = mind_ssc(_volume())
    assert d.shape == (1, 12, 16, 14, 18) and d.dtype == torch.float32
    assert torch.all(d > 0) and torch.all(d <= 1)
    assert torch.allclose(d.amax(dim=1), torch.ones(1, 16, 14, 18))


def test_invariant_to_affine_intensity_changes():
    img = _volume(1)
    assert torch.allclose(mind_ssc(img), mind_ssc(3.5 * img - 40.0), atol=1e-4)


def test_depends_on_structure():
    a, b = mind_ssc(_volume(1)), mind_ssc(_volume(2))
    assert (a - b).abs().mean() > 0.05


def test_translation_equivariant_away_from_borders():
    img = _volume(3, (20, 20, 20))
    shifted = torch.roll(img, 3, dims=2)
    a = mind_ssc(img)[..., 5:12, 5:15, 5:15]
    b = mind_ssc(shifted)[..., 8:15, 5:15, 5:15]
    assert torch.allclose(a, b, atol=1e-5)


def test_refuses_multichannel_input():
    with pytest.raises(ValueError, match="channels"):
        mind_ssc(torch.zeros(1, 3, 8, 8, 8))


def test_flat_image_gives_finite_descriptors():
    d = mind_ssc(torch.full((1, 1, 8, 9, 10), -1024.0))  # all air: no structure, zero variance
    assert torch.isfinite(d).all() and torch.equal(d, torch.ones_like(d))


@pytest.mark.parametrize("radius", [1, 2])
def test_box_mean_equals_avg_pool3d_with_replicated_edges(radius):
    from l2r_submit.registration.features import box_mean
    x = torch.rand(2, 3, 7, 6, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(radius))
    ref = torch.nn.functional.avg_pool3d(torch.nn.functional.pad(x, (radius,) * 6, mode="replicate"),
                                         2 * radius + 1, stride=1)
    assert torch.allclose(box_mean(x, radius), ref, atol=1e-12)
