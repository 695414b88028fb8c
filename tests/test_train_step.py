"""The training step's label terms (issue 14 item 5): the one-hot and the Dice without the fixed one-hot,
equal to torch's own one-hot and the one-hot Dice; and the step's benchmark runs (with its profile)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from l2r_submit.core.spatial import warp_image
from l2r_submit.training import losses

ROOT = Path(__file__).resolve().parents[1]


def _labels(seed: int, n: int, shape=(2, 1, 7, 6, 5)) -> torch.Tensor:
    return torch.randint(0, n, shape, generator=torch.Generator().manual_seed(seed))


def test_one_hot_equals_torch_one_hot_with_and_without_background():
    seg = _labels(0, 6)
    seg[0, 0, 0, 0, 0], seg[1, 0, 0, 0, 0] = -3, 9  # outside [0, 5): the nearest class, as before
    want = F.one_hot(seg[:, 0].clamp(0, 4), 5).permute(0, 4, 1, 2, 3).float()  # torch's, the former code
    got = losses.one_hot(seg, 5)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    fg = losses.one_hot(seg, 5, background=False)
    assert fg.shape == (2, 4, 7, 6, 5) and torch.equal(fg, want[:, 1:])
    for x in (got, fg):  # channels last, as torch's permuted one-hot: grid_sample reads a voxel's classes together
        assert x.is_contiguous(memory_format=torch.channels_last_3d)


def test_dice_against_the_fixed_labels_equals_the_one_hot_dice():
    """The Dice from the fixed label map is the one-hot soft Dice (the authors' formula), sums over the
    batch, with and without the distributed sum hook."""
    n = 5
    moving, fixed = _labels(1, n), _labels(2, n)
    fixed[0, 0, :2] = 0  # some background in the fixed image
    disp = torch.randn(2, 3, 7, 6, 5, generator=torch.Generator().manual_seed(3))
    warped = warp_image(losses.one_hot(moving, n), disp)
    want = losses.soft_dice_loss(warped, losses.one_hot(fixed, n))
    got = losses.soft_dice_loss_labels(warped[:, 1:].contiguous(), fixed)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    doubled = lambda t: 2 * t  # noqa: E731  (a stand-in for the sum over two identical ranks)
    torch.testing.assert_close(losses.soft_dice_loss_labels(warped[:, 1:], fixed, reduce_sums=doubled),
                               losses.soft_dice_loss(warped, losses.one_hot(fixed, n), reduce_sums=doubled),
                               rtol=1e-6, atol=1e-7)
    same = losses.one_hot(fixed, n, background=False)
    assert losses.soft_dice_loss_labels(same, fixed).item() == pytest.approx(0.0, abs=1e-6)


def test_the_loss_warps_foreground_classes_only_and_makes_no_int64_one_hot():
    """The Dice leaves the background out, so only classes 1 .. n - 1 are warped (trilinear, with their
    gradient: the step's largest label cost), and no int64 (B, I, J, K, n) one-hot is made."""
    n, shape = 14, (2, 1, 8, 8, 8)
    ms, fs = _labels(4, n, shape), _labels(5, n, shape)
    images = torch.rand(2, 1, 8, 8, 8), torch.rand(2, 1, 8, 8, 8)
    disp = torch.zeros(2, 3, 8, 8, 8, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        losses.registration_loss([disp], *images, ms, fs, losses.LossWeights(n_classes=n))["total"].backward()
    events = prof.events()
    assert not [e for e in events if e.name == "aten::one_hot"]
    warped_channels = {e.input_shapes[0][1] for e in events if e.name == "aten::grid_sampler_3d"}
    assert warped_channels == {1, n - 1}  # the image and the foreground classes


def test_train_bench_runs_and_profiles_a_step(tmp_path):
    """benchmarks/train_bench.py through the package's training step, with --profile and --trace."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_bench.py"), "--only", "tiny",
                           "--crop", "16", "--steps", "1", "--threads", "1", "--profile", "--trace", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tiny: 0.02 M params, 16x16x16, global batch 2" in proc.stdout and "s/step" in proc.stdout
    assert "Self CPU" in proc.stdout and "aten::" in proc.stdout  # the profile table
    assert json.loads((tmp_path / "tiny-1p.json").read_text())["traceEvents"]
