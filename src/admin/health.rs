//! `GET /api/cache/health`: liveness plus the upstream's reachability,
//! probed with a bounded TCP connect.

use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use serde::Serialize;
use tracing::warn;

use crate::body::ProxyBody;
use crate::cache::storage::figures::SharedFigures;
use crate::proxy::Proxy;
use crate::respond;

/// How long the health check waits for a TCP connection to the upstream.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Serialize)]
struct HealthAnswer {
    status: &'static str,
    upstream: UpstreamHealth,
    cache: CacheHealth,
    uptime_seconds: u64,
    /// The shared tier's state (`redis.state`: "up" or "down"), when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<SharedFigures>,
}

#[derive(Serialize)]
struct UpstreamHealth {
    url: String,
    reachable: bool,
    probe_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct CacheHealth {
    enabled: bool,
    size: usize,
}

/// `GET /api/cache/health`: always 200 while the proxy runs (hits still
/// answer when the upstream is down); the upstream's reachability, from a
/// TCP connect within [`HEALTH_PROBE_TIMEOUT`], is reported, not fatal.
pub(super) async fn health(proxy: &Proxy) -> Response<ProxyBody> {
    let upstream = &proxy.config().upstream;
    let started = Instant::now();
    let probe = probe_upstream(
        &upstream.origin,
        HEALTH_PROBE_TIMEOUT.min(upstream.connect_timeout),
    )
    .await;
    // Whole microseconds, in ms: a loopback connect takes well under one.
    let probe_ms = started.elapsed().as_micros() as f64 / 1000.0;
    if let Err(error) = &probe {
        warn!(upstream = %upstream.display(), error = %error, "health: upstream unreachable");
    }
    respond::json(
        StatusCode::OK,
        &HealthAnswer {
            status: "ok",
            upstream: UpstreamHealth {
                url: upstream.display(),
                reachable: probe.is_ok(),
                probe_ms,
                error: probe.err(),
            },
            cache: CacheHealth {
                enabled: proxy.config().cache.enabled,
                size: proxy.store.census(Instant::now()).fresh,
            },
            uptime_seconds: proxy.metrics.snapshot().uptime.as_secs(),
            redis: proxy.store.shared().map(|tier| SharedFigures::of(tier)),
        },
    )
}

async fn probe_upstream(origin: &http::Uri, timeout: Duration) -> Result<(), String> {
    let host = origin
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| "upstream URL has no host".to_owned())?;
    let port = origin
        .port_u16()
        .unwrap_or(if origin.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(format!("cannot connect to {host}:{port}: {err}")),
        Err(_) => Err(format!(
            "no connection to {host}:{port} within {} ms",
            timeout.as_millis()
        )),
    }
}
