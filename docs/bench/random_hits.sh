#!/usr/bin/env bash
# Hit latency on one store as it grows: a hot key with the store empty and
# full, then random stored keys among 1,000 and among 500,000, each twice,
# one connection at a time (docs/performance.md, "At 1,000,000 entries").
# Every pass prints its hits and misses: a pass with misses measures the
# upstream, not the store. Loopback only; about 2.5 minutes and 2 GB of RSS.
#
#   docs/bench/random_hits.sh [BIN] [ORIGIN_BIN]
#
# BIN and ORIGIN_BIN: see million_store.sh. Needs wrk.
set -euo pipefail
# shellcheck source=docs/bench/million_store.sh
source "$(dirname "${BASH_SOURCE[0]}")/million_store.sh"

latency() {
    timeout 30 wrk -t1 -c1 -d4s --latency "$@" | grep -E " 50%| 99%|Requests/sec"
}

curl -s -o /dev/null "http://$PROXY/api/hot"
echo "== hot key, store empty"
latency "http://$PROXY/api/hot"
# hits and misses so far, from the stats
counts() {
    curl -s "http://$PROXY/api/cache/stats" |
        python3 -c 'import json,sys; c=json.load(sys.stdin)["cache"]; print(c["hits"], c["misses"], c["size"], c["evictions"])'
}
echo "== filling: 2 x 500,000 unique URLs (maxsize 1.1 M: nothing evicted)"
PER_THREAD=500000 timeout 150 wrk -t2 -c32 -d120s -s "$HERE/fill_unique.lua" "http://$PROXY" | grep "requests in"
read -r _ _ size evictions < <(counts)
echo "size $size, evictions $evictions"
echo "== hot key, store full"
latency "http://$PROXY/api/hot"
for range in 1000 500000 1000 500000; do
    echo "== random among $range stored keys"
    read -r hits misses _ < <(counts)
    RANGE=$range latency -s "$HERE/random_keys.lua" "http://$PROXY"
    read -r hits2 misses2 _ < <(counts)
    echo "   $((hits2 - hits)) hits, $((misses2 - misses)) misses"
done
