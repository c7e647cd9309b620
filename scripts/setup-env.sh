#!/usr/bin/env bash
# Create .venv (once) and install robustbench-jr with its test extras into it.
# Torch comes first, pinned to the release this project is tested with; override with
# JR_TORCH_SPEC (e.g. JR_TORCH_SPEC="torch torchvision" for the newest, or a CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${JR_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install --quiet ${JR_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
fi
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
# the peer attack libraries the adapter tests run (robustbench_jr.attacks.adapters), without their
# dependencies: adv-lib pins visdom (does not build on current Pythons; adv-lib imports it only for
# plotting, the adapter stands in for it) and torchattacks pins requests~=2.25 (would downgrade
# requests/urllib3/idna). What they import (torch, numpy, scipy, tqdm) comes with the test extra.
"$VENV/bin/python" -m pip install --quiet --no-deps "adv-lib==0.2.8" "torchattacks==3.5.1"
