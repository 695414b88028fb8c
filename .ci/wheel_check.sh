#!/usr/bin/env bash
# CI: the package as users get it. Build the wheel, install it (not editable) into a fresh virtual
# environment away from the source tree, and check that `l2r --help` answers and that `l2r predict`
# finds the shipped weights inside the installed package on a tiny dataset.
# Nothing is downloaded: the wheel is built with .venv's setuptools (--no-build-isolation), and the
# fresh environment reuses .venv's packages (torch included) through a .pth line naming .venv's
# site-packages (a plain path, so .venv's own .pth files, among them its editable l2r_submit, are not
# read). Usage: bash .ci/wheel_check.sh   (VENV=... for another project environment)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
project="$(cd "${VENV:-.venv}" && pwd)"
start=$(date +%s)
work="$(mktemp -d /tmp/l2r-wheel.XXXXXX)"
trap 'rm -rf "$work"' EXIT
fail() { echo "[wheel-check] FAILED: $1" >&2; exit 1; }

# build with a copy of the sources, so no build/ or egg-info is left in the checkout
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work" --one-top-level=src
"$project/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-index --no-deps --no-build-isolation \
  -w "$work/dist" "$work/src" >/dev/null
wheel="$(ls "$work"/dist/l2r_submit-*.whl)"
"$project/bin/python" - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
missing = {"l2r_submit/weights/manifest.json", "l2r_submit/weights/l2r_cpu_fast.pt"} - names
if missing:
    raise SystemExit(f"[wheel-check] FAILED: {sys.argv[1]} lacks {sorted(missing)}")
PY

"$project/bin/python" -m venv --without-pip "$work/venv"
site="$("$project/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
fresh_site="$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
echo "$site" > "$fresh_site/l2r_project_env.pth"
"$project/bin/python" -m pip --python "$work/venv/bin/python" install --quiet --disable-pip-version-check \
  --no-index --no-deps "$wheel"

"$project/bin/python" -c "import sys; sys.path.insert(0, '$repo/tests'); from pathlib import Path; \
from conftest import write_tiny_dataset; write_tiny_dataset(Path('$work/data'))"
cd "$work"  # away from the checkout: only the installed package can answer
"$work/venv/bin/l2r" --help >/dev/null || fail "l2r --help"
"$work/venv/bin/l2r" predict data/AbdomenCTCT_dataset.json --out out --device cpu --io-iters 0 --threads 1 \
  --pairs 0001_0002 --quiet || fail "l2r predict with the shipped weights"
"$work/venv/bin/python" - "$fresh_site" <<'PY'
import json, sys
from pathlib import Path

import l2r_submit

site = Path(sys.argv[1]).resolve()
run = json.loads(Path("out/run.json").read_text())
ckpt = Path(run["checkpoint"]).resolve()
if site not in Path(l2r_submit.__file__).resolve().parents or site not in ckpt.parents:
    raise SystemExit(f"[wheel-check] FAILED: package {l2r_submit.__file__}, weights {ckpt}: not the installed wheel's")
if run["pairs"]["0001_0000<--0002_0000"]["status"] != "done":
    raise SystemExit("[wheel-check] FAILED: the pair was not predicted")
print(f"[wheel-check] {Path(sys.argv[1]).name}: l2r predict used {ckpt.relative_to(site)}")
PY
echo "[wheel-check] ok: wheel built, installed in a fresh venv, weights found ($(( $(date +%s) - start )) s)"
