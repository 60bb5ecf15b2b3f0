//! `GET /api/cache/stats` (the seed's JSON shape, field for field, then
//! ours) and `GET /api/cache/metrics` (OpenMetrics text for Prometheus).

use std::collections::BTreeMap;
use std::time::Instant;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::body::{self, ProxyBody};
use crate::cache::volatile::VolatileField;
use crate::metrics::{StoreFigures, OPENMETRICS_CONTENT_TYPE};
use crate::proxy::Proxy;
use crate::refresh::RefreshFigures;
use crate::respond;

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
    /// Fields suspected of changing on every request (`cache::volatile`).
    volatile_fields: Vec<VolatileField>,
}

/// Rates to four decimals, seconds to milliseconds: stable, readable JSON.
fn rate(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

fn seconds(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

pub(super) fn stats(proxy: &Proxy) -> Response<ProxyBody> {
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
                    volatile_fields: volatile_fields(proxy, name),
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

/// A route's suspected volatile fields, for its stats.
fn volatile_fields(proxy: &Proxy, route: &str) -> Vec<VolatileField> {
    proxy.volatile.report(route)
}

/// `GET /api/cache/metrics`: OpenMetrics text for Prometheus.
pub(super) fn prometheus(proxy: &Proxy) -> Response<ProxyBody> {
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
