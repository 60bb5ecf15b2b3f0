#!/usr/bin/env bash
# Server CPU per hit on random stored keys, at 1,000,000 and at 1,000
# entries, for one or more builds side by side (docs/performance.md, "Fifth
# pass"). Each build gets two proxies, filled with 2 x 500,000 and 2 x 500
# unique URLs (fill_unique.lua); then, in rounds, each proxy takes 3 s of
# single-connection hits (wrk's p50 and p99) and 3 s on 4 connections, whose
# CPU time (/proc/<pid>/stat) per request is the figure. Loopback only;
# about 1.5 minutes and 2 GB of RSS per build, plus 40 s per round.
#
#   docs/bench/random_hit_cpu.sh NAME=BIN [NAME=BIN ...]
#
# ROUNDS (3); ORIGIN_BIN: see million_store.sh. Needs wrk.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ORIGIN_BIN="${ORIGIN_BIN:-$REPO/target/bench/target/release/bench-origin}"
ORIGIN=127.0.0.1:19200
[ $# -gt 0 ] || { echo "usage: $0 NAME=BIN [NAME=BIN ...]" >&2; exit 2; }

"$ORIGIN_BIN" --listen "$ORIGIN" --delay-ms 0 --body-bytes 100 >/dev/null 2>&1 &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
port=19210
proxies=()
for build in "$@"; do
    name=${build%%=*} bin=${build#*=}
    for per_thread in 500000 500; do
        port=$((port + 1))
        "$bin" --listen "127.0.0.1:$port" --upstream "http://$ORIGIN" --maxsize 1100000 \
            --max-bytes 4GiB --max-object-bytes 1MiB --log-level warn >/dev/null 2>&1 &
        pids+=($!)
        proxies+=("$name-$((2 * per_thread)) $port $per_thread $!")
    done
done
sleep 0.5
for proxy in "${proxies[@]}"; do
    read -r name port per_thread pid <<<"$proxy"
    seconds=$((per_thread > 1000 ? 90 : 3))
    PER_THREAD=$per_thread timeout $((seconds + 30)) wrk -t2 -c32 -d${seconds}s \
        -s "$HERE/fill_unique.lua" "http://127.0.0.1:$port" | sed -n "s/^ *\(.*requests in.*\)/$name: filled, \1/p"
    echo "$name: RSS $(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$pid/status") MiB"
done
sleep 2
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for round in $(seq "${ROUNDS:-3}"); do
    for proxy in "${proxies[@]}"; do
        read -r name port per_thread pid <<<"$proxy"
        url="http://127.0.0.1:$port"
        latency=$(RANGE=$per_thread timeout 30 wrk -t1 -c1 -d3s --latency -s "$HERE/random_keys.lua" "$url" |
            awk '/ 50%/ {p50 = $2} / 99%/ {p99 = $2} END {print "p50", p50, "p99", p99}')
        before=$(cpu "$pid")
        requests=$(RANGE=$per_thread timeout 30 wrk -t1 -c4 -d3s -s "$HERE/random_keys.lua" "$url" |
            awk '/requests in/ {print $1}')
        after=$(cpu "$pid")
        ticks=$(getconf CLK_TCK)
        echo "round $round $name: one connection $latency; four: $requests hits, $(
            python3 -c "print(round(($after - $before) * 1e6 / $ticks / $requests, 2))") µs of server CPU each"
    done
done
