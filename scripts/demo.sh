#!/usr/bin/env bash
# The main job: build, start a private mosquitto, run the live telemetry demo, stop.
# Extra arguments go to the demo, for example: scripts/demo.sh --seconds 10
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
swift build --product mosquitto-demo
exec "$(swift build --show-bin-path)/mosquitto-demo" "$@"
