#!/usr/bin/env bash
# Installs what swift-mosquitto needs on Debian/Ubuntu, or says exactly what to run.
# Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail

packages="libmosquitto-dev mosquitto mosquitto-clients pkg-config openssl"

have_all() {
    command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libmosquitto &&
    { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || [ -n "${MOSQUITTO_BINARY:-}" ]; } &&
    command -v mosquitto_pub >/dev/null 2>&1 && command -v mosquitto_sub >/dev/null 2>&1 &&
    command -v mosquitto_passwd >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1
}

if ! command -v swift >/dev/null 2>&1; then
    echo "error: the Swift toolchain (swift) is not on PATH. Install Swift 6.1 or newer from swift.org first." >&2
    exit 1
fi

if ! have_all; then
    if [ "$(id -u)" = "0" ]; then
        echo "Installing: $packages"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq $packages >/dev/null
    else
        echo "error: missing system packages. Run:" >&2
        echo "  sudo apt-get update && sudo apt-get install -y $packages" >&2
        exit 1
    fi
    have_all || { echo "error: $packages installed, but libmosquitto or mosquitto is still not found." >&2; exit 1; }
fi

# The MessagePack tests compare against the reference implementation, Python's msgpack (from PyPI). Called by
# scripts/test.sh and scripts/sanitize.sh only: the demo does not need it.
need_python_msgpack() {
    python3 -c 'import msgpack' >/dev/null 2>&1 && return 0
    if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1 &&
        python3 -m pip install --quiet msgpack >/dev/null 2>&1 && python3 -c 'import msgpack' >/dev/null 2>&1; then
        echo "Installed Python's msgpack (for the MessagePack tests)"
    else
        echo "error: Python's msgpack package is missing (the MessagePack tests compare against it). Run:" >&2
        echo "  python3 -m pip install msgpack" >&2
        exit 1
    fi
}

# Runs `swift test` with the given arguments. When it fails, the failed tests and their issues are printed again
# at the end, so that a long log (or the last lines of it, all that CI shows) still says what failed and where.
swift_test() {
    local log status
    log="$(mktemp -t swift-test.XXXXXX)"
    set +e
    swift test "$@" 2>&1 | tee "$log"
    status="${PIPESTATUS[0]}"
    set -e
    if [ "$status" -ne 0 ]; then
        echo
        echo "==== swift test failed (exit $status); the failures again: ===="
        grep -E -A4 'recorded an issue|^✘|error:|Fatal error|ThreadSanitizer|AddressSanitizer|Signal|signal' "$log" |
            grep -v -E '^(--|.* (notice|info|debug|trace) )' | tail -60 || true
    fi
    rm -f "$log"
    return "$status"
}
