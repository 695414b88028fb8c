"""A label-free task (Learn2Reg's LungCT and NLST datasets have ``"labels": {}``): it was refused by every
command, although registering needs no labels; now it registers and SDlogJ alone is scored."""

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import invoke, write_tiny_dataset


@pytest.mark.parametrize("labels", [{}, {"0": "background"}])
def test_a_dataset_without_organs_registers_and_scores_sdlogj_only(tmp_path, labels):
    path = write_tiny_dataset(tmp_path / "data")
    spec = json.loads(path.read_text())
    spec["labels"] = labels
    spec["registration_val"] = spec["registration_val"][:1]
    path.write_text(json.dumps(spec))
    for label_map in (tmp_path / "data" / "labelsTr").iterdir():  # no label map at all, as NLST
        label_map.unlink()
    check = invoke("check", path)
    assert check.exit_code == 0 and "'labels' names no organ" in check.output, check.output
    result = invoke("predict", path, "--out", tmp_path / "out", "--io-iters", "3", "--threads", "1", "--evaluate")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics["aggregates"]) >= {"LogJacDetStd"} and "DSC" not in metrics["aggregates"]
    field = np.asarray(nib.load(tmp_path / "out" / "disp_0001_0000_0002_0000.nii.gz").dataobj)
    assert field.shape == (24, 20, 28, 3)
    again = invoke("evaluate", path, tmp_path / "out", "--out", tmp_path / "m.json", "--quiet")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "m.json").read_text())["aggregates"]["LogJacDetStd"]["mean"] == pytest.approx(
        metrics["aggregates"]["LogJacDetStd"]["mean"])
