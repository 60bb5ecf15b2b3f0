//! The store's running figures: entries, bytes, and how many of them are
//! past their TTL, kept as entries come and go so that `stats`, `metrics`
//! and `health` read them in O(1) instead of walking the store.
//!
//! One [`Tally`] belongs to one clear *epoch*: `clear` swaps in a new one,
//! so the entries of the previous epoch (removed in the background) are
//! decremented from a tally nobody reads any more, and the new figures
//! start from zero at once.
//!
//! Freshness changes with time, not with events, so expiry is counted by
//! 10 ms buckets: each entry adds one to the bucket its TTL ends in (rounded
//! up), and reading the figures moves every bucket that has passed into the
//! `expired` count. Each bucket moves once, so the work is amortised over
//! the entries; an entry counts as stale at most 10 ms after its TTL ended.
//! There are never more buckets than entries (nor than the TTL in 10 ms
//! steps).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Entries by state, with the bytes they hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    pub fresh: usize,
    /// Expired entries kept for their stale windows.
    pub stale: usize,
    /// Bytes held by all of them (as the weigher counts them).
    pub bytes: u64,
}

/// The figures of one clear epoch.
#[derive(Debug)]
pub(crate) struct Tally {
    /// Which clear epoch this tally counts.
    pub(crate) epoch: u64,
    /// Relaxed atomics: each is one independent figure; a reader may see an
    /// insert's entry before its bytes, never a lasting disagreement.
    entries: AtomicI64,
    bytes: AtomicI64,
    /// A mutex, not atomics: an insert or removal touches one bucket and a
    /// reader moves several at once; both are short and off the hit path.
    expiry: Mutex<ExpiryBuckets>,
}

/// How long one expiry bucket spans.
const BUCKET_NANOS: u128 = 10_000_000;

/// Entry counts by the 10 ms step their TTL ends in, relative to `base`.
#[derive(Debug)]
struct ExpiryBuckets {
    base: Instant,
    /// Steps not yet known to have passed, and the entries expiring in each.
    pending: BTreeMap<u64, u64>,
    /// Every bucket up to and including this one has moved to `expired`.
    expired_through: Option<u64>,
    expired: u64,
}

impl ExpiryBuckets {
    /// The bucket of an entry expiring at `expires_at`: its step, rounded up.
    fn bucket(&self, expires_at: Instant) -> u64 {
        let after = expires_at.saturating_duration_since(self.base).as_nanos();
        after.div_ceil(BUCKET_NANOS) as u64
    }

    fn is_expired(&self, bucket: u64) -> bool {
        self.expired_through
            .is_some_and(|through| bucket <= through)
    }

    fn add(&mut self, expires_at: Instant) {
        let bucket = self.bucket(expires_at);
        if self.is_expired(bucket) {
            self.expired += 1;
        } else {
            *self.pending.entry(bucket).or_default() += 1;
        }
    }

    fn remove(&mut self, expires_at: Instant) {
        let bucket = self.bucket(expires_at);
        if self.is_expired(bucket) {
            self.expired = self.expired.saturating_sub(1);
        } else if let Some(count) = self.pending.get_mut(&bucket) {
            *count -= 1;
            if *count == 0 {
                self.pending.remove(&bucket);
            }
        }
    }

    /// Moves every bucket that has fully passed by `now`.
    fn advance(&mut self, now: Instant) -> u64 {
        let Some(passed) = now.checked_duration_since(self.base) else {
            return self.expired;
        };
        let through = (passed.as_nanos() / BUCKET_NANOS) as u64;
        if self.expired_through.is_some_and(|t| t >= through) {
            return self.expired;
        }
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > through {
                break;
            }
            self.expired += entry.remove();
        }
        self.expired_through = Some(through);
        self.expired
    }
}

impl Tally {
    pub(crate) fn new(epoch: u64, base: Instant) -> Self {
        Self {
            epoch,
            entries: AtomicI64::new(0),
            bytes: AtomicI64::new(0),
            expiry: Mutex::new(ExpiryBuckets {
                base,
                pending: BTreeMap::new(),
                expired_through: None,
                expired: 0,
            }),
        }
    }

    pub(crate) fn add(&self, bytes: u64, expires_at: Instant) {
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as i64, Ordering::Relaxed);
        self.buckets().add(expires_at);
    }

    pub(crate) fn remove(&self, bytes: u64, expires_at: Instant) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes as i64, Ordering::Relaxed);
        self.buckets().remove(expires_at);
    }

    /// Entries counted, stale ones included.
    pub(crate) fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed).max(0) as usize
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed).max(0) as u64
    }

    /// The figures at `now`: O(1) plus the buckets that passed since the
    /// last reading.
    pub(crate) fn census(&self, now: Instant) -> Census {
        let stale = self.buckets().advance(now) as usize;
        let entries = self.entries();
        Census {
            fresh: entries.saturating_sub(stale),
            stale: stale.min(entries),
            bytes: self.bytes(),
        }
    }

    fn buckets(&self) -> std::sync::MutexGuard<'_, ExpiryBuckets> {
        // The buckets are plain counts: a panic elsewhere cannot leave them
        // in a state worse than slightly off, so a poisoned lock is reused.
        self.expiry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn entries_count_as_fresh_until_their_bucket_has_passed() {
        let base = Instant::now();
        let tally = Tally::new(0, base);
        tally.add(10, base + 5 * SECOND);
        tally.add(20, base + 10 * SECOND);
        assert_eq!(
            tally.census(base + 4 * SECOND),
            Census {
                fresh: 2,
                stale: 0,
                bytes: 30
            }
        );
        let census = tally.census(base + 6 * SECOND);
        assert_eq!((census.fresh, census.stale), (1, 1));
        let census = tally.census(base + 11 * SECOND);
        assert_eq!((census.fresh, census.stale), (0, 2));
    }

    #[test]
    fn removing_an_expired_entry_lowers_the_stale_count() {
        let base = Instant::now();
        let tally = Tally::new(0, base);
        tally.add(10, base + SECOND);
        tally.add(10, base + 100 * SECOND);
        assert_eq!(tally.census(base + 2 * SECOND).stale, 1);
        tally.remove(10, base + SECOND);
        tally.remove(10, base + 100 * SECOND);
        assert_eq!(tally.census(base + 200 * SECOND), Census::default());
    }

    #[test]
    fn an_entry_added_already_expired_counts_as_stale() {
        let base = Instant::now();
        let tally = Tally::new(0, base);
        assert_eq!(tally.census(base + 10 * SECOND).stale, 0);
        tally.add(1, base + 3 * SECOND);
        assert_eq!(tally.census(base + 10 * SECOND).stale, 1);
    }

    #[test]
    fn a_reading_before_the_base_changes_nothing() {
        let base = Instant::now() + 60 * SECOND;
        let tally = Tally::new(0, base);
        tally.add(1, base);
        assert_eq!(tally.census(Instant::now()).fresh, 1);
    }
}
