#!/usr/bin/env bash
# Render a jr-eval report in headless Chromium and save a full-page screenshot.
#
#   scripts/check_report_renders.sh [REPORT_HTML] [SCREENSHOT_PNG] [WIDTH]
#
# Without REPORT_HTML it writes a synthetic demo run (robustbench_jr.reports.demo),
# builds its report in a temporary directory and screenshots that. Exits non-zero
# when Chromium is missing (apt-get install -y chromium), fails, or writes no image.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
[ -x "$py" ] || py=python3
html=${1:-}
shot=${2:-report-screenshot.png}
width=${3:-1400}

browser=""
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
done
if [ -z "$browser" ]; then
  echo "chromium not found; install it with: apt-get install -y chromium" >&2
  exit 3
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -z "$html" ]; then
  "$py" - "$work" <<'PY'
import sys
from robustbench_jr.reports.demo import write_demo_run
from robustbench_jr.reports.report import write_report
w = sys.argv[1]
write_demo_run(f"{w}/demo-run")
write_report([f"{w}/demo-run"], f"{w}/report")
PY
  html="$work/report/report.html"
fi
[ -f "$html" ] || { echo "no such report: $html" >&2; exit 2; }

# Page height: tall enough for the whole report (Chromium has no full-page flag).
height=${REPORT_SHOT_HEIGHT:-$("$py" - "$html" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
figs = len(re.findall(r"<figure", text)); rows = len(re.findall(r"<tr>", text))
print(min(16000, 900 + 34 * rows + 260 * figs))
PY
)}

abs_html=$(cd "$(dirname "$html")" && pwd)/$(basename "$html")
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/profile" --hide-scrollbars --window-size="$width,$height" \
  --screenshot="$work/shot.png" "file://$abs_html" >"$work/chromium.log" 2>&1 || {
    echo "chromium failed:" >&2; tail -20 "$work/chromium.log" >&2; exit 1; }
[ -s "$work/shot.png" ] || { echo "chromium wrote no screenshot" >&2; tail -20 "$work/chromium.log" >&2; exit 1; }
mkdir -p "$(dirname "$shot")"
cp "$work/shot.png" "$shot"
echo "screenshot of $html -> $shot (${width}x${height})"
