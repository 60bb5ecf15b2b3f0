#!/usr/bin/env bash
# Measures the shared Redis tier and prints a Markdown report (the figures in
# docs/scaling.md). Needs redis-server, redis-cli, wrk and python3; starts and
# stops everything itself on free loopback ports.
#
#   cargo build --release && bench/shared-tier.sh
#   DURATION=5 USERS=100 INVALIDATE_ENTRIES=20000 bench/shared-tier.sh   # quicker
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for tool in redis-server redis-cli wrk python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is not installed" >&2; exit 1; }
done
[ -x "${BIN:-target/release/dashcache}" ] || { echo "bench: build first: cargo build --release" >&2; exit 1; }
exec python3 bench/shared_tier.py
