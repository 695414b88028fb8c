"""Every command's CUDA path, run on a CUDA device simulated on the CPU (tests/fake_cuda.py).

No GPU has run this code in CI: a tensor made on the CPU inside a stage that runs on the GPU, or ``.numpy()``
of a GPU tensor, would fail every pair of an organiser's ``docker run --gpus all`` and pass every CPU test.
The simulated device enforces PyTorch's device rules on the CPU; the first test checks that it does, the
others run the commands with ``--device cuda`` and compare with ``--device cpu`` where the work is the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import invoke, write_one_val_pair_dataset
from fake_cuda import DeviceMixError, OnCuda, simulated_cuda
from test_segment import challenge_and_cohort


@pytest.fixture
def cuda(monkeypatch):
    with simulated_cuda(monkeypatch):
        yield


def _ok(result) -> None:
    assert result.exit_code == 0, result.output


def test_the_simulated_device_refuses_what_cuda_refuses(cuda):
    x = torch.randn(2, 3).to("cuda")
    assert isinstance(x, OnCuda) and x.device == torch.device("cuda", 0) and x.is_cuda
    assert torch.equal((x + torch.zeros(2, 3, device=x.device)).cpu(), x.cpu())
    assert isinstance(x * torch.tensor(2.0), OnCuda)  # a 0-dim CPU tensor is accepted, as on CUDA
    with pytest.raises(DeviceMixError, match="add: a CPU tensor of shape \\(2, 3\\)"):
        x + torch.zeros(2, 3)
    with pytest.raises(DeviceMixError, match="numpy"):
        x.numpy()
    # indexing, as CUDA: CPU indices into a CUDA tensor and CPU values through slices are fine; CUDA indices
    # into a CPU tensor, and CPU values through tensor indices, are not; cat/stack take no CPU scalar either
    index = torch.tensor([1, 0])
    assert x[index].shape == (2, 3) and isinstance(x[index], OnCuda)
    x[0:1] = torch.ones(1, 3)
    with pytest.raises(DeviceMixError, match="cuda:0 indices into a CPU tensor"):
        torch.arange(5)[index.to("cuda")]
    with pytest.raises(DeviceMixError, match="CPU values put into a cuda:0 tensor"):
        x[index] = torch.ones(2, 3)
    with pytest.raises(DeviceMixError, match="stack"):
        torch.stack([x[0, 0], torch.tensor(1.0)])
    array = np.zeros(3, np.float32)
    torch.as_tensor(array, device="cuda").add_(1)  # a copy to the device, as on CUDA: the array is untouched
    assert array.sum() == 0
    assert type(x.cpu()) is torch.Tensor and x.cpu().numpy().shape == (2, 3)
    conv = torch.nn.Conv3d(1, 2, 3)
    image = torch.randn(1, 1, 5, 5, 5, device="cuda")
    with pytest.raises(DeviceMixError, match="conv3d"):
        conv(image)  # a module left on the CPU
    conv.to(image.device)
    velocity = torch.zeros(3, device="cuda", requires_grad=True)  # a leaf, as the refinement makes it
    optim = torch.optim.Adam([velocity, *conv.parameters()], lr=0.1)
    (conv(image).sum() + ((velocity - 1) ** 2).sum()).backward()
    optim.step()
    assert velocity.is_leaf and isinstance(velocity.grad, OnCuda) and float(velocity.detach().cpu()[0]) > 0


def _field(folder: Path) -> np.ndarray:
    return np.asarray(nib.load(folder / "disp_0001_0000_0002_0000.nii.gz").dataobj)


def test_predict_with_every_stage_on_cuda_gives_the_cpu_field(tmp_path, monkeypatch):
    ds = write_one_val_pair_dataset(tmp_path / "data")
    args = ["predict", ds, "--stages", "network,affine,search,adam", "--io-iters", "5", "--threads", "1"]
    _ok(invoke(*args, "--out", tmp_path / "cpu", "--device", "cpu"))
    with simulated_cuda(monkeypatch):
        result = invoke(*args, "--out", tmp_path / "gpu", "--device", "cuda", "--qc", tmp_path / "qc", "--evaluate")
    _ok(result)
    record = json.loads((tmp_path / "gpu" / "run.json").read_text())
    assert record["device"] == "cuda" and [p["status"] for p in record["pairs"].values()] == ["done"]
    assert set(record["pairs"]["0001_0000<--0002_0000"]["stage_seconds"]) == {"network", "affine", "search", "adam"}
    np.testing.assert_allclose(_field(tmp_path / "gpu"), _field(tmp_path / "cpu"), atol=1e-4)
    assert (tmp_path / "qc" / "qc_0001_0002.png").stat().st_size > 0
    assert (tmp_path / "gpu" / "metrics.json").exists()


@pytest.mark.parametrize("options", [
    ("--io-field", "displacement", "--io-similarity", "mse"),
    ("--shard", "0/1", "--sequential"),
])
def test_predict_options_on_cuda(tmp_path, cuda, options):
    result = invoke("predict", write_one_val_pair_dataset(tmp_path / "data"), "--out", tmp_path / "out", "--device", "cuda",
                    "--io-iters", "5", "--threads", "1", *options)
    _ok(result)
    assert _field(tmp_path / "out").shape == (24, 20, 28, 3)


def test_predict_mr_on_cuda(tmp_path, cuda):
    """Percentile normalisation (a non-CT modality) on the device."""
    ds = write_one_val_pair_dataset(tmp_path / "data")
    data = json.loads(ds.read_text())
    data["modality"] = {"0": "MR"}
    ds.write_text(json.dumps(data))
    _ok(invoke("predict", ds, "--out", tmp_path / "out", "--device", "cuda", "--threads", "1"))


def test_train_resume_then_predict_with_the_checkpoint_on_cuda(tmp_path, cuda):
    ds = write_one_val_pair_dataset(tmp_path / "data")
    run = tmp_path / "run"
    args = ["train", ds, "--out", run, "--model", "tiny", "--crop", "16,16,16", "--batch-size", "2",
            "--val-every", "1", "--workers", "0", "--device", "cuda", "--quiet"]
    _ok(invoke(*args, "--epochs", "1"))
    _ok(invoke(*args, "--epochs", "2", "--resume"))
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    _ok(invoke("predict", ds, "--out", tmp_path / "pred", "--device", "cuda", "--checkpoint", run / "best.pt",
               "--stages", "network,adam", "--io-iters", "3", "--threads", "1"))


def test_segment_train_and_predict_on_cuda(tmp_path, cuda):
    challenge, cohort = challenge_and_cohort(tmp_path)
    _ok(invoke("segment", "train", challenge, cohort, "--out", tmp_path / "seg", "--model", "tiny", "--epochs", "1",
               "--crop", "16,16,16", "--batch-size", "3", "--workers", "0", "--device", "cuda", "--quiet"))
    result = invoke("segment", "predict", tmp_path / "seg" / "best.pt", challenge, cohort, "--out",
                    tmp_path / "labels", "--device", "cuda", "--quiet")
    _ok(result)
    assert "5 written, 0 already there, 0 failed" in result.output


def test_whole_volume_training_items_are_made_on_cuda_and_train(tmp_path, cuda):
    """``scripts/train_shipped.py --whole --device cuda``: items made on the device, then trained on."""
    from l2r_submit.core import dataset, io
    from l2r_submit.training import train
    from l2r_submit.training.volume_pairs import VolumePairs

    ds = dataset.load(write_one_val_pair_dataset(tmp_path / "data"))
    anatomies = [(io.read_volume(c.image, np.float32).array, io.read_labels(c.label)) for c in ds.training[2:]]
    on_cpu = VolumePairs(anatomies, 2, seed=0, epoch=0, max_disp=3.0)[1]
    on_gpu = VolumePairs(anatomies, 2, seed=0, epoch=0, max_disp=3.0, device="cuda")[1]
    for key, value in on_gpu.items():
        assert isinstance(value, OnCuda), key
        torch.testing.assert_close(value.cpu(), on_cpu[key], atol=1e-4, rtol=0)
    cfg = train.preset_config("symmetric", "tiny", epochs=1, crop=None, batch_size=2, val_every=1, num_workers=0,
                              device="cuda", threads=1, seed=0)
    last = train.run(cfg, ds, tmp_path / "run", epoch_data=lambda epoch: VolumePairs(
        anatomies, 2, cfg.seed, epoch, max_disp=3.0, n_windows=cfg.model.in_channels, device="cuda"))
    assert last["epoch"] == 1 and (tmp_path / "run" / "best.pt").exists()
