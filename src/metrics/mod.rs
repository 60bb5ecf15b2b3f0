//! Counters behind `/api/cache/stats` and `/api/cache/metrics`: what the
//! cache serves, per route, and what it costs (or saves) the upstream — the
//! seed's hit rate, average response time and Databricks query count — and
//! the last hour of them (`history/`).
//!
//! Recording an answer touches only relaxed atomics: each counter is
//! independent and read rarely (stats, scrapes, the history sampler), so no
//! ordering is needed, and latency histograms are atomic buckets
//! (`tally.rs`), not a mutex. What a hit records is kept per thread
//! (`per_thread.rs`): two workers serving one route never write the same
//! cache line. Per-route figures live in a map that is
//! replaced whole (copy on write, `ArcSwap`) the first time a route name is
//! seen; afterwards every request reads it without a lock and without
//! touching a shared reference count. Prometheus text is produced at scrape
//! time by a `Collector` (`prometheus.rs`) over these same counters, so stats
//! and Prometheus can never disagree and a hit pays for one set of counters,
//! not two.
//!
//! This file owns the counters themselves, what records into them, and the
//! snapshots the stats answer reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::per_thread::Counter;
use crate::respond::CacheStatus;

pub mod history;
mod prometheus;
mod tally;

pub use history::{Clock, EventKind, History};
pub use prometheus::{StoreFigures, OPENMETRICS_CONTENT_TYPE};
use tally::Tally;

/// Route name → its figures; replaced whole when a name is first seen.
/// Read on every request: foldhash, since the names come from the
/// configuration, not from clients.
type RouteMap = HashMap<Arc<str>, Arc<RouteMetrics>, foldhash::fast::RandomState>;

#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// Per route name; a name's figures are created on its first request.
    routes: ArcSwap<RouteMap>,
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
    upstream_seconds: Tally,
    pub stored: AtomicU64,
    pub not_stored: AtomicU64,
    /// Request bodies cut for arriving too slowly (`body_read_timeout`).
    pub body_timeouts: AtomicU64,
    /// Connections closed because the client left its answer unread (`send_timeout`).
    pub send_timeouts: AtomicU64,
    /// The last hour, per interval, and the event markers.
    history: History,
}

/// One route's figures: per cache status a count, a total time and a
/// latency histogram ([`Tally`]).
#[derive(Debug, Default)]
pub struct RouteMetrics {
    hits: Tally,
    misses: Tally,
    bypassed: Tally,
    stale: Tally,
    /// Sum over hits of the upstream time each hit's entry originally took.
    saved_micros: Counter,
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
    pub body_timeouts: u64,
    pub send_timeouts: u64,
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
        Self::with_clock(Clock::system())
    }
}

impl Metrics {
    /// Counters whose history reads time from `clock`.
    pub fn with_clock(clock: Clock) -> Self {
        Self {
            started: Instant::now(),
            routes: ArcSwap::default(),
            admin: Tally::default(),
            coalesced: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            upstream_requests: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            upstream_seconds: Tally::default(),
            stored: AtomicU64::new(0),
            not_stored: AtomicU64::new(0),
            body_timeouts: AtomicU64::new(0),
            send_timeouts: AtomicU64::new(0),
            history: History::new(clock),
        }
    }

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
        let routes = self.routes.load();
        let route = match routes.get(&**route) {
            Some(figures) => figures,
            None => &self.add_route(route),
        };
        match status {
            CacheStatus::Hit => {
                route.hits.record(elapsed);
                self.history.hit_latency.record(elapsed);
                if let Some(saved) = saved {
                    route.saved_micros.add(saved.as_micros() as u64);
                }
            }
            CacheStatus::Miss => route.misses.record(elapsed),
            CacheStatus::Bypass => route.bypassed.record(elapsed),
            CacheStatus::Stale => {
                route.stale.record(elapsed);
                Self::bump(&self.stale);
            }
            CacheStatus::Admin => {}
        }
    }

    /// One upstream request answered (or failed) after `elapsed`.
    pub fn upstream_answered(&self, elapsed: Duration) {
        self.upstream_seconds.record(elapsed);
        self.history.backend_latency.record(elapsed);
    }

    /// A route name's first request: a new map with the name added. Rare
    /// (once per name), so copying the small map is cheaper than making
    /// every request take a lock.
    #[cold]
    fn add_route(&self, name: &Arc<str>) -> Arc<RouteMetrics> {
        let mut added = None;
        self.routes.rcu(|routes| {
            let mut routes = RouteMap::clone(routes);
            added = Some(routes.entry(name.clone()).or_default().clone());
            routes
        });
        added.expect("rcu ran at least once")
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut routes: Vec<(Arc<str>, RouteSnapshot)> = self
            .routes
            .load()
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
                    saved_micros: route.saved_micros.get(),
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
            body_timeouts: load(&self.body_timeouts),
            send_timeouts: load(&self.send_timeouts),
            uptime: self.started.elapsed(),
        }
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
}
