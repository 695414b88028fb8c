"""Fault and bad-input cases of predict, file reading and the CLI: the numbered items of issue 12.

Each case builds its bad input in tmp_path, runs the CLI (CliRunner, or a subprocess for a kill),
and checks the exit code, a one-line error naming the file and the problem, no traceback, and that
the other pairs' outputs survive. The weak items are in test_faults_weak.py.
"""

from __future__ import annotations

import errno
import gzip
import json
import os

import numpy as np
import pytest

from l2r_submit.core import disp_files, io
from l2r_submit.registration import predict

from conftest import TINY_SHAPE, write_tiny_dataset
from fault_helpers import (FIELDS, PAIRS, ckpt, deny_files_in, error_lines, fail_replace, flip_byte,  # noqa: F401
                           flip_crc, image, invoke, predict_args)


# ------------------------------------------------------------------------------ 1: corrupt gzip


def test_a_flipped_byte_in_a_gzip_field_is_an_error_not_a_number(tmp_path):
    disp = np.random.default_rng(0).normal(size=(3, *TINY_SHAPE)).astype(np.float32)
    path = disp_files.write_disp(disp, tmp_path, "0001", "0002")[0]
    assert gzip.decompress(path.read_bytes())  # intact stream
    flip_byte(path)
    with pytest.raises(gzip.BadGzipFile):  # the independent check: Python's gzip module
        gzip.decompress(path.read_bytes())
    with pytest.raises(ValueError, match=f"{path}: cannot be read: corrupt gzip stream"):
        disp_files.read_disp(path, TINY_SHAPE)
    trailer = disp_files.write_disp(disp, tmp_path, "0001", "0003")[0]
    flip_crc(trailer)
    with pytest.raises(ValueError, match="CRC check failed"):
        disp_files.read_disp(trailer, TINY_SHAPE)


def test_evaluate_fails_the_corrupt_field_only(tiny_dataset, ckpt, tmp_path):
    out = tmp_path / "out"
    assert invoke(*predict_args(tiny_dataset, out, ckpt)).exit_code == 0
    flip_crc(out / FIELDS[1])
    res = invoke("evaluate", tiny_dataset, out, "--out", tmp_path / "m.json", "--quiet")
    assert res.exit_code == 1
    errors = [line for line in error_lines(res) if line.startswith("error")]
    assert len(errors) == 1 and "corrupt gzip stream" in errors[0] and FIELDS[1] in errors[0]
    assert any(line.startswith("warning: partial result") for line in error_lines(res))
    assert sorted(json.loads((tmp_path / "m.json").read_text())["cases"]) == [PAIRS[0], PAIRS[2]]


def test_predict_fails_a_pair_with_a_corrupt_image_and_does_the_others(tiny_dataset, ckpt, tmp_path):
    flip_crc(image(tiny_dataset, "0003"))
    flip_crc(tiny_dataset.parent / "labelsTr" / "AbdomenCTCT_0003_0000.nii.gz")
    res = invoke(*predict_args(tiny_dataset, tmp_path / "out", ckpt))
    assert res.exit_code == 1
    lines = error_lines(res)
    assert len(lines) == 2 and all("AbdomenCTCT_0003_0000.nii.gz: cannot be read: corrupt gzip" in x for x in lines)
    assert (tmp_path / "out" / FIELDS[0]).is_file()
    with pytest.raises(ValueError, match="corrupt gzip"):
        io.read_labels(tiny_dataset.parent / "labelsTr" / "AbdomenCTCT_0003_0000.nii.gz")


def test_predict_fails_the_pairs_of_a_missing_image_and_does_the_others(tiny_dataset, ckpt, tmp_path):
    """One missing image refused the whole run (exit 2, no field written), so a container over a dataset
    with one file gone wrote nothing; now only its pairs fail. Every pair missing an image: still refused."""
    image(tiny_dataset, "0003").unlink()
    res = invoke(*predict_args(tiny_dataset, tmp_path / "out", ckpt))
    assert res.exit_code == 1
    lines = error_lines(res)
    assert lines == [f"error: {key}: {image(tiny_dataset, '0003')}: file not found" for key in PAIRS[1:]], lines
    assert (tmp_path / "out" / FIELDS[0]).is_file() and not (tmp_path / "out" / FIELDS[1]).exists()
    pairs = json.loads((tmp_path / "out" / "run.json").read_text())["pairs"]
    assert [pairs[k]["status"] for k in PAIRS] == ["done", "failed", "failed"]
    image(tiny_dataset, "0001").unlink()  # now no pair has both images: a wrong folder, refused before any work
    res = invoke(*predict_args(tiny_dataset, tmp_path / "out2", ckpt))
    assert res.exit_code == 2 and "missing image files:" in res.output and not (tmp_path / "out2").exists()


# ------------------------------------------------------------------ 3, 6 and the cheap skip check


def test_npy_bytes_and_a_damaged_npz_are_redone_not_a_crash(tiny_dataset, ckpt, tmp_path):
    out = tmp_path / "out"
    args = predict_args(tiny_dataset, out, ckpt, "--format", "npz")
    assert invoke(*args).exit_code == 0
    npz = [out / f.replace(".nii.gz", ".npz") for f in FIELDS]
    with open(npz[0], "wb") as fh:
        np.save(fh, np.zeros((*TINY_SHAPE, 3), np.float32))  # .npy bytes under an .npz name
    flip_byte(npz[1])
    for path, problem in ((npz[0], "not an .npz archive"), (npz[1], "cannot be read")):
        with pytest.raises(ValueError, match=f"{path}: {problem}"):
            disp_files.read_disp(path, TINY_SHAPE)
    res = invoke(*args)
    assert res.exit_code == 0 and error_lines(res) == [
        f"note: 2 pairs redone, e.g. because {npz[0].name} changed since it was written"]
    assert "2 pairs done, 1 skipped, 0 failed" in res.output
    for path in npz:
        assert disp_files.read_disp(path, TINY_SHAPE).shape == (3, *TINY_SHAPE)


def test_rerun_with_other_settings_redoes_and_run_json_tells_the_truth(tiny_dataset, ckpt, tmp_path):
    out = tmp_path / "out"
    assert invoke(*predict_args(tiny_dataset, out, ckpt)).exit_code == 0
    res = invoke(*predict_args(tiny_dataset, out, ckpt)[:-2], "--io-iters", "1", "--io-similarity", "mse")
    assert res.exit_code == 0 and "3 pairs done, 0 skipped" in res.output
    (line,) = error_lines(res)  # adam did not run before, so its settings were not recorded then
    assert line.startswith("note: 3 pairs redone, their fields were made with other settings: ")
    assert 'io.similarity null -> "mse"' in line and 'stages ["network"] -> ["network", "adam"]' in line
    entries = json.loads((out / "run.json").read_text())["pairs"]
    assert all(e["settings"]["io"]["iters"] == 1 for e in entries.values())
    assert all(e["settings"]["io"]["similarity"] == "mse" for e in entries.values())
    again = invoke(*predict_args(tiny_dataset, out, ckpt)[:-2], "--io-iters", "1", "--io-similarity", "mse")
    assert "0 pairs done, 3 skipped" in again.output


def test_a_setting_added_to_the_config_later_is_compared_without_a_hand_list(tiny_dataset, tmp_path):
    import dataclasses

    from l2r_submit.core import dataset
    from l2r_submit.registration import run_record  # run_record is new: imported here so the other cases run on old code

    @dataclasses.dataclass(frozen=True)
    class WithStages(predict.PredictConfig):
        stages: tuple[str, ...] = ("network",)

    cfg = WithStages(dataset.load(tiny_dataset), tmp_path)
    settings = run_record.output_settings(cfg, "abc")
    assert settings["stages"] == ["network"] and settings["checkpoint_sha256"] == "abc"
    fields = {f.name for f in dataclasses.fields(cfg)}
    assert set(settings) == fields - run_record.RUN_ONLY_FIELDS | {"checkpoint_sha256"}
    other = run_record.output_settings(dataclasses.replace(cfg, stages=("network", "io")), "abc")
    assert "stages" in run_record.settings_diff(settings, other)


def test_skip_check_reads_no_field_and_redoes_a_changed_file(tiny_dataset, ckpt, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert invoke(*predict_args(tiny_dataset, out, ckpt)).exit_code == 0
    disp = np.zeros((3, *TINY_SHAPE), np.float32)  # a valid field of the right shape, but not ours
    disp_files.write_disp(disp, tmp_path / "other", "0001", "0003")
    (out / FIELDS[1]).write_bytes((tmp_path / "other" / FIELDS[1]).read_bytes())

    def no_read(*_a, **_k):
        raise AssertionError("the skip check decompressed a field")

    monkeypatch.setattr(disp_files, "read_disp", no_read)
    monkeypatch.setattr(io, "load_nifti", no_read)
    monkeypatch.setattr(predict, "read_pair", lambda *a, **k: None)  # images are read apart from the stages
    monkeypatch.setattr(predict, "register_pair", lambda *a, **k: (disp, {}))
    res = invoke(*predict_args(tiny_dataset, out, ckpt))
    assert res.exit_code == 0 and "1 pairs done, 2 skipped" in res.output
    entry = json.loads((out / "run.json").read_text())["pairs"][PAIRS[1]]
    assert entry["redone"] == f"{FIELDS[1]} changed since it was written"


# ------------------------------------------------------------------------- 4: --evaluate failures


def test_predict_evaluate_reports_a_truncated_label_file(tiny_dataset, ckpt, tmp_path):
    label = tiny_dataset.parent / "labelsTr" / "AbdomenCTCT_0003_0000.nii.gz"
    label.write_bytes(label.read_bytes()[:200])
    res = invoke(*predict_args(tiny_dataset, tmp_path / "out", ckpt, "--evaluate"))
    assert res.exit_code == 1
    lines = [x for x in error_lines(res) if x.startswith("error")]
    assert len(lines) == 2 and all(str(label) in x for x in lines)
    assert any(x.startswith("warning: partial result") for x in error_lines(res))
    assert "1 pairs scored, 2 could not be scored" in res.output


def test_predict_evaluate_says_which_pairs_it_scored_as_zero_fields(tiny_dataset, ckpt, tmp_path):
    """After 'failed' pairs predict's evaluation said '0 failed' and 'field missing'."""
    flip_crc(image(tiny_dataset, "0003"))
    res = invoke(*predict_args(tiny_dataset, tmp_path / "out", ckpt, "--evaluate"))
    assert res.exit_code == 1
    assert "1 pairs done, 0 skipped, 2 failed" in res.stdout
    assert "3 pairs scored (2 as zero fields: not registered), 0 could not be scored" in res.stdout
    notes = [x for x in error_lines(res) if "scored as a zero field" in x]
    assert notes == [f"note: {k}: no field: its registration failed or was not tried in this run, scored as a zero "
                     "field" for k in PAIRS[1:]]


# ---------------------------------------------------- 5, 7, 8, 15: refused before any work


def test_npz2020_on_odd_sizes_is_refused_before_any_work(tmp_path, ckpt):
    ds = write_tiny_dataset(tmp_path / "data", shape=(23, 20, 28))
    out = tmp_path / "out"
    res = invoke(*predict_args(ds, out, ckpt, "--format", "npz2020"))
    assert res.exit_code == 2
    assert error_lines(res) == [f"error: {ds}: --format npz2020 needs even volume sizes (the 2020 evaluator "
                                "upsamples the half-resolution field by 2), the volumes are (23, 20, 28); "
                                "use --format nii.gz or npz"]
    assert not out.exists()


@pytest.mark.parametrize("option", ["--out", "--qc", "train --out", "--out under a file"])
def test_an_output_option_naming_a_file_is_refused_before_any_work(tiny_dataset, ckpt, tmp_path, option):
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = tmp_path / "out"
    if option == "train --out":
        args = ["train", tiny_dataset, "--out", afile, "--model", "tiny", "--epochs", "1"]
    elif option == "--qc":
        args = predict_args(tiny_dataset, out, ckpt, "--qc", afile)
    else:
        target = afile if option == "--out" else afile / "sub"
        args = predict_args(tiny_dataset, target, ckpt)
    res = invoke(*args)
    assert res.exit_code == 2
    [line] = error_lines(res)
    assert line.startswith("error: ") and str(afile) in line and "names an existing file, not a folder" in line
    assert not out.exists()


def test_an_unwritable_output_folder_is_refused_before_any_work(tiny_dataset, ckpt, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    deny_files_in(monkeypatch, out)
    res = invoke(*predict_args(tiny_dataset, out, ckpt))
    assert res.exit_code == 2
    assert error_lines(res) == [f"error: {out}: --out is not writable (Permission denied)"]
    qc, fresh = tmp_path / "qc", tmp_path / "fresh"  # a refused --qc left the new --out folder behind
    qc.mkdir()
    deny_files_in(monkeypatch, qc)
    res = invoke(*predict_args(tiny_dataset, fresh, ckpt, "--qc", qc))
    assert res.exit_code == 2 and error_lines(res) == [f"error: {qc}: --qc is not writable (Permission denied)"]
    assert not fresh.exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_write_failure_fails_that_pair_and_run_json_is_written(tiny_dataset, ckpt, tmp_path, monkeypatch, code):
    out = tmp_path / "out"
    fail_replace(monkeypatch, lambda dst: dst.name == FIELDS[1], code)
    res = invoke(*predict_args(tiny_dataset, out, ckpt))
    assert res.exit_code == 1
    lines = error_lines(res)
    assert lines[0] == f"error: {PAIRS[1]}: {out / FIELDS[1]}: cannot be written or read ({os.strerror(code)})"
    entries = json.loads((out / "run.json").read_text())["pairs"]
    assert entries[PAIRS[0]]["status"] == "done" and (out / FIELDS[0]).is_file()
    assert entries[PAIRS[1]]["status"] == "failed" and not (out / FIELDS[1]).exists()
    if code == errno.ENOSPC:  # no later pair can succeed: stop, say so, record it
        assert entries[PAIRS[2]]["status"] == "not tried" and len(lines) == 2 and "1 pairs not tried" in lines[1]
    else:  # a one-off error: the next pair is done
        assert entries[PAIRS[2]]["status"] == "done" and len(lines) == 1
    assert not list(out.glob(".tmp-*"))


def test_a_full_disk_at_the_last_pair_and_an_unwritable_record_are_said_as_they_are(tiny_dataset, ckpt, tmp_path,
                                                                                    monkeypatch):
    """The summary said 'wrote OUT and OUT/run.json' when run.json could not be written, and '0 pairs not
    tried: stopped after ...' when the disk filled at the last pair."""
    out = tmp_path / "out"
    fail_replace(monkeypatch, lambda dst: dst.name in (FIELDS[2], "run.json"))
    res = invoke(*predict_args(tiny_dataset, out, ckpt))
    assert res.exit_code == 1 and not (out / "run.json").exists()
    assert not any("pairs not tried" in line for line in error_lines(res))
    assert "the run record was NOT written (" in res.stdout and "wrote" not in res.stdout
    assert (out / FIELDS[0]).is_file() and (out / FIELDS[1]).is_file()


@pytest.mark.parametrize("overlap", [True, False])
def test_an_interrupt_records_the_pairs_it_did_not_reach_as_not_tried(tiny_dataset, ckpt, tmp_path, monkeypatch,
                                                                      overlap):
    """run.json of an interrupted run had no entry for the pairs after the one being computed, although
    a run stopped by a full disk records them as not tried."""
    out = tmp_path / "out"
    register = predict.register_pair

    def interrupt_at_the_second(stages, pair, *args):
        if pair.key == PAIRS[1]:
            raise KeyboardInterrupt
        return register(stages, pair, *args)

    monkeypatch.setattr(predict, "register_pair", interrupt_at_the_second)
    res = invoke(*predict_args(tiny_dataset, out, ckpt, *(() if overlap else ("--sequential",))))
    assert res.exit_code == 130
    assert error_lines(res) == [f"interrupted: 1 pairs done are kept in {out} and recorded in run.json; "
                                "run the same command again to do the rest"]
    entries = json.loads((out / "run.json").read_text())["pairs"]
    assert [entries[k]["status"] for k in PAIRS] == ["done", "failed", "not tried"]
    assert entries[PAIRS[1]]["error"] == entries[PAIRS[2]]["error"] == "interrupted"
    assert (out / FIELDS[0]).is_file() and not (out / FIELDS[2]).exists()
    monkeypatch.setattr(predict, "register_pair", register)
    res = invoke(*predict_args(tiny_dataset, out, ckpt))  # the rerun does the rest
    assert res.exit_code == 0 and "1 skipped" in res.stdout
    assert {e["status"] for e in json.loads((out / "run.json").read_text())["pairs"].values()} == {
        "done", "skipped (outputs exist)"}
    import torch

    from l2r_submit.nets import checkpoint, regnet

    torch.manual_seed(5)
    other = checkpoint.save(tmp_path / "other.pt", regnet.build("tiny"))  # every pair is redone with it
    monkeypatch.setattr(predict, "register_pair", interrupt_at_the_second)
    assert invoke(*predict_args(tiny_dataset, out, other)).exit_code == 130
    entries = json.loads((out / "run.json").read_text())["pairs"]
    assert entries[PAIRS[2]]["status"] == "not tried" and entries[PAIRS[2]]["stale_outputs"] == [FIELDS[2]]


def test_a_qc_picture_that_fails_keeps_its_written_field_done(tiny_dataset, ckpt, tmp_path, monkeypatch):
    """A read-only container (matplotlib without a writable cache folder) failed the pair whose field was just
    written, and run.json called that new field 'stale'."""
    out, qc = tmp_path / "out", tmp_path / "qc"
    draw = predict.write_qc

    def fails_for_the_second(path, pair, disp):
        if pair.key == PAIRS[1]:
            raise RuntimeError("Matplotlib requires access to a writable cache directory")
        return draw(path, pair, disp)

    monkeypatch.setattr(predict, "write_qc", fails_for_the_second)
    res = invoke(*predict_args(tiny_dataset, out, ckpt, "--qc", qc))
    assert res.exit_code == 1 and "3 pairs done, 0 skipped, 0 failed, 1 QC pictures not drawn" in res.stdout
    [line] = [s for s in error_lines(res) if s.startswith("error")]
    assert line.startswith(f"error: {PAIRS[1]}: QC picture {qc}/") and "writable cache directory" in line
    entries = json.loads((out / "run.json").read_text())["pairs"]
    assert {e["status"] for e in entries.values()} == {"done"} and all((out / f).is_file() for f in FIELDS)
    assert "stale_outputs" not in entries[PAIRS[1]] and "qc" not in entries[PAIRS[1]] and "qc" in entries[PAIRS[0]]
    monkeypatch.setattr(predict, "write_qc", draw)
    res = invoke(*predict_args(tiny_dataset, out, ckpt, "--qc", qc))  # the rerun draws the missing picture
    assert res.exit_code == 0 and "0 pairs done, 3 skipped" in res.stdout and len(list(qc.glob("*.png"))) == 3


def test_evaluate_keeps_metrics_json_when_the_csv_cannot_be_written(tiny_dataset, tmp_path, monkeypatch):
    """The CSV's failure was reported as metrics.json's, with exit 2 ('nothing computed') although
    metrics.json was complete; with predict --evaluate --report, an earlier metrics.json was reported."""
    disp = tmp_path / "disp"
    for f, m in (("0001", "0002"), ("0001", "0003"), ("0002", "0003")):
        disp_files.write_disp(np.zeros((3, *TINY_SHAPE), np.float32), disp, f, m)
    fail_replace(monkeypatch, lambda dst: dst.suffix == ".csv")
    res = invoke("evaluate", tiny_dataset, disp, "--out", tmp_path / "m.json", "--quiet")
    assert res.exit_code == 1 and json.loads((tmp_path / "m.json").read_text())["cases"]
    assert [line for line in error_lines(res) if line.startswith("error")] == [
        f"error: {tmp_path / 'm.csv'}: cannot be written (No space left on device)"]
    assert f"wrote {tmp_path / 'm.json'}" in res.stdout and "m.csv" not in res.stdout


def test_same_case_id_in_two_folders_is_a_name_collision(tiny_dataset, ckpt, tmp_path):
    root = tiny_dataset.parent
    (root / "imagesTs").mkdir()
    (root / "imagesTs" / "AbdomenCTCT_0001_0000.nii.gz").write_bytes(image(tiny_dataset, "0001").read_bytes())
    data = json.loads(tiny_dataset.read_text())
    data["registration_val"] = [{"fixed": "./imagesTr/AbdomenCTCT_0001_0000.nii.gz",
                                 "moving": "./imagesTr/AbdomenCTCT_0002_0000.nii.gz"},
                                {"fixed": "./imagesTs/AbdomenCTCT_0001_0000.nii.gz",
                                 "moving": "./imagesTr/AbdomenCTCT_0002_0000.nii.gz"}]
    tiny_dataset.write_text(json.dumps(data))
    res = invoke(*predict_args(tiny_dataset, tmp_path / "out", ckpt))
    assert res.exit_code == 2
    [line] = error_lines(res)
    assert line.startswith(f"error: {FIELDS[0]}: two pairs would write this file:")
    assert "imagesTs/AbdomenCTCT_0001_0000.nii.gz" in line and "imagesTr/AbdomenCTCT_0001_0000.nii.gz" in line
    assert not (tmp_path / "out" / FIELDS[0]).exists()


@pytest.mark.parametrize("value", ["nan", "inf", "1e400"])
def test_a_refinement_weight_that_is_not_finite_is_refused_before_any_work(tiny_dataset, tmp_path, value):
    """--io-reg nan passed click's range check; every pair was computed, then failed on a non-finite field."""
    out = tmp_path / "out"
    res = invoke("predict", tiny_dataset, "--out", out, "--device", "cpu", "--quiet", "--stages", "adam",
                 "--io-iters", "1", "--io-reg", value)
    assert res.exit_code == 2 and "--io-reg" in res.output and "finite" in res.output
    assert not out.exists() or not list(out.iterdir())
