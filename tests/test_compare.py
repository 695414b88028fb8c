import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from l2r_submit.evaluation import compare
from l2r_submit.core import disp_files
from l2r_submit.cli import main
from l2r_submit.training.synthetic import smooth_random_disp

from conftest import TINY_SHAPE


def _metrics(dsc):
    return {"aggregates": {"DSC": {"mean": dsc}, "HD95": {"mean": float("inf")}},
            "cases": {"a": {"DSC": {"mean": dsc}, "HD95": {"mean": float("inf")}, "vanished_labels": [3]}}}


def test_compare_tolerance_and_inf():
    expected = compare.expected_from_metrics(_metrics(0.5), {"DSC": 0.01, "HD95": 1.0})
    assert compare.compare(_metrics(0.505), expected) == []
    problems = compare.compare(_metrics(0.6), expected)
    assert problems == ["mean DSC: got 0.6000, expected 0.5000 +/- 0.01 (off by +0.1000)",
                        "a DSC: got 0.6000, expected 0.5000 +/- 0.01 (off by +0.1000)"]
    missing = compare.compare({"aggregates": {}, "cases": {}}, expected)
    assert any("a: missing" in p for p in missing)


def test_evaluate_sh_with_expected_results(tiny_dataset, tmp_path, repo_root):
    disp = tmp_path / "disp"
    for f, m in (("0001", "0002"), ("0001", "0003"), ("0002", "0003")):
        disp_files.write_disp(smooth_random_disp(1, TINY_SHAPE, 2.0), disp, f, m)
    bindir = Path(sys.executable).parent
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    run = subprocess.run(["bash", str(repo_root / "evaluate.sh"), str(tiny_dataset), str(disp), "--quiet"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    metrics = disp / "metrics.json"
    res = CliRunner().invoke(main, ["compare", str(metrics), str(tmp_path / "exp.json"), "--write", "--tol", "DSC=0.001"])
    assert res.exit_code == 0
    exp = json.loads((tmp_path / "exp.json").read_text())
    assert exp["tolerance"]["DSC"] == 0.001 and len(exp["cases"]) == 3
    run = subprocess.run(["bash", str(repo_root / "evaluate.sh"), str(tiny_dataset), str(disp), "--quiet",
                          "--expected", str(tmp_path / "exp.json")], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and "within tolerance" in run.stdout
    exp["cases"]["0001_0000<--0002_0000"]["DSC"] += 0.1
    (tmp_path / "exp.json").write_text(json.dumps(exp))
    run = subprocess.run(["bash", str(repo_root / "evaluate.sh"), str(tiny_dataset), str(disp), "--quiet",
                          "--expected", str(tmp_path / "exp.json")], capture_output=True, text=True, env=env)
    assert run.returncode == 1
    assert "FAIL 0001_0000<--0002_0000 DSC: got" in run.stdout
    # a file of the wrong kind (the metrics themselves) is refused before any pair is scored
    fresh = tmp_path / "fresh.json"
    run = subprocess.run(["bash", str(repo_root / "evaluate.sh"), str(tiny_dataset), str(disp), "--quiet",
                          "--out", str(fresh), "--expected", str(metrics)], capture_output=True, text=True, env=env)
    assert run.returncode == 2 and "this is a metrics.json, not an expected-results file" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not fresh.exists()


def test_write_refuses_results_that_cannot_be_a_reference(tmp_path):
    """Expected results made from a run whose pairs failed held no cases and passed anything; from a NaN,
    matched any later NaN; tolerances of nan, -1 or an unknown name were taken."""
    def write(metrics, *extra):
        src = tmp_path / "m.json"
        src.write_text(json.dumps(metrics))
        return CliRunner().invoke(main, ["compare", str(src), str(tmp_path / "e.json"), "--write", *extra])

    failed = {**_metrics(0.5), "partial": True, "failed": {"b": "cannot be read"}}
    res = write(failed)
    assert res.exit_code == 2 and "a partial result (1 failed) cannot be the expected results" in res.output
    res = write({"aggregates": {}, "cases": {}})
    assert res.exit_code == 2 and "no pairs scored" in res.output
    res = write(_metrics(float("nan")))
    assert res.exit_code == 2 and "aggregates.DSC is NaN" in res.output
    for tol, words in (("DSC=nan", "finite number >= 0"), ("DSC=-1", "finite number >= 0"),
                       ("FOO=1", "no metric 'FOO'"), ("DSC", "expected NAME=NUMBER"),
                       ("vanished_labels=1", "no metric 'vanished_labels'")):
        res = write(_metrics(0.5), "--tol", tol)
        assert res.exit_code == 2 and words in res.output, (tol, res.output)
    assert not (tmp_path / "e.json").exists()
    (tmp_path / "e.json").mkdir()
    res = write(_metrics(0.5))
    assert res.exit_code == 2 and "e.json: cannot be written" in res.output and "Traceback" not in res.output
    (tmp_path / "e.json").rmdir()
    res = write(_metrics(0.5), "--tol", "DSC=0.05")
    assert res.exit_code == 0 and json.loads((tmp_path / "e.json").read_text())["tolerance"]["DSC"] == 0.05


def test_a_partial_result_or_an_empty_expected_file_never_passes(tmp_path):
    """A metrics.json whose only pair was zero-filled (its registration failed) passed, and so did anything
    against {"cases": {}}."""
    expected = compare.expected_from_metrics(_metrics(0.5), {"DSC": 0.01, "HD95": 1.0})
    zero_filled = {**_metrics(0.5), "partial": True, "zero_filled": ["a"]}
    assert compare.compare(zero_filled, expected) == [
        "the metrics are a partial result (1 zero-filled pairs): not every pair was registered and scored"]
    src, want = tmp_path / "m.json", tmp_path / "e.json"
    src.write_text(json.dumps(zero_filled))
    want.write_text(json.dumps(expected))
    res = CliRunner().invoke(main, ["compare", str(src), str(want)])
    assert res.exit_code == 1 and "FAIL the metrics are a partial result" in res.output
    want.write_text(json.dumps({"cases": {}}))
    src.write_text(json.dumps(_metrics(0.5)))
    res = CliRunner().invoke(main, ["compare", str(src), str(want)])
    assert res.exit_code == 2 and "expects no value at all, so any metrics would pass" in res.output
