#!/usr/bin/env bash
# Test every notebook in notebooks/ (or the ones named as arguments); `make nbval` runs this.
#
# For each notebook, two runs, each against its own fresh embedded cloud (a new temporary
# LABKIT_HOME, LABKIT_DETERMINISTIC=1, the qemu driver under TCG), stopped afterwards even
# when the run fails:
#   1. nbval: the stored outputs must match (tests/nbval-sanitize.cfg applied);
#   2. LABKIT_FOREIGN=1: the notebook must run without errors on a cloud that hides its
#      internals (outputs are not compared).
# Expects the venv's bin first on PATH (the Makefile sees to it).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SANITIZE=tests/nbval-sanitize.cfg
CELL_TIMEOUT=${NBVAL_CELL_TIMEOUT:-600}

if [ $# -gt 0 ]; then
    notebooks=("$@")
else
    shopt -s nullglob
    notebooks=(notebooks/*.ipynb)
fi
if [ ${#notebooks[@]} -eq 0 ]; then
    echo "==> nbval: no notebooks in notebooks/ yet"
    exit 0
fi

# No real cloud from the caller's shell: these runs are about the embedded one.
unset OS_CLOUD OS_CLIENT_CONFIG_FILE LABKIT_ADMIN_CLOUD LABKIT_FOREIGN LABKIT_PORT \
    LABKIT_VIRT LABKIT_VIRT_TYPE

homes=()
cleanup() {
    local home
    for home in "${homes[@]}"; do
        LABKIT_HOME="$home" labkit cloud down >/dev/null 2>&1 || true
        rm -rf "$home"
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# with_cloud NAME CMD...: run CMD with a fresh deterministic cloud in its own LABKIT_HOME.
with_cloud() {
    local name=$1; shift
    local home status
    home=$(mktemp -d "${TMPDIR:-/tmp}/labkit-nbval-$name.XXXXXX")
    homes+=("$home")
    # the stored outputs come from real guests under TCG: the same here whether or not
    # this machine has KVM (a missing qemu or guest image fails the start, saying which)
    export LABKIT_HOME=$home LABKIT_DETERMINISTIC=1 LABKIT_VIRT=qemu LABKIT_VIRT_TYPE=qemu
    if labkit cloud up --deterministic >"$home/up.log" 2>&1; then
        "$@"
        status=$?
    else
        echo "labkit cloud up failed:"; cat "$home/up.log"
        status=1
    fi
    labkit cloud down >/dev/null 2>&1 || true
    unset LABKIT_HOME LABKIT_DETERMINISTIC LABKIT_VIRT LABKIT_VIRT_TYPE
    return $status
}

sanitize=()
if [ -f "$SANITIZE" ]; then
    sanitize=(--nbval-sanitize-with "$SANITIZE")
else
    echo "note: $SANITIZE does not exist; comparing outputs unsanitized"
fi

failed=()
for nb in "${notebooks[@]}"; do
    name=$(basename "$nb" .ipynb)

    echo "==> nbval $nb (fresh deterministic cloud)"
    with_cloud "$name" pytest -p no:cacheprovider --nbval --nbval-current-env \
        --nbval-cell-timeout "$CELL_TIMEOUT" "${sanitize[@]}" "$nb" \
        || failed+=("nbval:$nb")

    echo "==> run $nb with LABKIT_FOREIGN=1 (must run without errors)"
    LABKIT_FOREIGN=1 with_cloud "$name-foreign" \
        python scripts/execute_notebook.py --timeout "$CELL_TIMEOUT" "$nb" \
        || failed+=("foreign:$nb")
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "==> nbval: FAILED: ${failed[*]}"
    exit 1
fi
echo "==> nbval: ${#notebooks[@]} notebook(s) passed, twice each"
