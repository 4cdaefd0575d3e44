# Sourced by test.sh and demo.sh (which set -euo pipefail): a virtualenv in .venv with watchkeeper installed (editable),
# plus, for the tests, the Debian packages the tests drive (when running as root with apt-get).
# pip's notes about this machine's extra package locations are noise here.
quiet_pip() {
    .venv/bin/python -m pip "$@" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }
}
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    quiet_pip install --quiet --upgrade pip
fi
if [ "${WK_SETUP_MINIMAL:-0}" = 1 ]; then
    quiet_pip install --quiet -e .
else
    quiet_pip install --quiet -e '.[test]'
    WK_APT_PACKAGES="$( { grep -v '^#' scripts/apt-packages.txt 2>/dev/null || true; } | tr '\n' ' ')"
    missing=""
    for pkg in $WK_APT_PACKAGES; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian packages:$missing" >&2
        apt-get update -qq >/dev/null && \
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null || \
            echo "warning: could not install$missing; tests that need them will skip" >&2
    fi
fi
