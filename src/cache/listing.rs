//! What the `keys` listing reads without a pattern, so that it does not
//! walk the store: a bounded ring of the most recently stored keys
//! (`sort=newest`) and a top list by hits computed at most every
//! [`HOT_LIST_MAX_AGE`] (`sort=hottest`).
//!
//! The ring is pushed by [`Store::insert`], a miss-path operation, under a
//! short mutex; lookups never touch it. It holds keys and store times, not
//! entries, so it keeps no memory of removed entries alive. A reader checks
//! each record against the store (`peek`: no hit recorded), so removed,
//! cleared, replaced and expired entries are skipped.
//!
//! The top list is recomputed by a walk when it is older than
//! [`HOT_LIST_MAX_AGE`], on the caller's (blocking) thread; in between,
//! calls read its candidates plus every key stored since (from the ring),
//! with their hit counts as they are now. So an answer can miss only an
//! entry that was outside the top [`HOT_LIST_LEN`] at the last walk and
//! gained hits since: membership is at most 10 s old, counts are current.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{CacheKey, Entry, Store};

/// Records the ring holds at most: four times the largest `keys` limit, so
/// that re-stored keys and removed entries rarely leave it short.
pub const RING_CAPACITY: usize = 40_000;

/// Candidates the top list keeps (the largest `keys` limit).
pub const HOT_LIST_LEN: usize = 10_000;

/// How old the top list may be before a `sort=hottest` call walks again.
pub const HOT_LIST_MAX_AGE: Duration = Duration::from_secs(10);

/// One insert: which key, and the entry's store time (a key stored again
/// makes a new record; the older one no longer matches the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub key: CacheKey,
    pub stored_at: Instant,
}

/// The most recent inserts, oldest at the front; bounded by `capacity`.
pub struct Ring {
    records: VecDeque<Record>,
    capacity: usize,
    /// Records ever pushed: a reader asks for the ones since a count.
    pushed: u64,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        Self {
            records: VecDeque::new(),
            capacity: capacity.max(1),
            pushed: 0,
        }
    }

    pub fn push(&mut self, record: Record) {
        if self.records.len() == self.capacity {
            self.records.pop_front();
        }
        self.records.push_back(record);
        self.pushed += 1;
    }

    /// Records ever pushed.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Every record held, newest first.
    pub fn newest_first(&self) -> Vec<Record> {
        self.records.iter().rev().copied().collect()
    }

    /// The records pushed after the first `pushed` ones (those still held),
    /// newest first.
    pub fn since(&self, pushed: u64) -> Vec<Record> {
        let newer = self.pushed.saturating_sub(pushed) as usize;
        self.records.iter().rev().take(newer).copied().collect()
    }
}

/// The candidates of the last walk for `sort=hottest`.
struct HotList {
    computed_at: Instant,
    /// The ring's push count when the walk started: keys stored after it
    /// are read from the ring.
    ring_pushed: u64,
    candidates: Vec<Record>,
}

/// The store's listing state (see the module docs).
pub struct Listing {
    ring: Mutex<Ring>,
    hot: Mutex<Option<HotList>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Listing {
    pub fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(Ring::new(capacity)),
            hot: Mutex::new(None),
        }
    }

    pub(super) fn record(&self, entry: &Entry) {
        lock(&self.ring).push(Record {
            key: entry.key,
            stored_at: entry.stored_at,
        });
    }
}

/// The entry `record` names, if it is still the one stored and fresh.
fn live(store: &Store, record: &Record, now: Instant) -> Option<Arc<Entry>> {
    store
        .peek(&record.key)
        .filter(|e| e.stored_at == record.stored_at && e.is_fresh(now))
}

/// The live entries of `records` (one per key, first record wins), at
/// most `limit` of them.
fn resolve(store: &Store, records: &[Record], limit: usize, now: Instant) -> Vec<Arc<Entry>> {
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    for record in records {
        if entries.len() == limit {
            break;
        }
        if seen.insert(record.key) {
            if let Some(entry) = live(store, record, now) {
                entries.push(entry);
            }
        }
    }
    entries
}

impl Store {
    /// The most recently stored fresh entries, newest first, at most
    /// `limit`, read from the ring: O(ring), whatever the store's size.
    /// Fewer than `limit` when the ring holds fewer live ones (the caller
    /// compares with the fresh count and walks if the store holds more).
    pub fn newest(&self, limit: usize, now: Instant) -> Vec<Arc<Entry>> {
        let records = lock(&self.listing.ring).newest_first();
        let mut entries = resolve(self, &records, limit, now);
        // Entries copied in (snapshot, shared tier) keep their own store time.
        entries.sort_by_key(|e| std::cmp::Reverse(e.stored_at));
        entries
    }

    /// The fresh entries with the most hits, at most `limit`, with their
    /// hits now, from the top list (recomputed by a walk when older than
    /// [`HOT_LIST_MAX_AGE`]) and the keys stored since. Walks the store at
    /// most once per [`HOT_LIST_MAX_AGE`]: run it off the request workers.
    pub fn hottest(&self, limit: usize, now: Instant) -> Vec<(u64, Arc<Entry>)> {
        let mut hot = lock(&self.listing.hot);
        let current = hot
            .as_ref()
            .is_some_and(|list| now.saturating_duration_since(list.computed_at) < HOT_LIST_MAX_AGE);
        if !current {
            let ring_pushed = lock(&self.listing.ring).pushed();
            *hot = Some(HotList {
                computed_at: now,
                ring_pushed,
                candidates: self.walk_hottest(HOT_LIST_LEN, now),
            });
        }
        let list = hot.as_ref().expect("set above");
        let mut records = lock(&self.listing.ring).since(list.ring_pushed);
        records.extend_from_slice(&list.candidates);
        drop(hot);
        let mut ranked: Vec<(u64, Arc<Entry>)> = resolve(self, &records, usize::MAX, now)
            .into_iter()
            .map(|e| (e.hits.load(std::sync::atomic::Ordering::Relaxed), e))
            .collect();
        ranked.sort_by(|(ha, a), (hb, b)| hb.cmp(ha).then(b.stored_at.cmp(&a.stored_at)));
        ranked.truncate(limit);
        ranked
    }

    /// The `len` fresh entries with the most hits, by a walk.
    fn walk_hottest(&self, len: usize, now: Instant) -> Vec<Record> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut best: BinaryHeap<Reverse<(u64, Instant, CacheKey)>> =
            BinaryHeap::with_capacity(len + 1);
        self.visit(|entry| {
            if entry.is_fresh(now) {
                let hits = entry.hits.load(std::sync::atomic::Ordering::Relaxed);
                best.push(Reverse((hits, entry.stored_at, entry.key)));
                if best.len() > len {
                    best.pop();
                }
            }
            true
        });
        let mut best: Vec<_> = best.into_iter().map(|Reverse(r)| r).collect();
        best.sort_by(|a, b| b.cmp(a));
        best.into_iter()
            .map(|(_, stored_at, key)| Record { key, stored_at })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use http::StatusCode;

    use super::*;
    use crate::cache::stale::StaleWindows;
    use crate::cache::StoredHeaders;

    const HOUR: Duration = Duration::from_secs(3600);

    fn key(i: u32) -> CacheKey {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&i.to_le_bytes());
        bytes[4..8].copy_from_slice(&i.wrapping_mul(2654435761).to_le_bytes());
        CacheKey::from_bytes(bytes)
    }

    fn entry(i: u32, stored_at: Instant, ttl: Duration) -> Arc<Entry> {
        Arc::new(Entry {
            key: key(i),
            base: key(i),
            vary: None,
            status: StatusCode::OK,
            headers: StoredHeaders::default(),
            body: Bytes::from_static(b"x"),
            route: "r".into(),
            description: format!("entry {i}"),
            stored_at,
            expires_at: stored_at + ttl,
            stale: StaleWindows::default(),
            initial_age: 0,
            upstream_time: Duration::ZERO,
            hits: AtomicU64::new(0),
            replay: None,
        })
    }

    /// A store holding entries 0..n, stored 1 ms apart (n - 1 newest).
    fn filled(n: u32, ttl: Duration) -> (Store, Instant) {
        let store = Store::new(100_000, 1 << 30, 1 << 20);
        let start = Instant::now();
        for i in 0..n {
            let at = start + Duration::from_millis(i.into());
            store.insert(key(i), entry(i, at, ttl), 0).unwrap();
        }
        (store, start + Duration::from_millis(n.into()))
    }

    fn ids(entries: &[Arc<Entry>]) -> Vec<String> {
        entries.iter().map(|e| e.description.clone()).collect()
    }

    #[test]
    fn the_ring_keeps_only_the_newest_records() {
        let mut ring = Ring::new(3);
        let now = Instant::now();
        for i in 0..5 {
            ring.push(Record {
                key: key(i),
                stored_at: now,
            });
        }
        let keys: Vec<CacheKey> = ring.newest_first().iter().map(|r| r.key).collect();
        assert_eq!(keys, [key(4), key(3), key(2)]);
        assert_eq!(ring.pushed(), 5);
        let since: Vec<CacheKey> = ring.since(3).iter().map(|r| r.key).collect();
        assert_eq!(since, [key(4), key(3)]);
        assert_eq!(ring.since(0).len(), 3, "only what is still held");
    }

    #[test]
    fn newest_lists_the_last_stored_entries_newest_first() {
        let (store, now) = filled(50, HOUR);
        assert_eq!(
            ids(&store.newest(3, now)),
            ["entry 49", "entry 48", "entry 47"]
        );
    }

    #[test]
    fn newest_skips_removed_replaced_cleared_and_expired_entries() {
        let (store, now) = filled(5, HOUR);
        store.remove(&key(4));
        // Stored again: listed once, as its newest record.
        let later = now + Duration::from_millis(1);
        store.insert(key(1), entry(1, later, HOUR), 0).unwrap();
        let expired = Instant::now();
        store
            .insert(key(9), entry(9, expired, Duration::from_millis(1)), 0)
            .unwrap();
        let at = later + Duration::from_secs(1);
        assert_eq!(
            ids(&store.newest(10, at)),
            ["entry 1", "entry 3", "entry 2", "entry 0"]
        );
        store.clear();
        assert!(store.newest(10, at).is_empty());
    }

    #[test]
    fn the_ring_is_bounded_by_its_capacity() {
        let (store, now) = filled(RING_CAPACITY as u32 + 500, HOUR);
        let ring = lock(&store.listing.ring);
        assert_eq!(ring.records.len(), RING_CAPACITY);
        drop(ring);
        let newest = store.newest(2, now);
        assert_eq!(
            ids(&newest),
            [
                format!("entry {}", RING_CAPACITY + 499),
                format!("entry {}", RING_CAPACITY + 498)
            ]
        );
    }

    #[test]
    fn hottest_orders_by_hits_now_and_walks_at_most_every_ten_seconds() {
        let (store, now) = filled(10, HOUR);
        let hit = |i: u32, n: u64| {
            store
                .peek(&key(i))
                .unwrap()
                .hits
                .fetch_add(n, Ordering::Relaxed)
        };
        hit(3, 5);
        hit(7, 2);
        let hottest = store.hottest(3, now);
        let hits: Vec<u64> = hottest.iter().map(|(h, _)| *h).collect();
        assert_eq!(hits, [5, 2, 0]);
        assert_eq!(hottest[0].1.key, key(3));
        // Within the list's age: counts are current, new keys come from the ring.
        hit(7, 10);
        store.insert(key(20), entry(20, now, HOUR), 0).unwrap();
        hit(20, 7);
        let hottest = store.hottest(3, now + Duration::from_secs(5));
        let keys: Vec<CacheKey> = hottest.iter().map(|(_, e)| e.key).collect();
        assert_eq!(keys, [key(7), key(20), key(3)]);
        let computed = lock(&store.listing.hot).as_ref().unwrap().computed_at;
        assert_eq!(computed, now, "no walk inside the list's age");
        store.hottest(3, now + HOT_LIST_MAX_AGE);
        let computed = lock(&store.listing.hot).as_ref().unwrap().computed_at;
        assert_eq!(computed, now + HOT_LIST_MAX_AGE, "walked again once older");
    }
}
