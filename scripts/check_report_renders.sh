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

# A full-page capture through the DevTools protocol (what Puppeteer's fullPage does): load the
# page at WIDTH, measure the whole document, size the viewport to it and capture with
# captureBeyondViewport. Chromium's --screenshot flag has no full-page option: it captures the
# window only, so a guessed --window-size cut long reports off. The protocol runs over
# --remote-debugging-pipe (fd 3 in, fd 4 out): no port and no extra Python package.
abs_html=$(cd "$(dirname "$html")" && pwd)/$(basename "$html")
size=$(timeout 150 "$py" - "$browser" "file://$abs_html" "$work/shot.png" "$width" "$work" <<'PY'
import base64, json, os, select, subprocess, sys, time

browser, url, shot, width, work = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
MAX_HEIGHT = 16384  # Chromium's largest software-rendered texture; taller pages are cut there, said below
to_chrome_r, to_chrome_w = os.pipe()
from_chrome_r, from_chrome_w = os.pipe()
flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={work}/profile", "--remote-debugging-pipe", "about:blank"]
log = open(f"{work}/chromium.log", "wb")
proc = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}', browser, *flags],
                        pass_fds=(to_chrome_r, from_chrome_w), stdout=log, stderr=log)
os.close(to_chrome_r)
os.close(from_chrome_w)
buf, ids, deadline = b"", iter(range(1, 10**6)), time.monotonic() + 120


def read_message():
    global buf
    while b"\0" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([from_chrome_r], [], [], left)[0]:
            sys.exit("chromium did not answer in time")
        chunk = os.read(from_chrome_r, 1 << 20)
        if not chunk:
            sys.exit("chromium closed the DevTools pipe (see its log)")
        buf += chunk
    msg, buf = buf.split(b"\0", 1)
    return json.loads(msg)


def call(method, session=None, **params):
    i = next(ids)
    msg = {"id": i, "method": method, "params": params}
    if session:
        msg["sessionId"] = session
    os.write(to_chrome_w, json.dumps(msg).encode() + b"\0")
    while True:
        m = read_message()
        if m.get("id") == i:
            if "error" in m:
                sys.exit(f"{method}: {m['error']}")
            return m["result"]


def wait_event(name, session):
    while True:
        m = read_message()
        if m.get("method") == name and m.get("sessionId") == session:
            return m


try:
    target = call("Target.createTarget", url="about:blank")["targetId"]
    s = call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    call("Emulation.setDeviceMetricsOverride", s, width=width, height=900, deviceScaleFactor=1, mobile=False)
    call("Page.enable", s)
    call("Page.navigate", s, url=url)
    wait_event("Page.loadEventFired", s)
    height = call("Runtime.evaluate", s, returnByValue=True, expression=(
        "Math.ceil(Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0))"
    ))["result"]["value"]
    if height > MAX_HEIGHT:
        print(f"the page is {height} px tall; the screenshot stops at {MAX_HEIGHT} px", file=sys.stderr)
        height = MAX_HEIGHT
    call("Emulation.setDeviceMetricsOverride", s, width=width, height=height, deviceScaleFactor=1, mobile=False)
    png = call("Page.captureScreenshot", s, format="png", captureBeyondViewport=True,
               clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})["data"]
    with open(shot, "wb") as fh:
        fh.write(base64.b64decode(png))
    print(f"{width}x{height}")
finally:
    try:
        os.write(to_chrome_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        proc.wait(timeout=10)
    except Exception:
        proc.kill()
PY
) || { echo "chromium failed:" >&2; tail -20 "$work/chromium.log" >&2; exit 1; }
[ -s "$work/shot.png" ] || { echo "chromium wrote no screenshot" >&2; tail -20 "$work/chromium.log" >&2; exit 1; }
mkdir -p "$(dirname "$shot")"
cp "$work/shot.png" "$shot"
echo "full-page screenshot of $html -> $shot ($size)"
