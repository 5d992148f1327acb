#!/usr/bin/env bash
# Runs the test suite under the sanitizers: scripts/sanitize.sh [thread|address|all] [swift test arguments]
# Without a kind (or with "all") it runs the whole suite twice: under ThreadSanitizer, then AddressSanitizer.
# The executables the tests start are built with the same sanitizer. The volume test runs 100,000 messages here
# instead of 1,000,000, and the connect-cycle test 1,000 cycles instead of 10,000 (sanitizers are 5-15x slower).
#
# AddressSanitizer's leak checker (LeakSanitizer) is off. A run with it on (2026-11-21) found, in the test process
# (where thousands of clients, brokers and bridges come and go), direct leaks only inside Foundation:
# FileManager.contents(atPath:) keeps 4 KiB per empty file it reads, Bundle.allBundles, and a weak-reference side
# table of Foundation.Process, off which six Process objects (with the launcher's closures) hang as indirect
# leaks; XCTest's runner leaks too. In the child processes (the CLIs, the examples) it reported objects still
# referenced from suspended async frames when the process ends with exit() (it does not scan task frames), the
# same Foundation leak, and libmosquitto's copy of the SOCKS5 host. Run with ASAN_OPTIONS=detect_leaks=1 to see them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
need_python_msgpack
kind="${1:-all}"
shift || true
case "$kind" in
    thread|address) ;;
    all)
        bash scripts/sanitize.sh thread "$@"
        bash scripts/sanitize.sh address "$@"
        exit 0 ;;
    *) echo "usage: scripts/sanitize.sh [thread|address|all] [swift test arguments]" >&2; exit 1 ;;
esac
# The 70,000-message id-exhaustion test is a volume test (the broker's db__message_update_outgoing is linear
# in a client's queue, so it dominates), not a threading test; it runs in the normal suite and is skipped here.
alone=""
if [ $# -eq 0 ]; then set -- --skip messageIDsNeverRunOut; alone=1; fi
export MOSQUITTO_VOLUME_MESSAGES="${MOSQUITTO_VOLUME_MESSAGES:-100000}"
export MOSQUITTO_STABILITY_CYCLES="${MOSQUITTO_STABILITY_CYCLES:-1000}"
export MOSQUITTO_TEST_TIME_SCALE="${MOSQUITTO_TEST_TIME_SCALE:-4}"
export MOSQUITTO_SANITIZER="$kind"
# Halt on the first report so that a race fails the run instead of scrolling by.
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1 second_deadlock_stack=1}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
swift build --build-tests --sanitize="$kind" --scratch-path ".build-$kind"
swift_test --skip-build --sanitize="$kind" --scratch-path ".build-$kind" "$@"
if [ -n "$alone" ]; then
    # The tests that count the whole process's descriptors, time an idle timeout, or keep both cores busy run in a
    # process of their own (as in scripts/test.sh; the select()-limit test runs in the normal suite only).
    for alone in connectCycles millionQoS1 idleTimeout; do
        MOSQUITTO_PROCESS_ALONE=1 swift_test --skip-build --sanitize="$kind" --scratch-path ".build-$kind" --filter "$alone"
    done
fi
