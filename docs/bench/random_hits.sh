#!/usr/bin/env bash
# Hit latency on one store as it grows: a hot key with the store empty and
# full, then random stored keys among 1,000 and among 500,000, each twice,
# one connection at a time (docs/performance.md, "At 1,000,000 entries").
# Loopback only; about 1.5 minutes and 2.3 GB of RSS.
#
#   docs/bench/random_hits.sh [BIN] [ORIGIN_BIN]
#
# BIN: the proxy [target/release/dashcache]; ORIGIN_BIN: compare.sh's
# bench-origin [target/bench/target/release/bench-origin, built by
# bench/scale.sh's h2 or miss section]. Needs wrk.
set -euo pipefail
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

latency() {
    timeout 30 wrk -t1 -c1 -d4s --latency "$@" | grep -E " 50%| 99%|Requests/sec"
}

curl -s -o /dev/null "http://$PROXY/api/hot"
echo "== hot key, store empty"
latency "http://$PROXY/api/hot"
echo "== filling (60 s of unique URLs)"
timeout 90 wrk -t2 -c32 -d60s -s "$HERE/fill_unique.lua" "http://$PROXY" | grep "requests in"
curl -s "http://$PROXY/api/cache/stats" | grep -o '"size":[0-9]*'
echo "== hot key, store full"
latency "http://$PROXY/api/hot"
for range in 1000 500000 1000 500000; do
    echo "== random among $range stored keys"
    RANGE=$range latency -s "$HERE/random_keys.lua" "http://$PROXY"
done
