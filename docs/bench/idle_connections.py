#!/usr/bin/env python3
"""Idle keep-alive connections and the proxy's RSS (issue 10's connection figure).

Starts a tiny origin, starts dashcache in front of it, opens N keep-alive
connections that each make one request (a cache hit after the first) and then
stay idle, and reports the proxy's RSS: at rest, with N idle connections, and
after they close; then checks that a hit is still served while they are open.

    ulimit -n 20000
    python3 docs/bench/idle_connections.py target/release/dashcache 10000
    python3 docs/bench/idle_connections.py target/release/dashcache 10000 silent

Loopback only; bounded in count and time.
"""

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REQUEST = b"GET /api/filter-options HTTP/1.1\r\nHost: proxy\r\n\r\n"


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b'{"regions":["North","South"]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def read_answer(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return head.split(b" ")[1]


async def one(port, request=True):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if not request:
        return reader, writer
    writer.write(REQUEST)
    status = await read_answer(reader)
    assert status == b"200", status
    return reader, writer


async def main(binary, count, request):
    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    port = free_port()
    proxy = subprocess.Popen(
        [
            binary,
            "--listen", f"127.0.0.1:{port}",
            "--upstream", f"http://127.0.0.1:{origin.server_port}",
            "--max-connections", str(count + 100),
            "--header-read-timeout", "600s",
            "--log-level", "warn",
        ]
    )
    try:
        for _ in range(100):
            try:
                reader, writer = await one(port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        at_rest = rss_kib(proxy.pid)
        connections = []
        started = time.monotonic()
        for start in range(0, count, 500):
            batch = await asyncio.gather(
                *(one(port, request) for _ in range(start, min(count, start + 500)))
            )
            connections.extend(batch)
        opened = time.monotonic() - started
        await asyncio.sleep(2)
        held = rss_kib(proxy.pid)
        reader, writer = await one(port)
        probe_started = time.monotonic()
        writer.write(REQUEST)
        await read_answer(reader)
        probe_ms = (time.monotonic() - probe_started) * 1000
        writer.close()
        for _, w in connections:
            w.close()
        await asyncio.sleep(3)
        closed = rss_kib(proxy.pid)
        per = (held - at_rest) * 1024 / count
        what = "one hit each" if request else "no request sent"
        print(f"connections: {count} (opened in {opened:.1f} s, {what})")
        print(f"rss at rest:      {at_rest} KiB")
        print(f"rss {count} idle: {held} KiB  (+{held - at_rest} KiB, {per:.0f} bytes/connection)")
        print(f"rss after close:  {closed} KiB  (+{closed - at_rest} KiB over rest)")
        print(f"hit while held:   200 in {probe_ms:.2f} ms")
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
        origin.shutdown()


if __name__ == "__main__":
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/dashcache"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    # "silent": connections that never send a request (the cost before hyper's buffers).
    request = not (len(sys.argv) > 3 and sys.argv[3] == "silent")
    asyncio.run(main(os.path.abspath(binary), count, request))
