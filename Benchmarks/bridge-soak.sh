#!/usr/bin/env bash
# Bridge soak: runs mqtt-bridge for a while under random broker faults (SIGTERM and SIGKILL restarts) and feed
# faults (the feed drops its connection in the middle of a line), then prints the loss accounting:
# produced, delivered, duplicates, missing, and the bridge's drops by reason. NOT part of CI.
#
#   Benchmarks/bridge-soak.sh [seconds]        (default 3600)
#
# Environment: RATE (frames/s the feed sends, default 3000), FAULT_EVERY (mean seconds between faults,
# default 10), BRIDGE_BIN_DIR (use an already built mqtt-bridge).
# Needs: mosquitto, mosquitto_sub, python3.
#
# The feed is a TCP client of the bridge (route `soak`, tcp_server, QoS 1, spool on). The subscriber is
# `mosquitto_sub -c` (persistent session, QoS 1), which reconnects by itself after broker restarts. The broker
# runs with persistence (autosave every second), so a SIGTERM restart keeps its queues; a SIGKILL loses what it
# had acknowledged but not yet written to the subscriber or saved. Such losses are the broker's, and are
# reported separately as "missing after a broker SIGKILL" (frames produced within 2 s of a SIGKILL).
set -euo pipefail
umask 077   # generated configs, logs and the spool are owner-only
cd "$(dirname "$0")/.."
DURATION=${1:-3600}
RATE=${RATE:-3000}
FAULT_EVERY=${FAULT_EVERY:-10}
if [ -z "${BRIDGE_BIN_DIR:-}" ]; then
  swift build -c release --scratch-path .build-bridge-release --product mqtt-bridge >/dev/null
  BIN="$(swift build -c release --scratch-path .build-bridge-release --show-bin-path)"
else
  BIN="$BRIDGE_BIN_DIR"
fi
WORK="$(mktemp -d)"
BROKER_DIR=""
BROKER_PID=""; BRIDGE_PID=""; SUB_PID=""
cleanup() {
  # Only what this script started: the bridge, the subscriber, and the broker(s) on this run's own config file.
  for p in "$BRIDGE_PID" "$SUB_PID" $(pgrep -f "mosquitto -c $WORK/mosquitto.conf" || true); do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "kept $WORK $BROKER_DIR"; else rm -rf "$WORK" "$BROKER_DIR"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BROKER_PORT=$(free_port); FEED_PORT=$(free_port); HTTP_PORT=$(free_port)
# The broker's persistence directory: mosquitto started as root drops to the `mosquitto` user, which cannot
# write inside this script's owner-only work directory, so it gets its own directory, owned by that user.
BROKER_DIR="$(mktemp -d)"
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then chown mosquitto "$BROKER_DIR"; fi
cat >"$WORK/mosquitto.conf" <<EOF
listener $BROKER_PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $BROKER_DIR/
autosave_interval 1
max_queued_messages 0
EOF
start_broker() {
  mosquitto -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 &
  BROKER_PID=$!
  for _ in $(seq 50); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$BROKER_PORT)).close()" 2>/dev/null && return; sleep 0.1; done
}
start_broker

cat >"$WORK/bridge.conf" <<EOF
address 127.0.0.1:$BROKER_PORT
remote_clientid soak-bridge
cleansession false
restart_timeout 0.2 2
spool_dir $WORK/spool
metrics_listen 127.0.0.1:$HTTP_PORT
progress_interval 0
route soak
direction to_mqtt
mode tcp_server
address 127.0.0.1:$FEED_PORT
topic soak/data
qos 1
EOF
"$BIN/mqtt-bridge" --config "$WORK/bridge.conf" --log-level warning >>"$WORK/bridge.log" 2>&1 &
BRIDGE_PID=$!
mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -i soak-sub -c -q 1 -t soak/data >"$WORK/received" 2>>"$WORK/sub.log" &
SUB_PID=$!
sleep 1

# The feed: sequence-numbered lines at RATE/s; drops its connection mid-line at random. Faults on the broker
# are injected from here too, so that their times line up with the frame numbers.
python3 - "$FEED_PORT" "$DURATION" "$RATE" "$FAULT_EVERY" "$WORK" "$BROKER_PORT" <<'PY'
import os, random, signal, socket, subprocess, sys, time
port, duration, rate, fault_every, work, broker_port = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6])
random.seed()
seq = 0
partial_drops = 0
events = []  # (kind, seq at the time)
conn = None
def connect():
    for _ in range(200):
        try:
            s = socket.create_connection(("127.0.0.1", port)); return s
        except OSError: time.sleep(0.05)
    raise SystemExit("cannot reach the bridge")
def broker_pid():
    out = subprocess.run(["pgrep", "-f", f"mosquitto -c {work}/mosquitto.conf"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None
def restart_broker(sig):
    pid = broker_pid()
    if pid: os.kill(pid, sig)
    for _ in range(100):
        if broker_pid() is None: break
        time.sleep(0.05)
    time.sleep(random.uniform(0.2, 2.0))
    subprocess.Popen(["mosquitto", "-c", f"{work}/mosquitto.conf"], stdout=open(f"{work}/mosquitto.log", "a"), stderr=subprocess.STDOUT)
start = time.monotonic()
next_fault = start + random.expovariate(1 / fault_every)
conn = connect()
tick = 0.01
per_tick = max(1, int(rate * tick))
next_t = start
while time.monotonic() - start < duration:
    conn.sendall(b"".join(b"s%d\n" % i for i in range(seq, seq + per_tick)))
    seq += per_tick
    now = time.monotonic()
    if now >= next_fault:
        kind = random.choice(["feed_drop", "feed_drop", "broker_term", "broker_kill"])
        events.append((kind, seq, round(now - start, 1)))
        if kind == "feed_drop":
            conn.sendall(b"partial-%d" % seq)  # half a line, then the connection drops
            conn.close(); partial_drops += 1
            time.sleep(random.uniform(0, 0.5))
            conn = connect()
        else:
            restart_broker(signal.SIGTERM if kind == "broker_term" else signal.SIGKILL)
        next_fault = time.monotonic() + random.expovariate(1 / fault_every)
    next_t += tick
    d = next_t - time.monotonic()
    if d > 0: time.sleep(d)
conn.close()
with open(f"{work}/produced", "w") as f:
    f.write(f"{seq} {partial_drops}\n")
    for e in events: f.write(f"{e[0]} {e[1]} {e[2]}\n")
PY

# Drain: wait until the bridge's spool is empty and the subscriber has been quiet for 5 s (at most 120 s).
metric() { python3 - "$HTTP_PORT" "$1" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
for l in body.splitlines():
    if l.startswith(sys.argv[2]): print(int(float(l.split()[-1]))); break
PY
}
last=-1; quiet=0
for _ in $(seq 120); do
  n=$(wc -l <"$WORK/received")
  depth=$(metric 'mqtt_bridge_spool_records{route="soak"}' 2>/dev/null || echo "?")
  if [ "$n" = "$last" ] && [ "$depth" = "0" ]; then quiet=$((quiet + 1)); else quiet=0; fi
  [ $quiet -ge 5 ] && break
  last=$n; sleep 1
done
curl -s "http://127.0.0.1:$HTTP_PORT/metrics" >"$WORK/metrics" 2>/dev/null || python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$HTTP_PORT/metrics').read().decode())" >"$WORK/metrics"
BRIDGE_RSS=$(awk '/VmRSS/ {print $2}' "/proc/$BRIDGE_PID/status")
BRIDGE_FDS=$(ls "/proc/$BRIDGE_PID/fd" | wc -l)

python3 - "$WORK" "$DURATION" "$BRIDGE_RSS" "$BRIDGE_FDS" "$RATE" <<'PY'
import sys, collections
work, duration, rss, fds, rate = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
lines = open(f"{work}/produced").read().split("\n")
produced, partials = map(int, lines[0].split())
events = [l.split() for l in lines[1:] if l]
received = [l.strip() for l in open(f"{work}/received", errors="replace") if l.strip()]
counts = collections.Counter(received)
seqs = set(int(r[1:]) for r in counts if r.startswith("s") and r[1:].isdigit())
missing = sorted(set(range(produced)) - seqs)
kills = [int(e[1]) for e in events if e[0] == "broker_kill"]
near_kill = [m for m in missing if any(k - 2 * rate <= m <= k + rate for k in kills)]
drops = {}
for l in open(f"{work}/metrics"):
    if l.startswith("mqtt_bridge_drops_total{") and 'route="soak"' in l:
        reason = l.split('reason="')[1].split('"')[0]
        drops[reason] = int(float(l.split()[-1]))
    for name in ("frames_in_total", "frames_published_total", "refused_total", "mqtt_reconnects_total"):
        if l.startswith(f"mqtt_bridge_{name}") and (name == "mqtt_reconnects_total" or 'route="soak"' in l):
            drops.setdefault("_" + name, int(float(l.split()[-1])))
kinds = collections.Counter(e[0] for e in events)
print(f"soak: {duration} s, faults: {dict(kinds)}")
print(f"  produced (complete lines) : {produced}")
print(f"  delivered (distinct)      : {len(seqs)}")
print(f"  duplicates                : {len(received) - len(counts)} extra copies")
print(f"  missing                   : {len(missing)} (after a broker SIGKILL: {len(near_kill)}; other: {len(missing) - len(near_kill)})")
print(f"  partial lines sent        : {partials} (the feed dropped mid-line; policy drop)")
print(f"  bridge drops by reason    : " + ", ".join(f"{k}={v}" for k, v in sorted(drops.items()) if not k.startswith("_")))
print(f"  bridge frames in/published: {drops.get('_frames_in_total')} / {drops.get('_frames_published_total')}, MQTT reconnects {drops.get('_mqtt_reconnects_total')}")
print(f"  bridge at the end         : RSS {int(rss) // 1024} MiB, {fds} fds")
ranges = []
for m in missing:
    if ranges and ranges[-1][1] == m - 1: ranges[-1][1] = m
    else: ranges.append([m, m])
if ranges: print("  missing ranges            : " + ", ".join(f"{a}-{b}" for a, b in ranges[:12]) + (" ..." if len(ranges) > 12 else ""))
print("  faults (kind, frame, s)   : " + ", ".join(f"{e[0]}@{e[1]}/{e[2]}s" for e in events))
ok = len(missing) - len(near_kill) == 0 and drops.get("partial", 0) == partials
print("RESULT:", "OK (every frame accounted for)" if ok else "LOSS (see above)")
PY
