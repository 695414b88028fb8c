"""Shared fixtures: a tiny AbdomenCTCT-layout dataset written to tmp_path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

TINY_SHAPE = (24, 20, 28)


def blob_labels(shape, rng: np.random.Generator, n_labels: int = 4) -> np.ndarray:
    """Label map of a few random boxes (labels 1..n_labels), shape ``shape``."""
    seg = np.zeros(shape, np.uint8)
    for label in range(1, n_labels + 1):
        lo = [int(rng.integers(2, n // 2)) for n in shape]
        size = [int(rng.integers(4, n // 2)) for n in shape]
        seg[tuple(slice(a, a + s) for a, s in zip(lo, size))] = label
    return seg


def write_tiny_dataset(root: Path, n_subjects: int = 3, shape=TINY_SHAPE, seed: int = 0) -> Path:
    """Write imagesTr/labelsTr and AbdomenCTCT_dataset.json with val pairs (1,2), (1,3), (2,3)."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    ids = [f"{i:04d}" for i in range(1, n_subjects + 1)]
    for i in ids:
        seg = blob_labels(shape, rng)
        img = (seg * 40.0 + rng.normal(0, 5, shape) - 100).astype(np.int16)
        nib.save(nib.Nifti1Image(img, np.diag([2.0, 2, 2, 1])), root / "imagesTr" / f"AbdomenCTCT_{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(seg, np.diag([2.0, 2, 2, 1])), root / "labelsTr" / f"AbdomenCTCT_{i}_0000.nii.gz")

    def img(i: str) -> str:
        return f"./imagesTr/AbdomenCTCT_{i}_0000.nii.gz"

    pairs = [(a, b) for n, a in enumerate(ids) for b in ids[n + 1:]]
    data = {
        "name": "Tiny", "tensorImageShape": {"0": list(shape)},
        "training": [{"image": img(i), "label": img(i).replace("images", "labels")} for i in ids],
        "registration_val": [{"fixed": img(a), "moving": img(b)} for a, b in pairs],
        "registration_test": [{"fixed": img(ids[0]), "moving": img(ids[1])}],
    }
    path = root / "AbdomenCTCT_dataset.json"
    path.write_text(json.dumps(data))
    return path


def write_one_val_pair_dataset(root: Path, n_subjects: int = 4) -> Path:
    """:func:`write_tiny_dataset` with one val pair (0001, 0002), so that subjects 0003.. train."""
    path = write_tiny_dataset(root, n_subjects=n_subjects)
    spec = json.loads(path.read_text())
    spec["registration_val"] = spec["registration_val"][:1]
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A checkpoint of the ``tiny`` preset whose head is non-zero, so its fields are not trivially zero."""
    import torch

    from l2r_submit.nets import checkpoint, regnet

    torch.manual_seed(0)
    net = regnet.build("tiny")
    with torch.no_grad():
        net.decoder.head.weight.normal_(0, 0.01)
    return checkpoint.save(tmp_path / "tiny.pt", net)


def invoke(*args):
    """The ``l2r`` command line in this process, exceptions not caught."""
    from click.testing import CliRunner

    from l2r_submit.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)



def torchrun_two(target: list[str], timeout: float = 150.0) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 TARGET...`` (a script or ``-m module`` and its arguments), on
    this checkout, one thread per process; the whole process group is killed after ``timeout`` (a failed test,
    never a hung CI)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
