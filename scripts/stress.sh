#!/usr/bin/env bash
# Runs the test suite as CI does (.ci/run: scripts/test.sh, then scripts/sanitize.sh thread) several times in a row
# while CPU hogs keep the machine busy, to shake out failures that only a loaded machine shows (issue #14).
# scripts/stress.sh --help says how.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF'
usage: scripts/stress.sh [options] [-- swift test arguments]

Runs the suite as CI does (bash scripts/test.sh, then bash scripts/sanitize.sh thread) under CPU load, several
times in a row, and prints one result line per run and a summary.

options:
  --hogs N         CPU hogs (`yes >/dev/null`) to run alongside the tests (default 2; 0 for none)
  --runs K         consecutive runs (default 5)
  --only STAGE     run one stage only: normal (scripts/test.sh) or thread (scripts/sanitize.sh thread)
  --filter REGEX   run only the tests matching REGEX (passed to swift test as --filter); without it each stage
                   runs the whole suite, including the tests that run in a process of their own
  --keep-going     do not stop at the first failed run
  --logs DIR       keep each stage's output in DIR/run-K-STAGE.log (default: a new directory under /tmp)
  --no-prebuild    do not build the test trees before the hogs start (the builds then run loaded, as on CI)
  -h, --help       this text

Arguments after `--` go to swift test as well (for example: -- --skip millionQoS1).

Examples:
  scripts/stress.sh --only thread --filter 'requestResponse|backlogBeforeShutdown' --runs 10 --keep-going
  scripts/stress.sh --hogs 4 --only normal --filter backlogBeforeShutdown --runs 20

The exit status is 0 when every run passed, 1 otherwise (2 for a usage error).
EOF
}

hogs=2
runs=5
only=""
filter=""
keep_going=0
prebuild=1
logs=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --hogs) hogs="${2:?--hogs needs a number}"; shift 2 ;;
        --hogs=*) hogs="${1#*=}"; shift ;;
        --runs) runs="${2:?--runs needs a number}"; shift 2 ;;
        --runs=*) runs="${1#*=}"; shift ;;
        --only) only="${2:?--only needs normal or thread}"; shift 2 ;;
        --only=*) only="${1#*=}"; shift ;;
        --filter) filter="${2:?--filter needs a regular expression}"; shift 2 ;;
        --filter=*) filter="${1#*=}"; shift ;;
        --keep-going) keep_going=1; shift ;;
        --logs) logs="${2:?--logs needs a directory}"; shift 2 ;;
        --logs=*) logs="${1#*=}"; shift ;;
        --no-prebuild) prebuild=0; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "stress: unknown argument '$1' (see scripts/stress.sh --help)" >&2; exit 2 ;;
    esac
done
case "$hogs" in ''|*[!0-9]*) echo "stress: --hogs needs a number, not '$hogs'" >&2; exit 2 ;; esac
case "$runs" in ''|*[!0-9]*|0) echo "stress: --runs needs a positive number, not '$runs'" >&2; exit 2 ;; esac
case "$only" in
    "") stages=(normal thread) ;;
    normal|thread) stages=("$only") ;;
    *) echo "stress: --only takes normal or thread, not '$only'" >&2; exit 2 ;;
esac
logs="${logs:-$(mktemp -d -t stress.XXXXXX)}"
mkdir -p "$logs"

# The arguments for swift test: none at all (the whole suite, as CI) unless a filter or extra arguments were given.
test_args=()
if [ -n "$filter" ]; then test_args+=(--filter "$filter"); fi
if [ ${#extra[@]} -gt 0 ]; then test_args+=("${extra[@]}"); fi

hog_pids=()
stop_hogs() {
    local pid
    for pid in "${hog_pids[@]+"${hog_pids[@]}"}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${hog_pids[@]+"${hog_pids[@]}"}"; do
        wait "$pid" 2>/dev/null || true
    done
    hog_pids=()
}
# The running stage and everything under it (swift test starts the test process in a process group of its own,
# which then starts brokers and CLIs): ended by process id, leaves first, when the script is interrupted.
stage_pid=""
kill_tree() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$child"; done
    kill "$1" 2>/dev/null || true
}
trap stop_hogs EXIT
trap '[ -n "$stage_pid" ] && kill_tree "$stage_pid"; stop_hogs; echo "stress: interrupted" >&2; exit 130' INT TERM

# One stage of one run; its output goes to its log file. Returns swift test's status. Runs in the background so
# that an interrupt reaches the trap at once.
run_stage() {
    local stage="$1" log="$2" status
    case "$stage" in
        normal) bash scripts/test.sh "${test_args[@]+"${test_args[@]}"}" >"$log" 2>&1 & ;;
        thread) bash scripts/sanitize.sh thread "${test_args[@]+"${test_args[@]}"}" >"$log" 2>&1 & ;;
    esac
    stage_pid=$!
    status=0
    wait "$stage_pid" || status=$?
    stage_pid=""
    return "$status"
}

# The failures of a stage's log: the summary scripts/bootstrap.sh's swift_test prints, else the last lines.
show_failures() {
    local log="$1"
    if grep -q '^==== swift test failed' "$log"; then
        sed -n '/^==== swift test failed/,$p' "$log" | head -40 | sed 's/^/    /'
    else
        tail -20 "$log" | sed 's/^/    /'
    fi
}

if [ "$prebuild" = 1 ]; then
    # Build before loading the machine (the stages' own builds are then no-ops), so that the load meets the tests.
    echo "stress: building the test trees (unloaded) ..."
    source scripts/bootstrap.sh
    for stage in "${stages[@]}"; do
        case "$stage" in
            normal) swift build --build-tests >"$logs/build-normal.log" 2>&1 ;;
            thread) swift build --build-tests --sanitize=thread --scratch-path .build-thread >"$logs/build-thread.log" 2>&1 ;;
        esac || { echo "stress: the $stage build failed; see $logs/build-$stage.log" >&2; tail -20 "$logs/build-$stage.log" >&2; exit 1; }
    done
fi

for ((i = 0; i < hogs; i++)); do
    yes >/dev/null &
    hog_pids+=("$!")
done
echo "stress: $runs run(s) of [${stages[*]}]${filter:+ --filter '$filter'} with $hogs CPU hog(s) on $(nproc) core(s); logs in $logs"

passed=0
done_runs=0
total_start=$SECONDS
for ((run = 1; run <= runs; run++)); do
    run_start=$SECONDS
    ok=1
    parts=()
    for stage in "${stages[@]}"; do
        log="$logs/run-$run-$stage.log"
        stage_start=$SECONDS
        if run_stage "$stage" "$log"; then
            parts+=("$stage ok ($((SECONDS - stage_start)) s)")
        else
            parts+=("$stage FAILED ($((SECONDS - stage_start)) s)")
            ok=0
            echo "stress: run $run/$runs: $stage FAILED, log $log:"
            show_failures "$log"
            break  # as on CI: a failed stage ends the run
        fi
    done
    done_runs=$run
    line="$(IFS=';'; echo "${parts[*]}" | sed 's/;/, /g')"
    if [ "$ok" = 1 ]; then
        passed=$((passed + 1))
        echo "stress: run $run/$runs: passed in $((SECONDS - run_start)) s ($line)"
    else
        echo "stress: run $run/$runs: FAILED after $((SECONDS - run_start)) s ($line)"
        if [ "$keep_going" = 0 ]; then break; fi
    fi
done
stop_hogs
total=$((SECONDS - total_start))
stopped=""
if [ "$done_runs" -lt "$runs" ]; then stopped="stopped at the first failure, $runs planned; "; fi
echo "stress: $passed of $done_runs loaded runs passed (${stopped}$hogs hog(s); $total s in all, $((total / done_runs)) s per run; logs in $logs)"
[ "$passed" = "$done_runs" ] && [ "$done_runs" = "$runs" ]
