#!/usr/bin/env bash
# bench/scale.sh - reproduces the scale, idle-connection, HTTP/2 and miss
# figures of docs/performance.md (issue 10), on loopback only. The hit
# throughput side by side with nginx and Varnish is ../shared/bench/compare.sh
# (see docs/performance.md, "Reproducing the figures").
#
# Build first (this script builds nothing of dashcache itself unless BUILD=1):
#   cargo build --release --bin dashcache --example scale --example probe
#   bench/scale.sh                              # every section, ~4 minutes
#   SECTIONS="h2 miss" bench/scale.sh           # some sections
#
# Sections (SECTIONS, default "scale idle h2 miss"):
#   scale  examples/scale.rs at each size of SCALE_SIZES (its own origin and
#          proxy): fill, admin call latencies, hit p50/p99 on random stored
#          keys, invalidate 1 %, refresh, clear and the hits after it, RSS.
#          Outputs side by side, then the hit p50/p99 ratio of the largest
#          size to the smallest: in the largest size's own run, where a
#          second proxy holding the smallest size is timed in turn with it
#          (SCALE_REFERENCE), and across the two runs. About 10 s at 1,000
#          and 2 min at 1,000,000 entries (1.5 GB of RSS).
#   idle   docs/bench/idle_connections.py with IDLE_CONNECTIONS idle
#          keep-alive connections (ulimit -n raised): RSS per connection.
#   h2     cache hits on one warm key with h2load, dashcache against nginx
#          (proxy_cache, http2, NGINX_WORKERS workers), same origin and body:
#          HTTP/1.1 and HTTP/2 prior knowledge in clear text, HTTP/1.1 and
#          HTTP/2 over TLS (ALPN; a throwaway self-signed certificate).
#          req/s, mean latency, and the server's CPU per request (its whole
#          process group: nginx's master and workers).
#   miss   examples/probe.rs: the miss overhead (MISS_N sequential GETs on
#          distinct keys through dashcache and nginx against the origin
#          directly, origin delay 0) and coalescing (COALESCE_N identical
#          cold GETs at once, origin delay COALESCE_DELAY_MS).
#
# The h2 and miss sections use bench-origin, the origin of compare.sh: it is
# built from $SHARED_BENCH/origin into $BENCH_WORK/target when ORIGIN_BIN is
# not there yet.
#
# Environment (defaults in brackets):
#   SECTIONS            sections to run ["scale idle h2 miss"]
#   BENCH_WORK          results and builds [target/bench]; each run writes
#                       $BENCH_WORK/scale-<time>/results.md (+ logs/) and a
#                       copy to $BENCH_WORK/scale-results.md
#   BUILD               1 = run the cargo build line above first [0]
#   BIN                 the proxy [target/release/dashcache]
#   EXAMPLES            where the scale and probe examples are [target/release/examples]
#   DASHCACHE_ARGS      extra dashcache flags for h2 and miss
#                       ["--maxsize 10000 --log-level warn", as compare.sh]
#   SCALE_SIZES         entry counts for the scale section ["1000 1000000"]
#   SCALE_TIMEOUT       seconds one scale run may take [900]
#   (the scale example also reads SCALE_HITS, SCALE_HIT_CONNECTIONS,
#    SCALE_CLEAR_WINDOW_MS, SCALE_CONCURRENCY, SCALE_MAX_BYTES: examples/scale.rs)
#   IDLE_CONNECTIONS    idle keep-alive connections [10000]
#   SHARED_BENCH        compare.sh's folder, for bench-origin [../shared/bench]
#   ORIGIN_BIN          a built bench-origin [$BENCH_WORK/target/release/bench-origin]
#   BODY_BYTES          origin body size [20480, as compare.sh]
#   BASE_PORT           first of six loopback ports [18180]: origin, nginx
#                       HTTP/1.1, nginx h2c, dashcache, dashcache TLS, nginx TLS
#   NGINX_WORKERS       nginx worker_processes [2, compare.sh's "auto" on 2 cores]
#   H2_TARGETS          ["dashcache nginx"]
#   H2_MODES            ["h1 h2c h1-tls h2-tls"]
#   H2_DURATION         seconds per h2load run [8]
#   H2_CLIENTS          h2load -c [64]
#   H2_STREAMS          h2load -m for HTTP/2 (HTTP/1.1 runs use -m 1) [10]
#   H2_THREADS          h2load -t [2]
#   MISS_N              sequential misses per path [2000]
#   COALESCE_N          identical cold requests [200]
#   COALESCE_DELAY_MS   origin delay during the burst [2000]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECTIONS="${SECTIONS:-scale idle h2 miss}"
WORK="$(realpath -m "${BENCH_WORK:-$REPO/target/bench}")"
BUILD="${BUILD:-0}"
BIN="$(realpath -m "${BIN:-$REPO/target/release/dashcache}")"
EXAMPLES="$(realpath -m "${EXAMPLES:-$REPO/target/release/examples}")"
DASHCACHE_ARGS="${DASHCACHE_ARGS:---maxsize 10000 --log-level warn}"
SCALE_SIZES="${SCALE_SIZES:-1000 1000000}"
SCALE_TIMEOUT="${SCALE_TIMEOUT:-900}"
IDLE_CONNECTIONS="${IDLE_CONNECTIONS:-10000}"
SHARED_BENCH="$(realpath -m "${SHARED_BENCH:-$REPO/../shared/bench}")"
ORIGIN_BIN="$(realpath -m "${ORIGIN_BIN:-$WORK/target/release/bench-origin}")"
BODY_BYTES="${BODY_BYTES:-20480}"
BASE_PORT="${BASE_PORT:-18180}"
NGINX_WORKERS="${NGINX_WORKERS:-2}"
H2_TARGETS="${H2_TARGETS:-dashcache nginx}"
H2_MODES="${H2_MODES:-h1 h2c h1-tls h2-tls}"
H2_DURATION="${H2_DURATION:-8}"
H2_CLIENTS="${H2_CLIENTS:-64}"
H2_STREAMS="${H2_STREAMS:-10}"
H2_THREADS="${H2_THREADS:-2}"
MISS_N="${MISS_N:-2000}"
COALESCE_N="${COALESCE_N:-200}"
COALESCE_DELAY_MS="${COALESCE_DELAY_MS:-2000}"

ORIGIN_PORT="$BASE_PORT"
NGINX_PORT=$((BASE_PORT + 1))
NGINX_H2C_PORT=$((BASE_PORT + 2))
DASH_PORT=$((BASE_PORT + 3))
DASH_TLS_PORT=$((BASE_PORT + 4))
NGINX_TLS_PORT=$((BASE_PORT + 5))
ORIGIN="http://127.0.0.1:$ORIGIN_PORT"
HIT_PATH="/api/dashboards/ops-overview/panels/latency?range=7d&region=eu-west-1"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

RUN_ID="$(date +%Y%m%d-%H%M%S)"
RUN_DIR="$WORK/scale-$RUN_ID"
LOG_DIR="$RUN_DIR/logs"
RESULTS="$RUN_DIR/results.md"
mkdir -p "$LOG_DIR"
: >"$RESULTS"

PIDS=()         # process-group leaders started here, stopped at exit
declare -A PGID # server name -> process group (for CPU time)
SCRATCH=""

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# say LINE...: the report, on stdout and in the results file
say() { printf '%s\n' "$@" | tee -a "$RESULTS"; }

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM -- "-${PIDS[$i]}" 2>/dev/null || kill -TERM "${PIDS[$i]}" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$SCRATCH" ] && [ -d "$SCRATCH" ]; then rm -rf -- "$SCRATCH"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted; processes stopped"; exit 130' INT TERM

has_section() { case " $SECTIONS " in *" $1 "*) return 0 ;; esac; return 1; }
need() { command -v "$1" >/dev/null || die "missing command: $1 ($2)"; }
load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

# start_bg NAME CMD...: CMD in its own process group, output to logs/NAME.log
start_bg() {
    local name="$1"
    shift
    setsid "$@" >"$LOG_DIR/$name.log" 2>&1 &
    PIDS+=($!)
    PGID[$name]=$!
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # wait_port NAME PORT: up to 30 s while the process lives
    local n=300
    while ((n-- > 0)); do
        port_open "$2" && return 0
        kill -0 "${PGID[$1]}" 2>/dev/null || die "$1 exited, see $LOG_DIR/$1.log"
        sleep 0.1
    done
    die "$1 is not listening on port $2 after 30 s, see $LOG_DIR/$1.log"
}

# CPU time (clock ticks) used so far by every process of process group $1
group_cpu_ticks() {
    cat /proc/[0-9]*/stat 2>/dev/null |
        awk -v g="$1" '{ sub(/^.*\) /, ""); if ($3 == g) s += $12 + $13 } END { print s + 0 }'
}
HZ="$(getconf CLK_TCK 2>/dev/null || echo 100)"

origin_count() { curl -sS --max-time 5 "$ORIGIN/__origin/count" | tr -dc '0-9'; }

# ------------------------------------------------------------- preflight
if [ "$BUILD" = 1 ]; then
    log "cargo build --release --bin dashcache --example scale --example probe"
    (cd "$REPO" && cargo build --release --bin dashcache --example scale --example probe)
fi
for s in $SECTIONS; do
    case "$s" in scale | idle | h2 | miss) ;; *) die "unknown section $s (scale idle h2 miss)" ;; esac
done
[ -x "$BIN" ] || die "$BIN missing: cargo build --release --bin dashcache --example scale --example probe (or BUILD=1)"
need curl "apt-get install curl"
need setsid "util-linux"
need timeout "coreutils"

say "# dashcache: scale, idle connections, HTTP/2 and misses ($RUN_ID)" ""
say "- commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' (with local changes)'); binary $BIN"
say "- $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); kernel $(uname -r)"
say "- load average at start: $(load_avg); sections: $SECTIONS"

# -------------------------------------------------------------- servers
# Origin, nginx and dashcache for the h2 and miss sections, started once.
SERVERS_UP=0
start_servers() {
    [ "$SERVERS_UP" = 1 ] && return 0
    SERVERS_UP=1
    need nginx "apt-get install nginx"
    need openssl "apt-get install openssl"
    for p in "$ORIGIN_PORT" "$NGINX_PORT" "$NGINX_H2C_PORT" "$DASH_PORT" "$DASH_TLS_PORT" "$NGINX_TLS_PORT"; do
        port_open "$p" && die "port $p is already in use (set BASE_PORT)"
    done
    if [ ! -x "$ORIGIN_BIN" ]; then
        [ -f "$SHARED_BENCH/origin/Cargo.toml" ] ||
            die "no bench-origin: set ORIGIN_BIN, or SHARED_BENCH to compare.sh's folder"
        log "building bench-origin into $WORK/target"
        cargo build --release --quiet --manifest-path "$SHARED_BENCH/origin/Cargo.toml" \
            --target-dir "$WORK/target" >"$LOG_DIR/origin-build.log" 2>&1 ||
            die "bench-origin build failed, see $LOG_DIR/origin-build.log"
        ORIGIN_BIN="$WORK/target/release/bench-origin"
    fi
    local shm=/dev/shm
    [ -d "$shm" ] && [ -w "$shm" ] || shm="$RUN_DIR"
    SCRATCH="$(mktemp -d "$shm/dashcache-scale.XXXXXX")"
    chmod 755 "$SCRATCH" # nginx workers run as an unprivileged user

    # A throwaway self-signed certificate for 127.0.0.1 (both servers use it).
    CERT="$RUN_DIR/tls-cert.pem"
    KEY="$RUN_DIR/tls-key.pem"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -keyout "$KEY" -out "$CERT" >"$LOG_DIR/openssl.log" 2>&1 || die "openssl failed, see $LOG_DIR/openssl.log"

    start_bg origin "$ORIGIN_BIN" --listen "127.0.0.1:$ORIGIN_PORT" --delay-ms 0 --body-bytes "$BODY_BYTES"
    wait_port origin "$ORIGIN_PORT"

    # nginx: compare.sh's anchor (anchors/nginx.conf.in), plus an h2c and a
    # TLS server on their own ports. Before 1.25.1 HTTP/2 is a `listen`
    # parameter; from 1.25.1 it is `http2 on`.
    local version h2c_listen tls_listen
    version="$(nginx -v 2>&1 | sed 's/.*nginx\///; s/ .*//')"
    if [ "$(printf '%s\n' "$version" 1.25.1 | sort -V | head -1)" = 1.25.1 ]; then
        h2c_listen="listen 127.0.0.1:$NGINX_H2C_PORT backlog=4096; http2 on;"
        tls_listen="listen 127.0.0.1:$NGINX_TLS_PORT ssl backlog=4096; http2 on;"
    else
        h2c_listen="listen 127.0.0.1:$NGINX_H2C_PORT http2 backlog=4096;"
        tls_listen="listen 127.0.0.1:$NGINX_TLS_PORT ssl http2 backlog=4096;"
    fi
    local location="
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering on;
            proxy_buffers 16 16k;
            proxy_cache dash;
            proxy_cache_methods GET HEAD POST;
            proxy_cache_key \"\$request_method|\$scheme://\$host\$request_uri|\$request_body\";
            proxy_cache_valid 200 4h;
            proxy_ignore_headers Cache-Control Expires Set-Cookie Vary X-Accel-Expires;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 30s;
            proxy_cache_lock_age 30s;
            add_header X-Cache-Status \$upstream_cache_status always;
        }"
    mkdir -p "$RUN_DIR/nginx" "$SCRATCH/nginx"
    cat >"$RUN_DIR/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
worker_rlimit_nofile 65536;
pid $RUN_DIR/nginx/nginx.pid;
error_log $RUN_DIR/nginx/nginx-error.log warn;
daemon off;
events { worker_connections 16384; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    client_body_temp_path $SCRATCH/nginx/client_body;
    proxy_temp_path       $SCRATCH/nginx/proxy_temp;
    fastcgi_temp_path     $SCRATCH/nginx/fastcgi_temp;
    uwsgi_temp_path       $SCRATCH/nginx/uwsgi_temp;
    scgi_temp_path        $SCRATCH/nginx/scgi_temp;
    client_body_buffer_size 256k;
    client_max_body_size 256k;
    client_body_in_single_buffer on;
    proxy_cache_path $SCRATCH/nginx/cache levels=1:2 keys_zone=dash:64m
                     max_size=4g inactive=4h use_temp_path=off;
    ssl_certificate     $CERT;
    ssl_certificate_key $KEY;
    ssl_session_cache   shared:SSL:10m;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 256;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
$location
    }
    server {
        $h2c_listen
$location
    }
    server {
        $tls_listen
$location
    }
}
EOF
    start_bg nginx nginx -p "$RUN_DIR/nginx" -c "$RUN_DIR/nginx.conf" -e "$RUN_DIR/nginx/nginx-error.log"
    wait_port nginx "$NGINX_PORT"
    NGINX_VERSION="$version"

    # dashcache: one port for HTTP/1.1 and h2c; with a certificate it serves
    # HTTPS only, so TLS is a second instance.
    # shellcheck disable=SC2086 # DASHCACHE_ARGS is a list of flags
    start_bg dashcache "$BIN" --listen "127.0.0.1:$DASH_PORT" --upstream "$ORIGIN" $DASHCACHE_ARGS
    # shellcheck disable=SC2086
    start_bg dashcache-tls "$BIN" --listen "127.0.0.1:$DASH_TLS_PORT" --upstream "$ORIGIN" \
        --tls-cert "$CERT" --tls-key "$KEY" $DASHCACHE_ARGS
    wait_port dashcache "$DASH_PORT"
    wait_port dashcache-tls "$DASH_TLS_PORT"
    log "servers up: origin :$ORIGIN_PORT, nginx $version :$NGINX_PORT/:$NGINX_H2C_PORT/:$NGINX_TLS_PORT (tls), dashcache :$DASH_PORT/:$DASH_TLS_PORT (tls)"
}

# ---------------------------------------------------------------- scale
if has_section scale; then
    [ -x "$EXAMPLES/scale" ] || die "$EXAMPLES/scale missing: cargo build --release --bin dashcache --example scale --example probe"
    say "" "## Scale (examples/scale.rs)" ""
    sizes=()
    read -r -a all_sizes <<<"$SCALE_SIZES"
    first="${all_sizes[0]}"
    last="${all_sizes[${#all_sizes[@]} - 1]}"
    for n in "${all_sizes[@]}"; do
        log "scale: $n entries (load average $(load_avg))"
        say "- $n entries: load average before $(load_avg)"
        reference=0
        [ "$n" = "$last" ] && [ "$n" != "$first" ] && reference="$first"
        (cd "$REPO" && SCALE_ENTRIES="$n" SCALE_REFERENCE="$reference" SCALE_BIN="$BIN" timeout "$SCALE_TIMEOUT" "$EXAMPLES/scale") \
            >"$RUN_DIR/scale-$n.txt" 2>"$LOG_DIR/scale-$n.log" ||
            die "scale probe at $n entries failed, see $LOG_DIR/scale-$n.log"
        sizes+=("$n")
    done
    say ""
    header="| line |"
    rule="|---|"
    for n in "${sizes[@]}"; do header="$header $n entries |"; rule="$rule---|"; done
    say "$header" "$rule"
    # The reference store's lines (the largest size's run only) stay out of
    # the table, so its rows line up.
    own() { grep -v -e "random stored keys, $first entries:.*the stores in turn" -e 'in the same run' "$RUN_DIR/scale-$1.txt"; }
    lines=$(own "${sizes[0]}" | wc -l)
    for ((i = 1; i <= lines; i++)); do
        row="| $i |"
        for n in "${sizes[@]}"; do row="$row $(own "$n" | sed -n "${i}p") |"; done
        say "$row"
    done
    if [ "$first" != "$last" ]; then
        hit() { grep -m1 '^hit latency, random stored keys' "$RUN_DIR/scale-$1.txt" | sed -n "s/.* $2 \([0-9.]*\) ms.*/\1/p"; }
        say "" "Hit latency on random stored keys, $last entries against $first (target: within 10 %)." \
            "In one run, the two stores timed in turn (the figure to go by):" ""
        say "- $(grep -m1 'in the same run' "$RUN_DIR/scale-$last.txt" || echo 'missing')"
        say "" "Across the two runs (minutes apart, so the host's noise differs):" ""
        for p in p50 p99; do
            a="$(hit "$first" "$p")"
            b="$(hit "$last" "$p")"
            say "- $p: $a ms at $first, $b ms at $last: $(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0) printf "%.2fx", b / a; else print "n/a" }')"
        done
    fi
fi

# ----------------------------------------------------------------- idle
if has_section idle; then
    need python3 "apt-get install python3"
    say "" "## Idle keep-alive connections (docs/bench/idle_connections.py)" ""
    log "idle: $IDLE_CONNECTIONS connections (load average $(load_avg))"
    say "load average before: $(load_avg)" "" '```text'
    (
        ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
        ((IDLE_CONNECTIONS + 100 <= $(ulimit -n))) || {
            echo "ulimit -n is $(ulimit -n): too low for $IDLE_CONNECTIONS connections" >&2
            exit 1
        }
        cd "$REPO" && timeout 300 python3 docs/bench/idle_connections.py "$BIN" "$IDLE_CONNECTIONS"
    ) >"$RUN_DIR/idle.txt" 2>"$LOG_DIR/idle.log" || die "idle connections failed, see $LOG_DIR/idle.log"
    say "$(cat "$RUN_DIR/idle.txt")" '```'
fi

# ------------------------------------------------------------------- h2
# h2run TARGET MODE: one h2load run; prints a table row
h2run() {
    local target="$1" mode="$2" url args proto out k0 k1 c0 c1 rps ok failed mean cpu group
    case "$target/$mode" in
        dashcache/h1 | dashcache/h2c) url="http://127.0.0.1:$DASH_PORT$HIT_PATH" group=dashcache ;;
        dashcache/h1-tls | dashcache/h2-tls) url="https://127.0.0.1:$DASH_TLS_PORT$HIT_PATH" group=dashcache-tls ;;
        nginx/h1) url="http://127.0.0.1:$NGINX_PORT$HIT_PATH" group=nginx ;;
        nginx/h2c) url="http://127.0.0.1:$NGINX_H2C_PORT$HIT_PATH" group=nginx ;;
        nginx/h1-tls | nginx/h2-tls) url="https://127.0.0.1:$NGINX_TLS_PORT$HIT_PATH" group=nginx ;;
        *) die "unknown h2 target/mode $target/$mode" ;;
    esac
    args=(-c "$H2_CLIENTS" -t "$H2_THREADS" -D "$H2_DURATION")
    case "$mode" in
        h1 | h1-tls) args+=(--h1 -m 1) ;;
        *) args+=(-m "$H2_STREAMS") ;;
    esac
    out="$LOG_DIR/h2load-$target-$mode.txt"
    c0=$(origin_count)
    k0=$(group_cpu_ticks "${PGID[$group]}")
    timeout $((H2_DURATION + 60)) h2load "${args[@]}" "$url" >"$out" 2>&1 || log "h2load $target $mode exited non-zero, see $out"
    k1=$(group_cpu_ticks "${PGID[$group]}")
    c1=$(origin_count)
    proto="$(sed -n 's/^Application protocol: *//p' "$out" | head -1)"
    rps="$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$out")"
    ok="$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$out")"
    failed="$(sed -n 's/^requests: .* succeeded, \([0-9]*\) failed, \([0-9]*\) errored.*/\1+\2/p' "$out")"
    mean="$(awk '/^time for request:/ { print $6 }' "$out")"
    cpu="$(awk -v t=$((k1 - k0)) -v hz="$HZ" -v n="${ok:-0}" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "n/a" }')"
    say "| $mode | $target | ${proto:-?} | ${rps:-n/a} | ${mean:-n/a} | ${ok:-0} | ${failed:-?} | $cpu | $((c1 - c0)) |"
}

if has_section h2; then
    need h2load "apt-get install nghttp2-client"
    start_servers
    # Warm the key on every server (nginx keys by scheme: http and https apart).
    for u in "http://127.0.0.1:$DASH_PORT" "http://127.0.0.1:$NGINX_PORT" \
        "https://127.0.0.1:$DASH_TLS_PORT" "https://127.0.0.1:$NGINX_TLS_PORT"; do
        for _ in 1 2; do
            s="$(curl -sk --max-time 10 -o /dev/null -w '%{http_code}' "$u$HIT_PATH" || true)"
            [ "$s" = 200 ] || die "warming $u$HIT_PATH answered $s"
        done
    done
    say "" "## Cache hits over HTTP/1.1 and HTTP/2 (h2load)" ""
    say "One warm key, ${BODY_BYTES}-byte body; h2load -c $H2_CLIENTS -t $H2_THREADS -D $H2_DURATION, -m $H2_STREAMS for HTTP/2 and -m 1 (no pipelining) for HTTP/1.1;"
    say "nginx $NGINX_VERSION with $NGINX_WORKERS workers, proxy_cache, access_log off; dashcache $DASHCACHE_ARGS."
    say "CPU = the server's process group (nginx: master and workers) per successful request; origin = requests that reached the origin during the run (0: all hits)."
    say "Load average before: $(load_avg)" ""
    say "| mode | target | protocol | req/s | mean latency | succeeded | failed+errored | server CPU µs/req | origin |"
    say "|---|---|---|---|---|---|---|---|---|"
    for mode in $H2_MODES; do
        for target in $H2_TARGETS; do
            log "h2: $target $mode (${H2_DURATION}s, load average $(load_avg))"
            h2run "$target" "$mode"
        done
    done
    say "" "Load average after: $(load_avg)"
fi

# ----------------------------------------------------------------- miss
if has_section miss; then
    [ -x "$EXAMPLES/probe" ] || die "$EXAMPLES/probe missing: cargo build --release --bin dashcache --example scale --example probe"
    start_servers
    say "" "## Miss overhead and coalescing (examples/probe.rs)" ""
    say "dashcache $DASHCACHE_ARGS; nginx $NGINX_VERSION as in the h2 section; ${BODY_BYTES}-byte body. Load average before: $(load_avg)" ""
    log "miss: $MISS_N sequential misses per path (load average $(load_avg))"
    timeout 300 "$EXAMPLES/probe" miss --origin "$ORIGIN" --n "$MISS_N" \
        --target "dashcache=http://127.0.0.1:$DASH_PORT" --target "nginx=http://127.0.0.1:$NGINX_PORT" \
        >"$RUN_DIR/miss.txt" 2>"$LOG_DIR/miss.log" || die "miss probe failed, see $LOG_DIR/miss.log"
    say "$(cat "$RUN_DIR/miss.txt")" ""
    log "coalesce: $COALESCE_N identical cold requests, origin delay ${COALESCE_DELAY_MS}ms"
    timeout 300 "$EXAMPLES/probe" coalesce --origin "$ORIGIN" --n "$COALESCE_N" --delay-ms "$COALESCE_DELAY_MS" \
        --target "dashcache=http://127.0.0.1:$DASH_PORT" --target "nginx=http://127.0.0.1:$NGINX_PORT" \
        >"$RUN_DIR/coalesce.txt" 2>"$LOG_DIR/coalesce.log" || die "coalesce probe failed, see $LOG_DIR/coalesce.log"
    say "$(cat "$RUN_DIR/coalesce.txt")" "" "Load average after: $(load_avg)"
fi

cp "$RESULTS" "$WORK/scale-results.md"
log "results: $RESULTS (copy: $WORK/scale-results.md); logs: $LOG_DIR"
