"""Fault cases of issue 12's weak items: stale temporary files, a kill during a write, messages that
say what is wrong (overflow, minimum size, another split), notes, early argument checks."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from l2r_submit.core import disp_files
from l2r_submit.registration import predict

from conftest import TINY_SHAPE, write_tiny_dataset
from fault_helpers import FIELDS, PAIRS, ROOT, ckpt, error_lines, fail_replace, image, invoke, predict_args  # noqa: F401


# ---------------------------------------------------------------------------- weak items


def test_stale_temporary_files_are_removed_and_a_live_writers_kept(tiny_dataset, ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f".tmp-{dead.stdout.strip()}-abcd1234.nii.gz"
    live = out / f".tmp-{os.getppid()}-abcd1234.nii.gz"  # a running process's file: another writer's
    old = out / ".tmp-k2j4h5g6.json"  # the earlier naming without a pid, hours old
    for path in (stale, live, old):
        path.write_bytes(b"partial")
    os.utime(old, (0, 0))
    assert invoke(*predict_args(tiny_dataset, out, ckpt)).exit_code == 0
    assert sorted(p.name for p in out.glob(".tmp-*")) == [live.name]


def test_kill_during_a_write_then_rerun_leaves_valid_fields_and_no_temporary_file(tiny_dataset, ckpt, tmp_path):
    out = tmp_path / "out"
    driver = f"""
import os, signal, sys
from l2r_submit.core import gzip_codec
from l2r_submit.cli import main
real = gzip_codec.write_gzip
calls = []
def write_gzip(path, raw):
    calls.append(path)
    if len(calls) == 2:  # the second field: half written, then the process is killed
        with open(path, "wb") as fh:
            fh.write(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, raw)
gzip_codec.write_gzip = write_gzip
main({[str(a) for a in predict_args(tiny_dataset, out, ckpt)]}, prog_name="l2r")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", driver], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(list(out.glob(".tmp-*"))) == 1 and (out / FIELDS[0]).is_file() and not (out / FIELDS[1]).exists()
    res = invoke(*predict_args(tiny_dataset, out, ckpt))
    assert res.exit_code == 0 and "2 pairs done, 1 skipped" in res.output
    assert not list(out.glob(".tmp-*"))
    for name in FIELDS:
        assert disp_files.read_disp(out / name, TINY_SHAPE).shape == (3, *TINY_SHAPE)


def test_an_image_beyond_float32_says_it_overflows(tiny_dataset, ckpt, tmp_path):
    path = image(tiny_dataset, "0003")
    nib.save(nib.Nifti1Image(np.full(TINY_SHAPE, 1e39), np.diag([2.0, 2, 2, 1])), path)
    res = invoke(*predict_args(tiny_dataset, tmp_path / "out", ckpt))
    assert res.exit_code == 1
    lines = error_lines(res)
    assert len(lines) == 2 and all(f"{path}: values overflow float32 (largest magnitude 1e+39)" in x for x in lines)


def test_volumes_too_small_for_the_network_name_the_minimum(tmp_path, ckpt):
    root = tmp_path / "data"
    ds = write_tiny_dataset(root)
    data = json.loads(ds.read_text())
    data["tensorImageShape"] = {"0": [4, 4, 4]}
    for case in ("0001", "0002", "0003"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), image(ds, case))
    ds.write_text(json.dumps(data))
    res = invoke(*predict_args(ds, tmp_path / "out", ckpt))
    assert res.exit_code == 2
    assert error_lines(res) == [f"error: {ds}: volumes of (4, 4, 4) are too small for this network; at least one "
                                "size must be 5 voxels or more (e.g. (5, 4, 4))"]


def test_another_spacing_than_the_partner_is_noted_once(tiny_dataset, ckpt, tmp_path):
    path = image(tiny_dataset, "0003")
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), np.diag([3.0, 2, 2, 1])), path)
    res = invoke(*predict_args(tiny_dataset, tmp_path / "out", ckpt))
    assert res.exit_code == 0 and "3 pairs done" in res.output
    [line] = error_lines(res)
    assert line.startswith(f"note: {path}: spacing 3x2x2 mm or orientation differs from its fixed image")


def test_pairs_option_without_names_and_a_pair_of_another_split(tiny_dataset, ckpt, tmp_path):
    res = invoke(*predict_args(tiny_dataset, tmp_path / "out", ckpt, "--pairs", ","))
    assert res.exit_code == 2 and error_lines(res) == ["error: --pairs ',': no pair names given "
                                                       "(expected e.g. 0001_0004,0002_0004)"]
    data = json.loads(tiny_dataset.read_text())
    data["registration_test"] = [{"fixed": "./imagesTr/AbdomenCTCT_0003_0000.nii.gz",
                                  "moving": "./imagesTr/AbdomenCTCT_0001_0000.nii.gz"}]
    tiny_dataset.write_text(json.dumps(data))
    res = invoke(*predict_args(tiny_dataset, tmp_path / "out", ckpt, "--pairs", "0003_0001"))
    assert res.exit_code == 2
    assert error_lines(res) == ["error: --pairs: not in split 'val': 0003_0001; found elsewhere: 0003_0001 "
                                "(in split 'test'); pass --split"]
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_reported_before_torch_is_imported(tmp_path):
    probe = f"""
import sys
from click.testing import CliRunner
from l2r_submit.cli import main
for args in (["predict", "{tmp_path}/missing.json", "--out", "{tmp_path}/o"],
             ["train", "{tmp_path}/missing.json", "--out", "{tmp_path}/o"]):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "file not found" in res.output, res.output
print("torch" in sys.modules, "scipy" in sys.modules, "nibabel" in sys.modules)
"""
    res = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False", "False"]


def test_a_run_json_that_cannot_be_written_is_one_line_and_exit_1(tiny_dataset, ckpt, tmp_path, monkeypatch):
    out = tmp_path / "out"
    fail_replace(monkeypatch, lambda dst: dst.name == "run.json")
    res = invoke(*predict_args(tiny_dataset, out, ckpt))
    assert res.exit_code == 1
    assert error_lines(res) == [f"error: {out / 'run.json'}: cannot be written or read (No space left on device)"]
    assert all((out / name).is_file() for name in FIELDS)  # the finished fields stay


def test_any_exception_of_one_pair_leaves_the_others_and_marks_stale_files(tiny_dataset, ckpt, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert invoke(*predict_args(tiny_dataset, out, ckpt)).exit_code == 0
    real = predict.register_pair

    def flaky(stages, pair, *args, **kwargs):
        if pair.moving.id == "0003" and pair.fixed.id == "0001":
            raise TypeError("unsupported operand")  # a bug deep inside: not one of the expected types
        return real(stages, pair, *args, **kwargs)

    monkeypatch.setattr(predict, "register_pair", flaky)
    no_weights = [a for a in predict_args(tiny_dataset, out, ckpt)[:-2] if a not in ("--checkpoint", ckpt)]
    res = invoke(*no_weights, "--io-iters", "1", "--no-network")  # named weights would be refused: no network
    assert res.exit_code == 1 and "2 pairs done, 0 skipped, 1 failed" in res.output
    assert f"error: {PAIRS[1]}: TypeError: unsupported operand" in error_lines(res)
    entry = json.loads((out / "run.json").read_text())["pairs"][PAIRS[1]]
    assert entry["status"] == "failed" and entry["stale_outputs"] == [FIELDS[1]]  # the old field, not this run's


def test_a_malformed_header_or_empty_image_is_one_line_without_nibabel_log(tiny_dataset, ckpt, tmp_path, capfd):
    image(tiny_dataset, "0003").write_bytes(gzip.compress(b"not a nifti header " * 40))
    image(tiny_dataset, "0002").write_bytes(b"")
    res = invoke(*predict_args(tiny_dataset, tmp_path / "out", ckpt))
    assert res.exit_code == 1 and "0 pairs done, 0 skipped, 3 failed" in res.output
    lines = error_lines(res)
    assert len(lines) == 3
    assert f"{image(tiny_dataset, '0002')}: cannot be read: empty file" in lines[0]
    assert f"{image(tiny_dataset, '0003')}: cannot be read (" in lines[1]
    assert capfd.readouterr().err == ""  # nothing else reached the real stderr (nibabel logs there)


def test_a_rerun_from_another_working_folder_still_skips(tiny_dataset, ckpt, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.chdir(tiny_dataset.parent)
    assert invoke(*predict_args(Path(tiny_dataset.name), out, ckpt)).exit_code == 0
    monkeypatch.chdir(tmp_path)
    res = invoke(*predict_args(tiny_dataset, out, ckpt))
    assert res.exit_code == 0 and "0 pairs done, 3 skipped" in res.output


def test_a_refused_command_leaves_no_empty_output_folder(tiny_dataset, ckpt, tmp_path):
    """predict (unreadable weights), train (unreadable --init), segment train (no training case) and cohort
    prepare (unreadable --reference) made their --out folder, parents included, before refusing with exit 2;
    an existing folder stays."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    reference = tmp_path / "ref.nii.gz"
    reference.write_bytes(b"junk")
    train = ("--model", "tiny", "--epochs", "1", "--crop", "8,8,8", "--workers", "0")
    commands = {
        "predict": lambda out: predict_args(tiny_dataset, out, junk, "--stages", "network"),
        "train": lambda out: ["train", tiny_dataset, "--out", out, "--preset", "finetune", "--init", junk, *train,
                              "--final-submission"],
        "segment": lambda out: ["segment", "train", tiny_dataset, "--out", out, *train],
        "cohort": lambda out: ["cohort", "prepare", "nifti", tiny_dataset.parent, "--out", out, "--reference",
                               reference, "--label-map", "1=1", "--limit", "1"],
    }
    existing = tmp_path / "existing"
    existing.mkdir()
    for name, args in commands.items():
        for out in (tmp_path / name / "deeper", existing):
            res = invoke(*args(out))
            assert res.exit_code == 2, (name, res.output)
            [line] = [s for s in error_lines(res) if s.startswith("error")]
            assert "junk" in line or "no training case" in line or str(reference) in line, (name, line)
            assert not (tmp_path / name).exists(), name
            assert existing.is_dir() and not list(existing.iterdir()), name


def test_a_dataset_without_pairs_says_which_lists_are_empty(tiny_dataset, ckpt, tmp_path):
    """It said "no pairs to predict in split 'default'", a split no JSON has."""
    data = json.loads(tiny_dataset.read_text())
    data["registration_val"] = data["registration_test"] = []
    tiny_dataset.write_text(json.dumps(data))
    res = invoke(*predict_args(tiny_dataset, tmp_path / "out", ckpt))
    assert res.exit_code == 2
    assert error_lines(res) == [f"error: {tiny_dataset}: no pairs to predict in registration_val nor "
                                "registration_test (both empty)"]


def test_a_refusal_never_removes_a_folder_that_existed(tmp_path, monkeypatch):
    """'a/../b' with b existing and a not: b was taken as made by the check and removed after a refusal."""
    from l2r_submit.core import folders

    monkeypatch.chdir(tmp_path)
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="refused"):
        with folders.writable_folder(Path("a") / ".." / "b", "--out"):
            raise ValueError("refused")
    assert (tmp_path / "b").is_dir()
