"""The shell entry points: evaluate.sh's argument checks and .ci/docker.sh under CI=true."""

import os
import subprocess

import pytest


@pytest.fixture
def fake_bin(tmp_path):
    """A PATH folder with an ``l2r`` that records being run and an ``id`` that reports a non-root uid."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "l2r").write_text(f"#!/bin/sh\necho ran >> {tmp_path / 'l2r-ran'}\n")
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def run(script, *args, env_extra=None, path=None):
    env = {**os.environ, **(env_extra or {})}
    env["PATH"] = f"{path}:{env['PATH']}"
    return subprocess.run(["bash", script, *map(str, args)], capture_output=True, text=True, env=env)


def test_evaluate_sh_checks_expected_before_evaluating(repo_root, fake_bin, tmp_path):
    script = repo_root / "evaluate.sh"
    res = run(script, "d.json", tmp_path, "--expected", tmp_path / "missing.json", path=fake_bin)
    assert res.returncode == 2 and "missing.json: expected-results file not found" in res.stderr
    assert not (tmp_path / "l2r-ran").exists()
    res = run(script, "d.json", tmp_path, "--expected", path=fake_bin)
    assert res.returncode == 2 and "error: --expected needs a value" in res.stderr
    res = run(script, "--image", "img", "d.json", tmp_path, path=fake_bin)  # was l2r's "No such option '--image'"
    assert res.returncode == 2 and "error: DATASET_JSON and DISP_DIR come first" in res.stderr
    assert "unbound variable" not in res.stderr and not (tmp_path / "l2r-ran").exists()


def test_evaluate_sh_reads_option_equals_value_and_passes_its_own_out_first(repo_root, fake_bin, tmp_path):
    """--out=FILE was passed on and then overridden by the script's own --out DISP_DIR/metrics.json;
    --expected=FILE was refused by l2r; the default --out came last, so '--missing' without its value
    was reported by click as "'--out' is not one of error, zero"."""
    args_file = tmp_path / "args"
    (fake_bin / "l2r").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" >> {args_file}\n")
    script = repo_root / "evaluate.sh"
    expected = tmp_path / "e.json"
    expected.write_text("{}")
    res = run(script, "d.json", tmp_path / "d", "--out=" + str(tmp_path / "mine.json"), "--expected=" + str(expected),
              path=fake_bin)
    assert res.returncode == 0, res.stderr
    calls = args_file.read_text().split("evaluate\n")
    assert len(calls) == 2 and "compare" not in calls[1]  # l2r evaluate compares (and checks the file first)
    assert calls[1].split() == ["d.json", str(tmp_path / "d"), "--out", str(tmp_path / "mine.json"),
                                "--expected", str(expected)]
    args_file.unlink()
    run(script, "d.json", tmp_path / "d", "--missing", path=fake_bin)
    assert args_file.read_text().split() == ["evaluate", "d.json", str(tmp_path / "d"), "--out",
                                             str(tmp_path / "d" / "metrics.json"), "--missing"]


def test_evaluate_sh_gives_the_container_the_split_and_names_it_scores_and_scores_what_it_wrote(
        repo_root, fake_bin, tmp_path):
    """With --image, --split and --protocol reached only l2r evaluate (the container registered the val pairs,
    then the test pairs were 'missing'), no l2r predict option could reach the container, one failed pair
    meant nothing was scored, and a container that did not start left an empty DISP_DIR."""
    args_file = tmp_path / "args"
    (fake_bin / "l2r").write_text(f"#!/bin/sh\nprintf '%s ' l2r \"$@\" >> {args_file}; echo >> {args_file}\n")
    (fake_bin / "docker").write_text(f"#!/bin/sh\nprintf '%s ' docker \"$@\" >> {args_file}; echo >> {args_file}\n"
                                     "sleep 0.01; [ -z \"$FAKE_RUN_JSON\" ] || echo {{}} > \"$FAKE_RUN_JSON\"\n"
                                     "exit ${FAKE_DOCKER_RC:-0}\n")
    (fake_bin / "docker").chmod(0o755)
    (fake_bin / "l2r").chmod(0o755)
    script = repo_root / "evaluate.sh"
    data = tmp_path / "data"
    data.mkdir()
    disp = tmp_path / "disp"
    (tmp_path / "glob_me").write_text("")  # L2R_PREDICT_ARGS is split on spaces, not glob-expanded
    res = run(script, data / "d.json", disp, "--image", "img", "--split=test", "--protocol", "2024", path=fake_bin,
              env_extra={"L2R_PREDICT_ARGS": f"--checkpoint /l2r/data/w.pt {tmp_path}/glob_*"})
    assert res.returncode == 0, res.stderr
    docker, evaluate = args_file.read_text().splitlines()
    assert docker.split()[-8:] == ["/l2r/data/d.json", "--split", "test", "--names", "short", "--checkpoint",
                                   "/l2r/data/w.pt", f"{tmp_path}/glob_*"]
    assert evaluate.split()[-4:] == ["--split", "test", "--protocol", "2024"]
    args_file.unlink()
    failed = {"FAKE_DOCKER_RC": "1", "FAKE_RUN_JSON": str(disp / "run.json")}
    res = run(script, data / "d.json", disp, "--image", "img", "--protocol", "2020", "--pairs", "0001_0004",
              path=fake_bin, env_extra=failed)
    assert res.returncode == 1 and "the container failed some pairs (exit 1; see" in res.stderr
    docker, evaluate = args_file.read_text().splitlines()
    assert docker.split()[-4:] == ["--format", "npz2020", "--pairs", "0001_0004"]
    assert evaluate.split()[-2:] == ["--missing", "zero"]
    args_file.unlink()
    (disp / "disp_0001_0000_0004_0000.nii.gz").write_text("an earlier run's field")  # would be scored as its result
    res = run(script, data / "d.json", disp, "--image", "img", path=fake_bin, env_extra=failed)
    assert res.returncode == 1 and "not scored, since" in res.stderr and len(args_file.read_text().splitlines()) == 1
    args_file.unlink()
    res = run(script, data / "d.json", disp, "--image", "img", "--split", "eval", path=fake_bin)  # predict has none
    assert "--split" not in args_file.read_text().splitlines()[0]
    args_file.unlink()
    res = run(script, data / "d.json", tmp_path / "new" / "disp", "--image", "nosuch", path=fake_bin,
              env_extra={"FAKE_DOCKER_RC": "125"})
    assert res.returncode == 125 and "the container stopped (exit 125); nothing scored" in res.stderr
    assert len(args_file.read_text().splitlines()) == 1 and not (tmp_path / "new" / "disp").exists()


def test_docker_ci_fails_instead_of_skipping_under_ci(repo_root, fake_bin):
    script = repo_root / ".ci" / "docker.sh"
    res = run(script, env_extra={"CI": "true"}, path=fake_bin)
    assert res.returncode == 1 and "FAILED" in res.stderr
    res = run(script, env_extra={"CI": ""}, path=fake_bin)
    assert res.returncode == 0 and "skipped" in res.stdout


def test_requirements_txt_and_pyproject_agree(repo_root):
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]

    def norm(dep):
        return re.sub(r"\s+", "", dep.split("#")[0]).lower()

    listed = [norm(line) for line in (repo_root / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    assert sorted(listed) == sorted(norm(d) for d in project["dependencies"])


def test_the_scripts_the_readme_runs_start(repo_root):
    """scripts/make_test_data.py imported write_disp from where it no longer was: it could not start, and no
    test noticed (the README builds test_data with it)."""
    import sys

    for script, extra in (("make_test_data.py", ["--help"]), ("layer_check.py", [])):
        args = [sys.executable, str(repo_root / "scripts" / script), *extra]
        res = subprocess.run(args, capture_output=True, text=True, cwd=repo_root)
        assert res.returncode == 0 and "Traceback" not in res.stderr, (script, res.stderr[-2000:])
