//! The admin API under `/api/cache/`, answered by the proxy itself: the
//! seed's `stats`, `clear`, `invalidate?pattern=` with its exact JSON shapes,
//! plus `metrics` (Prometheus), `health`, `keys`, `refresh` (answered by
//! `refresh.rs`) and the status page at `/api/cache/`.
//!
//! `stats`, `metrics`, `health` and the page are readable by anyone who can
//! reach the proxy. The mutations (`clear`, `invalidate`, `refresh`) and the `keys`
//! listing (descriptions carry the dashboard's filters) require the bearer
//! token when one is configured, compared in constant time; with no token
//! they answer loopback clients only, so a proxy exposed by mistake cannot
//! be emptied or read from outside.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::body::{self, ProxyBody};
use crate::error::ProxyError;
use crate::metrics::{StoreFigures, OPENMETRICS_CONTENT_TYPE};
use crate::proxy::{ClientInfo, Proxy, Served};
use crate::refresh::{self as refresher, RefreshFigures};
use crate::respond::{self, CacheStatus};

mod status_page;

const PREFIX: &str = "/api/cache";

pub fn is_admin_path(path: &str) -> bool {
    path == PREFIX
        || path
            .strip_prefix(PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
}

pub async fn handle(proxy: &Arc<Proxy>, request: Request<Incoming>, client: ClientInfo) -> Served {
    let path = request.uri().path().trim_end_matches('/');
    let endpoint = path.strip_prefix(PREFIX).unwrap_or_default();
    let readable = allow(&request, &[Method::GET, Method::HEAD], "GET, HEAD");
    let result = match endpoint {
        "" => readable.map(|()| status_page::page()),
        "/stats" => readable.map(|()| stats(proxy)),
        "/metrics" => readable.map(|()| prometheus(proxy)),
        "/health" => match readable {
            Ok(()) => Ok(health(proxy).await),
            Err(err) => Err(err),
        },
        "/keys" => readable
            .and_then(|()| authorize(proxy, request.headers(), client, path))
            .and_then(|()| keys(proxy, request.uri().query())),
        "/clear" => allow(&request, &[Method::POST], "POST")
            .and_then(|()| authorize(proxy, request.headers(), client, path))
            .map(|()| clear(proxy)),
        "/invalidate" => allow(&request, &[Method::POST], "POST")
            .and_then(|()| authorize(proxy, request.headers(), client, path))
            .and_then(|()| invalidate(proxy, request.uri().query())),
        "/refresh" => allow(&request, &[Method::POST], "POST")
            .and_then(|()| authorize(proxy, request.headers(), client, path))
            .map(|()| refresher::accept(proxy, query_pattern(request.uri().query()).as_deref())),
        _ => Err(ProxyError::AdminNotFound {
            path: path.to_owned(),
        }),
    };
    let mut response = result.unwrap_or_else(|err| {
        warn!(path, client = %client.addr.ip(), error = %err.message(), "admin request refused");
        respond::error(&err)
    });
    // Live figures and listings: no browser or intermediary may keep them.
    response
        .headers_mut()
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    Served {
        response,
        cache: CacheStatus::Admin,
        route: Arc::from("admin"),
    }
}

fn allow(
    request: &Request<Incoming>,
    methods: &[Method],
    allow: &'static str,
) -> Result<(), ProxyError> {
    if methods.contains(request.method()) {
        Ok(())
    } else {
        Err(ProxyError::MethodNotAllowed {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            allow,
        })
    }
}

fn authorize(
    proxy: &Proxy,
    headers: &HeaderMap,
    client: ClientInfo,
    path: &str,
) -> Result<(), ProxyError> {
    match &proxy.config().admin_token {
        None if client.addr.ip().to_canonical().is_loopback() => Ok(()),
        None => Err(ProxyError::AdminForbidden {
            path: path.to_owned(),
        }),
        Some(token) => {
            let presented = headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .unwrap_or_default();
            if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
                Ok(())
            } else {
                Err(ProxyError::AdminUnauthorized)
            }
        }
    }
}

/// `GET /api/cache/stats`: the seed's shape, field for field, then ours.
#[derive(Serialize)]
struct StatsAnswer {
    status: &'static str,
    cache: CacheStats,
}

#[derive(Serialize)]
struct CacheStats {
    size: usize,
    maxsize: u64,
    ttl: u64,
    ttl_hours: f64,
    enabled: bool,
    hits: u64,
    misses: u64,
    hit_rate: f64,
    bypassed: u64,
    coalesced: u64,
    upstream_requests: u64,
    upstream_errors: u64,
    stored: u64,
    not_stored: u64,
    evictions: u64,
    expirations: u64,
    bytes: u64,
    max_bytes: u64,
    inflight: usize,
    avg_response_ms: f64,
    avg_hit_ms: f64,
    avg_miss_ms: f64,
    /// The seed's "Databricks query count": `upstream_requests` by its name.
    databricks_queries: u64,
    /// Upstream time the hits avoided (per hit, the entry's original upstream time).
    upstream_seconds_saved: f64,
    stale: u64,
    /// Expired entries kept for their stale windows (not counted in `size`).
    stale_entries: usize,
    /// `POST /api/cache/refresh` progress.
    refresh: RefreshFigures,
    /// 1 at start, one more per applied reload (SIGHUP).
    config_generation: u64,
    /// When the running configuration was loaded (RFC 3339, UTC).
    config_loaded_at: String,
    uptime_seconds: u64,
    routes: BTreeMap<String, RouteStats>,
}

#[derive(Serialize)]
struct RouteStats {
    hits: u64,
    misses: u64,
    bypassed: u64,
    hit_rate: f64,
    avg_hit_ms: f64,
    avg_miss_ms: f64,
    upstream_seconds_saved: f64,
}

/// Rates to four decimals, seconds to milliseconds: stable, readable JSON.
fn rate(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

fn seconds(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[derive(Serialize)]
struct ClearAnswer {
    status: &'static str,
    message: &'static str,
    warning: &'static str,
}

#[derive(Serialize)]
struct InvalidateAnswer<'a> {
    status: &'static str,
    pattern: &'a str,
    keys_deleted: usize,
    message: String,
}

fn stats(proxy: &Proxy) -> Response<ProxyBody> {
    let settings = proxy.config();
    let config = &settings.cache;
    let store = &proxy.store;
    let snap = proxy.metrics.snapshot();
    let m = &snap.total;
    let ttl = config.ttl.as_secs();
    let census = store.census(Instant::now());
    let cache = CacheStats {
        size: census.fresh,
        maxsize: store.maxsize(),
        ttl,
        ttl_hours: ttl as f64 / 3600.0,
        enabled: config.enabled,
        hits: m.hits,
        misses: m.misses,
        hit_rate: rate(m.hit_rate()),
        bypassed: m.bypassed,
        coalesced: snap.coalesced,
        upstream_requests: snap.upstream_requests,
        upstream_errors: snap.upstream_errors,
        stored: snap.stored,
        not_stored: snap.not_stored,
        evictions: store.evictions(),
        expirations: store.expirations(),
        bytes: census.bytes,
        max_bytes: store.max_bytes(),
        inflight: proxy.flights.len(),
        avg_response_ms: m.avg_response_ms(),
        avg_hit_ms: m.avg_hit_ms(),
        avg_miss_ms: m.avg_miss_ms(),
        databricks_queries: snap.upstream_requests,
        upstream_seconds_saved: seconds(m.upstream_seconds_saved()),
        stale: snap.stale,
        stale_entries: census.stale,
        refresh: proxy.refresher.figures(),
        config_generation: settings.generation,
        config_loaded_at: humantime::format_rfc3339_seconds(settings.loaded_at).to_string(),
        uptime_seconds: snap.uptime.as_secs(),
        routes: snap
            .routes
            .iter()
            .map(|(name, r)| {
                let stats = RouteStats {
                    hits: r.hits,
                    misses: r.misses,
                    bypassed: r.bypassed,
                    hit_rate: rate(r.hit_rate()),
                    avg_hit_ms: r.avg_hit_ms(),
                    avg_miss_ms: r.avg_miss_ms(),
                    upstream_seconds_saved: seconds(r.upstream_seconds_saved()),
                };
                (name.to_string(), stats)
            })
            .collect(),
    };
    respond::json(
        StatusCode::OK,
        &StatsAnswer {
            status: "ok",
            cache,
        },
    )
}

/// `GET /api/cache/metrics`: OpenMetrics text for Prometheus.
fn prometheus(proxy: &Proxy) -> Response<ProxyBody> {
    let store = &proxy.store;
    let census = store.census(Instant::now());
    let text = proxy.metrics.prometheus(StoreFigures {
        entries: census.fresh as u64,
        stale_entries: census.stale as u64,
        bytes: census.bytes,
        max_entries: store.maxsize(),
        max_bytes: store.max_bytes(),
        evictions: store.evictions(),
        expirations: store.expirations(),
        inflight: proxy.flights.len() as u64,
    });
    let mut response = Response::new(body::full(text));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
    );
    response
}

/// How long the health check waits for a TCP connection to the upstream.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Serialize)]
struct HealthAnswer {
    status: &'static str,
    upstream: UpstreamHealth,
    cache: CacheHealth,
    uptime_seconds: u64,
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
async fn health(proxy: &Proxy) -> Response<ProxyBody> {
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

/// The order `keys` lists entries in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum KeyOrder {
    /// Most recently stored first.
    Newest,
    /// Most hits first (newest first among equals).
    Hottest,
}

const DEFAULT_KEYS_LIMIT: usize = 100;
const MAX_KEYS_LIMIT: usize = 10_000;

#[derive(Serialize)]
struct KeysAnswer {
    status: &'static str,
    /// Live entries matching the pattern (before `limit`).
    matched: usize,
    count: usize,
    sort: KeyOrder,
    keys: Vec<KeyInfo>,
}

#[derive(Serialize)]
struct KeyInfo {
    key: String,
    route: String,
    description: String,
    age_s: u64,
    ttl_left_s: u64,
    bytes: u64,
    hits: u64,
}

/// `GET /api/cache/keys?pattern=&limit=&sort=newest|hottest`: the live
/// entries whose description contains `pattern` (all when absent).
fn keys(proxy: &Proxy, query: Option<&str>) -> Result<Response<ProxyBody>, ProxyError> {
    let mut pattern = String::new();
    let mut limit = DEFAULT_KEYS_LIMIT;
    let mut order = KeyOrder::Newest;
    for (name, value) in query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
    {
        match &*name {
            "pattern" => pattern = value.into_owned(),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_KEYS_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ProxyError::AdminParameter(format!(
                            "query parameter 'limit' must be a number from 1 to {MAX_KEYS_LIMIT}, not '{value}'"
                        ))
                    })?;
            }
            "sort" => {
                order = match &*value {
                    "newest" => KeyOrder::Newest,
                    "hottest" => KeyOrder::Hottest,
                    other => {
                        return Err(ProxyError::AdminParameter(format!(
                            "query parameter 'sort' must be 'newest' or 'hottest', not '{other}'"
                        )))
                    }
                };
            }
            _ => {}
        }
    }
    let now = Instant::now();
    let mut entries: Vec<_> = proxy
        .store
        .entries()
        .into_iter()
        .filter(|e| e.is_fresh(now) && e.description.contains(&pattern))
        .map(|e| (e.hits.load(Ordering::Relaxed), e))
        .collect();
    match order {
        KeyOrder::Newest => entries.sort_by_key(|e| Reverse(e.1.stored_at)),
        KeyOrder::Hottest => entries.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| b.1.stored_at.cmp(&a.1.stored_at))
        }),
    }
    let matched = entries.len();
    let keys: Vec<KeyInfo> = entries
        .into_iter()
        .take(limit)
        .map(|(hits, e)| KeyInfo {
            key: e.key.to_string(),
            route: e.route.to_string(),
            description: e.description.clone(),
            age_s: e.age(now),
            ttl_left_s: e.ttl_left(now).as_secs(),
            bytes: e.size(),
            hits,
        })
        .collect();
    Ok(respond::json(
        StatusCode::OK,
        &KeysAnswer {
            status: "ok",
            matched,
            count: keys.len(),
            sort: order,
            keys,
        },
    ))
}

fn clear(proxy: &Proxy) -> Response<ProxyBody> {
    let removed = proxy.store.clear();
    proxy.vary.clear();
    info!(keys_deleted = removed, "Cache CLEARED");
    respond::json(
        StatusCode::OK,
        &ClearAnswer {
            status: "success",
            message: "Cache cleared successfully",
            warning: "Next requests will hit the database",
        },
    )
}

/// The non-empty `pattern` query parameter, if any.
fn query_pattern(query: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
    query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(name, _)| name == "pattern")
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

fn invalidate(proxy: &Proxy, query: Option<&str>) -> Result<Response<ProxyBody>, ProxyError> {
    let Some(pattern) = query_pattern(query) else {
        return Err(ProxyError::AdminParameter(
            "query parameter 'pattern' is required and must not be empty".into(),
        ));
    };
    let removed = proxy.store.invalidate(&pattern);
    info!(pattern = %pattern, keys_deleted = removed, "Cache INVALIDATED: {removed} keys matching '{pattern}'");
    Ok(respond::json(
        StatusCode::OK,
        &InvalidateAnswer {
            status: "success",
            pattern: &pattern,
            keys_deleted: removed,
            message: format!("Invalidated {removed} cache keys matching pattern '{pattern}'"),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_the_seeds_field_order() {
        let clear = serde_json::to_string(&ClearAnswer {
            status: "success",
            message: "Cache cleared successfully",
            warning: "Next requests will hit the database",
        })
        .unwrap();
        assert_eq!(
            clear,
            r#"{"status":"success","message":"Cache cleared successfully","warning":"Next requests will hit the database"}"#
        );
        let invalidate = serde_json::to_string(&InvalidateAnswer {
            status: "success",
            pattern: "get_metrics",
            keys_deleted: 12,
            message: "Invalidated 12 cache keys matching pattern 'get_metrics'".into(),
        })
        .unwrap();
        assert!(invalidate
            .starts_with(r#"{"status":"success","pattern":"get_metrics","keys_deleted":12,"#));
    }

    #[test]
    fn admin_paths_are_recognised_exactly() {
        assert!(is_admin_path("/api/cache"));
        assert!(is_admin_path("/api/cache/stats"));
        assert!(!is_admin_path("/api/cached-reports"));
        assert!(!is_admin_path("/api/metrics"));
    }
}
