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
