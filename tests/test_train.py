import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from l2r_submit.nets import checkpoint, config, regnet
from l2r_submit.training import data, losses, train
from l2r_submit.core import dataset
from l2r_submit.cli import main

from conftest import write_one_val_pair_dataset

SETTINGS = dict(epochs=2, crop=(16, 16, 16), val_every=1, num_workers=0, device="cpu", batch_size=2,
                **{"loss.n_classes": 5})


def _dataset_with_val_pair(root, n_subjects: int = 4):
    """The tiny dataset with one val pair (0001, 0002): subjects 0003.. are the training subjects."""
    return dataset.load(write_one_val_pair_dataset(root, n_subjects))


@pytest.fixture
def ds4(tmp_path):
    return _dataset_with_val_pair(tmp_path / "data")


def test_epoch_pairs_scheme():
    pairs = data.epoch_pairs(5, epoch=3, seed=1)
    assert sorted(m for m, _ in pairs) == [0, 1, 2, 3, 4]  # every image moving once
    assert all(m != f for m, f in pairs)
    assert pairs == data.epoch_pairs(5, 3, 1) and pairs != data.epoch_pairs(5, 4, 1)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 16)
    blob = torch.exp(-((x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) * 4))[None, None]
    fixed, moving = blob, torch.roll(blob, 2, dims=2)
    net = regnet.build("tiny")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    w = losses.LossWeights(dice=0.0)
    first = None
    for _ in range(25):
        terms = losses.registration_loss(net(moving, fixed), moving, fixed, None, None, w)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        first = first if first is not None else terms["total"].item()
    assert terms["total"].item() < 0.7 * first


def test_resume_reproduces_uninterrupted_run(ds4, tmp_path):
    cfg = train.preset_config("symmetric", "tiny", **SETTINGS)
    train.run(cfg, ds4, tmp_path / "full", progress=False)
    train.run(cfg, ds4, tmp_path / "cut", progress=False, max_steps=1)  # killed after epoch 1 (1 step)
    first = json.loads((tmp_path / "cut" / "log.jsonl").read_text().splitlines()[-1])
    assert first["epoch"] == 1
    train.run(cfg, ds4, tmp_path / "cut", resume=True, progress=False)
    a, _ = checkpoint.load(tmp_path / "full" / "last.pt")
    b, _ = checkpoint.load(tmp_path / "cut" / "last.pt")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert (tmp_path / "full" / "log.csv").read_text().count("\n") == 3
    longer = train.preset_config("symmetric", "tiny", **{**SETTINGS, "epochs": 5})
    train.run(longer, ds4, tmp_path / "long", progress=False, max_steps=1)  # meant to run 5 epochs, killed
    train.run(cfg, ds4, tmp_path / "long", resume=True, progress=False)  # finished with the epoch count of cfg
    c, _ = checkpoint.load(tmp_path / "long" / "last.pt")
    for k, v in a.state_dict().items():
        assert torch.equal(v, c.state_dict()[k]), k
    shorter = train.preset_config("symmetric", "tiny", **{**SETTINGS, "epochs": 1})
    with pytest.raises(ValueError, match="already trained 2 epochs, more than --epochs 1"):
        train.run(shorter, ds4, tmp_path / "long", resume=True, progress=False)
    other = train.preset_config("symmetric", "tiny", **{**SETTINGS, "lr": 1e-3})
    with pytest.raises(ValueError, match="other settings"):
        train.run(other, ds4, tmp_path / "cut", resume=True, progress=False)


def test_presets_and_settings():
    cfg = train.preset_config("pretrain-unsupervised", "cpu-small", **{"loss.reg": 0.05})
    assert cfg.labels == "none" and cfg.loss.dice == 0.0 and cfg.loss.reg == 0.05 and cfg.symmetric
    assert not train.preset_config("baseline").symmetric
    assert train.parse_setting(cfg, "model.deep_supervision", "false") is False
    assert train.parse_setting(cfg, "crop", "64,64,32") == (64, 64, 32)
    with pytest.raises(ValueError, match="cannot read 'False2' as bool"):
        train.parse_setting(cfg, "model.deep_supervision", "False2")
    with pytest.raises(ValueError, match="unknown training setting"):
        train.preset_config("symmetric", colour="red")
    with pytest.raises(ValueError, match="give --labels-dir"):
        train.preset_config("pretrain-noisy")


def test_pluggable_labels_from_a_folder(ds4, tmp_path):
    case = ds4.training[0]
    assert data.folder_labels(tmp_path)(case) is None
    (tmp_path / case.image.name).write_bytes(case.label.read_bytes())
    assert data.folder_labels(tmp_path)(case) == tmp_path / case.image.name
    item = data.PairDataset(ds4.training, [(0, 1)], (8, 8, 8), 0, 0, data.no_labels, 3)[0]
    assert set(item) == {"moving", "fixed"} and item["moving"].shape == (3, 8, 8, 8)


def test_train_cli_end_to_end_and_finetune(ds4, tmp_path):
    run = tmp_path / "run"
    args = [str(ds4.source), "--out", str(run), "--model", "tiny", "--epochs", "2", "--crop", "16,16,16",
            "--val-every", "1", "--workers", "0", "--device", "cpu", "--set", "loss.n_classes=5", "--quiet"]
    res = CliRunner().invoke(main, ["train", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "DSC=" in res.output
    net, ckpt = checkpoint.load(run / "best.pt")
    assert net.cfg == config.PRESETS["tiny"] and "DSC" in ckpt["metrics"]
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    res = CliRunner().invoke(main, ["train", args[0], "--out", str(tmp_path / "ft"), "--preset", "finetune",
                                    "--init", str(run / "last.pt"), *args[3:]], catch_exceptions=False)
    assert res.exit_code == 0, res.output


def test_max_seconds_stops_on_a_validated_epoch(ds4, tmp_path):
    cfg = train.preset_config("symmetric", "tiny", **{**SETTINGS, "epochs": 5, "val_every": 3})
    row = train.run(cfg, ds4, tmp_path / "run", progress=False, max_seconds=0.0)
    assert row["epoch"] == 1 and "val_loss" in row  # validated although val_every is 3
    assert (tmp_path / "run" / "best.pt").exists()


def test_val_subjects_out_by_default_final_submission_ships_the_last_epoch(ds4, tmp_path, monkeypatch):
    cfg = train.preset_config("symmetric", "tiny", **SETTINGS)
    assert cfg.exclude_val_subjects and [c.id for c in train.training_cases(ds4, cfg.exclude_val_subjects)] == [
        "0003", "0004"]
    assert train.preset_config("symmetric").model.deep_supervision  # --model paper: as every paper run
    scores = iter([0.9, 0.1, 0.9, 0.1])  # epoch 1 scores best, epoch 2 is the last
    monkeypatch.setattr(train, "validate", lambda *a, **k: {"val_loss": 0.0, "DSC": next(scores)})
    train.run(cfg, ds4, tmp_path / "paper", progress=False)
    assert checkpoint.load(tmp_path / "paper" / "best.pt")[1]["epoch"] == 0  # chosen on held-out subjects
    final = train.preset_config("symmetric", "tiny", **{**SETTINGS, "exclude_val_subjects": False})
    train.run(final, ds4, tmp_path / "final", progress=False)
    assert checkpoint.load(tmp_path / "final" / "best.pt")[1]["epoch"] == 1  # the last, whatever the val score
    assert len(train.training_cases(ds4, final.exclude_val_subjects)) == 4


class _NoisyPairs(torch.utils.data.Dataset):
    """Items drawn from the global Python and NumPy generators (as user code may do)."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        import random

        base = torch.from_numpy(np.random.rand(1, 16, 16, 16).astype(np.float32))
        return {"moving": base, "fixed": torch.roll(base, 1 + int(random.random() * 3), dims=1)}


def test_resume_restores_python_and_numpy_generators(ds4, tmp_path):
    cfg = train.preset_config("symmetric", "tiny", **{**SETTINGS, "loss.dice": 0.0, "epochs": 2, "val_every": 5})
    train.run(cfg, ds4, tmp_path / "full", progress=False, epoch_data=lambda e: _NoisyPairs())
    train.run(cfg, ds4, tmp_path / "cut", progress=False, epoch_data=lambda e: _NoisyPairs(), max_steps=1)
    train.run(cfg, ds4, tmp_path / "cut", resume=True, progress=False, epoch_data=lambda e: _NoisyPairs())
    a, _ = checkpoint.load(tmp_path / "full" / "last.pt")
    b, ckpt = checkpoint.load(tmp_path / "cut" / "last.pt")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"}


def _one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output
    for needle in needles:
        assert needle in res.output, res.output


def test_train_cli_bad_settings_are_one_line_errors(ds4, tmp_path):
    base = [str(ds4.source), "--out", str(tmp_path / "run"), "--model", "tiny", "--epochs", "1", "--workers", "0",
            "--device", "cpu", "--set", "loss.n_classes=5", "--quiet"]
    runner = CliRunner()
    _one_line_error(runner.invoke(main, ["train", *base, "--set", "foo.bar=1"]), "unknown training setting 'foo.bar'")
    _one_line_error(runner.invoke(main, ["train", *base, "--set", "model.colour=1"]), "'model.colour'")
    _one_line_error(runner.invoke(main, ["train", *base, "--crop", "0,0,0"]), "crop: 0,0,0", "positive")
    _one_line_error(runner.invoke(main, ["train", *base, "--crop", "16,16"]), "crop: 16,16")
    _one_line_error(runner.invoke(main, ["train", *base, "--crop", "500,500,500"]),
                    "crop 500,500,500 is larger than the volumes (24,20,28)")
    assert not (tmp_path / "run" / "last.pt").exists()
    res = runner.invoke(main, ["train", *base, "--crop", "16,16,16", "--max-steps-not-an-option"])
    assert res.exit_code == 2
    res = runner.invoke(main, ["train", *base, "--crop", "16,16,16"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["train", *base, "--crop", "16,16,16", "--lr", "1e-3", "--epochs", "2", "--resume"])
    _one_line_error(res, "last.pt: the run was started with other settings (lr: 0.0001 -> 0.001)")
    # the same command again without --resume replaced the finished run's checkpoints and log silently
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    res = runner.invoke(main, ["train", *base, "--crop", "16,16,16"])
    _one_line_error(res, f"{run}: holds a training run (last.pt, best.pt); continue it with --resume, or give "
                         "another --out")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("args, message", [
    (["--set", "loss.similarity=bogus"], "loss.similarity: 'bogus' received, expected mse or ncc"),
    (["--set", "loss.dice=nan"], "loss.dice: nan received, expected a finite weight of 0 or more"),
    (["--set", "loss.dice=-5"], "loss.dice: -5.0 received"),
    (["--set", "loss.sim=inf"], "loss.sim: inf received"),
    (["--set", "loss.reg=-0.01"], "loss.reg: -0.01 received"),
    (["--set", "loss.n_classes=1"], "loss.n_classes: 1 received"),
    (["--lr", "inf"], "lr: inf received, expected a finite learning rate above 0"),
    (["--lr", "nan"], "lr: nan received"),
    (["--lr", "0"], "lr: 0.0 received"),
    (["--lr", "-1e-4"], "lr: -0.0001 received"),
    (["--set", "lr=inf"], "lr: inf received"),
    (["--set", "grad_clip=inf"], "grad_clip: inf received"),
    (["--set", "labels=bogus"], "labels: 'bogus' received, expected dataset, folder or none"),
    (["--set", "epochs=0"], "epochs: 0 received"),
    (["--set", "num_workers=-1"], "num_workers: -1 received"),
    (["--crop", "abc"], "crop: abc received, expected three positive sizes"),
    # sizes of the network: a zero or negative one was a torch traceback from the first convolution
    (["--set", "model.channel_multiplier=0"], "channel_multiplier: 0 received, expected a whole number of 1 or more"),
    (["--set", "model.channel_multiplier=-1"], "channel_multiplier: -1 received"),
    (["--set", "model.base_channels=4,0,16"], "base_channels: 4,0,16 received, expected whole numbers of 1 or more"),
    (["--set", "model.encoder_convs=1,-1"], "encoder_convs: 1,-1 received, expected whole numbers of 0 or more"),
])
def test_bad_loss_settings_and_learning_rates_are_refused_before_training(ds4, tmp_path, args, message):
    """An unknown similarity (it fell through to NCC), a loss weight or learning rate that is not finite or
    out of range (an infinite lr crashed after an epoch in the metrics): one line, exit 2, no run folder."""
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(ds4.source), "--out", str(out), "--model", "tiny", "--epochs", "1",
                                    "--crop", "16,16,16", "--workers", "0", "--device", "cpu",
                                    "--set", "loss.n_classes=5", "--quiet", *args])
    _one_line_error(res, message)
    assert not out.exists()


def test_an_out_that_cannot_be_written_is_refused_before_training(ds4, tmp_path, monkeypatch):
    """As ``l2r predict``: an --out where no file can be created is one line, exit 2, before any epoch (it was
    a traceback when the first checkpoint was written)."""
    from fault_helpers import deny_files_in

    out = tmp_path / "run"
    deny_files_in(monkeypatch, out)
    monkeypatch.setattr(train.trainer, "fit", lambda *a, **k: pytest.fail("training started"))
    res = CliRunner().invoke(main, ["train", str(ds4.source), "--out", str(out), "--model", "tiny", "--epochs", "1",
                                    "--crop", "16,16,16", "--workers", "0", "--device", "cpu", "--quiet"])
    _one_line_error(res, f"{out}: --out is not writable (Permission denied)")


def test_ctrl_c_and_sigterm_during_training_say_what_is_kept_with_their_exit_codes(tmp_path, capsys):
    """It was click's 'Aborted!' with exit 1 (Ctrl-C) and a silent 143 (SIGTERM)."""
    from l2r_submit.commands.common import Terminated, training_stops

    for exc, code in ((KeyboardInterrupt(), 130), (Terminated(), 143)):
        with pytest.raises(SystemExit) as stopped:
            with training_stops(tmp_path):
                raise exc
        assert stopped.value.code == code
    err = capsys.readouterr().err.splitlines()
    assert err == [f"interrupted: no epoch had finished, nothing is kept in {tmp_path}",
                   f"stopped by SIGTERM: no epoch had finished, nothing is kept in {tmp_path}"]
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(SystemExit):
        with training_stops(tmp_path):
            raise KeyboardInterrupt()
    assert capsys.readouterr().err.strip() == (f"interrupted: {tmp_path / 'last.pt'} holds the last finished epoch; "
                                               "run the same command with --resume to go on")


def test_resume_refuses_other_training_images_and_records_what_ran(ds4, tmp_path):
    """A resume on a dataset with other training images was accepted; config.json and the checkpoints named
    no dataset, and the device as asked ('auto'), not as used; --device cpu after auto was refused."""
    import torch

    out = tmp_path / "run"
    base = ["train", "--out", str(out), "--model", "tiny", "--crop", "16,16,16", "--workers", "0", "--quiet",
            "--set", "loss.n_classes=5", "--final-submission"]
    res = CliRunner().invoke(main, [base[0], str(ds4.source), *base[1:], "--epochs", "1"])
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == str(ds4.source) and config["device_used"] == "cpu" and config["training_images"] == 4
    assert len(torch.load(out / "last.pt", weights_only=True)["training_images"]) == 4
    data = json.loads(ds4.source.read_text())
    data["training"] = data["training"][:3]
    fewer = ds4.source.with_name("three.json")
    fewer.write_text(json.dumps(data))
    res = CliRunner().invoke(main, [base[0], str(fewer), *base[1:], "--epochs", "2", "--resume", "--device", "cpu"])
    _one_line_error(res, "last.pt: the run was started on other training images (4 then, 3 now; e.g. ")
    res = CliRunner().invoke(main, [base[0], str(ds4.source), *base[1:], "--epochs", "2", "--resume",
                                    "--device", "cpu", "--threads", "1"])
    assert res.exit_code == 0, res.output
