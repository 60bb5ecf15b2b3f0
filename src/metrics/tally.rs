//! A lock-free latency histogram: a count, a total and fixed buckets, each
//! its own relaxed atomic, so recording an answer never waits for another
//! thread (prometheus-client's `Histogram::observe` takes a mutex, which
//! made every hit on one route queue behind the others).
//!
//! The count and the total are the very counters the stats answer reads,
//! so `_count` and `_sum` in Prometheus equal stats' figures by construction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds of the buckets in microseconds (`le`, inclusive): hits take
/// microseconds, warehouse queries seconds. A last, unbounded bucket follows.
const BOUNDS_MICROS: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A count and the total time the counted requests took, with their
/// distribution over [`BOUNDS_MICROS`].
#[derive(Debug, Default)]
pub struct Tally {
    count: AtomicU64,
    micros: AtomicU64,
    buckets: [AtomicU64; BOUNDS_MICROS.len() + 1],
}

impl Tally {
    /// Three relaxed additions; nothing else.
    pub fn record(&self, elapsed: Duration) {
        let micros = elapsed.as_micros() as u64;
        self.count.fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(micros, Ordering::Relaxed);
        self.buckets[bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn micros(&self) -> u64 {
        self.micros.load(Ordering::Relaxed)
    }

    /// A copy of the figures as they are now (for a scrape).
    pub fn copy(&self) -> Self {
        let load = |c: &AtomicU64| AtomicU64::new(c.load(Ordering::Relaxed));
        Self {
            count: load(&self.count),
            micros: load(&self.micros),
            buckets: std::array::from_fn(|i| load(&self.buckets[i])),
        }
    }
}

/// The first bucket whose bound is at least `micros`.
fn bucket(micros: u64) -> usize {
    BOUNDS_MICROS
        .iter()
        .position(|&bound| micros <= bound)
        .unwrap_or(BOUNDS_MICROS.len())
}

impl EncodeMetric for Tally {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = BOUNDS_MICROS
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.buckets)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        encoder.encode_histogram::<NoLabelSet>(
            self.micros() as f64 / 1e6,
            self.count(),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_on_a_bound_falls_in_that_bound_s_bucket() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(50), 0);
        assert_eq!(bucket(51), 1);
        assert_eq!(bucket(10_000_000), 16);
        assert_eq!(bucket(10_000_001), 17);
    }

    #[test]
    fn count_and_total_add_up_over_every_recording() {
        let tally = Tally::default();
        tally.record(Duration::from_micros(80));
        tally.record(Duration::from_millis(3));
        assert_eq!((tally.count(), tally.micros()), (2, 3_080));
        let in_buckets: u64 = tally
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum();
        assert_eq!(in_buckets, 2);
    }
}
