"""The global search and the stages that compose (issue 13)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from l2r_submit.core import dataset
from l2r_submit.registration import features, instance, predict, search, stages
from l2r_submit.core.spatial import warp_image

from conftest import invoke


def smooth_volume(shape, seed=0, scale=150.0):
    """Smooth random texture (about HU: soft-tissue contrasts). Shape: -> (1, 1, *shape)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, *shape, generator=g)
    for _ in range(3):
        x = F.avg_pool3d(F.pad(x, (2,) * 6, mode="replicate"), 5, stride=1)
    return x / x.std() * scale


def smooth_field(shape, amplitude=6.0):
    """A known smooth deformation, voxels: a translation plus one sine period per axis."""
    i, j, k = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    return torch.stack([8 + amplitude * torch.sin(2 * torch.pi * j / shape[1]),
                        -6 + amplitude * torch.cos(2 * torch.pi * k / shape[2]),
                        amplitude * torch.sin(2 * torch.pi * i / shape[0])])[None]


def test_search_recovers_a_20_voxel_translation():
    big = smooth_volume((120, 48, 48))
    fixed, moving = big[:, :, 10:82], big[:, :, 30:102]  # fixed(p) = moving(p - 20): pull map -20 along axis 0
    disp = search.search(moving, fixed, search.SearchConfig(grid=6, hw=4))
    inner = disp[0, :, 30:66, 12:36, 12:36]  # nodes whose match lies inside the moving volume
    assert abs(inner[0].mean().item() + 20) < 2.5 and inner[0].std().item() < 1.5
    assert inner[1:].abs().mean().item() < 0.5
    before = (moving - fixed)[..., 30:66, 12:36, 12:36].abs().mean()
    after = (warp_image(moving, disp) - fixed)[..., 30:66, 12:36, 12:36].abs().mean()
    assert after < 0.5 * before  # a 2-voxel quantisation error remains on this fine texture


def test_search_recovers_a_smooth_deformation():
    shape = (48, 48, 48)
    moving = smooth_volume(shape, seed=1)
    true = smooth_field(shape)
    fixed = warp_image(moving, true, padding_mode="border")
    disp = search.search(moving, fixed, search.SearchConfig(grid=4, hw=4))
    inner = (slice(10, 38),) * 3
    epe = (disp - true).norm(dim=1)[0][inner].mean().item()
    size = true.norm(dim=1)[0][inner].mean().item()
    assert epe < 0.3 * size, (epe, size)  # a grid-step search: well below the size of the motion


def test_vectorised_coupled_step_equals_the_loop_form():
    torch.manual_seed(0)
    hw, n_nodes = 2, 11
    labels = search.label_offsets(hw)
    cost = torch.rand(len(labels), n_nodes, dtype=torch.float64)
    u = torch.randn(n_nodes, 3, dtype=torch.float64) * 1.5
    alpha = 0.7
    loop = torch.tensor([min(range(len(labels)), key=lambda l: cost[l, n].item()
                             + alpha * ((labels[l].double() - u[n]) ** 2).sum().item()) for n in range(n_nodes)])
    vec = search.coupled_argmin(cost, labels.double(), u, alpha, chunk_mb=1)
    assert torch.equal(vec, loop)
    assert torch.equal(search.coupled_argmin(cost, labels.double(), torch.zeros_like(u), 0.0, 1), cost.argmin(0))


def test_the_prior_keeps_a_far_label_only_where_it_is_clearly_cheaper():
    """The pull is weight x mean cost x |l|^2 / hw^2: a label at the edge of the range along one axis pays
    weight x the mean cost. Node 0's far label is 0.1 cheaper than zero, node 1's 0.5."""
    hw = 2
    labels = search.label_offsets(hw)
    far, zero = labels.tolist().index([hw, 0, 0]), labels.tolist().index([0, 0, 0])
    cost = torch.ones(len(labels), 2, dtype=torch.float64)
    cost[far, 0], cost[far, 1] = 0.9, 0.5
    assert torch.equal(cost.argmin(0), torch.tensor([far, far]))
    mean = cost.mean().item()
    priored = search.add_prior(cost.clone(), hw, 0.3)
    assert priored[far].tolist() == pytest.approx([0.9 + 0.3 * mean, 0.5 + 0.3 * mean])
    assert priored[zero].tolist() == [1.0, 1.0]  # no pull at zero
    assert priored.argmin(0).tolist() == [zero, far]
    assert torch.equal(search.add_prior(cost.clone(), hw, 0.0), cost)
    with pytest.raises(ValueError, match="prior"):
        search.SearchConfig(prior=-0.1)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="prior"):
            search.SearchConfig(prior=bad)


def test_a_moderate_prior_still_finds_a_clear_translation_and_a_strong_one_stays_near_zero():
    big = smooth_volume((120, 48, 48))
    fixed, moving = big[:, :, 10:82], big[:, :, 30:102]  # pull map -20 along axis 0, as above
    inner = (0, slice(30, 66), slice(12, 36), slice(12, 36))
    found = search.search(moving, fixed, search.SearchConfig(grid=6, hw=4, prior=0.3))[:, 0][inner]
    assert abs(found.mean().item() + 20) < 2.5
    held = search.search(moving, fixed, search.SearchConfig(grid=6, hw=4, prior=20.0))[:, 0][inner]
    assert held.abs().mean().item() < 6


def test_cost_volume_matches_a_direct_shift_and_is_chunked():
    torch.manual_seed(0)
    f, m = torch.rand(1, 12, 5, 4, 6), torch.rand(1, 12, 5, 4, 6)
    hw = 1
    cost = search.cost_volume(f, m, hw, chunk_mb=1)
    padded = F.pad(m, (hw,) * 6, mode="replicate")
    for n, (a, b, c) in enumerate(search.label_offsets(hw).long().tolist()):  # label l compares f(p), m(p + l)
        raw = ((f - padded[:, :, 1 + a:6 + a, 1 + b:5 + b, 1 + c:7 + c]) ** 2).sum(1, keepdim=True)
        boxed = raw
        for _ in range(2):  # two 3^3 means of the replicate-padded cost
            boxed = F.conv3d(F.pad(boxed, (1,) * 6, mode="replicate"), torch.full((1, 1, 3, 3, 3), 1 / 27))
        assert torch.allclose(cost[n], boxed.reshape(-1), atol=1e-5)
    # memory: no temporary of the cost-volume size is larger than chunk_mb
    assert search.chunk_size(2197, 10**6, 256) * 2197 * 4 <= 256 << 20
    assert search.chunk_size(2197, 10**6, 1) == (1 << 20) // (4 * 2197)
    assert search.chunk_size(10**9, 5, 1) == 1
    big = search.cost_volume(f, m, hw, chunk_mb=256)
    assert torch.equal(cost, big)


def test_composing_two_stages_equals_warping_twice():
    shape = (48, 40, 40)
    moving = smooth_volume(shape, seed=2)
    first = smooth_field(shape, amplitude=3.0)
    true_second = smooth_field(shape, amplitude=4.0).flip(1)  # another large smooth motion, axes permuted
    fixed = warp_image(warp_image(moving, first, padding_mode="border"), true_second, padding_mode="border")
    stage = stages.SearchStage(search.SearchConfig(grid=4, hw=3))
    out = stage(moving, fixed, first)
    warped_first = warp_image(moving, first, padding_mode="border")
    second = search.search(warped_first, fixed, stage.cfg)
    assert second.abs().mean() > 3.0  # the second stage moved things, by a lot
    twice = warp_image(warp_image(moving, first), second)
    once = warp_image(moving, out)
    inner = (..., slice(8, 40), slice(8, 32), slice(8, 32))
    scale = moving[inner].abs().mean()
    assert (once - twice)[inner].abs().mean() < 0.05 * scale  # interpolation error only
    added = warp_image(moving, first + second)  # adding fields is not the same when they are large
    assert (once - twice)[inner].abs().mean() < 0.5 * (added - twice)[inner].abs().mean()


def test_stages_run_in_order_and_report_seconds():
    shape = (24, 24, 24)
    moving, fixed = smooth_volume(shape, 3), smooth_volume(shape, 4)
    built = stages.build(("adam", "search"), None, search.SearchConfig(grid=4, hw=2), instance.IOConfig(3))
    assert [s.name for s in built] == ["search", "adam"]
    disp, seconds = stages.run(built, moving, fixed)
    assert disp.shape == (1, 3, *shape) and list(seconds) == ["search", "adam"]
    with pytest.raises(ValueError, match="needs a network"):
        stages.build(("network",), None, search.SearchConfig(), instance.IOConfig(0))
    assert stages.parse_stages("adam, network") == ("network", "adam")
    for bad in ("", "network,network", "rigid"):
        with pytest.raises(ValueError, match="stages"):
            stages.parse_stages(bad)


def test_an_mr_like_volume_goes_through_every_stage(tmp_path, tiny_ckpt):  # noqa: F811
    """Intensities in [0, 1], modality MR: percentiles normalise it (a CT window would flatten it)."""
    big = smooth_volume((64, 40, 40), seed=5)
    big = (big - big.min()) / (big.max() - big.min())
    fixed, moving = big[:, :, 4:52], big[:, :, 12:60]  # pull map -8 along axis 0
    ct_window = features.normalise_intensity(fixed, mode=True)
    assert ct_window.std() < 1e-3  # what the CT path would see: nothing
    assert features.normalise_intensity(fixed, mode=False).std() > 0.1
    disp = search.search(moving, fixed, search.SearchConfig(grid=4, hw=3), ct=False)
    assert abs(disp[0, 0, 16:40, 8:32, 8:32].mean().item() + 8) < 1.5
    refined = instance.refine(disp, moving, fixed, instance.IOConfig(5), ct=False)
    assert torch.isfinite(refined).all()
    # the whole pipeline, from a dataset JSON whose modality is MR
    import nibabel as nib

    root = tmp_path / "mr"
    (root / "imagesTr").mkdir(parents=True)
    for name, vol in (("0001", fixed), ("0002", moving)):
        nib.save(nib.Nifti1Image(vol[0, 0].numpy().astype(np.float32), np.eye(4)),
                 root / "imagesTr" / f"MR_{name}_0000.nii.gz")
    data = {"name": "MR", "modality": {"0": "MR"}, "tensorImageShape": {"0": list(fixed.shape[2:])},
            "training": [], "registration_val": [{"fixed": "./imagesTr/MR_0001_0000.nii.gz",
                                                  "moving": "./imagesTr/MR_0002_0000.nii.gz"}],
            "registration_test": []}
    (root / "MR_dataset.json").write_text(json.dumps(data))
    ds = dataset.load(root / "MR_dataset.json")
    assert ds.modality == "MR" and not ds.is_ct
    out = tmp_path / "out"
    res = invoke("predict", root / "MR_dataset.json", "--out", out, "--checkpoint", tiny_ckpt, "--device", "cpu",
                 "--quiet", "--io-iters", "3", "--stages", "network,search,adam", "--search-grid", "4",
                 "--search-hw", "3")
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["settings"]["stages"] == ["network", "search", "adam"]
    assert manifest["settings"]["modality"] == "MR"
    entry = next(iter(manifest["pairs"].values()))
    assert list(entry["stage_seconds"]) == ["network", "search", "adam"]


def test_cli_refuses_options_of_a_stage_that_does_not_run(tiny_dataset, tiny_ckpt, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    args = ["predict", tiny_dataset, "--out", out, "--device", "cpu", "--quiet", "--pairs", "0001_0002"]
    for extra, named in ((["--stages", "search", "--io-iters", "3"], "--io-iters"),
                         (["--stages", "search", "--io-field", "displacement"], "--io-field"),
                         (["--stages", "adam", "--search-hw", "3", "--search-centre", "none"],
                          "--search-hw, --search-centre"),
                         # weights named: the default stages are network,adam, without the search
                         (["--checkpoint", str(tiny_ckpt), "--search-prior", "0.1"], "--search-prior"),
                         # --io-iters 0 turns adam off, named or not
                         (["--stages", "network,adam", "--checkpoint", str(tiny_ckpt), "--io-iters", "0",
                           "--io-reg", "2"], "--io-reg"),
                         # weights named where the network does not run
                         (["--checkpoint", str(tiny_ckpt), "--stages", "search,adam"], "--checkpoint"),
                         (["--checkpoint", str(tiny_ckpt), "--no-network"], "--checkpoint")):
        res = invoke(*args, *extra)
        assert res.exit_code == 2, (extra, res.output)
        assert f"{named}: the " in res.output and "would change nothing" in res.output, res.output
        assert "Traceback" not in res.output
        assert res.output.count("\n") == 1 and not out.exists()
    # --io-iters 0 asks for no refinement: consistent with stages without adam
    run = [*args, "--stages", "search", "--search-grid", "4", "--search-hw", "2", "--io-iters", "0"]
    res = invoke(*run)
    assert res.exit_code == 0, res.output
    # a rerun with nothing to do is still refused when it names an unused option (even at its default value)
    res = invoke(*run, "--io-field", "velocity")
    assert res.exit_code == 2 and "--io-field: the adam stage does not run" in res.output, res.output


def test_cli_stage_switches(tiny_dataset, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    args = ["predict", tiny_dataset, "--out", out, "--device", "cpu", "--quiet",
            "--pairs", "0001_0002"]
    res = invoke(*args, "--stages", "network,adam", "--no-network", "--io-iters", "0")
    assert res.exit_code == 2 and "no registration stage left" in res.output
    assert invoke(*args, "--stages", "network,fancy").exit_code == 2
    assert invoke(*args, "--stages", "search", "--search-grid", "4", "--search-hw", "2").exit_code == 0
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["settings"]["stages"] == ["search"] and manifest["settings"]["search"]["hw"] == 2
    assert manifest["settings"]["search"]["prior"] == 0.0
    # another prior is another request: redone without --overwrite, not skipped as "nothing to do"
    assert invoke(*args, "--stages", "search", "--search-grid", "4", "--search-hw", "2", "--search-prior",
                  "0.3").exit_code == 0
    assert json.loads((out / "run.json").read_text())["settings"]["search"]["prior"] == 0.3
    res = invoke(*args, "--stages", "search", "--search-prior", "-1")
    assert res.exit_code == 2 and "--search-prior" in res.output
    assert list(next(iter(manifest["pairs"].values()))["stage_seconds"]) == ["search"]
    cfg = predict.PredictConfig(dataset.load(tiny_dataset), out, io=instance.IOConfig(0), network=False,
                                stages=("network", "search", "adam"))
    assert predict.active_stages(cfg) == ("search",)
    assert predict.active_stages(predict.PredictConfig(dataset.load(tiny_dataset), out)) == predict.DEFAULT_STAGES


def test_the_refinement_defaults_follow_the_stages_that_run(tiny_dataset, tiny_ckpt, tmp_path):  # noqa: F811
    """After the search the refinement is half resolution only; without it, quarter then half, as run.json
    says; the Python API resolves the same defaults as the CLI."""
    base = ["predict", tiny_dataset, "--device", "cpu", "--quiet", "--pairs", "0001_0002", "--io-iters", "2"]
    velocity_after, velocity_without = predict.DEFAULT_IO_REG_AFTER_SEARCH["velocity"], predict.DEFAULT_IO_REG["velocity"]
    assert velocity_after != velocity_without and predict.DEFAULT_IO_ITERS != predict.DEFAULT_IO_ITERS_NO_SEARCH
    cases = {"after": (["--stages", "search,adam", "--search-grid", "4", "--search-hw", "2"], 0.0, velocity_after),
             "adam": (["--stages", "adam"], instance.IOConfig().coarse_fraction, velocity_without),
             "named": (["--checkpoint", tiny_ckpt], instance.IOConfig().coarse_fraction, velocity_without)}
    assert instance.IOConfig().coarse_fraction > 0.0
    for name, (args, coarse, reg) in cases.items():
        res = invoke(*base, "--out", tmp_path / name, *args)
        assert res.exit_code == 0, res.output
        manifest = json.loads((tmp_path / name / "run.json").read_text())
        io = manifest["settings"]["io"]
        assert (io["iters"], io["coarse_fraction"], io["reg"]) == (2, coarse, reg), name
        assert manifest["allocator"]  # what the CLI did with the allocator is recorded
    ds = dataset.load(tiny_dataset)
    api = {"after": predict.PredictConfig(ds, tmp_path), "adam": predict.PredictConfig(ds, tmp_path, stages=("adam",)),
           "named": predict.PredictConfig(ds, tmp_path, checkpoint=tiny_ckpt)}
    for name, cfg in api.items():
        want = (predict.DEFAULT_IO_ITERS, 0.0, velocity_after) if name == "after" else (
            predict.DEFAULT_IO_ITERS_NO_SEARCH, instance.IOConfig().coarse_fraction, velocity_without)
        assert (cfg.io.iters, cfg.io.coarse_fraction, cfg.io.reg) == want, name


def test_featureless_regions_stay_still():
    """Air against air costs the same for every label: the search must not pick the first label there."""
    cost = torch.zeros(len(search.label_offsets(2)), 4 * 4 * 4)
    field = search.coupled_convex(cost, (4, 4, 4), 2, (0.1, 1.0), 1, 1)
    assert field.abs().max() == 0


def test_inverse_consistency_makes_the_two_fields_inverse():
    shape = (16, 16, 16)
    forward = smooth_field(shape, amplitude=1.0) * 0.5
    backward = torch.zeros_like(forward)  # a swapped-pair search that found nothing
    f, b = search.inverse_consistency(forward, backward, 10)
    inner = (..., slice(4, 12), slice(4, 12), slice(4, 12))
    before = (forward + warp_image(backward, forward, padding_mode="border"))[inner].abs().mean()
    after = (f + warp_image(b, f, padding_mode="border"))[inner].abs().mean()  # compose(b, f) ~ identity
    assert after < 0.05 * before


def test_grid_pooling_is_the_block_mean_and_a_cut_block_averages_what_it_has():
    x = torch.randn(1, 2, 13, 8, 6, generator=torch.Generator().manual_seed(5))
    pooled = search.pool_to_grid(x, 6)
    assert pooled.shape == (1, 2, 3, 2, 1)
    a = x[0].numpy()
    for i, (i0, i1) in enumerate(((0, 6), (6, 12), (12, 13))):  # numpy means of the blocks, the last cut
        for j, (j0, j1) in enumerate(((0, 6), (6, 8))):
            want = a[:, i0:i1, j0:j1, 0:6].mean(axis=(1, 2, 3))
            np.testing.assert_allclose(pooled[0, :, i, j, 0].numpy(), want, rtol=1e-5, atol=1e-6)
    # an axis shorter than one block: one node, the mean of what it has
    np.testing.assert_allclose(search.pool_to_grid(x[:, :, :, :, :4], 6)[0, :, 0, 0, 0].numpy(),
                               a[:, 0:6, 0:6, 0:4].mean(axis=(1, 2, 3)), rtol=1e-5)


def test_search_and_refinement_share_the_full_resolution_descriptors(monkeypatch):
    shape = (30, 24, 36)
    moving, fixed = smooth_volume(shape, 7), smooth_volume(shape, 8)
    cfg, io_cfg = search.SearchConfig(grid=4, hw=2), predict.default_io(after_search=True)
    alone = instance.refine(search.search(moving, fixed, cfg), moving, fixed, io_cfg)  # each its own MIND
    calls = []
    real = features.mind_ssc  # every stage reaches it through features.image_descriptors: count full-resolution calls
    monkeypatch.setattr(features, "mind_ssc", lambda x, *a, **k: calls.append(x.shape) or real(x, *a, **k))
    shared, seconds = stages.run(stages.build(("search", "adam"), None, cfg, io_cfg), moving, fixed)
    assert [s for s in calls if tuple(s[2:]) == shape] == [(1, 1, *shape)] * 2  # once per image, not four times
    assert torch.equal(shared, alone) and list(seconds) == ["search", "adam"]
    # not shared where the two stages would read different descriptors
    built = stages.build(("search", "adam"), None, cfg, instance.IOConfig(4, similarity="mse"))
    assert stages.shared_views(built, moving, fixed) is None
    assert stages.shared_views(stages.build(("adam",), None, cfg, io_cfg), moving, fixed) is None
    quarter_only = instance.IOConfig(4, coarse_fraction=1.0, field="velocity")  # no half level: nothing to share
    assert stages.shared_views(stages.build(("search", "adam"), None, cfg, quarter_only), moving, fixed) is None
    with pytest.raises(ValueError, match="pooled MIND"):
        instance.refine(torch.zeros(1, 3, *shape), moving, fixed, instance.IOConfig(4, similarity="mse"),
                        half=(fixed, fixed))
