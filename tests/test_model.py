import json

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from l2r_submit.nets import checkpoint, config, inputs, regnet
from l2r_submit.training import losses
from l2r_submit.core import spatial


def test_zero_init_gives_zero_displacement_on_odd_sizes():
    torch.manual_seed(0)
    for name, shape in (("tiny", (25, 18, 21)), ("tiny", (16, 16, 16)), ("tiny", (100, 90, 70))):
        net = regnet.build(name)
        x = torch.randn(1, 1, *shape)
        out = net(x, torch.randn(1, 1, *shape))
        assert out[0].shape == (1, 3, *shape)
        assert out[0].abs().max().item() <= 1e-5


def test_without_norm_equal_inputs_give_zero_displacement_whatever_the_weights():
    torch.manual_seed(0)
    net = regnet.build("tiny", norm="none", deep_supervision=True)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)  # far from zero-init: the property must come from the architecture
    x = torch.randn(1, 1, 20, 18, 22)
    for disp in net(x, x.clone()):
        assert disp.abs().max().item() <= 1e-5
    assert net(x, torch.randn_like(x))[0].abs().max().item() > 1e-2  # and it is not a constant zero
    with_norm = regnet.build("tiny", deep_supervision=True)
    with torch.no_grad():
        for p in with_norm.parameters():
            p.normal_(0, 0.5)
    assert with_norm(x, x.clone())[0].abs().max().item() > 1e-2  # instance norm breaks it
    with pytest.raises(ValueError, match="norm: 'batch' received"):
        regnet.build("tiny", norm="batch")


def test_paper_preset_parameter_count():
    n = sum(p.numel() for p in regnet.build("paper").parameters())
    assert 30.5e6 < n < 31.0e6  # the paper reports about 30.8 M


def test_integration_by_hand():
    g = torch.full((1, 3, 4, 3, 2), 0.5)
    g[0, 0, :, 0, 0] = torch.tensor([0.5, 1.0, 0.25, 0.5])
    disp = inputs.integrate(g)
    # p(i) = 2 cumsum(g) - 1 = [0, 2, 2.5, 3.5] -> disp = p - i = [0, 1, 0.5, 0.5]
    assert disp[0, 0, :, 0, 0].tolist() == [0.0, 1.0, 0.5, 0.5]
    assert disp[0, 1:].abs().max() == 0 and disp[0, 0, :, 1:].abs().max() == 0


def test_integrated_grid_warps_like_map_coordinates():
    torch.manual_seed(1)
    g = (torch.rand(1, 3, 9, 8, 7, dtype=torch.float64) * 0.4 + 0.3)
    disp = inputs.integrate(g)
    img = torch.randn(1, 1, 9, 8, 7, dtype=torch.float64)
    ident = np.meshgrid(*[np.arange(n) for n in (9, 8, 7)], indexing="ij")
    pos = ident + disp[0].numpy()
    ref = map_coordinates(img[0, 0].numpy(), pos, order=1)
    inside = np.all([(pos[a] >= 0) & (pos[a] <= n - 1) for a, n in enumerate((9, 8, 7))], axis=0)
    got = spatial.warp_image(img, disp)[0, 0].numpy()
    np.testing.assert_allclose(got[inside], ref[inside], atol=1e-10)
    assert (np.diff(pos[0], axis=0) > 0).all()  # monotone along each axis: no folding along an axis


def test_preprocess_windows():
    hu = torch.tensor([-1000.0, -160.0, 40.0, 240.0, 1500.0]).view(1, 1, 5, 1, 1)
    x = inputs.preprocess(hu, 3)
    assert x.shape == (1, 3, 5, 1, 1)
    assert x[0, 0, :, 0, 0].tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    assert x.min() >= 0 and x.max() <= 1


def test_orientation_round_trip_and_warp_consistency():
    torch.manual_seed(2)
    img = torch.randn(1, 1, 6, 7, 8, dtype=torch.float64)
    disp = torch.randn(1, 3, 6, 7, 8, dtype=torch.float64) * 0.3
    theirs_img = inputs.to_model_frame(img, "estienne2020")
    # the displacement expressed in their frame: inverse of disp_from_model_frame
    t = inputs.to_model_frame(disp, "estienne2020")
    theirs_disp = torch.stack([-t[:, 2], -t[:, 1], t[:, 0]], dim=1)
    assert torch.equal(inputs.disp_from_model_frame(theirs_disp, "estienne2020"), disp)
    warped_ours = spatial.warp_image(img, disp)
    warped_theirs = spatial.warp_image(theirs_img, theirs_disp)
    assert torch.allclose(inputs.to_model_frame(warped_ours, "estienne2020"), warped_theirs, atol=1e-12)


def test_losses_analytic():
    torch.manual_seed(3)
    x = torch.rand(1, 1, 12, 12, 12)
    assert losses.mse(x, x).item() == 0.0
    assert losses.local_ncc(x, x).item() == pytest.approx(0.0, abs=1e-4)
    assert losses.local_ncc(x, 2 * x).item() == pytest.approx(0.0, abs=1e-4)  # NCC ignores intensity scale
    assert losses.local_ncc(x, torch.rand_like(x)).item() > 0.5
    seg = torch.randint(0, 4, (1, 1, 10, 10, 10))
    oh = losses.one_hot(seg, 4)
    assert losses.soft_dice_loss(oh, oh).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.soft_dice_loss(oh, losses.one_hot(torch.zeros_like(seg), 4)).item() > 0.9
    zero = torch.zeros(1, 3, 10, 10, 10)
    assert losses.gradient_l1(zero).item() == 0.0 and losses.folded_fraction(zero).item() == 0.0
    shift = zero.clone()
    shift[:, 0] = 2.0  # a translation: gradients unchanged except the first plane
    assert losses.gradient_l1(shift).item() == pytest.approx(1.0 / 30)  # only g_0 of the first plane: 1.5
    fold = zero.clone()
    fold[:, 0] = -3.0 * torch.arange(10.0).view(10, 1, 1)  # x -> -2x: folded everywhere
    assert losses.folded_fraction(fold).item() == 1.0


def test_known_shift_lowers_similarity_loss():
    img = torch.zeros(1, 1, 16, 16, 16)
    img[:, :, 5:9, 5:9, 5:9] = 1.0
    moved = torch.roll(img, 2, dims=2)
    shift = torch.zeros(1, 3, 16, 16, 16)
    shift[:, 0] = 2.0  # warped(p) = moved(p + 2) = img(p)
    assert losses.mse(spatial.warp_image(moved, shift), img).item() < 1e-10
    assert losses.mse(moved, img).item() > 0.01


def test_symmetric_loss_swaps_roles():
    torch.manual_seed(4)
    m, f = torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)
    ms, fs = torch.randint(0, 3, (1, 1, 8, 8, 8)), torch.randint(0, 3, (1, 1, 8, 8, 8))
    a, b = torch.randn(1, 3, 8, 8, 8) * 0.5, torch.randn(1, 3, 8, 8, 8) * 0.5
    w = losses.LossWeights(n_classes=3)
    both = losses.registration_loss([a], m, f, ms, fs, w, disps_back=[b])
    forward = losses.direction_terms(a, m, f, ms, fs, w)
    backward = losses.direction_terms(b, f, m, fs, ms, w)
    for name in ("sim", "reg", "dice"):
        assert both[name].item() == pytest.approx((forward[name] + backward[name]).item() / 2, rel=1e-6)
    assert both["total"].item() == pytest.approx(
        (both["sim"] + w.reg * both["reg"] + both["dice"]).item(), rel=1e-6)


def test_checkpoint_round_trip_and_corrupt_files(tmp_path):
    net = regnet.build("tiny")
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    path = checkpoint.save(tmp_path / "a.pt", net, epoch=3, metrics={"DSC": 0.5})
    loaded, ckpt = checkpoint.load(path)
    assert ckpt["epoch"] == 3 and loaded.cfg == net.cfg
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="trunc.pt: not a readable checkpoint"):
        checkpoint.load(trunc)
    torch.save({"format": checkpoint.FORMAT, "format_version": 1, "model_config": config.PRESETS["tiny"].to_dict(),
                "state_dict": regnet.build("cpu-small").state_dict()}, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="mismatch.pt: weights do not match") as err:
        checkpoint.load(tmp_path / "mismatch.pt")
    # torch says what differs only after its first line; the one-line message keeps it (it was cut there)
    assert "\n" not in str(err.value) and "Unexpected key(s) in state_dict: \"encoder.levels.2" in str(err.value)
    import pickle

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": print}))
    with pytest.raises(ValueError, match="evil.pt: not a plain-tensor checkpoint .* not loaded"):
        checkpoint.load(tmp_path / "evil.pt")


@pytest.mark.parametrize("variant", ["3ch_ds", "3ch_nods", "1ch_ds", "1ch_nods"])
def test_importer_on_synthetic_original_checkpoints(tmp_path, repo_root, variant):
    keys = json.loads((repo_root / "tests" / "data" / "original_state_dict_keys.json").read_text())
    spec = keys[f"abdo_frontiersnet_cm8_classic_in_{variant}"]
    torch.manual_seed(0)
    state = {f"module.{k}": torch.randn(shape) * 0.01 for k, shape in spec.items()}
    path = tmp_path / "orig.pth"
    torch.save({"epoch": 300, "state_dict": state, "val_loss": 0.1, "optizmizer": {"state": {}}}, path)
    if variant.startswith("1"):  # same keys and shapes as the brain sister project's networks
        with pytest.raises(ValueError, match="orig.pth: a 1-channel original checkpoint .* --source abdominal"):
            checkpoint.load(path)
        net = checkpoint.import_original(path, source="abdominal")
    else:
        net, _ = checkpoint.load(path)
    assert net.cfg.in_channels == (3 if variant.startswith("3") else 1)
    assert net.cfg.orientation == "estienne2020" and net.cfg.channels == [32, 64, 128, 256, 512]
    ours = net.state_dict()
    for k, shape in spec.items():
        if not k.startswith("deep_blocks"):
            assert torch.equal(ours[checkpoint.rename_original_key(k)], state[f"module.{k}"])
    disp = regnet.register(net, torch.randn(1, 1, 16, 16, 32) * 300, torch.randn(1, 1, 16, 16, 32) * 300)
    assert disp.shape == (1, 3, 16, 16, 32) and torch.isfinite(disp).all()
    bad = dict(state)
    bad["module.hippocampus.head.weight"] = torch.zeros(1)
    torch.save({"state_dict": bad, "optizmizer": {}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth: unknown key 'hippocampus.head.weight'"):
        checkpoint.import_original(tmp_path / "bad.pth", source="abdominal")


def test_import_weights_cli(tmp_path, repo_root):
    from click.testing import CliRunner

    from l2r_submit.cli import main

    keys = json.loads((repo_root / "tests" / "data" / "original_state_dict_keys.json").read_text())
    spec = keys["abdo_frontiersnet_cm8_classic_in_3ch_ds"]
    torch.save({"epoch": 1, "state_dict": {k: torch.zeros(s) for k, s in spec.items()}, "optizmizer": {}},
               tmp_path / "orig.pth")
    res = CliRunner().invoke(main, ["import-weights", str(tmp_path / "orig.pth"), "--out", str(tmp_path / "ours.pt")])
    assert res.exit_code == 0 and "3-channel input" in res.output
    net, ckpt = checkpoint.load(tmp_path / "ours.pt")
    assert ckpt["format"] == checkpoint.FORMAT and net.cfg.orientation == "estienne2020"
    (tmp_path / "junk.pth").write_bytes(b"junk")
    res = CliRunner().invoke(main, ["import-weights", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "junk.pth: not a torch checkpoint file" in res.output
    # from a stranger's test: an empty file; a file of other keys (it was sent to --source abdominal first);
    # a first conv alone (a max() of an empty sequence)
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save({"state_dict": {"foo.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    first = "encoder.input.add_conv.weight"
    torch.save({"state_dict": {first: torch.zeros(spec[first])}}, tmp_path / "stem.pth")
    for name, words in (("empty.pth", "empty.pth: an empty file (0 bytes), not a checkpoint"),
                        ("other.pth", "other.pth: unknown key 'foo.weight'; is this a registration network"),
                        ("stem.pth", "does not fit the seed architecture (no encoder level in it)")):
        res = CliRunner().invoke(main, ["import-weights", str(tmp_path / name), "--out", str(tmp_path / "x.pt")])
        assert res.exit_code == 2 and words in res.output, res.output


def test_deep_supervision_outputs():
    """Coarse heads keep PyTorch's default init (as the authors'); only the final head is zeroed."""
    torch.manual_seed(0)
    net = regnet.build("tiny", deep_supervision=True)
    m, f = torch.rand(1, 1, 12, 10, 14), torch.rand(1, 1, 12, 10, 14)
    out = net(m, f)
    assert len(out) == 3 and all(d.shape == (1, 3, 12, 10, 14) for d in out)
    assert out[0].abs().max() <= 1e-5 and out[1].abs().max() > 1e-3


def _original_file(path, repo_root, variant="abdo_frontiersnet_cm8_classic_in_1ch_ds", **extra):
    spec = json.loads((repo_root / "tests" / "data" / "original_state_dict_keys.json").read_text())[variant]
    torch.save({"epoch": 1, "state_dict": {k: torch.zeros(s) for k, s in spec.items()}, "optizmizer": {}, **extra},
               path)
    return path


def test_import_weights_source_brain_and_ambiguous_files(tmp_path, repo_root):
    from click.testing import CliRunner

    from l2r_submit.cli import main

    orig = _original_file(tmp_path / "one.pth", repo_root)
    out = tmp_path / "ours.pt"
    for args, expect in (([], "one.pth: a 1-channel original checkpoint"),
                         (["--source", "brain"], "one.pth: a network of the authors' brain (hippocampus) project")):
        res = CliRunner().invoke(main, ["import-weights", str(orig), "--out", str(out), *args])
        assert res.exit_code == 2 and expect in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1 and not out.exists()
    res = CliRunner().invoke(main, ["import-weights", str(orig), "--out", str(out), "--source", "abdominal"])
    assert res.exit_code == 0 and "1-channel input" in res.output
    assert checkpoint.load(out)[0].cfg.in_channels == 1  # our file loads without asking again
    three = _original_file(tmp_path / "three.pth", repo_root, "abdo_frontiersnet_cm8_classic_in_3ch_nods")
    res = CliRunner().invoke(main, ["import-weights", str(three), "--out", str(tmp_path / "b.pt"), "--source", "brain"])
    assert res.exit_code == 2 and "brain" in res.output
    # an existing file (a trained run's best.pt was replaced silently), a folder: refused before converting
    kept = out.read_bytes()
    for target, words in ((out, "--out exists; remove it first"), (tmp_path, "--out is a folder")):
        res = CliRunner().invoke(main, ["import-weights", str(three), "--out", str(target)])
        assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output
    assert out.read_bytes() == kept


def test_numpy_val_loss_imports_and_other_pickles_are_refused_in_our_words(tmp_path, repo_root):
    orig = _original_file(tmp_path / "np.pth", repo_root, "abdo_frontiersnet_cm8_classic_in_3ch_ds",
                          val_loss=np.float64(0.25))
    net, ckpt = checkpoint.load(orig)
    assert ckpt["val_loss"] == 0.25 and net.cfg.in_channels == 3
    other = _original_file(tmp_path / "np2.pth", repo_root, "abdo_frontiersnet_cm8_classic_in_3ch_ds",
                           val_loss=0.1, extra=np.float64(1.0))
    with pytest.raises(ValueError, match=r"np2.pth: not a plain-tensor checkpoint \(NumPy objects \['extra'\]\)"):
        checkpoint.load(other)
    torch.save({"state_dict": {}, "x": print}, tmp_path / "obj.pt")
    with pytest.raises(ValueError) as err:
        checkpoint.load(tmp_path / "obj.pt")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'obj.pt'}: not a plain-tensor checkpoint") and "not loaded" in msg
    assert "weights_only" not in msg and "Re-running" not in msg and "\n" not in msg


def test_files_that_are_not_a_registration_checkpoint_are_named_for_what_they_are(tmp_path, repo_root):
    """A JSON or an image said 'holds Python objects ... unpickling can run code'; a folder 'not found'; a
    segmenter 'not an l2r_submit checkpoint'; importing our own checkpoint asked for --source abdominal."""
    from l2r_submit.nets import seg_checkpoint, segnet
    from l2r_submit.registration.quick_rerun import resolve_checkpoint

    (tmp_path / "config.json").write_text('{"lr": 1}')
    with pytest.raises(ValueError, match=r"config.json: not a torch checkpoint file \(it starts with b'\{\"lr'\)"):
        checkpoint.load(tmp_path / "config.json")
    with pytest.raises(ValueError, match="is a folder; a checkpoint is a file"):
        checkpoint.load(tmp_path)
    with pytest.raises(ValueError, match="is a folder; --checkpoint names a checkpoint file"):
        resolve_checkpoint(tmp_path, tmp_path)
    seg = seg_checkpoint.save(tmp_path / "seg.pt", segnet.build("tiny"))
    with pytest.raises(ValueError, match="seg.pt: a segmenter checkpoint"):
        checkpoint.load(seg)
    ours = checkpoint.save(tmp_path / "ours.pt", regnet.build("tiny"))
    with pytest.raises(ValueError, match="ours.pt: already an l2r_submit checkpoint, nothing to import"):
        checkpoint.import_original(ours)


def test_register_refuses_inputs_outside_its_contract_in_one_line():
    """A batch of 2 moving against 1 fixed passed silently (broadcast), channels were counted after the input
    windows ('6 channels received, expected 3' for 2), numpy arrays and tiny volumes failed inside torch."""
    import numpy as np

    net = regnet.build("tiny").eval()
    ok = torch.zeros(1, 1, 16, 16, 16)
    cases = [((torch.zeros(2, 1, 16, 16, 16), ok), r"moving \(2, 1, 16, 16, 16\) and fixed \(1, 1, 16, 16, 16"),
             ((torch.zeros(1, 2, 16, 16, 16), ok), "moving: 2 channels received, expected 1"),
             ((ok, np.zeros((1, 1, 16, 16, 16))), "fixed: a torch.Tensor .* not ndarray"),
             ((torch.zeros(1, 16, 16, 16), ok), r"moving: shape \(1, 16, 16, 16\) received, expected \(B, C"),
             ((torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4)), "fixed: volumes of .* too small"),
             ((ok, torch.full((1, 1, 16, 16, 16), float("nan"))), "fixed: holds NaN or inf values")]
    for (moving, fixed), message in cases:
        with pytest.raises(ValueError, match=message):
            regnet.register(net, moving, fixed)
    assert regnet.register(net, ok, ok).shape == (1, 3, 16, 16, 16)
