#!/usr/bin/env bash
# Set up (first time) and run the fast test tier (CPU, minutes). Slow real-data tests:
# scripts/test.sh -m slow. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "${JR_VENV:-.venv}/bin/python" -m pytest -q "$@"
