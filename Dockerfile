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
    && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin dashcache
COPY --from=builder /src/target/release/dashcache /usr/local/bin/dashcache
COPY proxy.toml /etc/dashcache/proxy.toml
USER dashcache
EXPOSE 8080
ENTRYPOINT ["dashcache"]
CMD ["--config", "/etc/dashcache/proxy.toml"]
