#!/usr/bin/env bash
# Create .venv-peer: the environment in which benchmarks/peer_bench.py runs ConvexAdam (PyPI `convexAdam`).
#
# It reuses the project environment's packages (torch 2.13.0, numpy, scipy, nibabel, SimpleITK) through a
# .pth file, so no second torch is ever resolved or downloaded, and installs convexAdam alone with --no-deps.
# Of convexAdam's declared requirements (nibabel, numpy, scikit-learn, SimpleITK, torch) the MIND path we run
# imports all but scikit-learn, which it never imports; all the others come from the project environment.
# Usage: bash benchmarks/setup_peer.sh   (after scripts/setup.sh; PROJECT_VENV=... to use another environment)
set -euo pipefail
cd "$(dirname "$0")/.."
project="${PROJECT_VENV:-.venv}"
peer="${PEER_VENV:-.venv-peer}"
version=0.2.0
[ -x "$project/bin/python" ] || { echo "setup_peer: $project/bin/python not found: run scripts/setup.sh first" >&2; exit 2; }
site=$("$project/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
torch_version=$("$project/bin/python" -c "import torch; print(torch.__version__)")
[ -x "$peer/bin/python" ] || "$project/bin/python" -m venv "$peer"
peer_site=$("$peer/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# addsitedir (not a bare path) so that the project environment's own .pth files are processed too
echo "import site; site.addsitedir('$(cd "$site" && pwd)')" > "$peer_site/l2r_project_env.pth"
"$peer/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "convexAdam==$version"
"$peer/bin/python" - "$torch_version" <<'PY'
import sys

import torch
from convexAdam.convex_adam_MIND import convex_adam_pt  # noqa: F401  (the function peer_bench calls)

if torch.__version__ != sys.argv[1]:
    raise SystemExit(f"setup_peer: torch {torch.__version__} in the peer environment, expected {sys.argv[1]}")
PY
echo "ready: $peer (convexAdam $version, torch $torch_version from $project)"
