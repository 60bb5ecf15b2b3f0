#!/usr/bin/env bash
# Memory given back after a `clear` of a million entries: fills one store
# with 1,000,000 small answers, clears it, then prints the proxy's RSS
# (MiB, as the OS reports it) once a second for 20 s: 10 s with hits on one
# key, then idle (docs/performance.md, "mimalloc's heap walk"). Loopback
# only; about 2.5 minutes and 2 GB of RSS.
#
#   docs/bench/clear_rss.sh [BIN] [ORIGIN_BIN]
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
    --max-bytes 4GiB --log-level warn >/dev/null 2>&1 &
proxy_pid=$!
trap 'kill "$proxy_pid" "$origin_pid" 2>/dev/null || true' EXIT
sleep 0.5

rss() { awk '/VmRSS/ { print int($2 / 1024) }' "/proc/$proxy_pid/status"; }
echo "idle: $(rss) MiB"
echo "== filling: 2 x 500,000 unique URLs"
PER_THREAD=500000 timeout 150 wrk -t2 -c32 -d120s -s "$HERE/fill_unique.lua" "http://$PROXY" | grep "requests in"
echo "full: $(rss) MiB"
curl -s -X POST "http://$PROXY/api/cache/clear" >/dev/null
timeout 10 wrk -t1 -c4 -d10s "http://$PROXY/api/hot" >/dev/null &
line=""
for _ in $(seq 20); do
    sleep 1
    line="$line $(rss)"
done
echo "after clear, each second (10 s of hits, then idle):$line"
