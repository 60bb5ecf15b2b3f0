//! `GET /api/cache/health`: liveness plus the upstream's reachability,
//! probed with a bounded TCP connect.
//!
//! Anyone who can reach the proxy may ask, so the answer names the upstream
//! (its URL, and the probe's error text, which carries host and port) only
//! to callers the admin API would trust with its mutations: the bearer
//! token when one is configured, else a loopback client. Everyone else
//! learns whether it is reachable and a short reason.

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
    /// Only for a trusted caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    reachable: bool,
    probe_ms: f64,
    /// A short reason (`refused`, `timeout`…) when unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    /// The probe's full error, only for a trusted caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[derive(Serialize)]
struct CacheHealth {
    enabled: bool,
    size: usize,
}

/// `GET /api/cache/health`: always 200 while the proxy runs (hits still
/// answer when the upstream is down); the upstream's reachability, from a
/// TCP connect within [`HEALTH_PROBE_TIMEOUT`], is reported, not fatal.
/// `trusted` callers also get the upstream's URL and the probe's detail.
pub(super) async fn health(proxy: &Proxy, trusted: bool) -> Response<ProxyBody> {
    let upstream = &proxy.config().upstream;
    let started = Instant::now();
    let probe = probe_upstream(
        &upstream.origin,
        HEALTH_PROBE_TIMEOUT.min(upstream.connect_timeout),
    )
    .await;
    // Whole microseconds, in ms: a loopback connect takes well under one.
    let probe_ms = started.elapsed().as_micros() as f64 / 1000.0;
    if let Err(failure) = &probe {
        warn!(upstream = %upstream.display(), reason = failure.as_str(), error = %ProbeDetail(failure), "health: upstream unreachable");
    }
    respond::json(
        StatusCode::OK,
        &HealthAnswer {
            status: "ok",
            upstream: UpstreamHealth {
                url: trusted.then(|| upstream.display()),
                reachable: probe.is_ok(),
                probe_ms,
                error: probe.as_ref().err().map(ProbeFailure::as_str),
                detail: probe
                    .as_ref()
                    .err()
                    .filter(|_| trusted)
                    .map(|failure| ProbeDetail(failure).to_string()),
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

/// Why the upstream could not be reached.
#[derive(Debug, thiserror::Error)]
enum ProbeFailure {
    #[error("upstream URL has no host")]
    NoHost,
    #[error("cannot connect to {host}:{port}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("no connection to {host}:{port} within {} ms", timeout.as_millis())]
    Timeout {
        host: String,
        port: u16,
        timeout: Duration,
    },
}

impl ProbeFailure {
    fn as_str(&self) -> &'static str {
        match self {
            Self::NoHost => "no-host",
            Self::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                "refused"
            }
            Self::Connect { .. } => "connect-failed",
            Self::Timeout { .. } => "timeout",
        }
    }
}

impl std::fmt::Display for ProbeDetail<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut error: Option<&dyn std::error::Error> = Some(self.0);
        let mut first = true;
        while let Some(err) = error {
            if !first {
                f.write_str(": ")?;
            }
            write!(f, "{err}")?;
            first = false;
            error = err.source();
        }
        Ok(())
    }
}

/// A probe failure with its sources, for the log and trusted callers.
struct ProbeDetail<'a>(&'a ProbeFailure);

async fn probe_upstream(origin: &http::Uri, timeout: Duration) -> Result<(), ProbeFailure> {
    let host = origin
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or(ProbeFailure::NoHost)?;
    let port = origin
        .port_u16()
        .unwrap_or(if origin.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(ProbeFailure::Connect {
            host: host.to_owned(),
            port,
            source,
        }),
        Err(_) => Err(ProbeFailure::Timeout {
            host: host.to_owned(),
            port,
            timeout,
        }),
    }
}
