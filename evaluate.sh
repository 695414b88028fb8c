#!/usr/bin/env bash
# Score a folder of displacement fields with the official Learn2Reg metrics, optionally after running
# the container, optionally checking the numbers against expected results.
#   ./evaluate.sh DATASET_JSON DISP_DIR [--image IMAGE] [--expected EXPECTED.json] [l2r evaluate options]
#     --image IMAGE        first run the container on the dataset's folder (read-only, no network),
#                          writing the fields to DISP_DIR; it gets --split, --pairs, and the names or format
#                          that --protocol reads; docker options in L2R_DOCKER_ARGS, l2r predict options in
#                          L2R_PREDICT_ARGS (e.g. "--checkpoint /l2r/data/weights.pt"). Pairs the container
#                          failed are scored as zero fields (exit 1) when DISP_DIR held no earlier fields;
#                          otherwise, or if it stopped, nothing is scored.
#     --expected FILE      then compare metrics.json with FILE; exit 1 with a diff when a metric is off
# DATASET_JSON may also be an official evaluation config (with --data-root DATA).
set -euo pipefail
if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,14s/^# \{0,1\}//p' "$0"
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
if command -v l2r >/dev/null 2>&1; then l2r=l2r
elif [ -x "$here/.venv/bin/l2r" ]; then l2r="$here/.venv/bin/l2r"
else echo "error: l2r is not installed; run: bash scripts/setup.sh" >&2; exit 2
fi
if [[ "$1" == -* || "$2" == -* ]]; then  # else an option (--image) would go to l2r evaluate, which knows none of ours
  echo "error: DATASET_JSON and DISP_DIR come first: $0 DATASET_JSON DISP_DIR [--image IMAGE] [options]" >&2
  exit 2
fi
dataset_json="$1"; disp_dir="$2"; shift 2
image=""; expected=""; pass=(); out_json=""; predict=()
need_value() {  # OPTION [VALUE...]: the option must be followed by a value
  if [ $# -lt 2 ] || [ -z "$2" ]; then echo "error: $1 needs a value" >&2; exit 2; fi
}
while [ $# -gt 0 ]; do
  case "$1" in
    --image=* | --expected=* | --out=* | --split=* | --protocol=* | --pairs=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
  esac  # --opt=value as --opt value
  case "$1" in
    --image) need_value "$@"; image="$2"; shift 2 ;;
    --expected) need_value "$@"; expected="$2"; pass+=("$1" "$2"); shift 2 ;;  # l2r evaluate checks it first
    --out) need_value "$@"; out_json="$2"; pass+=("$1" "$2"); shift 2 ;;
    --split | --pairs) need_value "$@"; pass+=("$1" "$2")  # the same pairs for both (predict has no split eval)
      [ "$1 $2" = "--split eval" ] || predict+=("$1" "$2"); shift 2 ;;
    --protocol) need_value "$@"; pass+=("$1" "$2")  # the container writes the files that version reads
      case "$2" in 2024 | 2022) predict+=(--names short) ;; 2020) predict+=(--format npz2020) ;; esac
      shift 2 ;;
    *) pass+=("$1"); shift ;;
  esac
done
if [ -n "$expected" ] && [ ! -f "$expected" ]; then  # checked before the (long) evaluation
  echo "error: $expected: expected-results file not found" >&2
  exit 2
fi
[ -n "$out_json" ] || { out_json="$disp_dir/metrics.json"; pass=(--out "$out_json" ${pass[@]+"${pass[@]}"}); }  # before
# the user's options, so that one of them missing its value is still reported as such
status=0
if [ -n "$image" ]; then
  data_dir="$(cd "$(dirname "$dataset_json")" && pwd)"
  made=""; [ -d "$disp_dir" ] || made=1
  mkdir -p "$disp_dir"
  earlier=$(find "$disp_dir" -maxdepth 1 -name 'disp_*' -print -quit)  # fields of an earlier run
  read -r -a extra <<< "${L2R_PREDICT_ARGS:-}"  # split on spaces, never glob-expanded
  start_mark="$(mktemp)"
  # shellcheck disable=SC2086
  docker run --rm --network none --user "$(id -u):$(id -g)" ${L2R_DOCKER_ARGS:-} -v "$data_dir":/l2r/data:ro \
    -v "$(cd "$disp_dir" && pwd)":/l2r/output "$image" "/l2r/data/$(basename "$dataset_json")" \
    ${predict[@]+"${predict[@]}"} ${extra[@]+"${extra[@]}"} || status=$?
  recorded=""; [ "$disp_dir/run.json" -nt "$start_mark" ] && recorded=1
  rm -f "$start_mark"
  if [ "$status" = 1 ] && [ -n "$recorded" ] && [ -z "$earlier" ]; then  # some pairs failed, the rest written
    echo "evaluate.sh: the container failed some pairs (exit 1; see $disp_dir/run.json); scoring the fields it wrote, the failed pairs as zero fields" >&2
    pass+=(--missing zero)
  elif [ "$status" = 1 ] && [ -n "$recorded" ]; then  # a failed pair's earlier field would be scored as its result
    echo "evaluate.sh: the container failed some pairs (exit 1; see $disp_dir/run.json); not scored, since $disp_dir holds fields of an earlier run; score with l2r evaluate after removing them, or predict into a new folder" >&2
    exit 1
  elif [ "$status" != 0 ]; then
    [ -z "$made" ] || rmdir "$disp_dir" 2>/dev/null || true
    echo "evaluate.sh: the container stopped (exit $status); nothing scored" >&2
    exit "$status"
  fi
fi
"$l2r" evaluate "$dataset_json" "$disp_dir" "${pass[@]}" || exit $?  # with --expected, also the comparison
exit "$status"
