#!/usr/bin/env bash
# Render a report page (l2r report / predict --evaluate --report) in headless Chromium and save a PNG,
# to check that it draws from disk with no network. Installs Chromium from the Debian packages if absent.
#   bash scripts/report_screenshot.sh REPORT_HTML OUT_PNG [WIDTH,HEIGHT]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 REPORT_HTML OUT_PNG [WIDTH,HEIGHT]" >&2
  exit 2
fi
page="$(realpath "$1")"
out="$(realpath -m "$2")"
size="${3:-1400,2400}"
[ -f "$page" ] || { echo "error: $1: report page not found" >&2; exit 2; }
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "error: chromium not found (apt-get install chromium)" >&2
    exit 2
  fi
fi
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
# no network: every proxied request fails, so anything the page tried to fetch would be missing from the picture
timeout 90 chromium --headless --no-sandbox --disable-gpu --user-data-dir="$profile" --hide-scrollbars \
  --proxy-server="127.0.0.1:9" --proxy-bypass-list="<-loopback>" \
  --window-size="$size" --screenshot="$out" "file://$page" >/dev/null 2>&1
[ -s "$out" ] || { echo "error: $out: no screenshot written" >&2; exit 1; }
echo "wrote $out"
