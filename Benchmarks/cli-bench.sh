#!/usr/bin/env bash
# Measures mqtt-pub / mqtt-sub against mosquitto_pub / mosquitto_sub in one run, on a private broker, the two
# tools taking turns (the order flips every round), so that a machine that gets busier or quieter affects both.
#
#   Benchmarks/cli-bench.sh            # builds the installable CLIs first (scripts/build-cli.sh)
#   SKIP_BUILD=1 Benchmarks/cli-bench.sh
#   RUNS=10 SINGLE=50 Benchmarks/cli-bench.sh
#
# Prints a Markdown table for:
#   1. pub -l, N lines at QoS 0 (stdin from a file, until the process exits): median of RUNS runs;
#   2. sub -v receiving N messages (QoS 1) into a file, from the first publish until the process exits (the same
#      feeder, mqtt-pub -l -q 1, for both): median of RUNS runs;
#   3. one pub -m run (QoS 0), wall time: mean of RUNS*SINGLE runs;
#   4. exec to SUBACK: the wall time of `sub -E` (connect, subscribe, SUBACK, disconnect, exit): median of
#      RUNS*SINGLE runs; then the same with two CPU hogs running (median, 95th percentile, maximum).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SINGLE=${SINGLE:-30}
N=${N:-100000}
if [ -z "${SKIP_BUILD:-}" ]; then
  BIN=$(scripts/build-cli.sh)
else
  BIN=${BIN:-$(pwd)/.build-cli-release-static/release}
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
THEIR_PUB=$(command -v mosquitto_pub)
THEIR_SUB=$(command -v mosquitto_sub)

WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n' "$PORT" > "$WORK/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" > "$WORK/broker.log" 2>&1 &
BROKER=$!
HOGS=()
cleanup() {
  for h in "${HOGS[@]}"; do kill "$h" 2>/dev/null || true; done
  kill "$BROKER" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
sleep 0.5
seq 1 "$N" > "$WORK/lines"

# Seconds since the epoch, without starting a process.
now() { echo "$EPOCHREALTIME"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mean() { awk '{s+=$1} END {print s/NR}'; }
percentile() { sort -g | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if(i<1)i=1; print a[i]}'; }
maximum() { sort -g | tail -1; }

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
  "$1" -p "$PORT" -t bench/one -m hello
  t1=$(now); echo "$t1 - $t0" | bc -l
}

suback() {  # $1 = subscriber
  local t0 t1; t0=$(now)
  "$1" -p "$PORT" -t bench/e -E
  t1=$(now); echo "$t1 - $t0" | bc -l
}

# Runs $1 for both tools ($2 ours, $3 theirs) $4 times, alternating; the times go to $WORK/$5.ours and .theirs.
alternate() {
  local f=$1 ours=$2 theirs=$3 count=$4 name=$5 i
  : > "$WORK/$name.ours"; : > "$WORK/$name.theirs"
  for i in $(seq 1 "$count"); do
    if [ $((i % 2)) -eq 0 ]; then
      "$f" "$ours" >> "$WORK/$name.ours"; "$f" "$theirs" >> "$WORK/$name.theirs"
    else
      "$f" "$theirs" >> "$WORK/$name.theirs"; "$f" "$ours" >> "$WORK/$name.ours"
    fi
  done
}

alternate pub_lines "$BIN/mqtt-pub" "$THEIR_PUB" "$RUNS" lines
alternate sub_receive "$BIN/mqtt-sub" "$THEIR_SUB" "$RUNS" sub
alternate single "$BIN/mqtt-pub" "$THEIR_PUB" $((RUNS * SINGLE)) single
alternate suback "$BIN/mqtt-sub" "$THEIR_SUB" $((RUNS * SINGLE)) suback
for _ in 1 2; do (while :; do :; done) & HOGS+=($!); done
alternate suback "$BIN/mqtt-sub" "$THEIR_SUB" $((RUNS * SINGLE)) loaded
for h in "${HOGS[@]}"; do kill "$h" 2>/dev/null || true; done
HOGS=()

P1=$(median < "$WORK/lines.theirs"); P2=$(median < "$WORK/lines.ours")
S1=$(median < "$WORK/sub.theirs"); S2=$(median < "$WORK/sub.ours")
O1=$(mean < "$WORK/single.theirs"); O2=$(mean < "$WORK/single.ours")
E1=$(median < "$WORK/suback.theirs"); E2=$(median < "$WORK/suback.ours")
L1=$(median < "$WORK/loaded.theirs"); L2=$(median < "$WORK/loaded.ours")
L1p=$(percentile 95 < "$WORK/loaded.theirs"); L2p=$(percentile 95 < "$WORK/loaded.ours")
L1m=$(maximum < "$WORK/loaded.theirs"); L2m=$(maximum < "$WORK/loaded.ours")
ms() { echo "$1 * 1000" | bc -l; }

printf '| Workload | mosquitto 2.0.11 | ours | ours vs mosquitto |\n|---|---:|---:|---:|\n'
printf '| `pub -l`, %d lines, QoS 0 | %.3f s | %.3f s | %.2f× the speed |\n' "$N" "$P1" "$P2" "$(echo "$P1 / $P2" | bc -l)"
printf '| `sub -v`, %d messages (QoS 1) to a file | %.3f s | %.3f s | %.2f× the speed |\n' "$N" "$S1" "$S2" "$(echo "$S1 / $S2" | bc -l)"
printf '| one `pub -m` run (wall time, mean of %d) | %.2f ms | %.2f ms | %.2f× the time |\n' $((RUNS * SINGLE)) "$(ms "$O1")" "$(ms "$O2")" "$(echo "$O2 / $O1" | bc -l)"
printf '| exec to SUBACK (`sub -E`, median of %d) | %.2f ms | %.2f ms | %.2f× the time |\n' $((RUNS * SINGLE)) "$(ms "$E1")" "$(ms "$E2")" "$(echo "$E2 / $E1" | bc -l)"
printf '| exec to SUBACK, two CPU hogs running: median / p95 / max | %.1f / %.1f / %.1f ms | %.1f / %.1f / %.1f ms | %.2f× the time (median) |\n' \
  "$(ms "$L1")" "$(ms "$L1p")" "$(ms "$L1m")" "$(ms "$L2")" "$(ms "$L2p")" "$(ms "$L2m")" "$(echo "$L2 / $L1" | bc -l)"
