#!/usr/bin/env bash
# The mqtt-bridge fault matrix (issue #13). NOT part of CI. Each case runs its own broker, bridge and counting
# subscriber, injects its faults into a numbered-line feed, and prints one table row: produced, delivered
# (distinct), duplicates, missing, the broker's own loss (broker SIGKILL only), other counted drops, PASS/FAIL.
# Every case ends with a fresh batch of lines that must arrive: the bridge must never stop delivering.
#
#   Benchmarks/bridge-soak.sh [--quick] [case ...]      (default: every case, about 4 minutes on 2 cores;
#                                                        --quick: fewer rounds and connections, 1.5-2.5 minutes)
#
# Cases:
#   broker-term  broker SIGTERM and restart, several times mid-stream
#   broker-kill  broker SIGKILL (persistence, autosave every second) and restart, several times mid-stream;
#                what the broker acknowledged and then lost is counted as broker loss
#   bridge-term  bridge SIGTERM when idle and when busy, each time restarted on the same spool
#   bridge-kill  bridge kill -9 when busy (and once idle), each time restarted on the same spool
#   feed-cut     feeds closing in the middle of a line (partial_on_close drop): partial lines counted
#   disk-full    the spool on a 512 KiB tmpfs, broker down, ~2 MB of lines, broker back (needs root)
#   crowd        2,000 concurrent feed connections, a slowloris peer, a 10 MB line, 1 MiB of binary garbage
#   sighup       SIGHUP reloads during a stream: unchanged, in place, a broken file, route restarts
#
# Exit status: 0 if every case passed, 1 if any failed. Environment: BRIDGE_BIN (an already built mqtt-bridge
# executable; default: build it with `swift build -c release --product mqtt-bridge`), KEEP_WORK=1 (keep the work
# directory with every log, config and received file), SEED (fault timings, default 13).
# Needs: mosquitto, mosquitto_sub, mosquitto_pub, python3 (standard library only), root for disk-full.
set -euo pipefail
umask 077   # generated configs, logs and spools are owner-only
cd "$(dirname "$0")/.."

for a in "$@"; do
  case "$a" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  esac
done

if [ -z "${BRIDGE_BIN:-}" ]; then
  swift build -c release --product mqtt-bridge >&2
  BRIDGE_BIN="$(swift build -c release --show-bin-path)/mqtt-bridge"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/bridge-faults.XXXXXX")"
chmod 711 "$WORK"   # the broker drops to the mosquitto user and needs to reach its own directory inside
# A private copy of the executable: another build may replace the shared one while the matrix runs.
cp "$BRIDGE_BIN" "$WORK/mqtt-bridge"
PY_PID=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  # The Python side stops what it started; this is the safety net if it could not (killed, crashed).
  if [ -n "$PY_PID" ] && kill -0 "$PY_PID" 2>/dev/null; then
    kill -TERM "$PY_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$PY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PY_PID" 2>/dev/null || true
  fi
  # Only processes this run started: listed by pid, and still naming this run's work directory.
  if [ -f "$WORK/pids" ]; then
    while read -r pid; do
      if tr "\0" " " 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "$(basename "$WORK")"; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done <"$WORK/pids"
  fi
  if [ -f "$WORK/mounts" ]; then
    while read -r m; do
      if grep -qF " $m " /proc/mounts; then umount -l "$m" || true; fi
    done <"$WORK/mounts"
  fi
  if [ -n "${KEEP_WORK:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

python3 Benchmarks/bridge-faults.py --work "$WORK" --bin "$WORK/mqtt-bridge" --seed "${SEED:-13}" "$@" &
PY_PID=$!
wait "$PY_PID"
