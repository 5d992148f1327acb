#!/usr/bin/env bash
# Fuzzes one target with libFuzzer (+ AddressSanitizer) and grows its committed corpus.
#
#   Fuzz/run.sh TARGET [SECONDS]      targets: topics url framing template bridge-config format properties msgpack
#   Fuzz/run.sh all [SECONDS]         every target in turn
#
# New interesting inputs are merged into Fuzz/corpus/TARGET (commit them); a crash is written to
# Fuzz/crashes/TARGET/ (commit it too: FuzzRegressionTests replays both directories in every test run).
# The execution count of each run is appended to Fuzz/runs.log; FUZZING.md summarises them.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: Fuzz/run.sh TARGET|all [SECONDS]}"
seconds="${2:-600}"
scratch=.build-fuzz
swift build -c release --product mosquitto-fuzz --scratch-path "$scratch" \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING >&2
bin="$(swift build -c release --scratch-path "$scratch" --show-bin-path)/mosquitto-fuzz"
targets="$target"
[ "$target" = all ] && targets="topics url framing template bridge-config format properties msgpack"
for t in $targets; do
    corpus="Fuzz/corpus/$t"; crashes="Fuzz/crashes/$t"; work="$(mktemp -d)"
    mkdir -p "$corpus" "$crashes"
    log="$work/fuzz.log"
    set +e
    MOSQUITTO_FUZZ_TARGET="$t" "$bin" "$work" "$corpus" -max_total_time="$seconds" -max_len=4096 \
        -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$crashes/" -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    # Keep the corpus small: merge what this run found into the committed corpus.
    MOSQUITTO_FUZZ_TARGET="$t" "$bin" -merge=1 "$corpus" "$work" >/dev/null 2>&1 || true
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $t ${seconds}s executions=$execs exit=$status corpus=$(ls "$corpus" | wc -l)" | tee -a Fuzz/runs.log
    if [ $status -ne 0 ]; then
        echo "fuzz target $t found a problem; see $crashes and $log" >&2
        tail -30 "$log" >&2
        exit $status
    fi
    rm -rf "$work"
done
