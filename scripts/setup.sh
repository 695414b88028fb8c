#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv with torch and l2r_submit installed.
# torch is pinned here, before anything else, so pip never resolves a newer (CUDA) torch on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.13.0
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt -e ".[test]"
echo "ready: $venv (l2r $("$venv/bin/l2r" --version | awk '{print $NF}'))"
