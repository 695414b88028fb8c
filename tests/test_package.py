"""The package as installed: weights as package data, a lock file for the container, and a command line
that answers --help and argument errors without importing torch."""

import fnmatch
import json
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from l2r_submit.registration import predict, predict_args, stages

NO_TORCH = """
import json, sys
from l2r_submit.cli import main
codes = []
for args in json.loads(sys.argv[1]):
    try:
        main(args, prog_name="l2r")
    except SystemExit as exc:
        codes.append(exc.code)
    assert "torch" not in sys.modules, args
print(json.dumps(codes))
"""


def test_help_and_argument_errors_never_import_torch(tiny_dataset, tmp_path, repo_root):
    ds, out = str(tiny_dataset), str(tmp_path / "out")
    cases = [["--help"], ["predict", "--help"], ["evaluate", "--help"],
             ["predict", ds, "--out", out, "--stages", "network,bogus"],
             ["predict", ds, "--out", out, "--stages", "adam,adam"],
             ["predict", ds, "--out", out, "--search-grid", "1"],
             ["predict", ds, "--out", out, "--shard", "2/2"],
             ["predict", str(tmp_path / "missing.json"), "--out", out]]
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, json.dumps(cases)], capture_output=True, text=True,
                          cwd=tmp_path, env={"PYTHONPATH": str(repo_root), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [0, 0, 0, 2, 2, 2, 2, 2]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4  # click's own message for --search-grid 1 (out of its range 2-16)
    assert "Invalid value for '--search-grid'" in proc.stderr


def test_the_command_line_knows_the_stage_names_of_the_stages_module():
    assert predict_args.STAGE_NAMES == stages.STAGE_NAMES


def test_the_shipped_weights_are_package_data(repo_root):
    weights = predict.DEFAULT_WEIGHTS_DIR
    assert weights.parent == repo_root / "l2r_submit"  # inside the package, so a wheel carries them
    manifest = json.loads((weights / "manifest.json").read_text())
    shipped = ["manifest.json", *manifest["files"]]
    patterns = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for name in shipped:
        assert (weights / name).is_file()
        assert any(fnmatch.fnmatch(f"weights/{name}", pat) for pat in patterns["l2r_submit"]), name


def test_the_lock_pins_every_requirement_within_its_bounds_and_leaves_torch_alone(repo_root):
    pins = {}
    for line in (repo_root / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower()] = Version(version)
    assert "torch" not in pins
    for line in (repo_root / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("torch"):
            req = Requirement(line)
            name = req.name.lower()
            assert name in pins and req.specifier.contains(pins[name]), (line, pins.get(name))
