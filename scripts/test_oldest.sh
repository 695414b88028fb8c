#!/usr/bin/env bash
# Run the test suite under the OLDEST versions pyproject.toml allows: every "NAME>=X" dependency
# (and the test/plot extras) installed as "NAME==X" in a separate venv; torch stays 2.13.0.
#   bash scripts/test_oldest.sh [pytest args]     (VENV=/path to reuse a venv; default /tmp/l2r-oldest)
# Too slow for every CI run (a fresh venv); run it when a bound in pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-/tmp/l2r-oldest}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
pins=$("$py" - <<'PY'
import re, tomllib
with open("pyproject.toml", "rb") as fh:
    project = tomllib.load(fh)["project"]
deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
for dep in deps:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+).*", dep)
    if m and m.group(1).lower() != "torch":
        print(f"{m.group(1)}=={m.group(2)}")
PY
)
echo "pins: $(echo $pins)"
"$py" -m pip install --quiet --disable-pip-version-check torch==2.13.0
# shellcheck disable=SC2086
"$py" -m pip install --quiet --disable-pip-version-check $pins
"$py" -m pip install --quiet --disable-pip-version-check --no-deps -e .  # the l2r command (evaluate.sh tests)

"$py" -m pip list --disable-pip-version-check 2>/dev/null | grep -iE "^(numpy|scipy|nibabel|simpleitk|click|surface|tqdm|torch|pytest|matplotlib) "
PATH="$venv/bin:$PATH" PYTHONPATH="$PWD" "$py" -m pytest -q -p no:cacheprovider "$@"
