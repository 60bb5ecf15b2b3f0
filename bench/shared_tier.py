#!/usr/bin/env python3
"""Measures the shared Redis tier (docs/scaling.md, "Measured").

Run through bench/shared-tier.sh. Starts its own redis-server, a counting
origin and three dashcache processes on free loopback ports, stops them by
PID, and prints a Markdown report:

1. L1 hit req/s with Redis configured vs without (wrk, same run, interleaved);
2. L2 hit latency, L1 cold (a replica that never saw the keys), p50/p99;
3. a dashboard replay: hundreds of users, Zipf-distributed filters, requests
   spread round-robin over two replicas: backend queries vs distinct keys;
4. invalidate over 100,000 shared entries: elapsed, keys_deleted, and the
   slowest hit answered on another replica meanwhile.
"""

import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIN = os.environ.get("BIN", "target/release/dashcache")
DURATION = int(os.environ.get("DURATION", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
USERS = int(os.environ.get("USERS", "300"))
REQUESTS_PER_USER = int(os.environ.get("REQUESTS_PER_USER", "30"))
INVALIDATE_ENTRIES = int(os.environ.get("INVALIDATE_ENTRIES", "100000"))
ORIGIN_DELAY = float(os.environ.get("ORIGIN_DELAY_MS", "200")) / 1000
BODY = json.dumps({"rows": [{"i": i, "v": "x" * 180} for i in range(100)]}).encode()  # ~20 KB

children = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- origin

class Origin(BaseHTTPRequestHandler):
    count = 0
    lock = threading.Lock()
    delay = 0.0
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if self.path == "/__count":
            body = str(Origin.count).encode()
        else:
            with Origin.lock:
                Origin.count += 1
            if Origin.delay:
                time.sleep(Origin.delay)
            body = BODY
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = answer
    do_POST = answer


def start_origin():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Origin)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


# ---------------------------------------------------------------- processes

def spawn(args, wait_port=None):
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children.append(child)
    if wait_port:
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", wait_port), timeout=0.2).close()
                return child
            except OSError:
                time.sleep(0.05)
        sys.exit(f"nothing listening on {wait_port}: {args}")
    return child


def dashcache(origin_port, redis_url=None):
    port = free_port()
    args = [BIN, "--config", "proxy.toml", "--listen", f"127.0.0.1:{port}",
            "--upstream", f"http://127.0.0.1:{origin_port}", "--maxsize", "200000",
            "--max-bytes", "4GiB", "--log-level", "warn"]
    if redis_url:
        args += ["--redis-url", redis_url]
    spawn(args, port)
    if redis_url:
        deadline = time.time() + 10
        while time.time() < deadline:
            stats = get_json(port, "/api/cache/stats")["cache"]
            if stats.get("redis", {}).get("state") == "up" and stats["redis"]["listening"]:
                break
            time.sleep(0.05)
    return port


# ---------------------------------------------------------------- clients

def request(conn, method, path, body=None):
    headers = {"content-type": "application/json"} if body else {}
    started = time.perf_counter()
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, response.getheader("x-cache"), data, time.perf_counter() - started


def get_json(port, path, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    status, _, data, _ = request(conn, method, path)
    conn.close()
    return json.loads(data)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def wrk(port):
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write('wrk.method = "POST"\nwrk.body = \'{"org":"Vale"}\'\n'
                 'wrk.headers["Content-Type"] = "application/json"\n')
    script.close()
    url = f"http://127.0.0.1:{port}/api/metrics"
    request(http.client.HTTPConnection("127.0.0.1", port), "POST", "/api/metrics", b'{"org":"Vale"}')
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{DURATION}s", "-s", script.name, url],
                         capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    sys.exit(f"no Requests/sec in wrk output:\n{out}")


# ---------------------------------------------------------------- measures

def l1_throughput(plain, tiered):
    rows = []
    for _ in range(ROUNDS):
        rows.append((wrk(plain), wrk(tiered)))
    return rows


def l2_latency(writer, reader, keys=2000):
    conn = http.client.HTTPConnection("127.0.0.1", writer, timeout=30)
    bodies = [json.dumps({"org": f"l2-{i}"}).encode() for i in range(keys)]
    for body in bodies:
        request(conn, "POST", "/api/metrics", body)
    conn = http.client.HTTPConnection("127.0.0.1", reader, timeout=30)
    l2, l1, labels = [], [], {}
    for body in bodies:
        _, cache, _, elapsed = request(conn, "POST", "/api/metrics", body)
        labels[cache] = labels.get(cache, 0) + 1
        l2.append(elapsed)
    for body in bodies:
        _, _, _, elapsed = request(conn, "POST", "/api/metrics", body)
        l1.append(elapsed)
    server = get_json(reader, "/api/cache/stats")["cache"]["redis"]["avg_l2_ms"]
    return l2, l1, labels, server


def replay(ports):
    before = Origin.count
    Origin.delay = ORIGIN_DELAY
    orgs = [f"org-{i}" for i in range(1000)]
    weights = [1 / (i + 1) ** 1.1 for i in range(len(orgs))]
    routes = ["/api/metrics", "/api/actions", "/api/filter-options"]
    keys, lock, errors, counter = set(), threading.Lock(), [0], [0]

    def user(seed):
        rng = random.Random(seed)
        conns = {p: http.client.HTTPConnection("127.0.0.1", p, timeout=60) for p in ports}
        for _ in range(REQUESTS_PER_USER):
            route = rng.choice(routes)
            org = rng.choices(orgs, weights)[0]
            with lock:
                counter[0] += 1
                port = ports[counter[0] % len(ports)]
            if route == "/api/filter-options":
                path, body, key = f"{route}?org={org}", None, ("GET", route, org)
                status, _, _, _ = request(conns[port], "GET", path)
            else:
                body = json.dumps({"org": org, "period": "2026-Q4"}).encode()
                key = ("POST", route, org)
                status, _, _, _ = request(conns[port], "POST", route, body)
            with lock:
                keys.add(key)
                if status != 200:
                    errors[0] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=user, args=(i,)) for i in range(USERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    Origin.delay = 0
    return (USERS * REQUESTS_PER_USER, len(keys), Origin.count - before, errors[0],
            time.perf_counter() - started)


def invalidate_100k(redis_port, admin_port, hit_port):
    expiry = int(time.time() * 1000) + 3_600_000
    lines = []
    for i in range(INVALIDATE_ENTRIES):
        hexkey = f"{i:032x}"
        desc = f'get_metrics POST /api/metrics {{"org":"bulk-{i}"}}'
        lines.append(f"SET dashcache:entry:{{{hexkey}}} x PX 3600000")
        lines.append(f"HSET dashcache:index:{{dashcache}} {hexkey} \"{expiry} {desc.replace(chr(34), chr(92) + chr(34))}\"")
    subprocess.run(["redis-cli", "-p", str(redis_port)], input="\n".join(lines) + "\n",
                   text=True, capture_output=True, check=True)
    stop, slowest, hits = threading.Event(), [0.0], [0]
    conn = http.client.HTTPConnection("127.0.0.1", hit_port, timeout=30)
    request(conn, "POST", "/api/metrics", b'{"org":"Vale"}')

    def hitter():
        while not stop.is_set():
            _, cache, _, elapsed = request(conn, "POST", "/api/metrics", b'{"org":"Vale"}')
            hits[0] += 1
            slowest[0] = max(slowest[0], elapsed)

    thread = threading.Thread(target=hitter)
    thread.start()
    time.sleep(0.2)
    started = time.perf_counter()
    answer = get_json(admin_port, "/api/cache/invalidate?pattern=bulk-", "POST")
    elapsed = time.perf_counter() - started
    stop.set()
    thread.join()
    return answer["keys_deleted"], elapsed, hits[0], slowest[0]


def main():
    origin_port = start_origin()
    redis_port = free_port()
    spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--maxmemory", "2gb", "--maxmemory-policy", "volatile-lru"],
          redis_port)
    redis_url = f"redis://127.0.0.1:{redis_port}"
    plain = dashcache(origin_port)
    a = dashcache(origin_port, redis_url)
    b = dashcache(origin_port, redis_url)
    nproc = os.cpu_count()
    print(f"# Shared tier, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(f"- machine: {nproc} CPUs; redis-server "
          f"{subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]};"
          f" origin body {len(BODY)} B; wrk -t2 -c64 -d{DURATION}s\n")

    rows = l1_throughput(plain, a)
    print("## 1. L1 hit throughput (one hot POST key)\n")
    print("| round | without Redis req/s | with Redis req/s | ratio |\n|---|---|---|---|")
    for i, (p, t) in enumerate(rows, 1):
        print(f"| {i} | {p:,.0f} | {t:,.0f} | {t / p:.3f} |")
    mean = sum(t for _, t in rows) / sum(p for p, _ in rows)
    print(f"\nMean ratio with/without: **{mean:.3f}**\n")

    l2, l1, labels, server = l2_latency(a, b)
    print("## 2. L2 hit latency (L1 cold: a replica that never saw the 2,000 keys)\n")
    print("| lookup | p50 ms | p99 ms |\n|---|---|---|")
    print(f"| L2 hit (first request on replica B) | {percentile(l2, .5) * 1000:.3f} | {percentile(l2, .99) * 1000:.3f} |")
    print(f"| L1 hit (same keys again on B) | {percentile(l1, .5) * 1000:.3f} | {percentile(l1, .99) * 1000:.3f} |")
    print(f"\nX-Cache of the first requests on B: {labels} (a MISS: that lookup ran past the Redis budget);"
          f" server-side mean Redis call: {server} ms"
          " (end-to-end times include the Python client)\n")

    get_json(a, "/api/cache/clear", "POST")
    total, distinct, origin, errors, elapsed = replay([a, b])
    print(f"## 3. Dashboard replay ({USERS} users x {REQUESTS_PER_USER} requests, Zipf s=1.1 over 1,000 orgs"
          f" x 3 routes, round-robin over 2 replicas, origin {ORIGIN_DELAY * 1000:.0f} ms)\n")
    print("| requests | distinct keys | backend queries | non-200 | elapsed s |\n|---|---|---|---|---|")
    print(f"| {total:,} | {distinct:,} | {origin:,} | {errors} | {elapsed:.1f} |\n")

    deleted, took, hits, slowest = invalidate_100k(redis_port, b, a)
    print(f"## 4. invalidate over {INVALIDATE_ENTRIES:,} shared entries (sent to B, hits on A meanwhile)\n")
    print("| keys_deleted | elapsed s | hits on A during it | slowest hit ms |\n|---|---|---|---|")
    print(f"| {deleted:,} | {took:.2f} | {hits:,} | {slowest * 1000:.2f} |")


if __name__ == "__main__":
    try:
        main()
    finally:
        for child in children:
            child.kill()
            child.wait()
