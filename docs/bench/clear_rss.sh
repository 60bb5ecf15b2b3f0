#!/usr/bin/env bash
# Memory given back after a `clear` of a million entries: fills one store
# with 1,000,000 small answers, clears it, then prints the proxy's RSS
# (MiB, as the OS reports it) once a second for 20 s: 10 s with hits on one
# key, then idle (docs/performance.md, "mimalloc's heap walk"). Loopback
# only; about 2.5 minutes and 2 GB of RSS.
#
#   docs/bench/clear_rss.sh [BIN] [ORIGIN_BIN]
#
# BIN and ORIGIN_BIN: see million_store.sh. Needs wrk.
set -euo pipefail
# shellcheck source=docs/bench/million_store.sh
source "$(dirname "${BASH_SOURCE[0]}")/million_store.sh"

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
