"""Our network and loss against the authors' published structure (TheoEst/abdominal_registration:
blocks.py, FrontiersNet.py, main.py), written here independently with plain torch functions over a
state_dict that carries their key names and shapes (tests/data/original_state_dict_keys.json)."""

import json

import pytest
import torch
import torch.nn.functional as F

from l2r_submit.nets import checkpoint, inputs
from l2r_submit.training import losses
from l2r_submit.core import spatial


def _in_relu(x: torch.Tensor) -> torch.Tensor:
    return F.relu(F.instance_norm(x, eps=1e-5))


def _their_forward(sd: dict, moving: torch.Tensor, fixed: torch.Tensor, n_blocks: int = 4) -> list[torch.Tensor]:
    """Their FrontiersNet (classic, instance norm, ReLU, sigmoid head, deep supervision when the keys are
    there), moving->fixed; returns their integrated grids (normalised, stacked z, y, x), coarsest first."""

    def conv(x, name, **kw):
        return F.conv3d(x, sd[name + ".weight"], sd[name + ".bias"], **kw)

    def encode(x):
        h = F.relu(conv(x, "encoder.input.add_conv", padding=1))
        skips = [F.relu(conv(h, "encoder.input.conv", padding=1)) + h]
        for b in range(n_blocks):
            x = _in_relu(conv(skips[-1], f"encoder.conv_blocks.{b}.conv_pool.conv", stride=2))
            n = 0
            while f"encoder.conv_blocks.{b}.nConvs.{n}.conv.weight" in sd:
                x = _in_relu(conv(x, f"encoder.conv_blocks.{b}.nConvs.{n}.conv", padding=1))
                n += 1
            skips.append(x)
        return skips

    merged = [m - f for m, f in zip(encode(moving), encode(fixed))]
    out, before = merged[-1], []
    for i in range(n_blocks):
        before.append(out)
        p = f"registration_decoder.conv_list.{i}"
        up = _in_relu(F.conv_transpose3d(out, sd[p + ".conv_tr.conv.weight"], sd[p + ".conv_tr.conv.bias"], stride=2))
        out = torch.cat((up, merged[-i - 2]), 1)
        n = 0
        while f"{p}.nConvs.{n}.conv.weight" in sd:
            out = _in_relu(conv(out, f"{p}.nConvs.{n}.conv", padding=1))
            n += 1
    grads = []
    if "deep_blocks.convs_list.0.weight" in sd:
        for i, x in enumerate(before):
            y = conv(x, f"deep_blocks.convs_list.{i}", padding=1)
            grads.append(torch.sigmoid(F.interpolate(y, scale_factor=2 ** (n_blocks - i), mode="nearest")))
    grads.append(torch.sigmoid(conv(out, "registration_decoder.last_conv", padding=1)))
    grids = []
    for g in grads:  # their integral3DImage
        size = g.shape[-3:]
        xs = (4 * torch.cumsum(g[:, 0], dim=1) - 2) / (size[0] - 1) - 1
        ys = (4 * torch.cumsum(g[:, 1], dim=2) - 2) / (size[1] - 1) - 1
        zs = (4 * torch.cumsum(g[:, 2], dim=3) - 2) / (size[2] - 1) - 1
        grids.append(torch.stack([zs, ys, xs], dim=1))
    return grids


def _grid_to_voxel_disp(grid: torch.Tensor) -> torch.Tensor:
    """Their normalised grid (B, 3 = z, y, x, I, J, K) -> voxel displacement (B, 3 = axes 0, 1, 2, ...)."""
    pos = grid.flip(1)
    out = []
    for k in range(3):
        n = grid.shape[k + 2]
        shape = [1, 1, 1]
        shape[k] = n
        out.append((pos[:, k] + 1) * (n - 1) / 2 - torch.arange(n, dtype=grid.dtype).view(1, *shape))
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("variant", ["3ch_ds", "1ch_nods"])
def test_imported_network_equals_their_forward_pass(tmp_path, repo_root, variant):
    spec = json.loads((repo_root / "tests" / "data" / "original_state_dict_keys.json").read_text())[
        f"abdo_frontiersnet_cm8_classic_in_{variant}"]
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape in spec.items():  # roughly variance-preserving, so that no level is ~0 or huge
        shape = [n // 8 if i < 2 and n % 32 == 0 else n for i, n in enumerate(shape)]  # multiplier 8 -> 1
        fan = 1
        for n in shape[1:]:
            fan *= n
        sd[key] = torch.randn(shape, generator=gen, dtype=torch.float64) * (1.5 / fan ** 0.5 if fan > 1 else 0.1)
    path = tmp_path / "orig.pth"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v.float() for k, v in sd.items()}, "val_loss": 0.1,
                "optizmizer": {}}, path)
    net = checkpoint.import_original(path, keep_deep_supervision=True, source="abdominal").double()
    cin = spec["encoder.input.add_conv.weight"][1]
    moving = torch.rand(1, cin, 16, 16, 32, generator=gen, dtype=torch.float64)
    fixed = torch.rand(1, cin, 16, 16, 32, generator=gen, dtype=torch.float64)
    sd32 = {k: v.float().double() for k, v in sd.items()}  # the float32 values the checkpoint holds
    with torch.no_grad():
        ours = net(moving, fixed)
        theirs = [_grid_to_voxel_disp(g) for g in _their_forward(sd32, moving, fixed)]
    assert len(ours) == len(theirs) == (5 if variant.endswith("_ds") else 1)
    # ours: [full, coarsest, ..., finest]; theirs: [coarsest, ..., finest, full]
    for a, b in zip(ours, [theirs[-1]] + theirs[:-1]):
        assert a.shape == b.shape
        assert b.abs().max() > 0.05  # the weights are far from the identity: a real comparison
        torch.testing.assert_close(a.double(), b, rtol=0, atol=1e-5)


def test_deep_supervision_loss_is_the_authors():
    """Only the similarity is averaged over the levels; Dice and the regulariser use the final level.

    Expected values from their main.calculate_loss / losses.mean_dice_loss, written plainly: MSE per
    level, L1 of the final gradients from 0.5, soft Dice per class with sums over the whole batch.
    """
    torch.manual_seed(5)
    shape = (2, 3, 10, 9, 8)
    grads = [torch.rand(shape) * 0.6 + 0.2 for _ in range(3)]  # full first, as the network returns them
    disps = [inputs.integrate(g) for g in grads]
    m, f = torch.rand(2, 1, 10, 9, 8), torch.rand(2, 1, 10, 9, 8)
    ms, fs = torch.randint(0, 4, (2, 1, 10, 9, 8)), torch.randint(0, 4, (2, 1, 10, 9, 8))
    w = losses.LossWeights(n_classes=4)
    got = losses.registration_loss(disps, m, f, ms, fs, w)
    sim = torch.stack([((spatial.warp_image(m, d) - f) ** 2).mean() for d in disps]).mean()
    reg = (grads[0] - 0.5).abs().mean()
    warped = spatial.warp_image(F.one_hot(ms[:, 0], 4).permute(0, 4, 1, 2, 3).float(), disps[0])
    target = F.one_hot(fs[:, 0], 4).permute(0, 4, 1, 2, 3).float()
    dice = 0.0
    for c in range(1, 4):
        a, b = warped[:, c].reshape(-1), target[:, c].reshape(-1)
        dice += 1 - (2 * (a * b).sum() + 1) / (a.pow(2).sum() + b.pow(2).sum() + 1)
    dice = dice / 3
    assert got["sim"].item() == pytest.approx(sim.item(), rel=1e-5)
    assert got["reg"].item() == pytest.approx(reg.item(), rel=1e-4)
    assert got["dice"].item() == pytest.approx(float(dice), rel=1e-5)
    assert got["total"].item() == pytest.approx((sim + 1e-2 * reg + dice).item(), rel=1e-5)
