"""A training that goes wrong while it runs stops in one line and keeps the last good epoch: a non-finite loss
(the trainer), a non-finite field or a bad file in validation, an error in a DataLoader worker."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from l2r_submit.cli import main
from l2r_submit.core import dataset
from l2r_submit.nets import checkpoint, regnet
from l2r_submit.training import train

from conftest import torchrun_two, write_one_val_pair_dataset, write_tiny_dataset

SETTINGS = dict(epochs=3, crop=(16, 16, 16), val_every=1, num_workers=0, device="cpu", batch_size=2,
                **{"loss.n_classes": 5, "loss.dice": 0.0})


@pytest.fixture
def ds(tmp_path):
    """Four subjects, one val pair (0001, 0002)."""
    return dataset.load(write_one_val_pair_dataset(tmp_path / "data"))


class _Pairs(torch.utils.data.Dataset):
    """Four random pairs an epoch, named; item ``nan_item`` of epoch ``nan_epoch`` has a NaN voxel."""

    def __init__(self, epoch: int, nan_epoch: int = -1, nan_item: int = -1) -> None:
        self.epoch, self.nan_epoch, self.nan_item = epoch, nan_epoch, nan_item

    def __len__(self) -> int:
        return 4

    def describe(self, index: int) -> str:
        return f"pair {index}"

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.epoch * 10 + index)
        moving = torch.rand(1, 16, 16, 16, generator=g)
        if (self.epoch, index) == (self.nan_epoch, self.nan_item):
            moving[0, 3, 3, 3] = math.nan
        return {"moving": moving, "fixed": torch.roll(moving, 1, dims=1)}


def test_a_non_finite_loss_stops_the_run_before_the_epoch_is_saved(ds, tmp_path):
    """A NaN input trained NaN weights into last.pt at every epoch, logged NaN losses, and the validation
    then died in an IndexError traceback. Now the run stops at the first non-finite loss, naming the step
    and the items of its batch; last.pt keeps the last good epoch."""
    cfg = train.preset_config("symmetric", "tiny", **SETTINGS)
    run = tmp_path / "run"
    with pytest.raises(train.TrainingFailed) as err:
        train.run(cfg, ds, run, progress=False, epoch_data=lambda e: _Pairs(e, nan_epoch=1, nan_item=3))
    message = str(err.value)
    assert message.startswith("epoch 2, step 2: the loss is not finite (") and "\n" not in message
    assert message.endswith(") on the batch of pair 2, pair 3; an input of the batch holds NaN or inf values; "
                            f"stopped before saving the epoch: {run / 'last.pt'} holds epoch 1, the last finished one")
    net, ckpt = checkpoint.load(run / "last.pt")
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in net.state_dict().values())
    assert [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()] == [1]
    assert checkpoint.load(run / "best.pt")[1]["epoch"] == 0


def test_a_diverging_training_is_one_line_and_exit_1(ds, tmp_path, monkeypatch):
    """Not bad input: the inputs are finite (exit 1, where bad input is exit 2)."""
    real = train.registration_step

    def diverging(*args):
        step = real(*args)

        def nan_step(module, batch, share):
            objective, terms = step(module, batch, share)
            return objective * math.nan, {**terms, "total": terms["total"] * math.inf}
        return nan_step

    monkeypatch.setattr(train, "registration_step", diverging)
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(ds.source), "--out", str(run), "--model", "tiny", "--epochs", "1",
                                    "--crop", "16,16,16", "--workers", "0", "--device", "cpu", "--quiet",
                                    "--set", "loss.n_classes=5"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output
    training = train.training_cases(ds, True)
    assert res.output.startswith("error: epoch 1, step 1: the loss is not finite (total=inf) on the batch of ")
    assert all(str(c.image) in res.output for c in training)
    assert res.output.strip().endswith("its inputs are finite, so the training diverged (a lower learning rate or a "
                                       "gradient clip may help); stopped before saving the epoch: no epoch had "
                                       "finished, so no checkpoint was written")
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()


def test_a_non_finite_field_in_validation_stops_the_run_in_one_line(ds, tmp_path, monkeypatch):
    """It was an IndexError traceback from the label warp (evaluation/metrics.py), naming nothing."""
    register = regnet.register
    monkeypatch.setattr(train.regnet, "register", lambda *a: register(*a) * math.nan)
    cfg = train.preset_config("symmetric", "tiny", **SETTINGS)
    run = tmp_path / "run"
    with pytest.raises(train.TrainingFailed) as err:
        train.run(cfg, ds, run, progress=False)
    assert str(err.value) == ("epoch 1: val pair 0001_0000<--0002_0000: the network's field holds NaN or inf values "
                              "(its images are finite): the weights have diverged; no epoch had finished, so no "
                              "checkpoint was written")
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()


def test_validation_names_a_val_file_of_another_shape(ds):
    """It said 'moving labels: shape ... received' and named neither the file nor the pair."""
    from l2r_submit.core import io

    label = ds.pairs("val")[0].moving.label
    io.write_label_map(io.read_labels(label)[:, :, :20], np.eye(4), label)
    net = regnet.build("tiny")
    with pytest.raises(ValueError) as err:
        train.validate(net, ds, torch.device("cpu"), train.losses.LossWeights(n_classes=5))
    assert str(err.value) == f"{label}: label map of shape (24, 20, 20), expected (24, 20, 28) (the dataset's shape)"


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict:
        raise ValueError("/data/imagesTr/x.nii.gz: cannot be read: corrupt gzip stream")


def test_an_error_in_a_dataloader_worker_is_its_one_line(ds, tmp_path):
    """torch re-raises a worker's ValueError with the worker's traceback in its message: the CLI printed
    that traceback as its one-line error (--workers 2, the default)."""
    cfg = train.preset_config("symmetric", "tiny", **{**SETTINGS, "num_workers": 1})
    with pytest.raises(ValueError) as err:
        train.run(cfg, ds, tmp_path / "run", progress=False, epoch_data=lambda e: _Unreadable())
    assert str(err.value) == "/data/imagesTr/x.nii.gz: cannot be read: corrupt gzip stream"


VALIDATE_ON_TWO_RANKS = """
import sys, torch
from l2r_submit.core import dataset
from l2r_submit.nets import regnet
from l2r_submit.training import distributed, losses, train
dist, device = distributed.start(torch.device("cpu"))
try:
    train.validate(regnet.build("tiny"), dataset.load(sys.argv[1]), device, losses.LossWeights(n_classes=5), dist)
    said = "no error"
except ValueError as exc:
    said = str(exc)
finally:
    distributed.stop(dist)
open(f"{sys.argv[2]}/rank{dist.rank}.txt", "w").write(said)  # the ranks' prints could interleave on one pipe
"""


def test_a_val_pair_failing_on_one_rank_stops_every_rank_with_its_line(tmp_path):
    """Under torchrun the rank of the bad pair stopped alone; the other died in gloo ('Connection closed by
    peer') with a traceback. Now every rank gives the same line."""
    from l2r_submit.core import io

    path = write_tiny_dataset(tmp_path / "data")
    spec = json.loads(path.read_text())
    spec["registration_val"] = spec["registration_val"][:2]  # (0001, 0002) on rank 0, (0001, 0003) on rank 1
    path.write_text(json.dumps(spec))
    label = path.parent / "labelsTr" / "AbdomenCTCT_0003_0000.nii.gz"
    io.write_label_map(io.read_labels(label)[:, :, :20], np.eye(4), label)
    script = tmp_path / "validate.py"
    script.write_text(VALIDATE_ON_TWO_RANKS)
    res = torchrun_two([str(script), str(path), str(tmp_path)])
    assert res.returncode == 0, res.stderr[-3000:]
    line = f"{label}: label map of shape (24, 20, 20), expected (24, 20, 28) (the dataset's shape)"
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == [line, line]
