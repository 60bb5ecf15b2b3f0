# shellcheck shell=bash
# Sourced by random_hits.sh and clear_rss.sh: starts bench-origin (100-byte
# answers) and a proxy that can hold a million of them without evicting,
# both on loopback, and stops them when the script exits.
#
# Arguments of the sourcing script: [BIN] [ORIGIN_BIN]. BIN: the proxy
# [target/release/dashcache]; ORIGIN_BIN: compare.sh's bench-origin
# [target/bench/target/release/bench-origin, built by bench/scale.sh's h2
# or miss section]. Sets HERE, PROXY and proxy_pid.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN="${1:-$REPO/target/release/dashcache}"
ORIGIN_BIN="${2:-$REPO/target/bench/target/release/bench-origin}"
ORIGIN=127.0.0.1:19200
PROXY=127.0.0.1:19201

"$ORIGIN_BIN" --listen "$ORIGIN" --delay-ms 0 --body-bytes 100 >/dev/null 2>&1 &
origin_pid=$!
"$BIN" --listen "$PROXY" --upstream "http://$ORIGIN" --maxsize 1100000 \
    --max-bytes 4GiB --max-object-bytes 1MiB --log-level warn >/dev/null 2>&1 &
proxy_pid=$!
trap 'kill "$proxy_pid" "$origin_pid" 2>/dev/null || true' EXIT
sleep 0.5
