//! Counters behind `/api/cache/stats` and `/api/cache/metrics`: what the
//! cache serves, per route, and what it costs (or saves) the upstream — the
//! seed's hit rate, average response time and Databricks query count.
//!
//! The hot path touches only relaxed atomics and one histogram per answer:
//! each counter is independent and read rarely (stats, scrapes), so no
//! ordering is needed. Per-route figures live in a map behind an `RwLock`
//! that is written once per route name (the first request on it) and only
//! read afterwards. Prometheus text is produced at scrape time by a
//! [`Collector`] over these same counters, so stats and Prometheus can
//! never disagree and a hit pays for one set of counters, not two.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::respond::CacheStatus;

/// Latency buckets in seconds: hits take microseconds, warehouse queries seconds.
const BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// `Content-Type` of [`Metrics::prometheus`]'s answer.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// Per route name; a name's figures are created on its first request.
    routes: RwLock<HashMap<Arc<str>, Arc<RouteMetrics>>>,
    /// Admin API calls: neither hits nor misses.
    admin: Tally,
    /// Misses that waited for another caller's fill instead of asking the upstream.
    pub coalesced: AtomicU64,
    /// Answers served stale (stale-if-error, stale-while-revalidate, lock timeout).
    pub stale: AtomicU64,
    /// Requests sent upstream (the seed's "Databricks query count").
    pub upstream_requests: AtomicU64,
    pub upstream_errors: AtomicU64,
    /// Time to the upstream's answer head (or its failure), for every upstream request.
    upstream_seconds: Histogram,
    pub stored: AtomicU64,
    pub not_stored: AtomicU64,
}

/// One route's figures.
#[derive(Debug)]
pub struct RouteMetrics {
    hits: Tally,
    misses: Tally,
    bypassed: Tally,
    stale: Tally,
    /// Sum over hits of the upstream time each hit's entry originally took.
    saved_micros: AtomicU64,
    hit_seconds: Histogram,
    miss_seconds: Histogram,
    bypass_seconds: Histogram,
    stale_seconds: Histogram,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        Self {
            hits: Tally::default(),
            misses: Tally::default(),
            bypassed: Tally::default(),
            stale: Tally::default(),
            saved_micros: AtomicU64::new(0),
            hit_seconds: Histogram::new(BUCKETS),
            miss_seconds: Histogram::new(BUCKETS),
            bypass_seconds: Histogram::new(BUCKETS),
            stale_seconds: Histogram::new(BUCKETS),
        }
    }
}

/// A count and the total time the counted requests took.
#[derive(Debug, Default)]
struct Tally {
    count: AtomicU64,
    micros: AtomicU64,
}

impl Tally {
    fn record(&self, elapsed: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn micros(&self) -> u64 {
        self.micros.load(Ordering::Relaxed)
    }
}

/// One route's figures, copied for one answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub bypassed: u64,
    /// Answers from expired entries (see [`CacheStatus::Stale`]).
    pub stale: u64,
    hit_micros: u64,
    miss_micros: u64,
    bypass_micros: u64,
    stale_micros: u64,
    saved_micros: u64,
}

impl RouteSnapshot {
    /// Hits over cacheable requests (bypassed ones do not count), 0..=1.
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }

    pub fn avg_response_ms(&self) -> f64 {
        avg_ms(
            self.hit_micros + self.miss_micros + self.bypass_micros + self.stale_micros,
            self.hits + self.misses + self.bypassed + self.stale,
        )
    }

    pub fn avg_hit_ms(&self) -> f64 {
        avg_ms(self.hit_micros, self.hits)
    }

    pub fn avg_miss_ms(&self) -> f64 {
        avg_ms(self.miss_micros, self.misses)
    }

    /// Upstream time the hits avoided, in seconds.
    pub fn upstream_seconds_saved(&self) -> f64 {
        self.saved_micros as f64 / 1e6
    }

    fn add(&mut self, other: &RouteSnapshot) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.bypassed += other.bypassed;
        self.hit_micros += other.hit_micros;
        self.miss_micros += other.miss_micros;
        self.bypass_micros += other.bypass_micros;
        self.stale += other.stale;
        self.stale_micros += other.stale_micros;
        self.saved_micros += other.saved_micros;
    }
}

/// A consistent-enough copy of the counters for one stats answer.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// All routes together.
    pub total: RouteSnapshot,
    /// By route name, sorted by name.
    pub routes: Vec<(Arc<str>, RouteSnapshot)>,
    pub coalesced: u64,
    pub stale: u64,
    pub upstream_requests: u64,
    pub upstream_errors: u64,
    pub stored: u64,
    pub not_stored: u64,
    pub uptime: Duration,
}

fn avg_ms(micros: u64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        // Whole microseconds, shown in ms: hits take well under one.
        (micros as f64 / count as f64).round() / 1000.0
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            routes: RwLock::default(),
            admin: Tally::default(),
            coalesced: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            upstream_requests: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            upstream_seconds: Histogram::new(BUCKETS),
            stored: AtomicU64::new(0),
            not_stored: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one answered request; `saved` is, on a hit, the upstream time
    /// the entry's original request took.
    pub fn record(
        &self,
        route: &Arc<str>,
        status: CacheStatus,
        elapsed: Duration,
        saved: Option<Duration>,
    ) {
        if status == CacheStatus::Admin {
            self.admin.record(elapsed);
            return;
        }
        let route = self.route(route);
        let seconds = elapsed.as_secs_f64();
        match status {
            CacheStatus::Hit => {
                route.hits.record(elapsed);
                route.hit_seconds.observe(seconds);
                if let Some(saved) = saved {
                    route
                        .saved_micros
                        .fetch_add(saved.as_micros() as u64, Ordering::Relaxed);
                }
            }
            CacheStatus::Miss => {
                route.misses.record(elapsed);
                route.miss_seconds.observe(seconds);
            }
            CacheStatus::Bypass => {
                route.bypassed.record(elapsed);
                route.bypass_seconds.observe(seconds);
            }
            CacheStatus::Stale => {
                route.stale.record(elapsed);
                route.stale_seconds.observe(seconds);
                Self::bump(&self.stale);
            }
            CacheStatus::Admin => {}
        }
    }

    /// One upstream request answered (or failed) after `elapsed`.
    pub fn upstream_answered(&self, elapsed: Duration) {
        self.upstream_seconds.observe(elapsed.as_secs_f64());
    }

    fn route(&self, name: &Arc<str>) -> Arc<RouteMetrics> {
        if let Some(route) = self.routes.read().expect("metrics lock").get(&**name) {
            return route.clone();
        }
        self.routes
            .write()
            .expect("metrics lock")
            .entry(name.clone())
            .or_default()
            .clone()
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut routes: Vec<(Arc<str>, RouteSnapshot)> = self
            .routes
            .read()
            .expect("metrics lock")
            .iter()
            .map(|(name, route)| {
                let snap = RouteSnapshot {
                    hits: route.hits.count(),
                    misses: route.misses.count(),
                    bypassed: route.bypassed.count(),
                    stale: route.stale.count(),
                    hit_micros: route.hits.micros(),
                    miss_micros: route.misses.micros(),
                    bypass_micros: route.bypassed.micros(),
                    stale_micros: route.stale.micros(),
                    saved_micros: load(&route.saved_micros),
                };
                (name.clone(), snap)
            })
            .collect();
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut total = RouteSnapshot::default();
        for (_, route) in &routes {
            total.add(route);
        }
        Snapshot {
            total,
            routes,
            coalesced: load(&self.coalesced),
            stale: load(&self.stale),
            upstream_requests: load(&self.upstream_requests),
            upstream_errors: load(&self.upstream_errors),
            stored: load(&self.stored),
            not_stored: load(&self.not_stored),
            uptime: self.started.elapsed(),
        }
    }

    /// The OpenMetrics text for one scrape; `store` carries the figures the
    /// store keeps itself.
    pub fn prometheus(&self, store: StoreFigures) -> String {
        let mut routes: Vec<_> = self
            .routes
            .read()
            .expect("metrics lock")
            .iter()
            .map(|(name, route)| (name.clone(), route.clone()))
            .collect();
        // By name, like the counters from the snapshot: stable scrapes.
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut registry = Registry::with_prefix("dashcache");
        registry.register_collector(Box::new(Scrape {
            snapshot: self.snapshot(),
            routes,
            upstream_seconds: self.upstream_seconds.clone(),
            store,
        }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// What the store reports about itself at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreFigures {
    /// Fresh entries.
    pub entries: u64,
    /// Expired entries kept for their stale windows.
    pub stale_entries: u64,
    pub bytes: u64,
    pub max_entries: u64,
    pub max_bytes: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub inflight: u64,
}

/// One scrape's view: copied counters plus the live histograms.
#[derive(Debug)]
struct Scrape {
    snapshot: Snapshot,
    routes: Vec<(Arc<str>, Arc<RouteMetrics>)>,
    upstream_seconds: Histogram,
    store: StoreFigures,
}

impl Scrape {
    fn counter(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: u64,
    ) -> Result<(), std::fmt::Error> {
        let metric = ConstCounter::new(value);
        metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
    }

    fn gauge(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: i64,
    ) -> Result<(), std::fmt::Error> {
        let metric = ConstGauge::new(value);
        metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = &self.snapshot;
        let statuses = [
            CacheStatus::Hit,
            CacheStatus::Miss,
            CacheStatus::Bypass,
            CacheStatus::Stale,
        ];

        let mut family = encoder.encode_descriptor(
            "requests",
            "Proxied requests by route and cache status (HIT, MISS, BYPASS, STALE).",
            None,
            MetricType::Counter,
        )?;
        for (name, route) in &snap.routes {
            for status in statuses {
                let value = match status {
                    CacheStatus::Hit => route.hits,
                    CacheStatus::Miss => route.misses,
                    CacheStatus::Stale => route.stale,
                    _ => route.bypassed,
                };
                let labels = [("route", &**name), ("cache", status.as_str())];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "response_duration_seconds",
            "Time to answer a proxied request, by route and cache status.",
            None,
            MetricType::Histogram,
        )?;
        for (name, route) in &self.routes {
            for (status, histogram) in [
                (CacheStatus::Hit, &route.hit_seconds),
                (CacheStatus::Miss, &route.miss_seconds),
                (CacheStatus::Bypass, &route.bypass_seconds),
                (CacheStatus::Stale, &route.stale_seconds),
            ] {
                let labels = [("route", &**name), ("cache", status.as_str())];
                histogram.encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "upstream_seconds_saved",
            "Upstream time that hits avoided: per hit, the time the entry's original upstream request took.",
            None,
            MetricType::Counter,
        )?;
        for (name, route) in &snap.routes {
            let labels = [("route", &**name)];
            ConstCounter::new(route.upstream_seconds_saved())
                .encode(family.encode_family(&labels)?)?;
        }

        let e = &mut encoder;
        Scrape::counter(
            e,
            "upstream_requests",
            "Requests sent to the upstream (the backend query count).",
            snap.upstream_requests,
        )?;
        Scrape::counter(
            e,
            "upstream_errors",
            "Upstream requests that failed (unreachable, timed out, broken body).",
            snap.upstream_errors,
        )?;
        self.upstream_seconds.encode(e.encode_descriptor(
            "upstream_duration_seconds",
            "Time to the upstream's answer head, or to its failure.",
            None,
            MetricType::Histogram,
        )?)?;
        Scrape::counter(
            e,
            "coalesced_waiters",
            "Misses that waited for another request's upstream fill instead of asking the upstream.",
            snap.coalesced,
        )?;
        Scrape::counter(e, "stale_answers", "Answers served stale.", snap.stale)?;
        Scrape::counter(e, "stored", "Upstream answers stored.", snap.stored)?;
        Scrape::counter(
            e,
            "not_stored",
            "Upstream answers not stored (policy, size, or a clear during the fill).",
            snap.not_stored,
        )?;
        Scrape::counter(
            e,
            "evictions",
            "Entries evicted to stay within maxsize / max_bytes.",
            self.store.evictions,
        )?;
        Scrape::counter(
            e,
            "expirations",
            "Entries dropped because their TTL ran out.",
            self.store.expirations,
        )?;
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Scrape::gauge(
            e,
            "entries",
            "Fresh entries in the store.",
            gauge(self.store.entries),
        )?;
        Scrape::gauge(
            e,
            "stale_entries",
            "Expired entries kept for stale-if-error / stale-while-revalidate.",
            gauge(self.store.stale_entries),
        )?;
        Scrape::gauge(
            e,
            "bytes",
            "Bytes held by stored entries.",
            gauge(self.store.bytes),
        )?;
        Scrape::gauge(
            e,
            "max_entries",
            "Configured maxsize.",
            gauge(self.store.max_entries),
        )?;
        Scrape::gauge(
            e,
            "max_bytes",
            "Configured max_bytes.",
            gauge(self.store.max_bytes),
        )?;
        Scrape::gauge(
            e,
            "inflight_fills",
            "Upstream fills running now.",
            gauge(self.store.inflight),
        )?;
        Scrape::gauge(
            e,
            "uptime_seconds",
            "Seconds since the proxy started.",
            gauge(snap.uptime.as_secs()),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn hit_rate_ignores_bypassed_requests() {
        let metrics = Metrics::default();
        let r = route("get_metrics");
        for _ in 0..3 {
            metrics.record(&r, CacheStatus::Hit, Duration::from_micros(100), None);
        }
        metrics.record(&r, CacheStatus::Miss, Duration::from_millis(2), None);
        metrics.record(&r, CacheStatus::Bypass, Duration::from_millis(2), None);
        let snap = metrics.snapshot().total;
        assert_eq!(snap.hit_rate(), 0.75);
        assert_eq!(snap.avg_hit_ms(), 0.1);
        assert_eq!(snap.avg_miss_ms(), 2.0);
    }

    #[test]
    fn empty_metrics_report_zero_not_nan() {
        let snap = Metrics::default().snapshot().total;
        assert_eq!(snap.hit_rate(), 0.0);
        assert_eq!(snap.avg_response_ms(), 0.0);
    }

    #[test]
    fn saved_time_is_counted_per_hit_and_per_route() {
        let metrics = Metrics::default();
        let (a, b) = (route("a"), route("b"));
        let saved = Some(Duration::from_millis(1500));
        metrics.record(&a, CacheStatus::Hit, Duration::from_micros(50), saved);
        metrics.record(&a, CacheStatus::Hit, Duration::from_micros(50), saved);
        metrics.record(&b, CacheStatus::Miss, Duration::from_millis(1500), None);
        let snap = metrics.snapshot();
        assert_eq!(snap.total.upstream_seconds_saved(), 3.0);
        assert_eq!(&*snap.routes[0].0, "a");
        assert_eq!(snap.routes[0].1.hits, 2);
        assert_eq!(snap.routes[1].1.upstream_seconds_saved(), 0.0);
    }

    #[test]
    fn stale_answers_are_counted_apart_from_hits() {
        let metrics = Metrics::default();
        let r = route("get_metrics");
        metrics.record(&r, CacheStatus::Stale, Duration::from_micros(90), None);
        let snap = metrics.snapshot();
        assert_eq!((snap.stale, snap.total.stale, snap.total.hits), (1, 1, 0));
        let text = metrics.prometheus(StoreFigures::default());
        for line in [
            r#"dashcache_requests_total{route="get_metrics",cache="STALE"} 1"#,
            r#"dashcache_response_duration_seconds_count{route="get_metrics",cache="STALE"} 1"#,
            "dashcache_stale_answers_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }

    #[test]
    fn admin_calls_count_for_no_route() {
        let metrics = Metrics::default();
        metrics.record(&route("admin"), CacheStatus::Admin, Duration::ZERO, None);
        assert!(metrics.snapshot().routes.is_empty());
    }

    #[test]
    fn prometheus_text_carries_the_counters() {
        let metrics = Metrics::default();
        let r = route("get_metrics");
        metrics.record(
            &r,
            CacheStatus::Hit,
            Duration::from_micros(80),
            Some(Duration::from_secs(2)),
        );
        metrics.record(&r, CacheStatus::Miss, Duration::from_secs(2), None);
        let text = metrics.prometheus(StoreFigures {
            entries: 1,
            ..StoreFigures::default()
        });
        for line in [
            r#"dashcache_requests_total{route="get_metrics",cache="HIT"} 1"#,
            r#"dashcache_requests_total{route="get_metrics",cache="MISS"} 1"#,
            r#"dashcache_upstream_seconds_saved_total{route="get_metrics"} 2.0"#,
            r#"dashcache_response_duration_seconds_count{route="get_metrics",cache="HIT"} 1"#,
            "dashcache_entries 1",
            "dashcache_stale_answers_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
