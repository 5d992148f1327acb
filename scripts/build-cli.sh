#!/usr/bin/env bash
# Builds mqtt-pub, mqtt-sub and mqtt-rr (and mqtt-ws-tunnel, which they start for --ws) for installing: release
# mode, the Swift runtime linked in (--static-swift-stdlib) and libstdc++ too, so that a run loads no more shared libraries than mosquitto_pub does
# (libmosquitto, libssl, libcrypto, libc, libm, libgcc_s). Loading and relocating the dynamic libstdc++ alone costs
# a short run about 1.6 million instructions, as much as the whole of mosquitto_pub's own work.
#
#   scripts/build-cli.sh                      # builds into .build-cli-release-static/release
#   scripts/build-cli.sh --install /usr/local/bin
#   SCRATCH=/tmp/cli scripts/build-cli.sh     # another build directory
#
# Prints the directory holding the three programs.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRATCH=${SCRATCH:-.build-cli-release-static}
INSTALL=""
if [ "${1:-}" = "--install" ]; then INSTALL=${2:?usage: $0 [--install DIR]}; fi

# -lstdc++ (which the static Swift runtime asks for) finds a linker script first that names the static archive.
STDCXX=$( (c++ -print-file-name=libstdc++.a || gcc -print-file-name=libstdc++.a || clang -print-file-name=libstdc++.a) 2>/dev/null | head -1 )
EXTRA=()
if [ -n "$STDCXX" ] && [ -f "$STDCXX" ]; then
  mkdir -p "$SCRATCH/static-libstdc++"
  echo "INPUT($STDCXX)" > "$SCRATCH/static-libstdc++/libstdc++.so"
  EXTRA=(-Xlinker -L"$(cd "$SCRATCH/static-libstdc++" && pwd)")
else
  echo "note: no static libstdc++.a found (install libstdc++-dev); libstdc++ stays a shared library" >&2
fi
# mqtt-ws-tunnel is the WebSocket tunnel the three start for --ws (SwiftNIO and BoringSSL live there, not in them).
for product in mqtt-pub mqtt-sub mqtt-rr mqtt-ws-tunnel; do
  swift build -c release --static-swift-stdlib --scratch-path "$SCRATCH" --product "$product" "${EXTRA[@]}" >&2
done
BIN="$(cd "$SCRATCH/release" && pwd)"
if [ -n "$INSTALL" ]; then
  install -m 0755 "$BIN/mqtt-pub" "$BIN/mqtt-sub" "$BIN/mqtt-rr" "$BIN/mqtt-ws-tunnel" "$INSTALL/"
  BIN="$INSTALL"
fi
echo "$BIN"
