//! Counters behind `/api/cache/stats`: what the cache serves and what it
//! costs the upstream (the seed's hit rate, average response time and
//! Databricks query count).
//!
//! Plain relaxed atomics: each counter is independent, read rarely (stats)
//! and bumped on every request, so no lock and no ordering are needed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::respond::CacheStatus;

#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    hits: Counter,
    misses: Counter,
    bypasses: Counter,
    /// Admin API calls: neither hits nor misses.
    admin: Counter,
    /// Misses that waited for another caller's fill instead of asking the upstream.
    pub coalesced: AtomicU64,
    /// Requests sent upstream (the seed's "Databricks query count").
    pub upstream_requests: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub stored: AtomicU64,
    pub not_stored: AtomicU64,
}

/// A count and the total time the counted requests took.
#[derive(Debug, Default)]
struct Counter {
    count: AtomicU64,
    micros: AtomicU64,
}

impl Counter {
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

/// A consistent-enough copy of the counters for one stats answer.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub hits: u64,
    pub misses: u64,
    pub bypassed: u64,
    pub coalesced: u64,
    pub upstream_requests: u64,
    pub upstream_errors: u64,
    pub stored: u64,
    pub not_stored: u64,
    pub uptime: Duration,
    hit_micros: u64,
    miss_micros: u64,
    bypass_micros: u64,
}

impl Snapshot {
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
            self.hit_micros + self.miss_micros + self.bypass_micros,
            self.hits + self.misses + self.bypassed,
        )
    }

    pub fn avg_hit_ms(&self) -> f64 {
        avg_ms(self.hit_micros, self.hits)
    }

    pub fn avg_miss_ms(&self) -> f64 {
        avg_ms(self.miss_micros, self.misses)
    }
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
            hits: Counter::default(),
            misses: Counter::default(),
            bypasses: Counter::default(),
            admin: Counter::default(),
            coalesced: AtomicU64::new(0),
            upstream_requests: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            not_stored: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn record(&self, status: CacheStatus, elapsed: Duration) {
        match status {
            CacheStatus::Hit => self.hits.record(elapsed),
            CacheStatus::Miss => self.misses.record(elapsed),
            CacheStatus::Bypass => self.bypasses.record(elapsed),
            CacheStatus::Admin => self.admin.record(elapsed),
        }
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            hits: self.hits.count(),
            misses: self.misses.count(),
            bypassed: self.bypasses.count(),
            coalesced: load(&self.coalesced),
            upstream_requests: load(&self.upstream_requests),
            upstream_errors: load(&self.upstream_errors),
            stored: load(&self.stored),
            not_stored: load(&self.not_stored),
            uptime: self.started.elapsed(),
            hit_micros: self.hits.micros(),
            miss_micros: self.misses.micros(),
            bypass_micros: self.bypasses.micros(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_rate_ignores_bypassed_requests() {
        let metrics = Metrics::default();
        for _ in 0..3 {
            metrics.record(CacheStatus::Hit, Duration::from_micros(100));
        }
        metrics.record(CacheStatus::Miss, Duration::from_millis(2));
        metrics.record(CacheStatus::Bypass, Duration::from_millis(2));
        let snap = metrics.snapshot();
        assert_eq!(snap.hit_rate(), 0.75);
        assert_eq!(snap.avg_hit_ms(), 0.1);
        assert_eq!(snap.avg_miss_ms(), 2.0);
    }

    #[test]
    fn empty_metrics_report_zero_not_nan() {
        let snap = Metrics::default().snapshot();
        assert_eq!(snap.hit_rate(), 0.0);
        assert_eq!(snap.avg_response_ms(), 0.0);
    }
}
