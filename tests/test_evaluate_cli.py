import json
import math
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from l2r_submit.core import dataset, disp_files, io
from l2r_submit.evaluation import evaluate
from l2r_submit.cli import main
from l2r_submit.training.synthetic import smooth_random_disp

from conftest import TINY_SHAPE

VAL = [("0001", "0002"), ("0001", "0003"), ("0002", "0003")]


def write_fields(out, fmt="nii.gz", names="long", seed=0):
    for n, (f, m) in enumerate(VAL):
        disp_files.write_disp(smooth_random_disp(seed + n, TINY_SHAPE, 2.5), out, f, m, fmt, names)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_is_instant_without_torch():
    code = "import sys, l2r_submit.cli; sys.exit('torch' in sys.modules or 'scipy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert "evaluate" in invoke("--help").output


def test_evaluate_end_to_end(tiny_dataset, tmp_path):
    write_fields(tmp_path / "disp")
    out = tmp_path / "m.json"
    res = invoke("evaluate", tiny_dataset, tmp_path / "disp", "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())
    assert set(m) >= {"name", "aggregates", "cases", "eval_version"} and m["eval_version"] == "2.0"
    assert list(m["cases"]) == ["0001_0000<--0002_0000", "0001_0000<--0003_0000", "0002_0000<--0003_0000"]
    case = m["cases"]["0001_0000<--0002_0000"]
    assert set(case) >= {"DSC", "HD95", "LogJacDetStd", "num_foldings"}
    assert len(case["DSC"]["detailed"]) == 13 and set(case["DSC"]) == {"mean", "detailed"}
    assert set(m["aggregates"]["DSC"]) == {"mean", "std", "30"}
    assert "DSC" in res.output and "3 pairs scored, 0 failed" in res.output
    assert (tmp_path / "m.csv").read_text().count("\n") == 4


def test_formats_and_names_give_same_numbers(tiny_dataset, tmp_path):
    results = {}
    for fmt, names in (("nii.gz", "long"), ("npz", "short"), ("npz", "both"), ("npz2020", "short")):
        d = tmp_path / f"{fmt}-{names}"
        write_fields(d, fmt, names)
        protocol = "2020" if fmt == "npz2020" else ("2024" if names == "short" else "2025")
        ds = dataset.load(tiny_dataset)
        results[(fmt, names)] = evaluate.run(evaluate.EvalConfig(ds, d, protocol=protocol, progress=False)).metrics
    base = results[("nii.gz", "long")]["cases"]
    for key, m in results.items():
        for case_key, case in m["cases"].items():
            for name in ("DSC", "HD95", "LogJacDetStd"):
                a, b = case[name]["mean"], base[case_key][name]["mean"]
                if key[0] == "npz2020":
                    # half resolution + float16 changes the field by up to ~0.1 voxel
                    tol = {"DSC": 0.05, "HD95": 1.5, "LogJacDetStd": 0.05}[name]
                    assert abs(a - b) <= tol, (key, case_key, name, a, b)
                else:
                    assert abs(a - b) <= 1e-6, (key, case_key, name, a, b)


def test_missing_fields_listed_then_zero_filled(tiny_dataset, tmp_path):
    d = tmp_path / "disp"
    write_fields(d)
    (d / "disp_0001_0000_0003_0000.nii.gz").unlink()
    (d / "disp_0002_0000_0003_0000.nii.gz").unlink()
    res = invoke("evaluate", tiny_dataset, d, "--out", tmp_path / "m.json", "--quiet")
    assert res.exit_code == 2
    assert ("2 of 3 displacement fields missing under evaluator version 2025: "
            "disp_0001_0000_0003_0000.npz/disp_0001_0000_0003_0000.nii.gz, "
            "disp_0002_0000_0003_0000.npz/disp_0002_0000_0003_0000.nii.gz") in res.output
    assert not (tmp_path / "m.json").exists()
    res = invoke("evaluate", tiny_dataset, d, "--out", tmp_path / "m.json", "--missing", "zero", "--quiet")
    assert res.exit_code == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["zero_filled"] == ["0001_0000<--0003_0000", "0002_0000<--0003_0000"]
    assert m["cases"]["0001_0000<--0003_0000"]["LogJacDetStd"]["mean"] == 0.0


def test_one_bad_field_fails_alone_with_exit_1(tiny_dataset, tmp_path):
    d = tmp_path / "disp"
    write_fields(d)
    bad = np.full((*TINY_SHAPE, 3), np.nan, np.float32)
    (d / "disp_0001_0000_0002_0000.nii.gz").unlink()
    np.savez_compressed(d / "disp_0001_0000_0002_0000.npz", bad)
    res = invoke("evaluate", tiny_dataset, d, "--out", tmp_path / "m.json", "--quiet", "--workers", "2")
    assert res.exit_code == 1
    assert "error: 0001_0000<--0002_0000: " in res.output and "non-finite" in res.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert list(m["failed"]) == ["0001_0000<--0002_0000"] and "non-finite" in m["failed"]["0001_0000<--0002_0000"]
    assert len(m["cases"]) == 2


def test_wrong_shape_field_is_reported(tiny_dataset, tmp_path):
    d = tmp_path / "disp"
    write_fields(d)
    np.savez_compressed(d / "disp_0002_0000_0003_0000.npz", np.zeros((3, *TINY_SHAPE), np.float32))
    (d / "disp_0002_0000_0003_0000.nii.gz").unlink()
    res = invoke("evaluate", tiny_dataset, d, "--out", tmp_path / "m.json", "--quiet")
    assert res.exit_code == 1
    assert "disp_0002_0000_0003_0000.npz: shape (3, 24, 20, 28) received, expected (24, 20, 28, 3)" in res.output


def test_a_label_map_of_another_shape_is_named_in_the_error(tiny_dataset, tmp_path):
    d = tmp_path / "disp"
    write_fields(d)
    label = tiny_dataset.parent / "labelsTr" / "AbdomenCTCT_0003_0000.nii.gz"
    io.write_label_map(np.zeros((TINY_SHAPE[0], TINY_SHAPE[1], 9), np.uint8), np.eye(4), label)
    res = invoke("evaluate", tiny_dataset, d, "--out", tmp_path / "m.json", "--quiet")
    assert res.exit_code == 1
    assert (f"{label}: label map of shape (24, 20, 9), expected (24, 20, 28) (the dataset's shape)"
            in res.output), res.output


def test_a_file_error_of_several_lines_is_joined_not_cut():
    """nibabel ends some messages with a second line ('... from object\n - could the file be damaged?')."""
    message = str(io.file_error("a.nii.gz", "cannot be read (OSError: 4 bytes expected, got 2\n - damaged?)"))
    assert message == "a.nii.gz: cannot be read (OSError: 4 bytes expected, got 2 - damaged?)"


@pytest.mark.parametrize("content, msg", [
    ("{not json", "malformed JSON"),
    ('{"name": "x"}', "missing required keys"),
])
def test_bad_dataset_json_one_line_error(tmp_path, content, msg):
    path = tmp_path / "d.json"
    path.write_text(content)
    (tmp_path / "disp").mkdir()
    res = invoke("evaluate", path, tmp_path / "disp")
    assert res.exit_code == 2 and msg in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_eval_config_input(tiny_dataset, tmp_path):
    write_fields(tmp_path / "disp", names="long")
    cfg = {"task_name": "Tiny", "expected_shape": [*TINY_SHAPE, 3],
           "evaluation_methods": [{"name": "LogJacDetStd", "metric": "sdlogj"},
                                  {"name": "DSC", "metric": "dice", "labels": [1, 2, 3]},
                                  {"name": "HD95", "metric": "hd95", "labels": [1, 2, 3]}],
           "eval_pairs": [{"fixed": "./imagesTr/AbdomenCTCT_0001_0000.nii.gz",
                           "moving": "./imagesTr/AbdomenCTCT_0002_0000.nii.gz"}]}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    res = invoke("evaluate", tmp_path / "cfg.json", tmp_path / "disp", "--data-root", tiny_dataset.parent,
                 "--out", tmp_path / "m.json", "--quiet")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["name"] == "Tiny" and len(m["cases"]["0001_0000<--0002_0000"]["DSC"]["detailed"]) == 3


def test_check_command(tiny_dataset):
    res = invoke("check", tiny_dataset)
    assert res.exit_code == 0 and "val: 3 pairs" in res.output and "note: l2r train needs" not in res.output
    spec = json.loads(tiny_dataset.read_text())
    tiny_dataset.write_text(json.dumps({**spec, "training": []}))  # fine to predict; l2r train refuses it
    res = invoke("check", tiny_dataset)
    assert res.exit_code == 0 and "note: l2r train needs at least 2 training cases" in res.output
    tiny_dataset.write_text(json.dumps(spec))
    (tiny_dataset.parent / "imagesTr" / "AbdomenCTCT_0003_0000.nii.gz").unlink()
    res = invoke("check", tiny_dataset)
    assert res.exit_code == 2 and "missing file" in res.output


def test_true_fields_on_test_data_score_near_perfect(repo_root, tmp_path):
    from l2r_submit.training.synthetic import field_from_truth

    truth = json.loads((repo_root / "test_data" / "truth.json").read_text())
    entry = truth["0001_0000<--0004_0000"]
    disp_files.write_disp(field_from_truth(entry), tmp_path, entry["fixed"], entry["moving"])
    ds = dataset.load(repo_root / "test_data" / "AbdomenCTCT_dataset.json")
    ds.splits["one"] = ds.pairs("val")[:1]
    m = evaluate.run(evaluate.EvalConfig(ds, tmp_path, split="one", progress=False)).metrics
    case = m["cases"]["0001_0000<--0004_0000"]
    assert case["DSC"]["mean"] >= 0.95
    assert case["DSC_zero_field"]["mean"] < 0.9
    assert math.isfinite(case["HD95"]["mean"]) and case["jac_nonpos_fraction"]["mean"] == 0.0


def test_one_worker_reads_each_label_map_once(tiny_dataset, tmp_path, monkeypatch):
    """3 pairs over 3 subjects: 3 label reads, not 6; the numbers are those of the pool, which reads per pair."""
    write_fields(tmp_path / "disp")
    reads = []
    real = io.read_labels
    monkeypatch.setattr(io, "read_labels", lambda path: reads.append(path) or real(path))
    ds = dataset.load(tiny_dataset)
    one = evaluate.run(evaluate.EvalConfig(ds, tmp_path / "disp", progress=False)).metrics
    assert sorted(reads) == sorted({p.label for pair in ds.pairs("val") for p in (pair.fixed, pair.moving)})
    two = evaluate.run(evaluate.EvalConfig(ds, tmp_path / "disp", workers=2, progress=False)).metrics
    assert json.dumps(one, allow_nan=True) == json.dumps(two, allow_nan=True)


def test_label_cache_forgets_a_map_after_its_last_pair(tiny_dataset):
    ds = dataset.load(tiny_dataset)
    pairs = ds.pairs("val")  # (1,2), (1,3), (2,3)
    cache = evaluate.LabelCache(pairs)
    first = cache.get(pairs[0].fixed.label)[0]
    assert cache.get(pairs[1].fixed.label)[0] is first  # subject 1 read once for its two pairs
    assert pairs[0].fixed.label not in cache._maps  # and forgotten after its last use


def test_no_output_may_replace_an_input(tiny_dataset, tmp_path):
    """A metrics.json written over the field it scores, the dataset JSON, a label map or the other output
    destroyed it (exit 0); each is refused before any work, the input left as it was."""
    disp = tmp_path / "disp"
    write_fields(disp)
    field = disp / "disp_0001_0000_0002_0000.nii.gz"
    label = tiny_dataset.parent / "labelsTr" / "AbdomenCTCT_0001_0000.nii.gz"
    before = {p: p.read_bytes() for p in (field, tiny_dataset, label)}
    for args, words in (
        (["--out", field], "--out would overwrite an input"),
        (["--out", tiny_dataset], "--out would overwrite an input"),
        (["--out", tmp_path / "m.json", "--csv", label], "--csv would overwrite an input"),
        (["--out", tmp_path / "x" / ".." / "m.json", "--csv", tmp_path / "m.json"], "--csv and --out name the same"),
    ):
        res = invoke("evaluate", tiny_dataset, disp, *args, "--quiet")
        assert res.exit_code == 2 and words in res.output, (args, res.output)
    assert all(p.read_bytes() == data for p, data in before.items())
    assert not (tmp_path / "m.json").exists()
    res = invoke("evaluate", tiny_dataset, disp, "--out", tmp_path / "m.csv", "--quiet")
    assert res.exit_code == 2 and "(--csv defaults to --out with .csv)" in res.output
    # an output of an earlier evaluate named disp_* in the fields' folder is not an input: rerun allowed
    for _ in range(2):
        assert invoke("evaluate", tiny_dataset, disp, "--out", disp / "disp_summary.json", "--quiet").exit_code == 0
    # the report and the expected results of compare: never over the metrics they read
    assert invoke("evaluate", tiny_dataset, disp, "--quiet").exit_code == 0
    metrics = disp / "metrics.json"
    kept = metrics.read_bytes()
    res = invoke("report", metrics, "--out", metrics)
    assert res.exit_code == 2 and "--out would overwrite an input" in res.output
    res = invoke("compare", metrics, metrics, "--write")
    assert res.exit_code == 2 and "EXPECTED_JSON would overwrite an input" in res.output
    assert metrics.read_bytes() == kept


def test_inputs_of_the_wrong_kind_are_named_for_what_they_are(tiny_dataset, tmp_path):
    """Each of these said something else ('embedded null byte' without the file, a bare codec error, a
    'missing file' line per image, 'file not found' for a folder, 'QC folder not found' for a file)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    data = json.loads(tiny_dataset.read_text())
    data["registration_val"][0]["fixed"] += "\0x"
    nul = tiny_dataset.parent / "nul.json"
    nul.write_text(json.dumps(data))
    (tmp_path / "bin.csv").write_bytes(b"fixed,moving\n\xff\xfe1,2\n")
    write_fields(tmp_path / "disp")
    cases = [
        (["check", nul], f"{nul}: registration_val[0]: path "),
        (["evaluate", tmp_path, tmp_path / "disp", "--pairs-csv", tmp_path / "bin.csv", "--protocol", "2020"],
         f"{tmp_path / 'bin.csv'}: not UTF-8 text"),
        (["check", tiny_dataset, "--data-root", tmp_path / "nowhere"], f"{tmp_path / 'nowhere'}: data folder not found"),
        (["check", tiny_dataset.parent], f"{tiny_dataset.parent}: is a folder; expected the dataset JSON"),
        (["evaluate", tiny_dataset, afile], f"{afile}: is a file; DISP_DIR is the folder"),
        (["report", tmp_path / "disp" / "m.json", "--qc", afile, "--out", tmp_path / "r.html"], f"{afile}: is a file"),
    ]
    assert invoke("evaluate", tiny_dataset, tmp_path / "disp", "--out", tmp_path / "disp" / "m.json",
                  "--quiet").exit_code == 0
    assert b"\r" not in (tmp_path / "disp" / "m.csv").read_bytes()  # plain \n line ends
    for args, words in cases:
        res = invoke(*args)
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {words}"), (args, res.output)


def test_a_pair_with_no_label_in_both_maps_is_noted_and_scored_nan_as_the_evaluator(tiny_dataset, tmp_path):
    import nibabel as nib

    label = tiny_dataset.parent / "labelsTr" / "AbdomenCTCT_0001_0000.nii.gz"
    img = nib.load(label)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), label)  # e.g. an empty export
    write_fields(tmp_path / "disp")
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    res = runner.invoke(main, ["evaluate", str(tiny_dataset), str(tmp_path / "disp"), "--out",
                               str(tmp_path / "m.json"), "--quiet"])
    assert res.exit_code == 0  # a NaN pair is a result, as for the official evaluator
    cases = json.loads((tmp_path / "m.json").read_text())["cases"]
    assert math.isnan(cases["0001_0000<--0002_0000"]["DSC"]["mean"])
    notes = [line for line in res.stderr.splitlines() if "no evaluated label" in line]
    assert notes == [f"note: 0001_0000<--0002_0000: no evaluated label is present in both label maps (none in "
                     f"{label}); its DSC and HD95 are NaN, as the evaluator gives them",
                     f"note: 0001_0000<--0003_0000: no evaluated label is present in both label maps (none in "
                     f"{label}); its DSC and HD95 are NaN, as the evaluator gives them"]


def test_an_output_file_named_with_a_trailing_slash_is_refused(tiny_dataset, tmp_path):
    """pathlib drops the slash: 'newdir/' became a file named newdir."""
    write_fields(tmp_path / "disp")
    res = invoke("evaluate", tiny_dataset, tmp_path / "disp", "--out", f"{tmp_path / 'newdir'}/")
    assert res.exit_code == 2 and "ends with a slash, a folder" in res.output and "newdir/metrics.json" in res.output
    assert not (tmp_path / "newdir").exists()
    res = invoke("report", tmp_path / "m.json", "--out", f"{tmp_path}/")
    assert res.exit_code == 2 and "report.html" in res.output


def test_pairs_scores_only_the_named_pairs_and_their_aggregates(tiny_dataset, tmp_path):
    """``l2r evaluate --pairs`` (predict had it, evaluate had not): the named pairs only, with the same per-pair
    numbers as a run over all of them, their mean as the aggregate, the split's order, names as predict takes
    them; a name not in the split is one line, exit 2, nothing written."""
    disp = tmp_path / "disp"
    write_fields(disp)
    assert invoke("evaluate", tiny_dataset, disp, "--out", tmp_path / "all.json", "--quiet").exit_code == 0
    full = json.loads((tmp_path / "all.json").read_text())["cases"]
    res = CliRunner().invoke(main, ["evaluate", str(tiny_dataset), str(disp), "--out", str(tmp_path / "two.json"),
                                    "--quiet", "--pairs", "0002_0003", "--pairs", "0001_0000<--0002_0000"])
    assert res.exit_code == 0, res.output
    assert "note: --pairs: 2 of the 3 pairs of the split scored" in res.stderr
    two = json.loads((tmp_path / "two.json").read_text())
    assert list(two["cases"]) == ["0001_0000<--0002_0000", "0002_0000<--0003_0000"]
    for key, case in two["cases"].items():
        assert case == full[key]
    assert two["aggregates"]["DSC"]["mean"] == pytest.approx(np.mean([c["DSC"]["mean"] for c in two["cases"].values()]))
    bad = CliRunner().invoke(main, ["evaluate", str(tiny_dataset), str(disp), "--out", str(tmp_path / "bad.json"),
                                    "--pairs", "0001_0002,0003_0001"])
    assert bad.exit_code == 2 and bad.stderr.strip() == "error: --pairs: not in split 'val': 0003_0001"
    assert not (tmp_path / "bad.json").exists()
