#!/usr/bin/env bash
# Score a folder of displacement fields with the official Learn2Reg metrics.
#   ./evaluate.sh DATASET_JSON DISP_DIR [any `l2r evaluate` option, e.g. --out metrics.json --workers 2]
# DATASET_JSON may also be an official evaluation config (with --data-root DATA).
set -euo pipefail
if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,4s/^# \{0,1\}//p' "$0"
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
if command -v l2r >/dev/null 2>&1; then
  exec l2r evaluate "$@"
elif [ -x "$here/.venv/bin/l2r" ]; then
  exec "$here/.venv/bin/l2r" evaluate "$@"
else
  echo "error: l2r is not installed; run: bash scripts/setup.sh" >&2
  exit 2
fi
