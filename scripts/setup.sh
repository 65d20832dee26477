#!/usr/bin/env bash
# Install what labkit needs on a Debian or Ubuntu machine; `make setup` runs this.
#
#   1. system packages through apt-get (only the missing ones; `apt-get update` first),
#   2. a virtual environment in .venv with `pip install -e '.[lab,test]'`,
#   3. the tiny guest image the qemu driver boots: `labkit image build` (a Debian kernel,
#      busybox, dropbear; cached, so instant the second time).
#
# Idempotent and quick the second time: installed Debian packages are checked with
# dpkg-query, the pip step is skipped while a stamp in .venv matches pyproject.toml,
# the Python in use and the extras, and the image build reuses its cache.
#
# Settings (environment): SYSTEM_PACKAGES (the Makefile passes its list), PYTHON (the
# interpreter for the venv; default: the first python3 of 3.11 or newer), VENV (.venv),
# EXTRAS (lab,test).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# qemu-system-x86, qemu-utils: real guests; busybox-static, dropbear-bin, cpio, kmod: the
# guest image (`labkit image build`), whose kernel apt-get downloads from Debian's archive.
SYSTEM_PACKAGES=${SYSTEM_PACKAGES:-python3-venv graphviz chromium chromium-driver fonts-dejavu-core \
qemu-system-x86 qemu-utils busybox-static dropbear-bin cpio kmod openssh-client}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-lab,test}

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

# --- 1. system packages ---------------------------------------------------------------

# Ubuntu has no `chromium` deb; its names for the same thing (a snap wrapper on 22.04+).
alternative() {
    case "$1" in
        chromium) echo chromium-browser ;;
        chromium-driver) echo chromium-chromedriver ;;
    esac
}

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

system_packages() {
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
        cat >&2 <<EOF
setup: apt-get is not available here, so system packages were not installed.
       Install these (or your system's equivalents) by hand:
           $SYSTEM_PACKAGES
       The browser test needs Chromium at /usr/bin/chromium (or set LABKIT_CHROMIUM).
EOF
        return 0
    fi
    local missing=() pkg alt
    for pkg in $SYSTEM_PACKAGES; do
        installed "$pkg" && continue
        alt=$(alternative "$pkg")
        [ -n "$alt" ] && installed "$alt" && continue
        missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "system packages present: $SYSTEM_PACKAGES"
        return 0
    fi

    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 \
            || die "not root and no sudo: install these as root: ${missing[*]}"
        sudo=(sudo)
    fi
    say "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    # a package this distribution lacks under its Debian name: try its other name
    local wanted=()
    for pkg in "${missing[@]}"; do
        alt=$(alternative "$pkg")
        if [ -n "$alt" ] && ! apt-cache show "$pkg" >/dev/null 2>&1 \
                && apt-cache show "$alt" >/dev/null 2>&1; then
            wanted+=("$alt")
        else
            wanted+=("$pkg")
        fi
    done
    "${sudo[@]}" apt-get install -y -q "${wanted[@]}"
}

# --- 2. the virtual environment ---------------------------------------------------------

version_ok() {  # is "$1" a Python of 3.11 or newer?
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        version_ok "$PYTHON" || die "PYTHON=$PYTHON is not Python 3.11 or newer"
        echo "$PYTHON"; return
    fi
    local candidate
    for candidate in python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 && version_ok "$candidate"; then
            command -v "$candidate"; return
        fi
    done
    die "labkit needs Python 3.11 or newer (pyproject.toml); none found as python3, \
python3.11, python3.12 or python3.13. Install one, or set PYTHON=/path/to/python3.11"
}

venv() {
    local python stamp key
    python=$(pick_python)
    stamp="$VENV/.labkit-setup"
    key="$(sha256sum pyproject.toml | cut -d' ' -f1) extras=$EXTRAS \
python=$("$python" -c 'import sys; print(sys.version.split()[0], sys.base_prefix)')"

    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' 2>/dev/null \
            && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
        say "$VENV is up to date with pyproject.toml"
        return 0
    fi
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import ensurepip, pip' 2>/dev/null \
            || [ "$("$VENV/bin/python" -c 'import sys; print(sys.base_prefix)')" \
                 != "$("$python" -c 'import sys; print(sys.base_prefix)')" ]; then
        say "creating $VENV with $python ($("$python" --version 2>&1))"
        rm -rf "$VENV"
        "$python" -m venv "$VENV" || die "could not create $VENV: on Debian or Ubuntu install \
python3-venv (or python3.X-venv for your Python)"
    fi
    say "installing labkit into $VENV: pip install -e '.[$EXTRAS]'"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
    printf '%s\n' "$key" > "$stamp"
}

# --- 3. the tiny guest image ------------------------------------------------------------

guest_image() {
    if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
        say "no guest image: it needs qemu and Debian's apt-get (the embedded cloud then runs its \
model driver, which boots no real guests)"
        return 0
    fi
    say "guest image: labkit image build"
    if "$VENV/bin/labkit" image build; then
        return 0
    fi
    # CI must boot real guests; a reader's lab still works on the model driver
    [ -n "${CI:-}" ] && die "labkit image build failed (above)"
    printf 'setup: WARNING: labkit image build failed (above), so the embedded cloud runs its\n' >&2
    printf '       model driver (no real guests) and the real-guest tests will fail.\n' >&2
}

system_packages
venv
guest_image
say "setup done: activate with 'source $VENV/bin/activate', or use 'make lab' / 'make test'"
