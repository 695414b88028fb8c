import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from l2r_submit.core import spatial

SHAPE = (7, 8, 9)
IDENT = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")


def test_zero_field_is_exact_copy():
    img = torch.randn(1, 2, *SHAPE)
    assert torch.allclose(spatial.warp_image(img, torch.zeros(1, 3, *SHAPE)), img, atol=1e-5)
    img64 = img.double()
    assert torch.allclose(spatial.warp_image(img64, torch.zeros(1, 3, *SHAPE, dtype=torch.float64)), img64, atol=1e-12)
    seg = torch.randint(0, 5, (1, 1, *SHAPE))
    assert torch.equal(spatial.warp_labels(seg, torch.zeros(1, 3, *SHAPE)), seg)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_one_voxel_shift_moves_impulse(axis):
    img = torch.zeros(1, 1, *SHAPE)
    img[0, 0, 3, 4, 5] = 1.0
    disp = torch.zeros(1, 3, *SHAPE)
    disp[:, axis] = 1.0  # pull: warped(p) = moving(p + e_axis) -> impulse moves to index - 1
    warped = spatial.warp_image(img, disp)
    expected = [3, 4, 5]
    expected[axis] -= 1
    assert (warped[0, 0] > 1e-4).nonzero().tolist() == [expected]
    assert warped.sum().item() == pytest.approx(1.0)


def test_warp_labels_matches_map_coordinates_including_half_voxels_and_borders():
    g = torch.Generator().manual_seed(1)
    seg = torch.randint(0, 6, (1, 1, *SHAPE), generator=g)
    disp = (torch.randn(1, 3, *SHAPE, generator=g) * 3).round() / 2  # many exact .5 positions, some outside
    ref = map_coordinates(seg[0, 0].numpy(), IDENT + disp[0].double().numpy(), order=0)
    assert np.array_equal(spatial.warp_labels(seg, disp)[0, 0].numpy(), ref)


def test_warp_image_matches_map_coordinates_inside():
    g = torch.Generator().manual_seed(2)
    img = torch.randn(1, 1, *SHAPE, generator=g, dtype=torch.float64)
    disp = torch.randn(1, 3, *SHAPE, generator=g, dtype=torch.float64)
    ref = map_coordinates(img[0, 0].numpy(), IDENT + disp[0].numpy(), order=1)
    pos = IDENT + disp[0].numpy()
    inside = np.all([(pos[a] >= 0) & (pos[a] <= n - 1) for a, n in enumerate(SHAPE)], axis=0)
    got = spatial.warp_image(img, disp)[0, 0].numpy()
    assert inside.sum() > 100
    np.testing.assert_allclose(got[inside], ref[inside], atol=1e-10)


def test_compose_of_translations_adds():
    a = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    b = torch.zeros_like(a)
    a[:, 0], b[:, 1] = 1.5, -0.5
    c = spatial.compose(a, b)
    assert torch.allclose(c[:, 0], torch.full_like(c[:, 0], 1.5))
    assert torch.allclose(c[:, 1], torch.full_like(c[:, 1], -0.5))


def test_compose_matches_sequential_warps_on_smooth_image():
    x = torch.linspace(0, 1, SHAPE[0], dtype=torch.float64)[:, None, None]
    img = (x * 3 + torch.zeros(SHAPE, dtype=torch.float64))[None, None]
    first = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    second = torch.zeros_like(first)
    first[:, 0] = 0.7
    second[:, 0] = 0.4
    seq = spatial.warp_image(spatial.warp_image(img, first, "border"), second, "border")
    one = spatial.warp_image(img, spatial.compose(first, second), "border")
    assert torch.allclose(seq[..., :4, :, :], one[..., :4, :, :], atol=1e-12)


def test_shape_errors_quote_shapes():
    with pytest.raises(ValueError, match="received"):
        spatial.warp_image(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 3, 5, 5, 5))
    with pytest.raises(ValueError, match="expected \\(B, 3, I, J, K\\)"):
        spatial.warp_labels(torch.zeros(1, 1, 4, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, 4, 3))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_threaded_grid_sample_equals_torch_values_and_gradients(threads, padding_mode):
    """The slab-parallel sampler against F.grid_sample itself (float64): outputs, the grid's gradient and the
    source's gradient, on a first axis that does not divide by the thread count, with points outside."""
    from l2r_submit.core.spatial import grid_sample
    gen = torch.Generator().manual_seed(3)
    src = torch.rand(1, 3, 9, 8, 7, dtype=torch.float64, generator=gen)
    grid = (torch.rand(1, 11, 6, 5, 3, dtype=torch.float64, generator=gen) * 2.4 - 1.2)
    weights = torch.rand(1, 3, 11, 6, 5, dtype=torch.float64, generator=gen)
    results = []
    old = torch.get_num_threads()
    for fn, t in ((lambda a, g: torch.nn.functional.grid_sample(a, g, mode="bilinear", padding_mode=padding_mode,
                                                                 align_corners=True), old),
                  (lambda a, g: grid_sample(a, g, padding_mode), threads)):
        a = src.clone().requires_grad_(True)
        g = grid.clone().requires_grad_(True)
        torch.set_num_threads(t)
        try:
            out = fn(a, g)
            (out * weights).sum().backward()
        finally:
            torch.set_num_threads(old)
        results.append((out.detach(), g.grad, a.grad))
    for mine, ref in zip(results[1], results[0]):
        assert mine.shape == ref.shape
        assert torch.allclose(mine, ref, atol=1e-12)
