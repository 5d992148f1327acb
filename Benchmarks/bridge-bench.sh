#!/usr/bin/env bash
# Bridge benchmark: feed -> MQTT -> feed through mqtt-bridge, against the naive pipeline
# (`nc -l | mosquitto_pub -l` and `mosquitto_sub | nc -l`), on loopback with a private mosquitto.
#
#   Benchmarks/bridge-bench.sh [frames]          (default 1,000,000 at QoS 0; 200,000 at QoS 1)
#
# Needs: mosquitto, mosquitto_pub/mosquitto_sub, nc (netcat-openbsd), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
FRAMES0=${1:-1000000}
FRAMES1=${FRAMES1:-200000}
SCRATCH=.build-bridge-release
if [ -z "${BRIDGE_BIN_DIR:-}" ]; then
  swift build -c release --scratch-path "$SCRATCH" --product mqtt-bridge >/dev/null
  BIN="$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)"
else
  BIN="$BRIDGE_BIN_DIR"  # an already built mqtt-bridge
fi
WORK="$(mktemp -d)"
chmod 700 "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }  # user + system, clock ticks
TICKS=$(getconf CLK_TCK)

BROKER_PORT=$(free_port)
umask 077  # the generated configs are owner-only
cat >"$WORK/mosquitto.conf" <<EOF
listener $BROKER_PORT 127.0.0.1
allow_anonymous true
max_queued_messages 0
max_inflight_messages 0
EOF
mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
BROKER=$!
PIDS+=($BROKER)
sleep 0.5

run_bridge() {  # qos frames rate -> JSON line; also prints RSS samples to $WORK/rss
  local qos=$1 frames=$2 rate=$3 in_port out_port
  in_port=$(free_port); out_port=$(free_port)
  cat >"$WORK/bridge.conf" <<EOF
address 127.0.0.1:$BROKER_PORT
remote_clientid bench-bridge-$RANDOM
cleansession false
spool_dir $WORK/spool
spool_fsync 1
progress_interval 0
$EXTRA_CONF
route in
direction to_mqtt
mode tcp_server
address 127.0.0.1:$in_port
topic bench/f
qos $qos
route out
direction to_feed
mode tcp_server
address 127.0.0.1:$out_port
subscribe bench/f
qos $qos
out_queue_bytes 64MiB
EOF
  "$BIN/mqtt-bridge" --config "$WORK/bridge.conf" --log-level warning &
  local bp=$!
  ( while kill -0 $bp 2>/dev/null; do rss_kb $bp; sleep 0.5; done ) >"$WORK/rss" &
  local sampler=$!
  local b0 t0 out
  b0=$(cpu_ticks $BROKER); t0=$(date +%s.%N)
  out=$(python3 Benchmarks/bridge-bench.py --in-port "$in_port" --out-port "$out_port" --frames "$frames" --rate "$rate")
  # CPU used during the run, in cores (1.0 = one core busy the whole time), bridge and broker.
  echo "$out cpu: bridge $(python3 -c "print(round($(cpu_ticks $bp) / $TICKS / ($(date +%s.%N) - $t0), 2))") broker $(python3 -c "print(round(($(cpu_ticks $BROKER) - $b0) / $TICKS / ($(date +%s.%N) - $t0), 2))")"
  kill -TERM $bp; wait $bp 2>/dev/null || true
  kill $sampler 2>/dev/null || true
  rm -rf "$WORK/spool"
}

run_naive() {  # qos frames rate -> JSON line
  local qos=$1 frames=$2 rate=$3 in_port out_port
  in_port=$(free_port); out_port=$(free_port)
  (mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -t bench/n -q "$qos" | nc -l 127.0.0.1 "$out_port") &
  local sp=$!
  sleep 0.3
  (nc -l 127.0.0.1 "$in_port" | mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" -t bench/n -q "$qos" -l) &
  local pp=$!
  local b0 t0 out
  b0=$(cpu_ticks $BROKER); t0=$(date +%s.%N)
  out=$(python3 Benchmarks/bridge-bench.py --in-port "$in_port" --out-port "$out_port" --frames "$frames" --rate "$rate" --timeout 60)
  echo "$out cpu: broker $(python3 -c "print(round(($(cpu_ticks $BROKER) - $b0) / $TICKS / ($(date +%s.%N) - $t0), 2))")"
  pkill -P $sp 2>/dev/null || true; pkill -P $pp 2>/dev/null || true
  kill $sp $pp 2>/dev/null || true
  wait $sp $pp 2>/dev/null || true
}

EXTRA_CONF=${EXTRA_CONF:-}  # extra global bridge config lines, e.g. "publish_window 20000"
if [ -n "${ONLY:-}" ]; then  # one run, e.g. ONLY="bridge 1 200000 0" (kind qos frames rate)
  set -- $ONLY
  echo "$1 qos$2: $(run_$1 "$2" "$3" "$4")"
  exit 0
fi
echo "# throughput (as fast as the writer goes)"
echo "bridge qos0: $(run_bridge 0 "$FRAMES0" 0)"
echo "bridge qos0 RSS kB (every 0.5 s): $(tr '\n' ' ' <"$WORK/rss")"
echo "naive  qos0: $(run_naive 0 "$FRAMES1" 0)"
echo "bridge qos1: $(run_bridge 1 "$FRAMES1" 0)"
echo "naive  qos1: $(run_naive 1 "$FRAMES1" 0)"
echo "# latency (paced at 5,000 frames/s, 50,000 frames)"
echo "bridge qos0: $(run_bridge 0 50000 5000)"
echo "naive  qos0: $(run_naive 0 50000 5000)"
echo "bridge qos1: $(run_bridge 1 50000 5000)"
echo "naive  qos1: $(run_naive 1 50000 5000)"
