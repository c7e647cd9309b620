#!/usr/bin/env bash
# Set up (first time) and run the main job: `jr-eval` audits the bundled LeNet'
# checkpoints (lenet-mnist, lenet-mnist-jr) on the bundled real MNIST slice with all six
# fooling-distance searches. Extra arguments go to `jr-eval`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
exec "${JR_VENV:-.venv}/bin/jr-eval" "$@"
