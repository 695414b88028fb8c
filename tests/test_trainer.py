"""The shared trainer: registration training through it equals the loop it replaced."""

import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from l2r_submit.nets import checkpoint
from l2r_submit.nets.blocks import ConvNormAct
from l2r_submit.training import train
from l2r_submit.cli import main

sys.path.insert(0, str(Path(__file__).parent / "data"))
from make_trainer_reference import SETTINGS, reference_dataset  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "trainer_reference.pt"


def test_registration_training_equals_the_loop_before_the_shared_trainer(tmp_path):
    """Same seed, same data: the weights and every logged number of the pre-trainer loop (commit 6a38548,
    stored by tests/data/make_trainer_reference.py), within float tolerance, on CPU."""
    ref = torch.load(REFERENCE, weights_only=True)
    ds = reference_dataset(tmp_path / "data")
    cfg = train.preset_config("symmetric", "tiny", **SETTINGS)
    train.run(cfg, ds, tmp_path / "run", progress=False)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["state_dict"].keys() == ref["state_dict"].keys()
    # A conv bias followed by a non-affine InstanceNorm cannot change the output (the norm removes each
    # channel's mean), so its true gradient is zero and Adam turns rounding noise into steps of +/- lr:
    # on another CPU (AVX-512 against AVX2) it ends up to 0.02 away. It is left out; every other weight is
    # compared to well below one step of lr (1e-2), which a missed or extra step or a changed loss exceeds.
    net, _ = checkpoint.load(tmp_path / "run" / "last.pt")
    dead = {f"{name}.conv.bias" for name, m in net.named_modules()
            if isinstance(m, ConvNormAct) and isinstance(m.norm, torch.nn.InstanceNorm3d) and m.conv.bias is not None}
    assert dead and dead < set(ref["state_dict"])
    for key, value in ref["state_dict"].items():
        if key not in dead:
            torch.testing.assert_close(ckpt["state_dict"][key], value, rtol=1e-3, atol=1e-3, msg=key)
    rows = [{k: v for k, v in r.items() if k not in ("seconds", "world_size")} for r in json.loads(ckpt["history"])]
    expected = json.loads(ref["history"])
    assert [list(r) for r in rows] == [list(r) for r in expected]
    for got, want in zip(rows, expected):
        for key in want:
            assert abs(got[key] - want[key]) <= 1e-5 * max(1.0, abs(want[key])), key
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 1


def test_accumulating_two_batches_of_one_equals_one_batch_of_two(tmp_path):
    """Without the batch-pooled Dice every term is a mean over equal-sized items, so two accumulated
    batches of 1 (each loss halved) give the gradient of one batch of 2: the same Adam steps."""
    ds = reference_dataset(tmp_path / "data")
    common = {**SETTINGS, "epochs": 1, "model.norm": "none"}  # no norm: no bias without effect (see test_distributed)
    whole = train.preset_config("pretrain-unsupervised", "tiny", **common)
    split = train.preset_config("pretrain-unsupervised", "tiny", **{**common, "batch_size": 1, "accumulate": 2})
    train.run(whole, ds, tmp_path / "whole", progress=False)
    train.run(split, ds, tmp_path / "split", progress=False)
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_gradient_settings_parse_and_are_checked():
    cfg = train.preset_config("symmetric", "tiny")
    assert train.parse_setting(cfg, "grad_clip", "0.5") == 0.5
    assert train.parse_setting(cfg, "grad_clip", "none") is None
    assert train.parse_setting(cfg, "accumulate", "4") == 4
    for bad in ({"grad_clip": 0.0}, {"accumulate": 0}):
        with pytest.raises(ValueError, match="received, expected"):
            train.preset_config("symmetric", "tiny", **bad)


def test_an_inconsistent_launch_environment_is_one_line_and_exit_2(tmp_path):
    ds = reference_dataset(tmp_path / "data")
    args = ["train", str(ds.source), "--out", str(tmp_path / "run"), "--model", "tiny", "--epochs", "1",
            "--crop", "16,16,16", "--workers", "0", "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(main, args, env={"WORLD_SIZE": "2", "RANK": "0"})
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set" in lines[0]
    assert not (tmp_path / "run" / "last.pt").exists()
