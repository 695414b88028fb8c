"""Distributed data parallel on CPU (gloo): two processes started by torchrun train what one process
trains with the same global batch, and a two-process checkpoint resumes in one process."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import torchrun_two

from l2r_submit.core import dataset
from l2r_submit.training import distributed, train
from l2r_submit.nets import config, regnet

sys.path.insert(0, str(Path(__file__).parent / "data"))
from make_trainer_reference import SETTINGS, reference_dataset  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "trainer_reference.pt"
REPO = Path(__file__).resolve().parents[1]


def _torchrun(args: list[str], timeout: float = 150.0) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m l2r_submit ARGS``, killed (whole group) after ``timeout``."""
    return torchrun_two(["-m", "l2r_submit", *args], timeout)


def _cli_args(dataset_json: Path, out: Path, epochs: int) -> list[str]:
    return ["train", str(dataset_json), "--out", str(out), "--model", "tiny", "--epochs", str(epochs),
            "--crop", "16,16,16", "--batch-size", str(SETTINGS["batch_size"]), "--lr", str(SETTINGS["lr"]),
            "--val-every", "1", "--workers", "0", "--device", "cpu", "--threads", "1",
            "--set", f"loss.n_classes={SETTINGS['loss.n_classes']}", "--quiet"]


# Biases of the convs followed by InstanceNorm: the norm subtracts each channel's mean, so they change
# nothing and their true gradient is 0; Adam turns the rounding noise of that 0 into lr-sized steps,
# whose sign depends on the order of float sums (one process or two). Compared through the output instead.
NULL_BIASES = re.compile(r"levels\.\d+\.(down|up|convs\.\d+)\.conv\.bias$")


def _assert_same_network(a: dict, b: dict, atol: float = 1e-5, atol_disp: float = 1e-4) -> None:
    """The same weights (null-effect biases aside) and the same displacement (voxels) on a random pair."""
    assert a.keys() == b.keys()
    for key in a:
        if not NULL_BIASES.search(key):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=atol, msg=key)
    nets = [regnet.RegistrationNet(config.PRESETS["tiny"]).eval() for _ in range(2)]
    for net, state in zip(nets, (a, b)):
        net.load_state_dict(state)
    x = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(nets[0](x[:1], x[1:])[0], nets[1](x[:1], x[1:])[0], rtol=0, atol=atol_disp)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One epoch, global batch 2, two processes (one item each per step)."""
    root = tmp_path_factory.mktemp("ddp")
    ds = reference_dataset(root / "data")
    spec = json.loads(ds.source.read_text())  # both directions of the val pair: each rank validates one
    spec["registration_val"] += [{"fixed": v["moving"], "moving": v["fixed"]} for v in spec["registration_val"]]
    ds.source.write_text(json.dumps(spec))
    ds = dataset.load(ds.source)  # the same training subjects (0003-0006): the reference run's
    result = _torchrun(_cli_args(ds.source, root / "ddp", epochs=1))
    assert result.returncode == 0, result.stderr[-2000:]
    return ds, root / "ddp"


def test_two_processes_train_what_one_process_trains(two_process_run, tmp_path):
    ds, ddp_dir = two_process_run
    cfg = train.preset_config("symmetric", "tiny", **{**SETTINGS, "epochs": 1})
    single = train.run(cfg, ds, tmp_path / "one", progress=False)
    two = torch.load(ddp_dir / "last.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    _assert_same_network(two["state_dict"], one["state_dict"])
    row = json.loads(two["history"])[-1]
    assert row["world_size"] == 2 and single["world_size"] == 1 and two["world_size"] == 2
    for key in ("train_total", "train_sim", "train_dice", "train_reg", "val_loss", "DSC", "HD95", "LogJacDetStd"):
        assert row[key] == pytest.approx(single[key], rel=1e-4, abs=1e-6), key
    assert json.loads((ddp_dir / "config.json").read_text())["world_size"] == 2
    assert len((ddp_dir / "log.jsonl").read_text().splitlines()) == 1  # rank 0 alone wrote the log


def test_a_two_process_checkpoint_resumes_in_one_process(two_process_run, tmp_path):
    """Epoch 1 on two processes, epoch 2 resumed on one: the weights of the one-process two-epoch run."""
    ds, ddp_dir = two_process_run
    run_dir = tmp_path / "resumed"
    run_dir.mkdir()
    for name in ("last.pt", "config.json", "log.jsonl", "log.csv"):
        (run_dir / name).write_bytes((ddp_dir / name).read_bytes())
    cfg = train.preset_config("symmetric", "tiny", **SETTINGS)  # 2 epochs
    row = train.run(cfg, ds, run_dir, resume=True, progress=False)
    ref = torch.load(REFERENCE, weights_only=True)
    # Epoch 2 starts from the two-process weights, equal to the one-process ones up to rounding (and the
    # null biases); Adam's first steps move every weight by about +-lr whatever the gradient's size, so
    # rounding grows there to ~3e-4 (measured; one epoch fewer differs by 1.8e-2): the tolerance is lr / 10
    # on the weights and 0.03 voxel on a displacement of up to 10 voxels (an epoch fewer: 4.7 voxels).
    _assert_same_network(torch.load(run_dir / "last.pt", weights_only=True)["state_dict"], ref["state_dict"],
                         atol=SETTINGS["lr"] / 10, atol_disp=0.03)
    assert row["epoch"] == 2 and row["world_size"] == 1
    assert [r["world_size"] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())] == [2, 1]


def test_global_batches_split_over_ranks_into_the_single_process_batches():
    for n, batch, world in ((7, 4, 2), (8, 2, 2), (9, 6, 3)):
        single = [idx for idx, _ in distributed.rank_batches(n, batch, 0, 1)]
        per_rank = [distributed.rank_batches(n, batch, r, world) for r in range(world)]
        for k, whole in enumerate(single):
            assert sum((per_rank[r][k][0] for r in range(world)), []) == whole
            assert all(per_rank[r][k][1] == len(whole) for r in range(world))
    with pytest.raises(ValueError, match="fewer than the 2 processes"):
        distributed.rank_batches(5, 2, 0, 2)  # last batch: 1 item for 2 processes


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2"}, "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "outside WORLD_SIZE"),
    ({"WORLD_SIZE": "two", "RANK": "0"}, "not an integer"),
    ({"RANK": "0"}, "not an integer"),
])
def test_inconsistent_launch_environment_is_one_line(env, message):
    with pytest.raises(ValueError, match=message) as err:
        distributed.read_env(env)
    assert "\n" not in str(err.value)


def test_single_process_environments():
    assert not distributed.read_env({}).distributed
    assert not distributed.read_env({"WORLD_SIZE": "1", "RANK": "0"}).distributed


def test_batch_not_divisible_by_the_processes_is_refused_in_one_line():
    assert distributed.check_batch(4, 2) == 2
    with pytest.raises(ValueError, match="--batch-size 3 is the global batch; it must be a multiple of the 2"):
        distributed.check_batch(3, 2)


STAND_IN = """
import datetime, json, sys
import torch.distributed as tdist
from l2r_submit.training import distributed

# NCCL is absent from a CPU build: a stand-in registered, as NCCL is, for CUDA tensors only (gloo doing the work)
tdist.Backend.register_backend("cudaonly", lambda store, rank, size, timeout: tdist.ProcessGroupGloo(
    store, rank, size, timeout), devices=["cuda"])
backend = sys.argv[1].replace("nccl", "cudaonly")
tdist.init_process_group(backend, store=tdist.HashStore(), rank=0, world_size=1,
                         timeout=datetime.timedelta(seconds=20))
d = distributed.Dist(rank=0, world_size=2, local_rank=0, backend=backend)  # collectives as rank 0 of two runs them
try:
    print(json.dumps([d.weighted_mean({"loss": 1.0}, 0.5), d.gather("x")[0], d.main_says(True)]))
except RuntimeError as exc:
    print("RuntimeError:", str(exc).splitlines()[0])
"""


def test_a_cuda_group_also_serves_the_cpu_tensors_of_the_loss_terms_and_objects():
    """The loss terms' all-reduce and the object collectives hold CPU tensors; a group of NCCL alone serves
    CUDA tensors only, so every batch of a `torchrun ... --device cuda` training failed."""
    from torch.distributed.distributed_c10d import BackendConfig

    assert BackendConfig(distributed.CUDA_BACKEND).get_device_backend_map() == {"cpu": "gloo", "cuda": "nccl"}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = [sys.executable, "-c", STAND_IN]
    fixed = subprocess.run([*run, distributed.CUDA_BACKEND], capture_output=True, text=True, env=env, timeout=120)
    assert json.loads(fixed.stdout) == [{"loss": 0.5}, "x", True], fixed.stderr
    nccl_alone = subprocess.run([*run, "nccl"], capture_output=True, text=True, env=env, timeout=120)
    assert "No backend type associated with device type cpu" in nccl_alone.stdout, nccl_alone.stderr
