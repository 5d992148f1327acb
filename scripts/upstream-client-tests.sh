#!/usr/bin/env bash
# Runs mosquitto's own client test suite (test/client of an eclipse-mosquitto/mosquitto checkout, e.g. tag v2.1.2)
# against our mqtt-pub, mqtt-sub and mqtt-rr, installed under the names the tests call: mosquitto_pub, mosquitto_sub,
# mosquitto_rr. The broker is the installed mosquitto (Debian's 2.0.11). Nothing of upstream is part of this
# repository; the checkout is yours.
#
#   git clone --branch v2.1.2 https://github.com/eclipse-mosquitto/mosquitto /tmp/mosquitto
#   scripts/upstream-client-tests.sh /tmp/mosquitto                 # our release CLIs (built first)
#   scripts/upstream-client-tests.sh /tmp/mosquitto 03-publish-file  # only the tests whose name contains this
#   CLIENTS=/usr/bin scripts/upstream-client-tests.sh /tmp/mosquitto # mosquitto's own clients, for comparison
#
# Environment:
#   CLIENTS     a directory with mqtt-pub/mqtt-sub/mqtt-rr or mosquitto_pub/mosquitto_sub/mosquitto_rr
#               (default: the installable build, scripts/build-cli.sh, made first unless SKIP_BUILD=1)
#   BROKER      the broker binary (default: mosquitto on PATH, else /usr/sbin/mosquitto)
#   PARALLEL=1  use upstream's own runner, test.py (20 tests at once, 5 retries). By default the tests run one at a
#               time in our loop, up to 3 attempts each: with test.py, 03-publish-qos1-ws-large fills its stdout
#               pipe (the runner reads it only at exit), is killed after 180 s and leaves its broker holding two of
#               the shared ports, which fails unrelated tests.
# Tests use ports 1888-1908 on loopback. Exit status 0 when every test that ran passed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CHECKOUT=${1:?usage: $0 <mosquitto checkout> [test-name-filter]}
FILTER=${2:-}
CHECKOUT=$(cd "$CHECKOUT" && pwd)
[ -f "$CHECKOUT/test/client/test.py" ] || { echo "no test/client/test.py under $CHECKOUT" >&2; exit 2; }

if [ -z "${CLIENTS:-}" ]; then
  if [ -z "${SKIP_BUILD:-}" ]; then
    CLIENTS=$(scripts/build-cli.sh 2>/dev/null)
  else
    CLIENTS="$ROOT/.build-cli-release-static/release"
  fi
fi
CLIENTS=$(cd "$CLIENTS" && pwd)
BROKER=${BROKER:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}

# BUILD_ROOT as the tests expect it: client/mosquitto_{pub,sub,rr} and src/mosquitto.
FAKE=$(mktemp -d)
cleanup() {
  # Brokers a killed test left running: only those started from this run's own directory.
  for pid in $(pgrep -f "$FAKE/broker-" || true); do kill "$pid" 2>/dev/null || true; done
  rm -rf "$FAKE"
}
trap cleanup EXIT
mkdir -p "$FAKE/client" "$FAKE/src"
for t in pub sub rr; do
  if [ -x "$CLIENTS/mqtt-$t" ]; then ln -s "$CLIENTS/mqtt-$t" "$FAKE/client/mosquitto_$t"
  else ln -s "$CLIENTS/mosquitto_$t" "$FAKE/client/mosquitto_$t"; fi
done
# The broker, started through a wrapper that adds `max_packet_size 2000000` (and, without -c, `allow_anonymous
# true`, as -p alone implies): the suite's MQTT 5 helpers expect the CONNACK of a 2.1 broker, which announces that
# maximum packet size by default; 2.0.11 announces it only when configured. exec keeps the test's process id.
cat > "$FAKE/src/mosquitto" <<WRAPPER
#!/usr/bin/env bash
conf="$FAKE/broker-\$\$.conf"
args=(); given=0
while [ \$# -gt 0 ]; do
  if [ "\$1" = -c ]; then cat "\$2" > "\$conf"; echo >> "\$conf"; given=1; shift 2; else args+=("\$1"); shift; fi
done
[ \$given = 1 ] || echo "allow_anonymous true" > "\$conf"
echo "max_packet_size 2000000" >> "\$conf"
exec "$BROKER" "\${args[@]}" -c "\$conf"
WRAPPER
chmod +x "$FAKE/src/mosquitto"
export BUILD_ROOT="$FAKE"

cd "$CHECKOUT/test/client"
if [ -n "${PARALLEL:-}" ] && [ -z "$FILTER" ]; then
  python3 test.py
  exit $?
fi

# Our serial loop, with the ports upstream's runner would hand out.
tests=$(python3 -c 'import test; [print(n, p) for n, p in test.tests]')
passed=0; failed=0; failing=()
while read -r nports path; do
  case "$path" in *"$FILTER"*) ;; *) continue ;; esac
  ports=(); for ((i = 0; i < nports; i++)); do ports+=($((1888 + i))); done
  ok=0
  for attempt in 1 2 3; do
    if timeout 120 python3 "$path" "${ports[@]}" > "$FAKE/log" 2>&1; then ok=1; break; fi
    for pid in $(pgrep -f "$FAKE/broker-" || true); do kill "$pid" 2>/dev/null || true; done
  done
  if [ "$ok" = 1 ]; then passed=$((passed + 1)); echo "pass $path"
  else failed=$((failed + 1)); failing+=("$path"); echo "FAIL $path"; cut -c1-300 "$FAKE/log" | sed 's/^/    /' | head -40; fi
done <<< "$tests"
echo "Passed: $passed of $((passed + failed))"
[ "$failed" = 0 ]
