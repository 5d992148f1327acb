#!/usr/bin/env bash
# The test suite: every test talks to a real mosquitto that the tests start on free loopback ports.
# Extra arguments go to `swift test`, for example: scripts/test.sh --filter ClientTests
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
need_python_msgpack
swift build --build-tests
swift_test --skip-build "$@"
if [ $# -eq 0 ]; then
    # These tests measure the whole process (descriptor numbers and counts, memory) or time (the bridge's idle
    # timeout), or keep both cores busy for long (the million-message test), so they run in a process of their
    # own, one after the other.
    for alone in "descriptorsBeyondSelect|connectCycles" millionQoS1 idleTimeout; do
        MOSQUITTO_PROCESS_ALONE=1 swift_test --skip-build --filter "$alone"
    done
fi
