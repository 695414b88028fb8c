"""Each official evaluator version's rules, as read from its own source (MDL-UzL/L2R):

* 2025: 8847509 (2025-02-10) -- long names for same-modality pairs, npz under any key, SDlogJ '30' = 0.7 quantile;
* 2024: 28985b7 (2024-08-01) -- short names, npz ``arr_0``, SDlogJ '30' = 0.7 quantile, metrics-only aggregates;
* 2022: 56f96d5 (2023-07-11) -- short names, npz ``arr_0``, every '30' the 0.3 quantile, every case key aggregated;
* 2020 -- half-resolution float16 npz under the short name, ddof 1.

The expected values are written here from those rules (and numpy's own quantile/std/masked std),
not from our implementation.
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from l2r_submit.nets import checkpoint, regnet
from l2r_submit.core import disp_files
from l2r_submit.evaluation import metrics, scoring
from l2r_submit.cli import main
from l2r_submit.core.dataset import MetricSpec
from l2r_submit.training.synthetic import smooth_random_disp

from conftest import TINY_SHAPE, write_tiny_dataset

VAL = [("0001", "0002"), ("0001", "0003"), ("0002", "0003")]
KEYS = [f"{f}_0000<--{m}_0000" for f, m in VAL]


def run_cli(*args):
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2 mixes stderr into stdout by default
    except TypeError:
        runner = CliRunner()  # click >= 8.2 always keeps them apart
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(res, *words):
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    for w in words:
        assert w in lines[0], (w, lines[0])


def write_fields(out, names="long", fmt="nii.gz", seed=0):
    for n, (f, m) in enumerate(VAL):
        disp_files.write_disp(smooth_random_disp(seed + n, TINY_SHAPE, 2.5), out, f, m, fmt, names)


def evaluate(tiny_dataset, disp_dir, out, *extra):
    return run_cli("evaluate", tiny_dataset, disp_dir, "--out", out, "--quiet", *extra)


# ----------------------------------------------------------------------------- 7: names per version


def test_file_names_each_version_finds():
    from l2r_submit.core import versions

    # 2025 (8847509): short name allowed only for 0000 -> 0001, tried first; long otherwise
    v = versions.get("2025")
    assert v.stems("0001", "0000", "0004", "0000") == ["disp_0001_0000_0004_0000"]
    assert v.stems("0001", "0000", "0001", "0001") == ["disp_0001_0001", "disp_0001_0000_0001_0001"]
    # 2022/2024 (56f96d5, 28985b7): same modality or 0000 -> 0001: only short; else only long
    for name in ("2024", "2022"):
        v = versions.get(name)
        assert v.stems("0001", "0000", "0004", "0000") == ["disp_0001_0004"]
        assert v.stems("0001", "0000", "0001", "0001") == ["disp_0001_0001"]
        assert v.stems("0001", "0001", "0001", "0002") == ["disp_0001_0001_0001_0002"]
    assert versions.get("2020").stems("0001", "0000", "0004", "0000") == ["disp_0001_0004"]
    assert versions.get("2020").exts == (".npz",)


def test_a_file_another_version_would_read_is_missing_with_a_hint(tiny_dataset, tmp_path):
    long_dir, short_dir = tmp_path / "long", tmp_path / "short"
    write_fields(long_dir, "long")
    write_fields(short_dir, "short")
    assert evaluate(tiny_dataset, long_dir, tmp_path / "a.json").exit_code == 0  # default: 2025
    res = evaluate(tiny_dataset, long_dir, tmp_path / "b.json", "--protocol", "2022")
    assert res.exit_code == 2
    one_line_error(res, "3 of 3 displacement fields missing under evaluator version 2022",
                   "found disp_0001_0000_0002_0000.nii.gz, which --protocol 2025 reads")
    res = evaluate(tiny_dataset, short_dir, tmp_path / "c.json")
    assert res.exit_code == 2
    one_line_error(res, "evaluator version 2025", "found disp_0001_0002.nii.gz, which --protocol 2024 reads")
    for protocol in ("2024", "2022"):
        assert evaluate(tiny_dataset, short_dir, tmp_path / f"{protocol}.json", "--protocol", protocol).exit_code == 0


def test_quantile_std_and_aggregated_keys_per_version():
    values = [0.1, 0.4, 0.5, 0.9]
    cases = {f"{i:04d}_0000<--0009_0000": {"DSC": {"mean": v, "detailed": [v]},
                                           "DSC_zero_field": {"mean": v, "detailed": [v]},
                                           "LogJacDetStd": {"mean": v, "detailed": v},
                                           "num_foldings": {"mean": 0.0, "detailed": 0.0},
                                           "SDlogJ_plain": {"mean": v, "detailed": v},
                                           "jac_nonpos_fraction": {"mean": 0.0, "detailed": 0.0}}
             for i, v in enumerate(values)}
    specs = (MetricSpec("LogJacDetStd", "sdlogj"), MetricSpec("DSC", "dice", (1,)))
    for name in ("2025", "2024"):  # 28985b7: 0.7 for sdlogj, aggregates over metrics_dict only
        agg = scoring.aggregate(cases, specs, name)
        assert agg["LogJacDetStd"]["30"] == pytest.approx(np.quantile(values, 0.7))
        assert agg["DSC"]["30"] == pytest.approx(np.quantile(values, 0.3))
        assert agg["DSC"]["std"] == pytest.approx(np.std(values))
        assert "num_foldings" not in agg
    agg = scoring.aggregate(cases, specs, "2022")  # before 28985b7: .3 everywhere, every key of a case
    assert agg["LogJacDetStd"]["30"] == pytest.approx(np.quantile(values, 0.3))
    assert agg["num_foldings"] == {"mean": 0.0, "std": 0.0, "30": 0.0}
    assert scoring.aggregate(cases, specs, "2020")["DSC"]["std"] == pytest.approx(np.std(values, ddof=1))
    with pytest.raises(ValueError, match="expected one of 2025, 2024, 2022, 2020"):
        scoring.aggregate(cases, specs, "2023")


def test_old_protocol_value_and_unknown_value(tiny_dataset, tmp_path):
    write_fields(tmp_path / "d", "short")
    assert evaluate(tiny_dataset, tmp_path / "d", tmp_path / "m.json", "--protocol", "2022").exit_code == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["protocol"] == "2022" and "num_foldings" in m["aggregates"]
    res = evaluate(tiny_dataset, tmp_path / "d", tmp_path / "m.json", "--protocol", "2019")
    assert res.exit_code == 2 and "Traceback" not in res.output


# ------------------------------------------------------------------------------ 8: npz under any key


def test_npz_under_any_key_scores_like_the_nifti(tiny_dataset, tmp_path):
    write_fields(tmp_path / "nii", "long")
    (tmp_path / "npz").mkdir()
    for f, m in VAL:
        stem = f"disp_{f}_0000_{m}_0000"
        arr = nib.load(tmp_path / "nii" / f"{stem}.nii.gz").get_fdata().astype(np.float32)
        np.savez_compressed(tmp_path / "npz" / f"{stem}.npz", displacement=arr)
    assert evaluate(tiny_dataset, tmp_path / "nii", tmp_path / "a.json").exit_code == 0
    res = evaluate(tiny_dataset, tmp_path / "npz", tmp_path / "b.json")
    assert res.exit_code == 0, res.output
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    for key in KEYS:
        for name in ("DSC", "HD95", "LogJacDetStd"):
            assert a["cases"][key][name]["mean"] == pytest.approx(b["cases"][key][name]["mean"], abs=1e-6)


def test_npz_dtypes_as_the_official_loader(tiny_dataset, tmp_path):
    d = tmp_path / "d"
    write_fields(d)
    stem = "disp_0001_0000_0002_0000"
    (d / f"{stem}.nii.gz").unlink()
    np.savez(d / f"{stem}.npz", np.zeros((*TINY_SHAPE, 3), np.int32))  # cast to float32, as utils.load_disp
    res = evaluate(tiny_dataset, d, tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text())["cases"][KEYS[0]]["LogJacDetStd"]["mean"] == 0.0
    np.savez(d / f"{stem}.npz", np.zeros((*TINY_SHAPE, 3), np.complex64))
    res = evaluate(tiny_dataset, d, tmp_path / "m.json")
    assert res.exit_code == 1 and f"{stem}.npz: dtype complex64" in res.stderr


def test_channel_first_full_resolution_gets_the_right_hint(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, np.zeros((3, *TINY_SHAPE), np.float32))
    with pytest.raises(ValueError, match="channel-first; the official format is channel-last"):
        disp_files.read_disp(path, TINY_SHAPE)


def test_two_candidate_files_for_one_pair_is_an_error_naming_both(tiny_dataset, tmp_path):
    d = tmp_path / "d"
    write_fields(d)
    np.savez(d / "disp_0001_0000_0002_0000.npz", np.zeros((*TINY_SHAPE, 3), np.float32))
    res = evaluate(tiny_dataset, d, tmp_path / "m.json")
    assert res.exit_code == 2
    one_line_error(res, "disp_0001_0000_0002_0000.npz and", "disp_0001_0000_0002_0000.nii.gz")
    assert not (tmp_path / "m.json").exists()


# ------------------------------------------------------------------------ 9: npz2020 short names


def test_npz2020_defaults_to_the_2020_short_names(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    ckpt = checkpoint.save(tmp_path / "tiny.pt", regnet.build("tiny"))
    out = tmp_path / "out"
    res = run_cli("predict", tiny_dataset, "--out", out, "--checkpoint", ckpt, "--device", "cpu", "--quiet",
                  "--format", "npz2020", "--io-iters", "0", "--pairs", "0001_0002", "--evaluate")
    assert res.exit_code == 0, res.output + res.stderr
    assert sorted(p.name for p in out.glob("disp_*")) == ["disp_0001_0002.npz"]
    # 12: --pairs X --evaluate scores exactly X
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["cases"]) == [KEYS[0]] and m["partial"] is False and m["protocol"] == "2020"
    res = run_cli("predict", tiny_dataset, "--out", out, "--checkpoint", ckpt, "--format", "npz2020",
                  "--names", "long")
    assert res.exit_code == 2 and res.stderr.strip().endswith("use --names short")


# --------------------------------------------------------------------------- 10: labels from the data


def test_labels_come_from_the_dataset_json(tiny_dataset, tmp_path):
    data = json.loads(tiny_dataset.read_text())
    data["labels"] = {"0": {"0": "background", "2": "b", "4": "d"}}
    tiny_dataset.write_text(json.dumps(data))
    write_fields(tmp_path / "d")
    assert evaluate(tiny_dataset, tmp_path / "d", tmp_path / "m.json").exit_code == 0
    case = json.loads((tmp_path / "m.json").read_text())["cases"][KEYS[0]]
    assert len(case["DSC"]["detailed"]) == 2 and len(case["HD95"]["detailed"]) == 2
    data["labels"] = {"0": "background", "x": "y"}
    tiny_dataset.write_text(json.dumps(data))
    res = evaluate(tiny_dataset, tmp_path / "d", tmp_path / "m.json")
    assert res.exit_code == 2
    one_line_error(res, str(tiny_dataset), "labels: keys must be integers")


# -------------------------------------------------------------------------------- 11: masks


def _config(tiny_dataset, tmp_path, **extra):
    cfg = {"task_name": "Tiny", "expected_shape": [*TINY_SHAPE, 3],
           "evaluation_methods": [{"name": "LogJacDetStd", "metric": "sdlogj"},
                                  {"name": "DSC", "metric": "dice", "labels": [1, 2, 3]}],
           "eval_pairs": [{"fixed": f"./imagesTr/AbdomenCTCT_{f}_0000.nii.gz",
                           "moving": f"./imagesTr/AbdomenCTCT_{m}_0000.nii.gz"} for f, m in VAL], **extra}
    path = tiny_dataset.parent / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


def test_masked_evaluation_masks_sdlogj_as_the_official_evaluator(tiny_dataset, tmp_path):
    write_fields(tmp_path / "d")
    cfg = _config(tiny_dataset, tmp_path, masked_evaluation=True)
    masks = tiny_dataset.parent / "masksTr"
    masks.mkdir()
    mask = np.zeros(TINY_SHAPE, np.uint8)
    mask[4:18, 3:15, 5:20] = 1
    mask[6:8, 6:8, 6:8] = 2  # only == 1 is kept by MaskedArray(x, 1 - mask)
    nib.save(nib.Nifti1Image(mask, np.eye(4)), masks / "AbdomenCTCT_0001_0000.nii.gz")
    res = evaluate(cfg, tmp_path / "d", tmp_path / "m.json")
    assert res.exit_code == 0, res.output + res.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    disp = disp_files.read_disp(tmp_path / "d" / "disp_0001_0000_0002_0000.nii.gz", TINY_SHAPE)
    log_j = np.log((metrics.jacobian_determinant(disp) + 3).clip(1e-9, 1e9))
    official = float(np.ma.MaskedArray(log_j, 1 - mask[2:-2, 2:-2, 2:-2].astype(float)).std())
    assert m["cases"][KEYS[0]]["LogJacDetStd"]["mean"] == pytest.approx(official, rel=1e-12)
    assert official != pytest.approx(float(log_j.std()), rel=1e-3)
    # fixed 0002 has no mask: scored unmasked with a note, as the evaluator prints one
    d3 = disp_files.read_disp(tmp_path / "d" / "disp_0002_0000_0003_0000.nii.gz", TINY_SHAPE)
    plain = float(np.log((metrics.jacobian_determinant(d3) + 3).clip(1e-9, 1e9)).std())
    assert m["cases"][KEYS[2]]["LogJacDetStd"]["mean"] == pytest.approx(plain, rel=1e-12)
    assert "mask not found" in res.stderr


def test_masks_are_found_as_the_evaluator_finds_them_and_a_mask_of_another_shape_fails_its_pair(tmp_path):
    # the official evaluation.py replaces "images" in the JSON's relative path, then joins the data folder:
    # a data folder whose own path holds "images" keeps it (we replaced it in the whole path and missed the mask)
    dataset_json = write_tiny_dataset(tmp_path / "all_images" / "data")
    root = dataset_json.parent
    write_fields(tmp_path / "d")
    cfg = _config(dataset_json, tmp_path, masked_evaluation=True)
    (root / "masksTr").mkdir()
    mask = np.zeros(TINY_SHAPE, np.uint8)
    mask[4:18, 3:15, 5:20] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), root / "masksTr" / "AbdomenCTCT_0001_0000.nii.gz")
    res = evaluate(cfg, tmp_path / "d", tmp_path / "m.json")
    assert res.exit_code == 0 and "masksTr/AbdomenCTCT_0001_0000.nii.gz: mask not found" not in res.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    disp = disp_files.read_disp(tmp_path / "d" / "disp_0001_0000_0002_0000.nii.gz", TINY_SHAPE)
    log_j = np.log((metrics.jacobian_determinant(disp) + 3).clip(1e-9, 1e9))
    official = float(np.ma.MaskedArray(log_j, 1 - mask[2:-2, 2:-2, 2:-2].astype(float)).std())
    assert m["cases"][KEYS[0]]["LogJacDetStd"]["mean"] == pytest.approx(official, rel=1e-12)
    # l2r check names the masks too: a missing one is a note (the evaluator goes on unmasked) ...
    res = run_cli("check", cfg, "--read")
    assert res.exit_code == 0 and "AbdomenCTCT_0002_0000.nii.gz: mask not found" in res.stdout + res.stderr
    # ... a mask of another shape is an error there, and fails only its pairs in evaluate, named
    nib.save(nib.Nifti1Image(mask[:-1], np.eye(4)), root / "masksTr" / "AbdomenCTCT_0001_0000.nii.gz")
    res = run_cli("check", cfg, "--read")
    assert res.exit_code == 2 and "AbdomenCTCT_0001_0000.nii.gz: mask of shape" in res.stdout + res.stderr
    res = evaluate(cfg, tmp_path / "d", tmp_path / "m.json")
    assert res.exit_code == 1 and "Traceback" not in res.stdout + res.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert set(m["failed"]) == {KEYS[0], KEYS[1]}  # both pairs with fixed image 0001
    assert "masksTr/AbdomenCTCT_0001_0000.nii.gz: mask of shape" in m["failed"][KEYS[0]]
    # masks behind a symlink out of the data folder: refused as any such path, but per pair (it stopped
    # the whole evaluation before any pair), and named by l2r check
    outside = tmp_path / "outside"
    (root / "masksTr").rename(outside)
    (root / "masksTr").symlink_to(outside)
    res = evaluate(cfg, tmp_path / "d", tmp_path / "m.json")
    assert res.exit_code == 1 and "Traceback" not in res.stdout + res.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert set(m["failed"]) == set(KEYS) and "escapes the data folder" in m["failed"][KEYS[2]]
    res = run_cli("check", cfg)
    assert res.exit_code == 2 and "escapes the data folder" in res.stdout + res.stderr


def test_a_config_without_pairs_is_an_error_for_check_as_for_evaluate(tiny_dataset, tmp_path):
    cfg = _config(tiny_dataset, tmp_path)
    data = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**data, "eval_pairs": []}))
    res = run_cli("check", cfg)  # it said ok
    assert res.exit_code == 2 and f"error: {cfg}: eval_pairs is empty: nothing to score" in res.stdout + res.stderr
    write_fields(tmp_path / "d")
    res = evaluate(cfg, tmp_path / "d", tmp_path / "m.json")
    assert res.exit_code == 2
    one_line_error(res, str(cfg), "no pairs to score (eval: empty)")


# --------------------------------------------------------------------------------- 12: partial


def test_zero_filled_and_failed_pairs_mark_the_result_partial(tiny_dataset, tmp_path):
    d = tmp_path / "d"
    write_fields(d)
    (d / "disp_0001_0000_0003_0000.nii.gz").unlink()
    (d / "disp_0002_0000_0003_0000.nii.gz").write_bytes(b"not a nifti")
    res = evaluate(tiny_dataset, d, tmp_path / "m.json", "--missing", "zero")
    assert res.exit_code == 1
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["partial"] is True and m["zero_filled"] == [KEYS[1]] and list(m["failed"]) == [KEYS[2]]
    assert ("warning: partial result: 1 of 3 pairs failed and are not in the aggregates; 1 of 3 scored as zero "
            "fields (listed in metrics.json)") in res.stderr
    (d / "disp_0002_0000_0003_0000.nii.gz").unlink()  # zero fields only: no word of failed pairs
    res = evaluate(tiny_dataset, d, tmp_path / "m.json", "--missing", "zero")
    assert "warning: partial result: 2 of 3 scored as zero fields (listed in metrics.json)" in res.stderr
    write_fields(d)
    assert evaluate(tiny_dataset, d, tmp_path / "m.json").exit_code == 0
    assert json.loads((tmp_path / "m.json").read_text())["partial"] is False
