#!/usr/bin/env bash
# Runs the test suite under a sanitizer: scripts/sanitize.sh thread|address [swift test arguments]
# Without arguments it runs the whole suite (the executables the tests start are built with the same sanitizer).
# The volume test runs 100,000 messages here instead of 1,000,000, and the connect-cycle test 1,000 cycles
# instead of 10,000 (sanitizers are 5-15x slower).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
kind="${1:-thread}"
shift || true
case "$kind" in
    thread|address) ;;
    *) echo "usage: scripts/sanitize.sh thread|address [swift test arguments]" >&2; exit 1 ;;
esac
# The 70,000-message id-exhaustion test is a volume test (the broker's db__message_update_outgoing is linear
# in a client's queue, so it dominates), not a threading test; it runs in the normal suite and is skipped here.
if [ $# -eq 0 ]; then set -- --skip messageIDsNeverRunOut; fi
export MOSQUITTO_VOLUME_MESSAGES="${MOSQUITTO_VOLUME_MESSAGES:-100000}"
export MOSQUITTO_STABILITY_CYCLES="${MOSQUITTO_STABILITY_CYCLES:-1000}"
export MOSQUITTO_TEST_TIME_SCALE="${MOSQUITTO_TEST_TIME_SCALE:-4}"
export MOSQUITTO_SANITIZER="$kind"
# Halt on the first report so that a race fails the run instead of scrolling by.
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1 second_deadlock_stack=1}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
swift build --build-tests --sanitize="$kind" --scratch-path ".build-$kind"
swift test --skip-build --sanitize="$kind" --scratch-path ".build-$kind" "$@"
