#!/usr/bin/env bash
# Interoperability with MQTT engines other than mosquitto: RabbitMQ's MQTT plugin, ejabberd's mod_mqtt, and a
# two-node ejabberd cluster (issue #18). Installs the engines (Debian packages) when root, or prints the command;
# the tests start every engine on loopback ports with its own configuration, data directory and Erlang port
# mapper, stop them at the end (also when a test fails), and print one line per measured feature. This script
# turns those lines into the table of INTEROP.md:
#
#   scripts/interop.sh                 # run, and print the table
#   scripts/interop.sh --write         # also rewrite INTEROP.md's table
#
# ejabberdctl runs nodes as the ejabberd user, so the ejabberd rows need root; RabbitMQ runs as you.
# Not part of .ci/run: installing Erlang and two engines takes minutes, and each engine boots in 2 to 20 s.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh

engines="rabbitmq-server ejabberd"
if ! [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || ! [ -x /usr/sbin/ejabberdctl ]; then
    if [ "$(id -u)" = "0" ]; then
        echo "Installing: $engines (Erlang included; they are not started as services)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $engines >/dev/null
    else
        echo "error: the MQTT engines are missing. Run:" >&2
        echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends $engines" >&2
        exit 1
    fi
fi
# Debian's packages start their services where an init system runs: those would hold the default ports but are
# not used here (the tests use ports of their own).

log="$(mktemp -t interop.XXXXXX)"
swift build --build-tests
set +e
MOSQUITTO_INTEROP=1 swift test --skip-build --filter InteropTests 2>&1 | tee "$log"
status="${PIPESTATUS[0]}"
set -e

table="$(mktemp -t interop-table.XXXXXX)"
{
    echo "| engine | feature | result | measured |"
    echo "|---|---|---|---|"
    grep '^INTEROP|' "$log" | sed -e 's/^INTEROP//' -e 's/Connection to 127\.0\.0\.1:[0-9]*: //' | awk -F'|' '{ printf "| %s | %s | %s | %s |\n", $2, $3, $4, $5 }'
} > "$table"
echo
cat "$table"
if [ "${1:-}" = "--write" ] && [ -f INTEROP.md ]; then
    # Replace the lines between the markers with the new table.
    awk -v table="$table" '
        /<!-- table begin -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
        /<!-- table end -->/ { skip = 0 }
        !skip { print }
    ' INTEROP.md > INTEROP.md.new && mv INTEROP.md.new INTEROP.md
    echo "INTEROP.md updated"
fi
rm -f "$table" "$log"
exit "$status"
