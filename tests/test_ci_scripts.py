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
    calls = args_file.read_text().split("evaluate\n")[1].split("compare\n")
    assert calls[0].split() == ["d.json", str(tmp_path / "d"), "--out", str(tmp_path / "mine.json")]
    assert calls[1].split() == [str(tmp_path / "mine.json"), str(expected)]
    args_file.unlink()
    run(script, "d.json", tmp_path / "d", "--missing", path=fake_bin)
    assert args_file.read_text().split() == ["evaluate", "d.json", str(tmp_path / "d"), "--out",
                                             str(tmp_path / "d" / "metrics.json"), "--missing"]


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
