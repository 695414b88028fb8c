"""The affine stage: a least-trimmed-squares fit of a wide search's displacements (l2r_submit.registration.affine),
checked against known transforms."""

import json

import pytest
import torch

from l2r_submit.core.spatial import warp_image
from l2r_submit.registration import affine, stages
from l2r_submit.registration.search import pool_to_grid

from conftest import invoke
from test_search import smooth_volume


def test_trimmed_fit_recovers_an_affine_map_that_least_squares_misses_with_outliers():
    g = torch.Generator().manual_seed(3)
    points = torch.rand(400, 3, generator=g) * 100
    a = torch.tensor([[0.05, -0.02, 0.01], [0.03, -0.04, 0.0], [0.0, 0.02, 0.06]])
    t = torch.tensor([5.0, -12.0, 20.0])
    disp = points @ a.T + t
    bad = torch.randperm(400, generator=g)[:160]  # 40% gross outliers
    disp[bad] += torch.randn(160, 3, generator=g) * 30
    params, kept = affine.lts_fit(points, disp, "affine", keep=0.5, steps=20)
    assert torch.allclose(params[:3].T, a, atol=1e-4) and torch.allclose(params[3], t, atol=1e-3)
    assert not set(kept.tolist()) & set(bad.tolist())
    plain, _ = affine.lts_fit(points, disp, "affine", keep=1.0, steps=1)  # nothing trimmed: least squares
    assert (plain[3] - t).abs().max() > 1.0
    shift, _ = affine.lts_fit(points, disp, "translation", keep=0.5, steps=20)
    assert shift.shape == (1, 3)


def test_trimmed_fit_is_not_held_by_a_block_of_nodes_that_moved_together():
    """A third of the nodes (one end of the body, as where only one scan has anatomy) moved alike by a
    further 30 voxels: least squares, and concentration steps from it alone, settle on a 30% stretch that
    keeps that block; the trimmed fit from several starts finds the translation of the rest."""
    axes = [torch.arange(n, dtype=torch.float32) * 8 + 3.5 for n in (12, 10, 16)]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    disp = torch.zeros_like(points)
    disp[:, 0] = 5.0
    block = points[:, 2] > 80  # the last 5 of 16 node layers along axis 2
    disp[block, 2] += 30.0
    disp += torch.randn(disp.shape, generator=torch.Generator().manual_seed(1)) * 0.5
    params, kept = affine.lts_fit(points, disp, "affine", keep=0.5, steps=20)
    assert params[:3].abs().max() < 0.01 and (params[3] - torch.tensor([5.0, 0.0, 0.0])).abs().max() < 0.3
    assert not block[kept].any()
    x, y = affine.design(points.double(), "affine"), disp.double()
    single, _, _ = affine._concentrate(x, y, torch.linalg.lstsq(x, y).solution, len(points) // 2, 20)
    assert single[2, 2] > 0.1  # the least-squares start alone: the stretch


def test_node_centres_are_the_centres_of_the_blocks_the_search_pools():
    shape = (100, 24, 19)  # partial last blocks along two axes
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    pooled = torch.cat([pool_to_grid(c[None, None], 8) for c in coords], dim=1)  # mean voxel index per block
    centres = affine.node_centres(tuple(pooled.shape[2:]), 8, shape)
    assert torch.allclose(centres, pooled[0].reshape(3, -1).T, atol=1e-4)
    assert centres[:, 0].max() == 97.5


def test_dense_field_is_the_fitted_map_at_every_voxel():
    params = torch.tensor([[0.1, 0.0, 0.2], [0.0, -0.1, 0.0], [0.05, 0.0, 0.0], [1.0, 2.0, 3.0]])
    field = affine.dense(params, (5, 6, 7))
    p = torch.tensor([4.0, 2.0, 6.0])
    assert torch.allclose(field[0, :, 4, 2, 6], p @ params[:3] + params[3])
    assert affine.matrix_rows(params)[0] == [0.1, 0.0, 0.05, 1.0]  # row i: A_i0, A_i1, A_i2, t_i


def test_affine_stage_recovers_a_32_voxel_translation_beyond_the_default_search_range():
    big = smooth_volume((150, 48, 48))
    # fixed(p) = moving(p + 32): a pull map of +32 along axis 0 (4 grid steps of 8: the wide search's labels are
    # whole grid steps, so a translation between two labels is found to within half a step, 4 voxels)
    fixed, moving = big[:, :, 42:122], big[:, :, 10:90]
    cfg = affine.AffineConfig(model="translation")  # grid 8, hw 5: +/-40 voxels
    field, record = affine.global_field(moving, fixed, cfg)
    assert record["model"] == "translation" and record["nodes"][1] >= record["nodes"][0] // 2
    assert abs(field[0, 0].mean().item() - 32) < 1.0 and field[0, 1:].abs().max().item() < 1.0
    # as a stage after another one, by composition: 8 voxels already found, the stage adds the other 24
    disp_in = torch.zeros(1, 3, *fixed.shape[2:])
    disp_in[:, 0] = 8.0
    details = {}
    total = stages.AffineStage(cfg)(moving, fixed, disp_in, None, details)
    assert abs(total[0, 0, 0:40].mean().item() - 32) < 2.0
    assert abs(details["affine"]["matrix"][0][3] - 24) < 2.0


def test_affine_stage_recovers_a_known_affine_map():
    n = 96
    moving = smooth_volume((n, n, n), seed=5)
    # a scaling of about 15% and a shear: displacements vary by several grid steps across the volume
    a = torch.tensor([[0.15, 0.05, 0.0], [0.0, -0.12, 0.04], [0.05, 0.0, 0.10]])
    t = torch.tensor([4.0, -6.0, 8.0])
    axes = [torch.arange(n, dtype=torch.float32)] * 3
    centred = torch.stack(torch.meshgrid(*axes, indexing="ij")) - (n - 1) / 2  # (3, I, J, K)
    truth = (torch.einsum("ca,aijk->cijk", a, centred) + t.view(3, 1, 1, 1))[None]
    fixed = warp_image(moving, truth, padding_mode="border")
    field, record = affine.global_field(moving, fixed, affine.AffineConfig(grid=4, hw=5))
    assert record["model"] == "affine" and not record["fallback"]
    inner = (slice(None), slice(None), slice(24, 72), slice(24, 72), slice(24, 72))
    assert (field - truth)[inner].abs().mean().item() < 1.0
    rows = torch.tensor(record["matrix"])
    assert torch.allclose(rows[:, :3], a, atol=0.03), rows


@pytest.mark.parametrize("bad", [{"model": "rigid"}, {"keep": 0.1}, {"steps": 0}, {"hw": 0}])
def test_affine_config_is_checked(bad):
    with pytest.raises(ValueError):
        affine.AffineConfig(**bad)


def test_cli_affine_stage_records_its_fit_and_its_option_is_refused_without_it(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    args = ["predict", tiny_dataset, "--out", out, "--device", "cpu", "--quiet", "--pairs", "0001_0002",
            "--stages", "affine,search,adam", "--search-grid", "4", "--search-hw", "2", "--io-iters", "2"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    entry = run["pairs"]["0001_0000<--0002_0000"]
    assert run["settings"]["stages"] == ["affine", "search", "adam"]
    assert entry["settings"]["affine"]["model"] == "affine" and entry["affine"]["model"] in ("affine", "translation")
    assert list(entry["stage_seconds"]) == ["affine", "search", "adam"]
    res = invoke(*args, "--affine-model", "translation")  # another setting of the stage: redone, not skipped
    assert res.exit_code == 0 and "1 pairs done" in res.output, res.output
    entry = json.loads((out / "run.json").read_text())["pairs"]["0001_0000<--0002_0000"]
    assert entry["affine"]["model"] == "translation" and entry["affine"]["matrix"][0][:3] == [0.0, 0.0, 0.0]
    res = invoke(*args[:-8], "--affine-model", "translation")  # default stages: no affine stage
    assert res.exit_code == 2 and "--affine-model: the affine stage does not run" in res.output, res.output
