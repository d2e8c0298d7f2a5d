#!/usr/bin/env bash
# The main job (README): set up the virtualenv and the host ComfyUI if needed, start ComfyUI with this pack,
# run the MegaPortrait workflow on the given (default: example) images and save the outputs.
# All arguments go to workflows/tools/runner.py (see --help); --server URL uses a running ComfyUI instead.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MEGAPORTRAIT_VENV:-$REPO/.venv}
bash "$REPO/workflows/tools/setup_env.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$VENV/bin/python" "$REPO/workflows/tools/runner.py" "$@"
