//! The bounded in-memory store: complete answers by [`CacheKey`], on quick_cache.
//!
//! Two bounds hold at all times, with one weight budget: every entry weighs
//! the larger of its bytes and `max_bytes / maxsize` (the *unit*), and the
//! budget is at most `maxsize` units, so neither the entry count nor the
//! bytes can pass their limit. quick_cache's S3-FIFO policy picks victims
//! (scan resistant: a burst of one-off keys does not flush the hot set).
//! TTL is ours: an entry past `expires_at` is never returned as fresh. It is
//! kept, within the same bounds, for its stale windows (`cache::stale`):
//! [`Store::get`] reports it as [`Lookup::Stale`] until the longest window
//! ends, and [`Store::purge_expired`] (run by a background task) removes
//! entries only past that, so memory is returned without losing the
//! answers that keep the dashboard up while the upstream is down.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use super::key::CacheKey;
use super::replay::Replay;
use super::stale::StaleWindows;
use super::vary::VaryNames;

/// A complete upstream answer, shared by every hit (the body is never copied).
#[derive(Debug)]
pub struct Entry {
    /// The key this entry is stored under (a `Vary` variant of the request's
    /// base key when `vary` is set).
    pub key: CacheKey,
    /// The request's key before any `Vary` variant (for refills).
    pub base: CacheKey,
    /// The request headers this answer varies on.
    pub vary: Option<VaryNames>,
    pub status: StatusCode,
    /// End-to-end headers only; hop-by-hop ones are dropped before storing.
    pub headers: HeaderMap,
    pub body: Bytes,
    pub route: Arc<str>,
    /// `route METHOD path?query body`, matched by `invalidate`.
    pub description: String,
    pub stored_at: Instant,
    pub expires_at: Instant,
    /// How long past `expires_at` it may still be served, and for what.
    pub stale: StaleWindows,
    /// The upstream's own `Age` when the answer arrived, in seconds.
    pub initial_age: u64,
    /// How long the upstream took to produce this answer.
    pub upstream_time: Duration,
    /// Hits served from this entry (for `/api/cache/keys?sort=hottest`).
    pub hits: AtomicU64,
    /// The request to send again on `POST /api/cache/refresh`; `None` when
    /// it carried credentials (see `cache::replay`).
    pub replay: Option<Replay>,
}

/// Bookkeeping bytes per entry beyond body, headers and description.
const ENTRY_OVERHEAD: u64 = 256;

impl Entry {
    /// Bytes this entry holds in memory, as counted against `max_bytes`.
    pub fn size(&self) -> u64 {
        let headers = headers_size(&self.headers);
        let replay = self.replay.as_ref().map_or(0, Replay::size);
        self.body.len() as u64 + self.description.len() as u64 + headers + replay + ENTRY_OVERHEAD
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.expires_at
    }

    /// Until when the store keeps it: expiry plus its longest stale window.
    pub fn keep_until(&self) -> Instant {
        self.expires_at + self.stale.longest()
    }

    /// Expired, but inside `stale-if-error`: answers for a failing upstream.
    pub fn serves_if_error(&self, now: Instant) -> bool {
        !self.is_fresh(now) && now < self.expires_at + self.stale.if_error
    }

    /// Expired, but inside `stale-while-revalidate`: answers at once while
    /// a background fill refreshes it.
    pub fn serves_while_revalidating(&self, now: Instant) -> bool {
        !self.is_fresh(now) && now < self.expires_at + self.stale.while_revalidate
    }

    /// Seconds of freshness left; once expired, negative (rounded away
    /// from zero, so a stale answer never reads as fresh) (RFC 9211 `ttl`).
    pub fn ttl_signed(&self, now: Instant) -> i64 {
        if self.is_fresh(now) {
            return self.ttl_left(now).as_secs() as i64;
        }
        let past = now.saturating_duration_since(self.expires_at);
        -(past.as_secs() as i64 + i64::from(past.subsec_nanos() > 0))
    }

    /// `Age` in seconds (RFC 9111 §4.2.3: the upstream's age plus our residence).
    pub fn age(&self, now: Instant) -> u64 {
        self.initial_age + now.saturating_duration_since(self.stored_at).as_secs()
    }

    pub fn ttl_left(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }
}

/// Bytes a header map is counted for: names, values and 32 bytes each of
/// bookkeeping.
pub(crate) fn headers_size(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().len() + value.len() + 32) as u64)
        .sum()
}

#[derive(Clone)]
struct EntryWeighter {
    unit: u64,
}

impl Weighter<CacheKey, Arc<Entry>> for EntryWeighter {
    fn weight(&self, _key: &CacheKey, entry: &Arc<Entry>) -> u64 {
        entry.size().max(self.unit)
    }
}

/// Counts evictions (quick_cache reports them through its lifecycle hooks).
#[derive(Clone, Default)]
struct EvictionCounter(Arc<AtomicU64>);

impl Lifecycle<CacheKey, Arc<Entry>> for EvictionCounter {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: CacheKey, _entry: Arc<Entry>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why the store refused an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Heavier than one entry may be.
    TooLarge,
    /// A clear or invalidate ran since the fill started: its answer may
    /// predate the data refresh the operator just announced.
    Outdated,
}

/// What the store holds for a key at one instant.
pub enum Lookup {
    Fresh(Arc<Entry>),
    /// Expired, inside one of its stale windows.
    Stale(Arc<Entry>),
    Miss,
}

/// Entries by state, for stats (one walk of the store).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    pub fresh: usize,
    /// Expired entries kept for their stale windows.
    pub stale: usize,
    /// Bytes held by all of them.
    pub bytes: u64,
}

pub struct Store {
    entries: Cache<CacheKey, Arc<Entry>, EntryWeighter, DefaultHashBuilder, EvictionCounter>,
    evictions: Arc<AtomicU64>,
    /// Entries dropped because their TTL and stale windows ran out (on
    /// lookup or by the purge).
    expirations: AtomicU64,
    /// Bumped by every clear and invalidate, so a fill that started before
    /// one cannot store its answer after it.
    generation: AtomicU64,
    maxsize: u64,
    max_bytes: u64,
    /// The heaviest entry a shard can take; larger answers are not stored.
    max_entry_bytes: u64,
}

impl Store {
    pub fn new(maxsize: u64, max_bytes: u64, max_object_bytes: u64) -> Self {
        let maxsize = maxsize.max(1);
        let unit = (max_bytes / maxsize).max(1);
        // Shards split both budgets; keep each holding >= 32 entries (else
        // quick_cache merges shards itself) and able to take one whole
        // max-size object.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let mut shards = (cores * 4).min(maxsize / 32).max(1).next_power_of_two();
        while shards > 1 && (shards * 32 > maxsize || (maxsize / shards) * unit < max_object_bytes)
        {
            shards /= 2;
        }
        let shard_weight = (maxsize / shards) * unit;
        let evictions = Arc::new(AtomicU64::new(0));
        let options = OptionsBuilder::new()
            .shards(shards as usize)
            .estimated_items_capacity(maxsize as usize)
            .weight_capacity(shard_weight * shards)
            .build()
            .expect("store options are valid");
        let entries = Cache::with_options(
            options,
            EntryWeighter { unit },
            DefaultHashBuilder::default(),
            EvictionCounter(evictions.clone()),
        );
        debug_assert_eq!(entries.num_shards() as u64, shards);
        Self {
            entries,
            evictions,
            expirations: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            maxsize,
            max_bytes,
            max_entry_bytes: shard_weight.min(max_object_bytes),
        }
    }

    pub fn get(&self, key: &CacheKey, now: Instant) -> Lookup {
        match self.entries.get(key) {
            Some(entry) if entry.is_fresh(now) => Lookup::Fresh(entry),
            Some(entry) if now < entry.keep_until() => Lookup::Stale(entry),
            Some(_) => {
                if self
                    .entries
                    .remove_if(key, |e| now >= e.keep_until())
                    .is_some()
                {
                    self.expirations.fetch_add(1, Ordering::Relaxed);
                }
                Lookup::Miss
            }
            None => Lookup::Miss,
        }
    }

    /// The expired entry under `key` that may answer for a failing upstream.
    pub fn stale_if_error(&self, key: &CacheKey, now: Instant) -> Option<Arc<Entry>> {
        self.entries.get(key).filter(|e| e.serves_if_error(now))
    }

    /// Whether `entry` is still the one stored under its key.
    pub fn holds(&self, entry: &Arc<Entry>) -> bool {
        self.entries
            .peek(&entry.key)
            .is_some_and(|e| Arc::ptr_eq(&e, entry))
    }

    /// Removes `entry` if it is still the one stored under its key (a newer
    /// answer stored meanwhile stays); true when it was removed.
    pub fn remove_entry(&self, entry: &Arc<Entry>) -> bool {
        self.entries
            .remove_if(&entry.key, |e| Arc::ptr_eq(e, entry))
            .is_some()
    }

    /// Removes whatever is stored under `key`; true when something was.
    pub fn remove(&self, key: &CacheKey) -> bool {
        self.entries.remove(key).is_some()
    }

    /// The current clear/invalidate generation; a fill reads it before asking
    /// the upstream and hands it to [`Store::insert`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Stores `entry`, fetched since `generation`, unless it is too heavy or
    /// a clear/invalidate ran since.
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>, generation: u64) -> Result<(), Refused> {
        if entry.size() > self.max_entry_bytes {
            return Err(Refused::TooLarge);
        }
        if self.generation() != generation {
            return Err(Refused::Outdated);
        }
        self.entries.insert(key, entry.clone());
        // A clear that ran during the insert must win: it bumps the
        // generation before emptying the store, so one of the two sees it.
        if self.generation() != generation {
            self.entries.remove_if(&key, |e| Arc::ptr_eq(e, &entry));
            return Err(Refused::Outdated);
        }
        Ok(())
    }

    /// Removes every entry; returns how many there were.
    pub fn clear(&self) -> usize {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let before = self.entries.len();
        self.entries.clear();
        before
    }

    /// Removes the entries whose description contains `pattern`; returns how many.
    pub fn invalidate(&self, pattern: &str) -> usize {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let removed = AtomicUsize::new(0);
        self.entries.retain(|_, entry| {
            let keep = !entry.description.contains(pattern);
            if !keep {
                removed.fetch_add(1, Ordering::Relaxed);
            }
            keep
        });
        removed.into_inner()
    }

    /// Removes entries whose TTL and stale windows have run out; returns how many.
    pub fn purge_expired(&self, now: Instant) -> usize {
        let removed = AtomicUsize::new(0);
        self.entries.retain(|_, entry| {
            let keep = now < entry.keep_until();
            if !keep {
                removed.fetch_add(1, Ordering::Relaxed);
            }
            keep
        });
        let removed = removed.into_inner();
        self.expirations
            .fetch_add(removed as u64, Ordering::Relaxed);
        removed
    }

    /// Entries held, stale ones included (what the bounds count).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Fresh and stale entries and their bytes (walks the store: for stats,
    /// not the hot path).
    pub fn census(&self, now: Instant) -> Census {
        let mut census = Census::default();
        for (_, entry) in self.entries.iter() {
            if entry.is_fresh(now) {
                census.fresh += 1;
            } else {
                census.stale += 1;
            }
            census.bytes += entry.size();
        }
        census
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every stored entry, expired ones included (walks the store: for the
    /// admin listing, not the hot path).
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.entries.iter().map(|(_, entry)| entry).collect()
    }

    /// Bytes held by live entries (walks the store: for stats, not the hot path).
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|(_, entry)| entry.size()).sum()
    }

    pub fn maxsize(&self) -> u64 {
        self.maxsize
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_bytes
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    pub fn expirations(&self) -> u64 {
        self.expirations.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body_len: usize, description: &str, ttl: Duration) -> Arc<Entry> {
        let now = Instant::now();
        Arc::new(Entry {
            key: CacheKey::from_bytes([0; 16]),
            base: CacheKey::from_bytes([0; 16]),
            vary: None,
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; body_len]),
            route: "r".into(),
            description: description.into(),
            stored_at: now,
            expires_at: now + ttl,
            stale: StaleWindows::default(),
            initial_age: 0,
            upstream_time: Duration::ZERO,
            hits: AtomicU64::new(0),
            replay: None,
        })
    }

    fn key(i: u32) -> CacheKey {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&i.to_le_bytes());
        bytes[4..8].copy_from_slice(&i.wrapping_mul(2654435761).to_le_bytes());
        CacheKey::from_bytes(bytes)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn entry_count_never_passes_maxsize() {
        let store = Store::new(100, 1 << 30, 1 << 20);
        for i in 0..5_000 {
            store.insert(key(i), entry(10, "d", HOUR), 0).unwrap();
            assert!(store.len() <= 100);
        }
        assert!(
            store.len() > 50,
            "store keeps most of its capacity: {}",
            store.len()
        );
        assert!(store.evictions() > 0);
    }

    #[test]
    fn bytes_never_pass_max_bytes() {
        let store = Store::new(1000, 1 << 20, 64 << 10);
        for i in 0..2_000 {
            store.insert(key(i), entry(40_000, "d", HOUR), 0).unwrap();
            assert!(store.bytes() <= 1 << 20);
        }
        assert!(store.len() >= 10);
    }

    #[test]
    fn oversized_entries_are_refused() {
        let store = Store::new(1000, 1 << 20, 1000);
        assert_eq!(
            store.insert(key(1), entry(5000, "d", HOUR), 0),
            Err(Refused::TooLarge)
        );
        assert!(store.is_empty());
    }

    #[test]
    fn expired_entries_are_never_returned() {
        let store = Store::new(100, 1 << 20, 1 << 10);
        store
            .insert(key(1), entry(1, "d", Duration::from_millis(1)), 0)
            .unwrap();
        let later = Instant::now() + Duration::from_secs(1);
        assert!(matches!(store.get(&key(1), later), Lookup::Miss));
        assert_eq!(store.len(), 0);
        assert_eq!(store.expirations(), 1);
    }

    #[test]
    fn an_expired_entry_is_kept_for_its_stale_window() {
        let store = Store::new(100, 1 << 20, 1 << 10);
        let mut stale = Arc::into_inner(entry(1, "d", Duration::from_millis(1))).unwrap();
        stale.stale.if_error = HOUR;
        store.insert(key(1), Arc::new(stale), 0).unwrap();
        let later = Instant::now() + Duration::from_secs(1);
        assert!(matches!(store.get(&key(1), later), Lookup::Stale(_)));
        assert!(store.stale_if_error(&key(1), later).is_some());
        assert_eq!(store.purge_expired(later), 0, "kept inside its window");
        assert_eq!(
            store.census(later),
            Census {
                fresh: 0,
                stale: 1,
                bytes: store.bytes()
            }
        );
        let past = later + HOUR;
        assert!(store.stale_if_error(&key(1), past).is_none());
        assert_eq!(store.purge_expired(past), 1, "dropped past its window");
        assert!(store.is_empty());
    }

    #[test]
    fn purge_removes_only_expired_entries() {
        let store = Store::new(100, 1 << 20, 1 << 10);
        store
            .insert(key(1), entry(1, "a", Duration::from_millis(1)), 0)
            .unwrap();
        store.insert(key(2), entry(1, "b", HOUR), 0).unwrap();
        assert_eq!(
            store.purge_expired(Instant::now() + Duration::from_secs(1)),
            1
        );
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_fill_older_than_a_clear_is_not_stored() {
        let store = Store::new(100, 1 << 20, 1 << 10);
        let started = store.generation();
        store.clear();
        assert_eq!(
            store.insert(key(1), entry(1, "d", HOUR), started),
            Err(Refused::Outdated)
        );
        assert!(store.is_empty());
        assert_eq!(
            store.insert(key(1), entry(1, "d", HOUR), store.generation()),
            Ok(())
        );
    }

    #[test]
    fn invalidate_matches_descriptions() {
        let store = Store::new(100, 1 << 20, 1 << 10);
        store
            .insert(
                key(1),
                entry(1, r#"get_metrics POST /api/metrics {"org":"Vale"}"#, HOUR),
                0,
            )
            .unwrap();
        store
            .insert(
                key(2),
                entry(1, r#"get_actions POST /api/actions {"org":"Vale"}"#, HOUR),
                0,
            )
            .unwrap();
        store
            .insert(
                key(3),
                entry(1, r#"get_metrics POST /api/metrics {"org":"Acme"}"#, HOUR),
                0,
            )
            .unwrap();
        assert_eq!(store.invalidate("Vale"), 2);
        assert_eq!(store.generation(), 1);
        assert_eq!(store.invalidate("get_metrics"), 1);
        assert_eq!(store.len(), 0);
    }
}
