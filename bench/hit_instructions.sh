#!/usr/bin/env bash
# bench/hit_instructions.sh - user-space instructions a cache hit costs the
# proxy, counted by valgrind's callgrind: a figure that, unlike req/s or
# CPU time, does not move with a noisy host, so two builds compare to a
# fraction of a percent (docs/performance.md, "Eighth pass").
#
#   bench/hit_instructions.sh [BIN ...]     # default target/release/dashcache
#   METHODS=POST HITS=5000 bench/hit_instructions.sh old-build new-build
#
# For each build and method it runs the proxy twice under callgrind against
# bench-origin (compare.sh's origin and paths: a 20 KB answer, its GET path,
# its POST path and body): once with one miss and WARM hits, once with
# HITS more. The difference in instructions, divided by HITS, is what one
# hit costs: start-up, the miss, the one-time tables and the volatile
# sampler's warm-up fall out. Hits are sent by h2load (HTTP/1.1, 4
# connections, one request at a time on each). Whole process, every thread,
# user space only (system calls are not counted).
#
# Needs valgrind and h2load (apt-get install valgrind nghttp2-client).
# Environment [defaults]: METHODS ["GET POST"], HITS [20000], WARM [3000],
# BASE_PORT [18190] (origin, proxy), BENCH_WORK [target/bench],
# POST_BODY [compare.sh's 315-byte filter, $SHARED_BENCH/tools/post-body.json],
# HEADERS [none]: request fields added to every request, one per line: a
# browser's (HEADERS="$(cat docs/bench/browser-headers.txt)") or a large
# cookie (HEADERS="Cookie: s=$(head -c 6000 /dev/zero | tr '\0' c)"),
# SHARED_BENCH [../shared/bench], ORIGIN_BIN
# [$BENCH_WORK/target/release/bench-origin, built when missing],
# OUT [$BENCH_WORK/callgrind]: the callgrind files, for callgrind_annotate.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
METHODS="${METHODS:-GET POST}"
HITS="${HITS:-20000}"
WARM="${WARM:-3000}"
BASE_PORT="${BASE_PORT:-18190}"
WORK="$(realpath -m "${BENCH_WORK:-$ROOT/target/bench}")"
SHARED_BENCH="$(realpath -m "${SHARED_BENCH:-$ROOT/../shared/bench}")"
ORIGIN_BIN="$(realpath -m "${ORIGIN_BIN:-$WORK/target/release/bench-origin}")"
OUT="$(realpath -m "${OUT:-$WORK/callgrind}")"
ORIGIN_PORT="$BASE_PORT"
PROXY_PORT="$((BASE_PORT + 1))"
GET_PATH="/api/dashboards/ops-overview/panels/latency?range=7d&region=eu-west-1"
POST_PATH="/api/query"
POST_BODY="$(realpath -m "${POST_BODY:-$SHARED_BENCH/tools/post-body.json}")"

die() { echo "hit_instructions.sh: $*" >&2; exit 1; }
for c in valgrind h2load curl; do
    command -v "$c" >/dev/null || die "missing command: $c (apt-get install valgrind nghttp2-client curl)"
done
[ $# -gt 0 ] || set -- "$ROOT/target/release/dashcache"
for bin in "$@"; do [ -x "$bin" ] || die "not an executable: $bin"; done
[ -f "$POST_BODY" ] || die "no $POST_BODY: set SHARED_BENCH to compare.sh's folder, or POST_BODY"
mkdir -p "$WORK" "$OUT"
if [ ! -x "$ORIGIN_BIN" ]; then
    cargo build --release --quiet --manifest-path "$SHARED_BENCH/origin/Cargo.toml" \
        --target-dir "$WORK/target" || die "bench-origin build failed"
    ORIGIN_BIN="$WORK/target/release/bench-origin"
fi

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

"$ORIGIN_BIN" --listen "127.0.0.1:$ORIGIN_PORT" --delay-ms 0 --body-bytes 20480 >"$OUT/origin.log" 2>&1 &
PIDS+=($!)

# Total instructions of one proxy run: one miss, WARM hits, then $4 more.
instructions() {
    local bin=$1 method=$2 name=$3 more=$4 file="$OUT/$3.$2.$4.callgrind"
    local url extra=()
    local field
    while IFS= read -r field; do
        [ -z "$field" ] || extra+=(-H "$field")
    done <<<"${HEADERS:-}"
    if [ "$method" = POST ]; then
        url="http://127.0.0.1:$PROXY_PORT$POST_PATH"
        extra+=(-d "$POST_BODY" -H 'Content-Type: application/json')
    else
        url="http://127.0.0.1:$PROXY_PORT$GET_PATH"
    fi
    valgrind --tool=callgrind --callgrind-out-file="$file" "$bin" \
        --listen "127.0.0.1:$PROXY_PORT" --upstream "http://127.0.0.1:$ORIGIN_PORT" \
        --maxsize 10000 --log-level warn >"$file.log" 2>&1 &
    local proxy=$!
    PIDS+=("$proxy")
    local up=0
    for _ in $(seq 300); do
        curl -s -o /dev/null "http://127.0.0.1:$PROXY_PORT/api/cache/health" && { up=1; break; }
        sleep 0.2
    done
    [ "$up" = 1 ] || die "$bin did not start under valgrind, see $file.log"
    h2load --h1 -n 1 -c 1 "${extra[@]}" "$url" >/dev/null
    h2load --h1 -n "$WARM" -c 4 "${extra[@]}" "$url" >/dev/null
    if [ "$more" -gt 0 ]; then
        h2load --h1 -n "$more" -c 4 "${extra[@]}" "$url" >"$file.h2load"
        grep -q "status codes: $more 2xx" "$file.h2load" || die "not every hit was a 2xx, see $file.h2load"
    fi
    kill -TERM "$proxy"
    wait "$proxy" || true
    awk '/^(summary|totals):/ { print $2; exit }' "$file"
}

printf '| build | method | instructions per hit |\n|---|---|---|\n'
for bin in "$@"; do
    name="$(basename "$bin")"
    for method in $METHODS; do
        base="$(instructions "$bin" "$method" "$name" 0)"
        more="$(instructions "$bin" "$method" "$name" "$HITS")"
        printf '| %s | %s | %d |\n' "$name" "$method" "$(((more - base) / HITS))"
    done
done
