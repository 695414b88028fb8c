"""The velocity model of the refinement: scaling and squaring against analytic flows, and the stage on a shift."""

from __future__ import annotations

import math

import pytest
import torch

from l2r_submit.registration import instance
from l2r_submit.evaluation import metrics
from l2r_submit.core.contract import identity_grid
from l2r_submit.core.spatial import compose, warp_image


def test_exponential_of_a_constant_velocity_is_that_translation():
    v = torch.zeros(1, 3, 12, 12, 12)
    v[:, 0] = 2.5
    v[:, 2] = -1.25
    assert torch.allclose(instance.exponential(v, 6), v, atol=1e-5)


def test_exponential_of_a_rotational_velocity_is_the_rotation():
    """v(p) = theta * (-(p1 - c), p0 - c, 0): its flow for time 1 rotates by theta about the centre (analytic)."""
    n, theta = 33, 0.5
    c = (n - 1) / 2
    p = identity_grid((n, n, n), dtype=torch.float64)  # (1, 3, n, n, n) voxel coordinates
    x, y = p[:, 0] - c, p[:, 1] - c
    v = torch.stack([-theta * y, theta * x, torch.zeros_like(x)], dim=1)
    true = torch.stack([x * math.cos(theta) - y * math.sin(theta) - x,
                        x * math.sin(theta) + y * math.cos(theta) - y, torch.zeros_like(x)], dim=1)
    u = instance.exponential(v.float(), 7).double()
    r = torch.sqrt(x ** 2 + y ** 2)[0]
    inner = r < c / 2  # the flow stays inside the grid there
    err = (u - true).norm(dim=1)[0][inner]
    assert err.max().item() < 0.05  # voxels; the field itself reaches ~4 voxels there
    assert (true.norm(dim=1)[0][inner].max() > 3.5).item()
    # the plain displacement v itself is the first-order approximation, and much worse
    assert (v - true).norm(dim=1)[0][inner].max().item() > 10 * err.max().item()


def test_exponential_is_invertible_where_the_displacement_folds():
    """A swirl strong enough that the displacement v folds (det J <= 0); exp(v) does not, and exp(-v) undoes it."""
    n = 32
    c = (n - 1) / 2
    p = identity_grid((n, n, n), dtype=torch.float32)
    x, y = p[:, 0] - c, p[:, 1] - c
    bump = torch.exp(-(x ** 2 + y ** 2) / (2 * 5.0 ** 2))
    v = torch.stack([-3.0 * y * bump, 3.0 * x * bump, torch.zeros_like(x)], dim=1)
    assert (metrics.jacobian_determinant(v[0].numpy()) <= 0).mean() > 0.01
    u = instance.exponential(v, 8)
    assert (metrics.jacobian_determinant(u[0].numpy()) <= 0).mean() == 0
    back = compose(u, instance.exponential(-v, 8))  # warp by exp(v), then by exp(-v): the identity
    assert back[:, :, 6:-6, 6:-6, 6:-6].abs().max().item() < 0.3


def test_velocity_refinement_recovers_a_shift_without_folds_and_composes_with_disp_in():
    x = torch.linspace(-1, 1, 24)
    blob = torch.exp(-((x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) * 5))[None, None]
    fixed = blob * 300.0 - 100.0
    moving = torch.roll(fixed, 2, dims=2)
    cfg = instance.IOConfig(iters=60, lr=0.2, reg=0.1, field="velocity")
    zero = torch.zeros(1, 3, 24, 24, 24)
    refined = instance.refine(zero, moving, fixed, cfg)
    inner = (slice(None), slice(None), slice(4, 20), slice(4, 20), slice(4, 20))
    before = torch.mean((moving - fixed)[inner] ** 2).item()
    assert torch.mean((warp_image(moving, refined) - fixed)[inner] ** 2).item() < 0.2 * before
    assert 1.0 < refined[0, 0, 8:16, 8:16, 8:16].mean().item() < 3.0
    assert (metrics.jacobian_determinant(refined[0].numpy()) <= 0).sum() == 0
    # started from half the shift, the result is still the whole field of the pair (composed, not replaced)
    half = torch.zeros_like(zero)
    half[:, 0] = 1.0
    from_half = instance.refine(half, moving, fixed, cfg)
    assert 1.0 < from_half[0, 0, 8:16, 8:16, 8:16].mean().item() < 3.0


def test_bad_field_settings_are_refused():
    with pytest.raises(ValueError, match="field"):
        instance.IOConfig(10, field="bspline")
    with pytest.raises(ValueError, match="steps"):
        instance.IOConfig(10, field="velocity", steps=0)


def test_pooled_half_level_descriptors_find_a_smooth_deformation_more_exactly():
    """A textured volume and its warp by a known smooth field (fixed(x) = moving(x + u(x)), so u is exactly
    the answer): with the half level's MIND pooled from the full resolution (the default), the end-point
    error is lower than with MIND of the resampled image."""
    from l2r_submit.training.augment import bspline_field

    g = torch.Generator().manual_seed(3)
    n = 48
    noise = torch.nn.functional.avg_pool3d(torch.randn(1, 1, n + 1, n + 1, n + 1, generator=g), 2, stride=1)
    moving = (noise * 600.0).clamp(-900, 900)
    true = bspline_field(torch.randn(3, 4, 4, 4, generator=g) * 1.5, (n, n, n))[None]
    fixed = warp_image(moving, true)
    epe = {}
    for mode in instance.HALF_FEATURES:
        cfg = instance.IOConfig(iters=100, reg=0.25, field="velocity", half_features=mode)
        disp = instance.refine(torch.zeros(1, 3, n, n, n), moving, fixed, cfg)
        epe[mode] = float((disp - true).norm(dim=1)[:, 8:-8, 8:-8, 8:-8].mean())
    assert epe["pooled"] < 0.9 * epe["resampled"], epe
    with pytest.raises(ValueError, match="half_features"):
        instance.IOConfig(half_features="max")


def test_channels_last_features_sample_the_same_values_and_gradients():
    """``instance.for_sampling`` changes only the memory layout: F.grid_sample's output and its gradient with
    respect to the displacement are equal, bit for bit, to those of the default layout."""
    torch.manual_seed(0)
    feats = torch.rand(1, 12, 10, 9, 11)
    cl = instance.for_sampling(feats)
    assert cl.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(cl, feats)
    target = torch.rand(1, 12, 10, 9, 11)
    grads = []
    for moving in (feats, cl):
        disp = (torch.randn(1, 3, 10, 9, 11, generator=torch.Generator().manual_seed(1)) * 2).requires_grad_(True)
        loss = ((warp_image(moving, disp) - target) ** 2).mean()
        loss.backward()
        grads.append((loss.detach(), disp.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
