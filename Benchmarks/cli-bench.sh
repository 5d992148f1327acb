#!/usr/bin/env bash
# Measures mqtt-pub / mqtt-sub against mosquitto_pub / mosquitto_sub in one run, on a private broker.
#
#   Benchmarks/cli-bench.sh            # builds the release CLIs first
#   SKIP_BUILD=1 Benchmarks/cli-bench.sh
# The CLIs are built statically linked (--static-swift-stdlib): dynamic loading of Foundation costs ~10 ms per start.
#
# Prints a Markdown table (median of RUNS runs) for:
#   1. pub -l, 100,000 lines at QoS 0 (stdin from a file, until the process exits);
#   2. sub -v receiving 100,000 messages (QoS 1) into a file, from the first publish until the process exits
#      (the same feeder, mqtt-pub -l -q 1, for both);
#   3. one single-message pub (-m, QoS 0), the mean wall time of SINGLE runs.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SINGLE=${SINGLE:-30}
N=${N:-100000}
SCRATCH=${SCRATCH:-.build-cli-release-static}
if [ -z "${SKIP_BUILD:-}" ]; then
  swift build -c release --static-swift-stdlib --scratch-path "$SCRATCH" --product mqtt-pub >/dev/null
  swift build -c release --static-swift-stdlib --scratch-path "$SCRATCH" --product mqtt-sub >/dev/null
fi
BIN="$SCRATCH/release"
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n' "$PORT" > "$WORK/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" > "$WORK/broker.log" 2>&1 &
BROKER=$!
trap 'kill $BROKER 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 0.5
seq 1 "$N" > "$WORK/lines"

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

pub_lines() {  # $1 = publisher
  local t0 t1; t0=$(now)
  "$1" -p "$PORT" -t bench/lines -l -q 0 < "$WORK/lines"
  t1=$(now); echo "$t1 - $t0" | bc -l
}

sub_receive() {  # $1 = subscriber
  rm -f "$WORK/out"
  "$1" -p "$PORT" -t bench/sub -q 1 -v -C "$N" > "$WORK/out" &
  local pid=$!
  sleep 0.5   # subscribed
  local t0 t1; t0=$(now)
  "$BIN/mqtt-pub" -p "$PORT" -t bench/sub -l -q 1 < "$WORK/lines"
  wait "$pid"
  t1=$(now)
  [ "$(wc -l < "$WORK/out")" -eq "$N" ] || echo "warning: $1 printed $(wc -l < "$WORK/out") lines" >&2
  echo "$t1 - $t0" | bc -l
}

single() {  # $1 = publisher
  local t0 t1; t0=$(now)
  for _ in $(seq 1 "$SINGLE"); do "$1" -p "$PORT" -t bench/one -m hello; done
  t1=$(now); echo "($t1 - $t0) / $SINGLE" | bc -l
}

measure() {  # $1 = function, $2 = tool
  for _ in $(seq 1 "$RUNS"); do "$1" "$2"; done | median
}

P1=$(measure pub_lines "$(command -v mosquitto_pub)"); P2=$(measure pub_lines "$BIN/mqtt-pub")
S1=$(measure sub_receive "$(command -v mosquitto_sub)"); S2=$(measure sub_receive "$BIN/mqtt-sub")
O1=$(measure single "$(command -v mosquitto_pub)"); O2=$(measure single "$BIN/mqtt-pub")

printf '| Workload | mosquitto 2.0.11 | ours | ours / mosquitto |\n|---|---:|---:|---:|\n'
printf '| `pub -l`, %d lines, QoS 0 | %.3f s | %.3f s | %.2f |\n' "$N" "$P1" "$P2" "$(echo "$P2 / $P1" | bc -l)"
printf '| `sub -v`, %d messages (QoS 1) to a file | %.3f s | %.3f s | %.2f |\n' "$N" "$S1" "$S2" "$(echo "$S2 / $S1" | bc -l)"
printf '| one `pub -m` run (wall time) | %.1f ms | %.1f ms | %.2f |\n' "$(echo "$O1 * 1000" | bc -l)" "$(echo "$O2 * 1000" | bc -l)" "$(echo "$O2 / $O1" | bc -l)"
