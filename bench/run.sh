#!/usr/bin/env bash
# The benchmark command (README): sets up the same virtualenv and host ComfyUI as the tests, then runs every
# benchmark section and writes bench/results/results.{md,json}. Extra arguments go to bench/run.py.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MEGAPORTRAIT_VENV:-$REPO/.venv}
bash "$REPO/tools/setup_env.sh" --test
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$VENV/bin/python" "$REPO/bench/run.py" "$@"
