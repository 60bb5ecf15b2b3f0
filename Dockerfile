# dashcache container image.
#
#   docker build -t dashcache .
#   docker run --rm -p 8080:8080 \
#     -e DASHCACHE_UPSTREAM=http://dashboard-api:8000 \
#     -e CACHE_ADMIN_TOKEN=change-me \
#     dashcache
#
# Inside a container 127.0.0.1 is the container itself, so the default
# upstream (http://127.0.0.1:8000) is almost never right: set
# DASHCACHE_UPSTREAM to the backend's address as the container sees it.
# Set CACHE_ADMIN_TOKEN too: requests published through -p do not arrive from
# loopback, so without a token /api/cache/clear and /invalidate answer 403.
#
# The configuration file comes from DASHCACHE_CONFIG, so flags after the image
# name add to it. Docker's health check runs `dashcache --healthcheck`, which
# reads the same file and env vars (not those flags) to find the port: change
# listen / admin_listen with DASHCACHE_LISTEN / DASHCACHE_ADMIN_LISTEN or the
# file, not with flags. With TLS on, set admin_listen: the check speaks HTTP.
#
# The cache survives a restart: on SIGTERM it is written to
# /var/lib/dashcache/cache.snap (DASHCACHE_SNAPSHOT_FILE, on the declared
# volume) and read back at start. `docker stop` waits 10 s before SIGKILL;
# give it shutdown_timeout plus a little (`docker stop -t 40`, Compose
# `stop_grace_period: 40s`) or the snapshot may not be written.

# ---- build ----------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked

# ---- run ------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin dashcache \
    && install -d -o dashcache -g dashcache -m 0750 /var/lib/dashcache
COPY --from=builder /src/target/release/dashcache /usr/local/bin/dashcache
COPY proxy.toml /etc/dashcache/proxy.toml
USER dashcache
ENV DASHCACHE_CONFIG=/etc/dashcache/proxy.toml
ENV DASHCACHE_SNAPSHOT_FILE=/var/lib/dashcache/cache.snap
# A named volume starts with this directory's owner (dashcache); a bind
# mount must be writable by that user, or the start fails naming the setting.
VOLUME /var/lib/dashcache
EXPOSE 8080
# GET /api/cache/health through the binary itself (the image has no curl):
# healthy while the proxy answers, even with the upstream down (hits still
# work; the upstream's state is in the check's output, `docker inspect`).
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --retries=3 \
    CMD ["dashcache", "--healthcheck"]
ENTRYPOINT ["dashcache"]
