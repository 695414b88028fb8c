"""The package's layers: no module imports from a higher layer (the table is scripts/layer_check.py's LAYERS)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import l2r_submit

PACKAGE = Path(l2r_submit.__file__).resolve().parent
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "layer_check.py"


def _layer_check():
    if not (PACKAGE / "core").is_dir():
        pytest.skip("the package is still flat: `python scripts/relayout.py` lays it out in layers")
    spec = importlib.util.spec_from_file_location("layer_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_from_a_higher_layer():
    check = _layer_check()
    assert check.layer_violations(PACKAGE.parent) == []


def test_every_module_in_a_layer_folder():
    check = _layer_check()
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= {"__init__", "__main__", "cli", "container"}, f"modules outside the layer folders: {sorted(top)}"
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == {f for f in check.LAYERS if f}


def test_cli_imports_without_torch():
    _layer_check()
    code = "import sys, l2r_submit.cli; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == "[]"
