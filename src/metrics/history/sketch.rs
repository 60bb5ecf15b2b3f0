//! Latency sketches for the history: a log-linear histogram over
//! microseconds (8 sub-buckets per power of two, so any quantile read back
//! is within about 6 % of the true value), from 1 µs to about 19 hours.
//!
//! [`LiveSketch`] is the recording side: cumulative counts per recording
//! thread, one addition to the thread's own line per observation, no lock. Every interval the sampler
//! reads it and keeps the difference as a [`Sketch`]: sparse, small in
//! JSON (`[[bucket, count], …]`), and mergeable by adding counts, which is
//! what turns six 10 s intervals into a minute or several replicas into a
//! cluster.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::per_thread::{self, PerThread};

/// Values below this many microseconds get a bucket each.
const LINEAR: u64 = 8;
/// Sub-buckets per power of two (`1 << SUB_BITS`).
const SUB_BITS: u32 = 3;
/// The largest exponent kept; longer values count in the last bucket.
const MAX_EXP: u32 = 35;
pub const BUCKETS: usize = (LINEAR + (MAX_EXP - SUB_BITS + 1) as u64 * LINEAR) as usize;

/// The bucket holding `micros`.
fn index(micros: u64) -> usize {
    if micros < LINEAR {
        return micros as usize;
    }
    let exp = (63 - micros.leading_zeros()).min(MAX_EXP);
    let micros = micros.min((1 << (MAX_EXP + 1)) - 1);
    let sub = (micros >> (exp - SUB_BITS)) & (LINEAR - 1);
    (LINEAR + u64::from(exp - SUB_BITS) * LINEAR + sub) as usize
}

/// The smallest value in bucket `index`, and the bucket's width.
fn bounds(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < LINEAR {
        return (index, 1);
    }
    let exp = (index - LINEAR) / LINEAR + u64::from(SUB_BITS);
    let sub = (index - LINEAR) % LINEAR;
    let width = 1 << (exp - u64::from(SUB_BITS));
    ((LINEAR + sub) * width, width)
}

/// The recording side: cumulative counts since start, one set per
/// recording thread (`per_thread.rs`).
#[derive(Debug, Default)]
pub struct LiveSketch {
    threads: PerThread<Counts>,
}

#[derive(Debug)]
struct Counts(Box<[AtomicU64]>);

impl Default for Counts {
    fn default() -> Self {
        Self((0..BUCKETS).map(|_| AtomicU64::new(0)).collect())
    }
}

impl LiveSketch {
    /// One addition to the calling thread's own counts.
    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        per_thread::add(&self.threads.local().0[index(micros)], 1);
    }

    /// The cumulative counts, one per bucket, summed over threads.
    pub fn read(&self) -> Vec<u64> {
        let mut sums = vec![0u64; BUCKETS];
        for counts in self.threads.iter() {
            for (sum, count) in sums.iter_mut().zip(counts.0.iter()) {
                *sum = sum.wrapping_add(count.load(Ordering::Relaxed));
            }
        }
        sums
    }
}

/// Counts for one interval (or several merged), sparse and sorted by bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sketch(Vec<(u16, u64)>);

impl Sketch {
    /// What was recorded between two cumulative readings.
    pub fn between(before: &[u64], after: &[u64]) -> Self {
        Self(
            after
                .iter()
                .enumerate()
                .filter_map(|(i, &now)| {
                    let then = before.get(i).copied().unwrap_or(0);
                    (now > then).then(|| (i as u16, now - then))
                })
                .collect(),
        )
    }

    pub fn count(&self) -> u64 {
        self.0.iter().map(|(_, c)| c).sum()
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Sketch) {
        if other.0.is_empty() {
            return;
        }
        let mut merged = Vec::with_capacity(self.0.len() + other.0.len());
        let (mut a, mut b) = (self.0.iter().peekable(), other.0.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    let sum = (x.0, x.1 + y.1);
                    a.next();
                    b.next();
                    sum
                }
                (Some(x), Some(y)) if x.0 < y.0 => *a.next().expect("peeked"),
                (Some(_), Some(_)) | (None, Some(_)) => *b.next().expect("peeked"),
                (Some(_), None) => *a.next().expect("peeked"),
                (None, None) => break,
            };
            merged.push(next);
        }
        self.0 = merged;
    }

    /// The `q` quantile (0..=1) in milliseconds: the middle of the bucket
    /// holding the value of that rank; `None` when nothing was recorded.
    /// Buckets that arrived from elsewhere out of range are ignored.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for &(index, count) in &self.0 {
            seen += count;
            if seen >= rank && usize::from(index) < BUCKETS {
                let (low, width) = bounds(usize::from(index));
                let mid = low as f64 + (width as f64 - 1.0) / 2.0;
                // Whole microseconds, in ms.
                return Some(mid.round() / 1000.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_starts_where_the_previous_one_ends() {
        let mut next = 0;
        for i in 0..BUCKETS {
            let (low, width) = bounds(i);
            assert_eq!(low, next, "bucket {i}");
            assert_eq!(index(low), i);
            assert_eq!(index(low + width - 1), i);
            next = low + width;
        }
    }

    #[test]
    fn values_past_the_range_count_in_the_last_bucket() {
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_about_six_percent() {
        let live = LiveSketch::default();
        for micros in 1..=1000u64 {
            live.record(Duration::from_micros(micros * 100));
        }
        let sketch = Sketch::between(&[], &live.read());
        let p50 = sketch.quantile_ms(0.5).unwrap();
        let p99 = sketch.quantile_ms(0.99).unwrap();
        assert!((p50 - 50.0).abs() / 50.0 < 0.065, "{p50}");
        assert!((p99 - 99.0).abs() / 99.0 < 0.065, "{p99}");
    }

    #[test]
    fn merging_adds_counts_bucket_by_bucket() {
        let mut a = Sketch(vec![(1, 2), (5, 1)]);
        a.merge(&Sketch(vec![(0, 1), (5, 3), (9, 1)]));
        assert_eq!(a, Sketch(vec![(0, 1), (1, 2), (5, 4), (9, 1)]));
        assert_eq!(a.count(), 8);
    }

    #[test]
    fn an_interval_keeps_only_what_was_recorded_in_it() {
        let before = [1, 5, 0];
        let after = [1, 7, 2];
        assert_eq!(
            Sketch::between(&before, &after),
            Sketch(vec![(1, 2), (2, 2)])
        );
        assert_eq!(Sketch::default().quantile_ms(0.99), None);
    }
}
