"""The evaluator's refusals and checks: `l2r check`, malformed keys and configs, a corrupt file among good
ones, where the metrics go, `compare`'s inputs, labels beyond 32 bits. Split from
test_evaluator_versions.py (its helpers and cases are shared)."""

import json
import math

import nibabel as nib
import numpy as np
import pytest

from l2r_submit.core import io

from test_evaluator_versions import KEYS, _config, evaluate, one_line_error, run_cli, write_fields


# ------------------------------------------------------------------------------------ 13: check


def test_check_every_split_and_training_but_not_test_labels(tiny_dataset):
    data = json.loads(tiny_dataset.read_text())
    data["registration_test"] = [{"fixed": "./imagesTs/AbdomenCTCT_0031_0000.nii.gz",
                                  "moving": "./imagesTs/AbdomenCTCT_0032_0000.nii.gz"}]
    tiny_dataset.write_text(json.dumps(data))
    (tiny_dataset.parent / "imagesTs").mkdir()
    for i in ("0031", "0032"):
        src = tiny_dataset.parent / "imagesTr" / "AbdomenCTCT_0001_0000.nii.gz"
        (tiny_dataset.parent / "imagesTs" / f"AbdomenCTCT_{i}_0000.nii.gz").write_bytes(src.read_bytes())
    res = run_cli("check", tiny_dataset)
    assert res.exit_code == 0 and "ok" in res.output  # no labelsTs expected
    assert run_cli("check", tiny_dataset, "--split", "test").exit_code == 0
    (tiny_dataset.parent / "imagesTs" / "AbdomenCTCT_0032_0000.nii.gz").unlink()
    res = run_cli("check", tiny_dataset, "--split", "val")  # the test image is not in val ...
    assert res.exit_code == 0
    res = run_cli("check", tiny_dataset)  # ... but the default checks every split
    assert res.exit_code == 2 and "imagesTs/AbdomenCTCT_0032_0000.nii.gz" in res.output
    res = run_cli("check", tiny_dataset, "--split", "eval")
    assert res.exit_code == 2
    one_line_error(res, str(tiny_dataset), "no split 'eval'")


@pytest.mark.parametrize("key, value, msg", [
    ("tensorImageShape", [True, True, True], "tensorImageShape"),
    ("training", "oops", "training: expected a list"),
])
def test_check_refuses_malformed_keys(tiny_dataset, key, value, msg):
    data = json.loads(tiny_dataset.read_text())
    data[key] = value
    tiny_dataset.write_text(json.dumps(data))
    res = run_cli("check", tiny_dataset)
    assert res.exit_code == 2
    one_line_error(res, str(tiny_dataset), msg)


# ------------------------------------------------------------------------ issue 12 evaluator faults


def test_corrupt_npz_with_two_workers_fails_that_pair_only(tiny_dataset, tmp_path):
    d = tmp_path / "d"
    write_fields(d, fmt="npz")
    path = d / "disp_0001_0000_0002_0000.npz"
    raw = bytearray(path.read_bytes())
    raw[200:260] = bytes(60)  # damage the deflate stream inside the zip
    path.write_bytes(bytes(raw))
    for workers in ("1", "2"):
        res = evaluate(tiny_dataset, d, tmp_path / "m.json", "--workers", workers)
        assert res.exit_code == 1, res.stderr
        m = json.loads((tmp_path / "m.json").read_text())
        assert list(m["failed"]) == [KEYS[0]] and list(m["cases"]) == KEYS[1:] and m["partial"] is True
        assert f"error: {KEYS[0]}: " in res.stderr and "Traceback" not in res.stderr


def test_out_naming_a_folder_or_below_a_file_is_refused_before_scoring(tiny_dataset, tmp_path):
    write_fields(tmp_path / "d")
    (tmp_path / "folder").mkdir()
    res = evaluate(tiny_dataset, tmp_path / "d", tmp_path / "folder")
    assert res.exit_code == 2
    one_line_error(res, str(tmp_path / "folder"), "is a folder")
    (tmp_path / "file").write_text("x")
    res = evaluate(tiny_dataset, tmp_path / "d", tmp_path / "file" / "m.json")
    assert res.exit_code == 2
    one_line_error(res, "is not a folder")


def test_default_metrics_json_goes_beside_the_fields(tiny_dataset, tmp_path, monkeypatch):
    write_fields(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    res = run_cli("evaluate", tiny_dataset, tmp_path / "d", "--quiet")
    assert res.exit_code == 0
    assert (tmp_path / "d" / "metrics.json").is_file() and not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("methods, msg", [
    (5, "evaluation_methods: expected a non-empty list"),
    ([{"name": "DSC", "metric": "dice", "labels": 5}], "labels must be a non-empty list of positive integers"),
    ([{"name": "DSC", "metric": "dice", "labels": ["a"]}], "labels must be a non-empty list of positive integers"),
    ([{"name": "DSC", "metric": "dice", "labels": [1]}, {"name": "DSC", "metric": "hd95", "labels": [1]}],
     "names must be unique"),
])
def test_malformed_evaluation_config_is_one_line_naming_the_file(tiny_dataset, tmp_path, methods, msg):
    cfg = _config(tiny_dataset, tmp_path)
    data = json.loads(cfg.read_text())
    data["evaluation_methods"] = methods
    cfg.write_text(json.dumps(data))
    (tmp_path / "d").mkdir()
    res = evaluate(cfg, tmp_path / "d", tmp_path / "m.json")
    assert res.exit_code == 2
    one_line_error(res, str(cfg), msg)


def test_compare_refuses_wrong_inputs_in_one_line(tiny_dataset, tmp_path):
    write_fields(tmp_path / "d")
    assert evaluate(tiny_dataset, tmp_path / "d", tmp_path / "m.json").exit_code == 0
    assert run_cli("compare", tmp_path / "m.json", tmp_path / "e.json", "--write").exit_code == 0
    (tmp_path / "run.json").write_text(json.dumps({"settings": {}, "pairs": {}}))
    (tmp_path / "list.json").write_text("[1, 2]")
    for args, msg in (((tmp_path / "run.json", tmp_path / "e.json"), "predict run.json"),
                      ((tmp_path / "e.json", tmp_path / "m.json"), "arguments swapped"),
                      ((tmp_path / "m.json", tmp_path / "m.json"), "arguments swapped"),
                      ((tmp_path / "list.json", tmp_path / "e.json"), "got a JSON list"),
                      ((tmp_path / "m.json", tmp_path / "list.json"), "got a JSON list")):
        res = run_cli("compare", *args)
        assert res.exit_code == 2, (args, res.output)
        one_line_error(res, msg)
    assert run_cli("compare", tmp_path / "m.json", tmp_path / "e.json").exit_code == 0


def test_int64_labels_beyond_32_bits_never_wrap(tiny_dataset, tmp_path):
    lab = tiny_dataset.parent / "labelsTr" / "AbdomenCTCT_0002_0000.nii.gz"
    seg = np.asanyarray(nib.load(lab).dataobj).astype(np.int64)
    seg[seg == 1] = 2**32 + 1  # an int32 cast would turn this into label 1
    nib.save(nib.Nifti1Image(seg, np.eye(4), dtype=np.int64), lab)
    assert io.read_labels(lab).max() == 2**32 + 1
    write_fields(tmp_path / "d")
    res = evaluate(tiny_dataset, tmp_path / "d", tmp_path / "m.json")
    assert res.exit_code == 0, res.stderr
    case = json.loads((tmp_path / "m.json").read_text())["cases"][KEYS[0]]
    assert math.isnan(case["DSC"]["detailed"][0])  # label 1 is absent from the moving labels now
    notes = [line for line in res.stderr.splitlines() if "not evaluated and were ignored" in line]
    assert len(notes) == 1 and str(lab) in notes[0] and str(2**32 + 1) in notes[0]
