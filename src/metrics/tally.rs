//! A lock-free latency histogram: a count, a total and fixed buckets, kept
//! per recording thread (`per_thread.rs`), so recording an answer never
//! waits for another thread nor writes a line another thread writes
//! (prometheus-client's `Histogram::observe` takes a mutex, which made
//! every hit on one route queue behind the others).
//!
//! The count and the total are the very counters the stats answer reads,
//! so `_count` and `_sum` in Prometheus equal stats' figures by construction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::per_thread::{self, PerThread};

/// Upper bounds of the buckets in microseconds (`le`, inclusive): hits take
/// microseconds, warehouse queries seconds. A last, unbounded bucket follows.
const BOUNDS_MICROS: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A count and the total time the counted requests took, with their
/// distribution over [`BOUNDS_MICROS`]: one set per recording thread
/// (`per_thread.rs`), summed when read.
#[derive(Debug, Default)]
pub struct Tally {
    threads: PerThread<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    count: AtomicU64,
    micros: AtomicU64,
    buckets: [AtomicU64; BOUNDS_MICROS.len() + 1],
}

impl Tally {
    /// Three additions to the calling thread's own counts; nothing else.
    pub fn record(&self, elapsed: Duration) {
        let micros = elapsed.as_micros() as u64;
        let own = self.threads.local();
        per_thread::add(&own.count, 1);
        per_thread::add(&own.micros, micros);
        per_thread::add(&own.buckets[bucket(micros)], 1);
    }

    pub fn count(&self) -> u64 {
        self.sum(|counts| &counts.count)
    }

    pub fn micros(&self) -> u64 {
        self.sum(|counts| &counts.micros)
    }

    fn bucket_counts(&self) -> [u64; BOUNDS_MICROS.len() + 1] {
        std::array::from_fn(|i| self.sum(|counts| &counts.buckets[i]))
    }

    fn sum(&self, field: impl Fn(&Counts) -> &AtomicU64) -> u64 {
        self.threads
            .iter()
            .map(|counts| field(counts).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// A copy of the figures as they are now (for a scrape).
    pub fn copy(&self) -> Self {
        let copy = Self::default();
        let own = copy.threads.local();
        own.count.store(self.count(), Ordering::Relaxed);
        own.micros.store(self.micros(), Ordering::Relaxed);
        for (cell, value) in own.buckets.iter().zip(self.bucket_counts()) {
            cell.store(value, Ordering::Relaxed);
        }
        copy
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
        let buckets: Vec<(f64, u64)> = bounds.zip(self.bucket_counts()).collect();
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
        let in_buckets: u64 = tally.bucket_counts().iter().sum();
        assert_eq!(in_buckets, 2);
        let copy = tally.copy();
        assert_eq!((copy.count(), copy.micros()), (2, 3_080));
    }
}
