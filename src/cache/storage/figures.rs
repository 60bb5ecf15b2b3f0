//! What the shared tier reports: the `redis` object of `/api/cache/stats`
//! and `/api/cache/health`, and its Prometheus families (appended to the
//! exposition as OpenMetrics text).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::redis::{RedisTier, LATENCY_BUCKETS};

/// The shared tier's state and counters at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct SharedFigures {
    /// "up" or "down".
    pub state: &'static str,
    /// Whether this replica hears the other replicas' invalidations now.
    pub listening: bool,
    /// The URL(s), password redacted.
    pub url: String,
    pub cluster: bool,
    pub prefix: String,
    pub l2_hits: u64,
    pub l2_misses: u64,
    pub l2_writes: u64,
    pub l2_errors: u64,
    /// Values in Redis that were not valid entries (treated as misses).
    pub l2_rejected: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub locks_acquired: u64,
    pub lock_waits: u64,
    pub avg_l2_ms: f64,
}

impl SharedFigures {
    pub fn of(tier: &RedisTier) -> Self {
        let c = &tier.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let calls: u64 = c.latency.iter().map(load).sum();
        let avg = if calls == 0 {
            0.0
        } else {
            (load(&c.latency_sum_us) as f64 / calls as f64 / 1000.0 * 1000.0).round() / 1000.0
        };
        let config = tier.config();
        Self {
            state: if tier.is_up() { "up" } else { "down" },
            listening: tier.is_listening(),
            url: config.redacted_urls(),
            cluster: config.cluster,
            prefix: config.prefix.clone(),
            l2_hits: load(&c.hits),
            l2_misses: load(&c.misses),
            l2_writes: load(&c.writes),
            l2_errors: load(&c.errors),
            l2_rejected: load(&c.rejected),
            messages_sent: load(&c.messages_sent),
            messages_received: load(&c.messages_received),
            locks_acquired: load(&c.lock_acquired),
            lock_waits: load(&c.lock_waits),
            avg_l2_ms: avg,
        }
    }
}

/// The tier's families in OpenMetrics text (without the `# EOF` line).
pub fn openmetrics(tier: &RedisTier) -> String {
    let f = SharedFigures::of(tier);
    let mut text = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            text,
            "# HELP dashcache_{name} {help}\n# TYPE dashcache_{name} gauge\ndashcache_{name} {value}"
        );
    };
    gauge(
        "redis_up",
        "1 while the shared Redis tier answers.",
        u64::from(tier.is_up()),
    );
    gauge(
        "redis_listening",
        "1 while this replica is subscribed to invalidations.",
        u64::from(f.listening),
    );
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            text,
            "# HELP dashcache_{name} {help}\n# TYPE dashcache_{name} counter\ndashcache_{name}_total {value}"
        );
    };
    counter("l2_hits", "Lookups answered by the shared tier.", f.l2_hits);
    counter(
        "l2_misses",
        "Lookups the shared tier did not answer.",
        f.l2_misses,
    );
    counter(
        "l2_writes",
        "Entries written to the shared tier.",
        f.l2_writes,
    );
    counter(
        "l2_errors",
        "Redis calls that failed or ran past their budget.",
        f.l2_errors,
    );
    counter(
        "l2_rejected",
        "Values in Redis that were not valid entries.",
        f.l2_rejected,
    );
    counter(
        "invalidation_messages_sent",
        "Messages published on the events channel.",
        f.messages_sent,
    );
    counter(
        "invalidation_messages_received",
        "Messages from other replicas applied.",
        f.messages_received,
    );
    counter(
        "redis_locks_acquired",
        "Cross-replica fill locks taken.",
        f.locks_acquired,
    );
    counter(
        "redis_lock_waits",
        "Fills that waited for another replica's lock.",
        f.lock_waits,
    );
    let c = &tier.counters;
    let _ = writeln!(
        text,
        "# HELP dashcache_l2_duration_seconds Latency of Redis calls made for requests.\n# TYPE dashcache_l2_duration_seconds histogram"
    );
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += c.latency[i].load(Ordering::Relaxed);
        let _ = writeln!(
            text,
            "dashcache_l2_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += c.latency[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
    let sum = c.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(
        text,
        "dashcache_l2_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}\ndashcache_l2_duration_seconds_sum {sum}\ndashcache_l2_duration_seconds_count {cumulative}"
    );
    text
}
