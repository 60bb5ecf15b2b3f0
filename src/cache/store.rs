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
//!
//! Nothing here walks the store on a request worker. The figures (entries,
//! bytes, fresh and stale) are a [`Tally`] kept as entries come and go.
//! `clear` is O(1): it starts a new *epoch*, entries of older epochs read
//! as misses at once, and [`Store::sweep`] returns their memory later.
//! The walks that remain (`invalidate`, `purge_expired`, `sweep`, `visit`)
//! hold a shard lock for one entry at a time, never a whole shard, so a
//! hit waits for one step of a walk at most; callers run them off the
//! request workers (`spawn_blocking`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use super::header_names::{self, NameTable};
use super::key::CacheKey;
use super::listing::{Listing, RING_CAPACITY};
use super::replay::Replay;
use super::stale::StaleWindows;
use super::stored_headers::StoredHeaders;
pub use super::tally::Census;
use super::tally::Tally;
use super::vary::VaryNames;

/// A complete upstream answer, shared by every hit (the body is never copied).
///
/// In declaration order (`repr(C)`), what a hit reads first: at a million
/// entries every entry is cold, and each cache line it touches is a trip to
/// memory. A fresh hit reads the fields up to `status`, which with the
/// `Arc`'s counts in front fit in three lines; the rest serve stale answers,
/// listing, `invalidate`, refills and `refresh`.
#[derive(Debug)]
#[repr(C)]
pub struct Entry {
    pub expires_at: Instant,
    pub stored_at: Instant,
    /// The key this entry is stored under (a `Vary` variant of the request's
    /// base key when `vary` is set).
    pub key: CacheKey,
    /// The request's key before any `Vary` variant (for refills).
    pub base: CacheKey,
    /// Hits served from this entry (for `/api/cache/keys?sort=hottest`).
    pub hits: AtomicU64,
    /// The upstream's own `Age` when the answer arrived, in seconds.
    pub initial_age: u64,
    /// How long the upstream took to produce this answer.
    pub upstream_time: Duration,
    pub body: Bytes,
    /// End-to-end headers only; hop-by-hop ones are dropped before storing.
    pub headers: StoredHeaders,
    pub status: StatusCode,
    /// How long past `expires_at` it may still be served, and for what.
    pub stale: StaleWindows,
    /// The request headers this answer varies on.
    pub vary: Option<VaryNames>,
    pub route: Arc<str>,
    /// `route METHOD path?query body`, matched by `invalidate`.
    pub description: String,
    /// The request to send again on `POST /api/cache/refresh`; `None` when
    /// it carried credentials (see `cache::replay`).
    pub replay: Option<Replay>,
}

/// What the allocator spends per heap block beyond the bytes asked for
/// (its header and the rounding to a size class), on average.
const BLOCK_OVERHEAD: u64 = 16;

/// What the store's own bookkeeping costs per entry: quick_cache's slot
/// (key, [`Slot`], links), its index, and its ghost record of evicted keys.
const SLOT_OVERHEAD: u64 = 128;

/// What one `HeaderMap` bucket costs: name, value, hash and links.
const HEADER_BUCKET: u64 =
    (std::mem::size_of::<http::HeaderName>() + std::mem::size_of::<HeaderValue>() + 32) as u64;

impl Entry {
    /// A plain answer for tests: stored under `key` at `stored_at`, fresh
    /// for an hour, 2.5 s of upstream time, no vary, stale windows or replay.
    #[cfg(test)]
    pub(crate) fn for_test(
        key: CacheKey,
        status: StatusCode,
        headers: StoredHeaders,
        body: Bytes,
        stored_at: Instant,
    ) -> Self {
        Self {
            expires_at: stored_at + Duration::from_secs(3600),
            stored_at,
            key,
            base: key,
            hits: AtomicU64::new(0),
            initial_age: 0,
            upstream_time: Duration::from_millis(2500),
            body,
            headers,
            status,
            stale: StaleWindows::default(),
            vary: None,
            route: "default".into(),
            description: String::new(),
            replay: None,
        }
    }

    /// Bytes this entry holds in memory, as counted against `max_bytes`:
    /// every heap block it owns, its share of the store, and the
    /// allocator's overhead per block (after [`Entry::compacted`], which
    /// makes that the truth; computed once per insert, not per lookup).
    pub fn size(&self) -> u64 {
        let fixed = std::mem::size_of::<Self>() as u64 + 16 + BLOCK_OVERHEAD + SLOT_OVERHEAD;
        let replay = self.replay.as_ref().map_or(0, |r| {
            block(r.path_and_query.capacity() as u64)
                + map_size(&r.headers)
                + packed_size(&r.body, &r.headers, None)
        });
        let names = Some(header_names::table());
        fixed
            + block(self.description.capacity() as u64)
            + block(self.headers.pairs_size())
            + packed_size(&self.body, &self.headers, names)
            + replay
    }

    /// The same answer in one exact-size buffer. A body or header value
    /// that hyper handed over is a slice of its read buffer, and a slice
    /// keeps the whole buffer (8 KiB and up) alive for as long as the entry
    /// lives; a copy makes what the entry holds what [`Entry::size`] counts.
    /// See [`packed`] for why one buffer.
    pub fn compacted(mut self) -> Self {
        let names = Some(header_names::table());
        let (body, fields) = packed(&self.body, &self.headers, names);
        (self.body, self.headers) = (body, fields.into_iter().collect());
        self.description.shrink_to_fit();
        if let Some(replay) = &mut self.replay {
            // A client's field names, read only by a refresh: not shared.
            let (body, fields) = packed(&replay.body, &replay.headers, None);
            (replay.body, replay.headers) = (body, fields.into_iter().collect());
            replay.path_and_query.shrink_to_fit();
        }
        self
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

/// Bytes a header map holds: its buckets and index (by capacity), and
/// each name and value in its own block.
pub(crate) fn headers_size(headers: &HeaderMap) -> u64 {
    map_size(headers)
        + headers
            .iter()
            .map(|(name, value)| block(name.as_str().len() as u64) + block(value.len() as u64))
            .sum::<u64>()
}

/// Bytes a header map's buckets and index hold (by capacity).
fn map_size(headers: &HeaderMap) -> u64 {
    if headers.capacity() == 0 {
        return 0;
    }
    let capacity = headers.capacity() as u64;
    let index = (capacity + capacity / 3).next_power_of_two() * 4;
    block(capacity * HEADER_BUCKET) + block(index)
}

/// Bytes a [`packed`] body and its fields hold besides the block of the
/// fields themselves: the names that are not in the shared table (each in
/// its own block), one buffer for the body and every value, and that
/// buffer's shared control block.
fn packed_size<'a>(
    body: &Bytes,
    fields: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    names: Option<&NameTable>,
) -> u64 {
    let mut bytes = body.len() as u64;
    let mut own_names = 0;
    for (name, value) in fields {
        bytes += value.len() as u64;
        if !names.is_some_and(|names| names.holds(name)) {
            own_names += block(name.as_str().len() as u64);
        }
    }
    let buffer = if bytes == 0 { 0 } else { block(bytes) + 32 };
    own_names + buffer
}

/// A heap block of `len` bytes, as the allocator spends it (none for 0).
fn block(len: u64) -> u64 {
    if len == 0 {
        0
    } else {
        len + BLOCK_OVERHEAD
    }
}

/// `body` and every value of `fields` copied into one exact-size buffer,
/// and handed out as slices of it, beside their names, in order.
///
/// One buffer rather than one per value: each block costs the allocator
/// its overhead, and a hit clones the body and every value. A buffer that
/// was never cloned is a plain allocation that `bytes` turns into a shared
/// one, with a control block and a compare-and-swap, on its first clone;
/// that would be on the first hit of every entry, and once per value. The
/// first slice here pays it once, at store time, so a hit's clones are
/// increments of one count, on one cache line. Names come from `names`
/// ([`header_names`]) when given: a `'static` name has no count to
/// increment.
fn packed<'a, F>(
    body: &Bytes,
    fields: F,
    names: Option<&NameTable>,
) -> (Bytes, Vec<(HeaderName, HeaderValue)>)
where
    // A `&HeaderMap` or a `&StoredHeaders`, read twice.
    F: IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)> + Copy,
{
    let values: usize = fields.into_iter().map(|(_, value)| value.len()).sum();
    let mut buffer = Vec::with_capacity(body.len() + values);
    buffer.extend_from_slice(body);
    for (_, value) in fields {
        buffer.extend_from_slice(value.as_bytes());
    }
    let buffer = Bytes::from(buffer);
    // An empty slice is `Bytes::new()`, which holds nothing.
    let mut at = body.len();
    let body = buffer.slice(..at);
    let fields = fields.into_iter();
    let mut exact = Vec::with_capacity(fields.size_hint().0);
    for (name, value) in fields {
        let range = at..at + value.len();
        at = range.end;
        // The bytes were a valid value already; the check cannot fail.
        let mut copy =
            HeaderValue::from_maybe_shared(buffer.slice(range)).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        let name = names.map_or_else(|| name.clone(), |names| names.shared(name));
        exact.push((name, copy));
    }
    (body, exact)
}

/// What the store keeps under a key: the entry, what it was counted for,
/// and the epoch it was counted in. Cloned on every hit, so it holds no
/// pointer shared by all entries (a shared reference count would be one
/// contended cache line on every hit).
#[derive(Clone)]
struct Slot {
    entry: Arc<Entry>,
    /// [`Entry::size`], computed once: quick_cache weighs values under its
    /// shard lock, repeatedly.
    bytes: u64,
    epoch: u64,
}

#[derive(Clone)]
struct SlotWeighter {
    unit: u64,
}

impl Weighter<CacheKey, Slot> for SlotWeighter {
    fn weight(&self, _key: &CacheKey, slot: &Slot) -> u64 {
        slot.bytes.max(self.unit)
    }
}

/// State the store shares with quick_cache's eviction hook.
struct Shared {
    /// The current clear epoch; slots of older ones are cleared entries.
    epoch: AtomicU64,
    /// The current epoch's figures; swapped by `clear`. Slots of older
    /// epochs are no longer counted anywhere.
    tally: ArcSwap<Tally>,
    /// Current-epoch entries evicted to make room.
    evictions: AtomicU64,
    /// The epoch the last full walk (sweep or purge) left the store in:
    /// when it is the current one, no cleared entry is left to drop.
    swept: AtomicU64,
}

impl Shared {
    /// Takes a removed slot off the tally it was counted in, if that is
    /// still the current one.
    fn uncount(&self, slot: &Slot) {
        let tally = self.tally.load();
        if tally.epoch == slot.epoch {
            tally.remove(slot.bytes, slot.entry.expires_at);
        }
    }
}

/// Takes evicted entries off their tally (quick_cache reports evictions
/// through its lifecycle hooks, and drops them after the shard lock).
#[derive(Clone)]
struct EvictionHook(Arc<Shared>);

impl Lifecycle<CacheKey, Slot> for EvictionHook {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: CacheKey, slot: Slot) {
        self.0.uncount(&slot);
        if slot.epoch == self.0.epoch.load(Ordering::Relaxed) {
            self.0.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Removals a walk makes between two pauses.
const WALK_BATCH: u32 = 1024;

/// How long a walk pauses after each [`WALK_BATCH`] removals.
const WALK_PAUSE: Duration = Duration::from_millis(1);

/// Paces a walk that removes entries (`sweep`, `purge_expired`,
/// `invalidate`). Each removal frees blocks that request workers
/// allocated, and a worker takes such frees back (and hands pages to the
/// OS) in its own next allocation: a walk freeing a million entries at
/// full speed made hits on other keys wait up to 270 ms. Pausing after
/// every batch bounds what a worker meets at once; a walk freeing a
/// million entries takes about a second longer.
#[derive(Default)]
struct Pace {
    removed: u32,
}

impl Pace {
    fn removed(&mut self) {
        self.removed += 1;
        if self.removed == WALK_BATCH {
            self.removed = 0;
            std::thread::sleep(WALK_PAUSE);
        }
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

/// Entries per shard the store aims for: a shard's lock is held for one
/// entry at a time by walks, but inserts and evictions scan within a shard.
const ENTRIES_PER_SHARD: u64 = 4096;

pub struct Store {
    entries: Cache<CacheKey, Slot, SlotWeighter, DefaultHashBuilder, EvictionHook>,
    shared: Arc<Shared>,
    /// When the store started: the origin of the tallies' expiry buckets.
    started: Instant,
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
    /// The recent inserts and the hottest list that `keys` reads without
    /// walking (`cache::listing`); pushed on insert, never on a lookup.
    pub(super) listing: Listing,
    /// Set while a [`Store::sweep`] runs: clears in a row start one.
    sweeping: AtomicBool,
}

impl Store {
    pub fn new(maxsize: u64, max_bytes: u64, max_object_bytes: u64) -> Self {
        let maxsize = maxsize.max(1);
        let unit = (max_bytes / maxsize).max(1);
        // Shards split both budgets; keep each holding >= 32 entries (else
        // quick_cache merges shards itself) and able to take one whole
        // max-size object; past that, about ENTRIES_PER_SHARD each, so that
        // an insert's eviction scan stays short at a million entries.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let mut shards = (cores * 4)
            .max(maxsize / ENTRIES_PER_SHARD)
            .min(maxsize / 32)
            .max(1)
            .next_power_of_two();
        while shards > 1 && (shards * 32 > maxsize || (maxsize / shards) * unit < max_object_bytes)
        {
            shards /= 2;
        }
        let shard_weight = (maxsize / shards) * unit;
        let started = Instant::now();
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            tally: ArcSwap::from_pointee(Tally::new(0, started)),
            evictions: AtomicU64::new(0),
            swept: AtomicU64::new(0),
        });
        let options = OptionsBuilder::new()
            .shards(shards as usize)
            .estimated_items_capacity(maxsize as usize)
            .weight_capacity(shard_weight * shards)
            .build()
            .expect("store options are valid");
        let entries = Cache::with_options(
            options,
            SlotWeighter { unit },
            DefaultHashBuilder::default(),
            EvictionHook(shared.clone()),
        );
        debug_assert_eq!(entries.num_shards() as u64, shards);
        Self {
            entries,
            shared,
            started,
            expirations: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            maxsize,
            max_bytes,
            max_entry_bytes: shard_weight.min(max_object_bytes),
            listing: Listing::new((maxsize as usize).saturating_mul(4).min(RING_CAPACITY)),
            sweeping: AtomicBool::new(false),
        }
    }

    fn epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::Acquire)
    }

    /// The slot under `key`, unless a clear has retired it.
    fn slot(&self, key: &CacheKey) -> Option<Slot> {
        let slot = self.entries.get(key)?;
        (slot.epoch == self.epoch()).then_some(slot)
    }

    /// Removes the slot under `key` if `keep` says no, taking it off its
    /// tally; the entry is dropped after the shard lock is released.
    fn remove_slot_if(&self, key: &CacheKey, remove: impl FnOnce(&Slot) -> bool) -> Option<Slot> {
        let (_, slot) = self.entries.remove_if(key, remove)?;
        self.shared.uncount(&slot);
        Some(slot)
    }

    pub fn get(&self, key: &CacheKey, now: Instant) -> Lookup {
        match self.slot(key) {
            Some(slot) if slot.entry.is_fresh(now) => Lookup::Fresh(slot.entry),
            Some(slot) if now < slot.entry.keep_until() => Lookup::Stale(slot.entry),
            Some(_) => {
                if self
                    .remove_slot_if(key, |s| now >= s.entry.keep_until())
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
        self.slot(key)
            .map(|s| s.entry)
            .filter(|e| e.serves_if_error(now))
    }

    /// The entry stored under `key` now, fresh or not (no hit recorded).
    pub fn peek(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let slot = self.entries.peek(key)?;
        (slot.epoch == self.epoch()).then_some(slot.entry)
    }

    /// Whether `entry` is still the one stored under its key.
    pub fn holds(&self, entry: &Arc<Entry>) -> bool {
        self.peek(&entry.key)
            .is_some_and(|e| Arc::ptr_eq(&e, entry))
    }

    /// Removes `entry` if it is still the one stored under its key (a newer
    /// answer stored meanwhile stays); true when it was removed.
    pub fn remove_entry(&self, entry: &Arc<Entry>) -> bool {
        self.remove_slot_if(&entry.key, |s| Arc::ptr_eq(&s.entry, entry))
            .is_some()
    }

    /// Removes whatever is stored under `key`; true when something was.
    pub fn remove(&self, key: &CacheKey) -> bool {
        self.remove_slot_if(key, |_| true).is_some()
    }

    /// The current clear/invalidate generation; a fill reads it before asking
    /// the upstream and hands it to [`Store::insert`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Stores `entry`, fetched since `generation`, unless it is too heavy or
    /// a clear/invalidate ran since.
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>, generation: u64) -> Result<(), Refused> {
        let bytes = entry.size();
        if bytes > self.max_entry_bytes {
            return Err(Refused::TooLarge);
        }
        if self.generation() != generation {
            return Err(Refused::Outdated);
        }
        let tally = self.shared.tally.load_full();
        let slot = Slot {
            entry: entry.clone(),
            bytes,
            epoch: tally.epoch,
        };
        // Counted before it goes in, so an eviction of the new slot itself
        // (or a concurrent removal) never takes a tally below zero.
        tally.add(bytes, entry.expires_at);
        drop(tally);
        if let Some(replaced) = self.put(key, slot) {
            self.shared.uncount(&replaced);
        }
        // A clear that ran during the insert must win: it bumps the
        // generation before starting a new epoch, so one of the two sees it.
        if self.generation() != generation {
            self.remove_slot_if(&key, |s| Arc::ptr_eq(&s.entry, &entry));
            return Err(Refused::Outdated);
        }
        self.listing.record(&entry);
        Ok(())
    }

    /// Puts `slot` under `key`; returns the slot it replaced. quick_cache's
    /// plain `insert` drops a replaced value without telling anyone; its
    /// `entry` API hands it over, so the tally stays exact. A replacement
    /// is made in place (no instant without an entry, so a refresh never
    /// causes a miss); if the new answer is heavier, the shard may sit one
    /// entry's difference over its share until its next insert evicts.
    fn put(&self, key: CacheKey, slot: Slot) -> Option<Slot> {
        let mut new = Some(slot);
        loop {
            let mut replaced = None;
            let result = self
                .entries
                .entry(&key, Some(Duration::ZERO), |_, current| {
                    if let Some(slot) = new.take() {
                        replaced = Some(std::mem::replace(current, slot));
                    }
                    EntryAction::Retain(())
                });
            match result {
                EntryResult::Retained(()) => return replaced,
                EntryResult::Vacant(guard) => {
                    if let Some(slot) = new.take() {
                        // Err when the placeholder was removed meanwhile:
                        // the slot never went in, so it is not counted.
                        if let Err(slot) = guard.insert(slot) {
                            self.shared.uncount(&slot);
                        }
                    }
                    return None;
                }
                EntryResult::Removed(_, slot) | EntryResult::Replaced(_, slot) => {
                    // Not asked for by the closure above; keep the books right.
                    self.shared.uncount(&slot);
                    return None;
                }
                // Another insert of the same key holds its placeholder for
                // an instant: try again.
                EntryResult::Timeout => std::thread::yield_now(),
            }
        }
    }

    /// Empties the store in O(1): a new epoch starts, every entry of the
    /// previous one reads as a miss from now on, and [`Store::sweep`]
    /// returns their memory. Returns how many entries there were.
    pub fn clear(&self) -> usize {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let epoch = self.epoch() + 1;
        let previous = self
            .shared
            .tally
            .swap(Arc::new(Tally::new(epoch, self.started)));
        self.shared.epoch.store(epoch, Ordering::Release);
        previous.entries()
    }

    /// Whether a [`Store::sweep`] should start now: false while one runs.
    /// The running one removes what the newest clear left too, or, if it
    /// had passed those entries already, the next purge walk does (it
    /// sweeps whenever the last full walk predates the current epoch). So
    /// a loop of `clear` calls walks the store once at a time, not once per
    /// call on as many threads.
    pub fn claim_sweep(&self) -> bool {
        !self.sweeping.swap(true, Ordering::AcqRel)
    }

    /// Removes the entries of epochs before the current one (left by
    /// `clear`); returns how many. Walks the store: run it off the request
    /// workers. Ends the claim [`Store::claim_sweep`] took.
    pub fn sweep(&self) -> usize {
        struct Claim<'a>(&'a AtomicBool);
        impl Drop for Claim<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _claim = Claim(&self.sweeping);
        let epoch = self.epoch();
        let mut removed = 0;
        let mut pace = Pace::default();
        for (key, slot) in self.entries.iter() {
            if slot.epoch != epoch
                && self
                    .remove_slot_if(&key, |s| Arc::ptr_eq(&s.entry, &slot.entry))
                    .is_some()
            {
                removed += 1;
                pace.removed();
            }
        }
        self.shared.swept.store(epoch, Ordering::Release);
        removed
    }

    /// Removes the entries whose description contains `pattern`; returns
    /// how many. Walks the store: run it off the request workers.
    pub fn invalidate(&self, pattern: &str) -> usize {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let epoch = self.epoch();
        let mut removed = 0;
        let mut pace = Pace::default();
        for (key, slot) in self.entries.iter() {
            if slot.epoch == epoch
                && slot.entry.description.contains(pattern)
                && self
                    .remove_slot_if(&key, |s| Arc::ptr_eq(&s.entry, &slot.entry))
                    .is_some()
            {
                removed += 1;
                pace.removed();
            }
        }
        removed
    }

    /// Removes entries whose TTL and stale windows have run out, and those
    /// a clear left behind; returns how many expired. Walks the store: run
    /// it off the request workers.
    pub fn purge_expired(&self, now: Instant) -> usize {
        let epoch = self.epoch();
        // Nothing expired and nothing left by a clear: no walk at all.
        if self.shared.tally.load().census(now).stale == 0
            && self.shared.swept.load(Ordering::Acquire) == epoch
        {
            return 0;
        }
        let mut removed = 0;
        let mut pace = Pace::default();
        for (key, slot) in self.entries.iter() {
            let cleared = slot.epoch != epoch;
            if !cleared && now < slot.entry.keep_until() {
                continue;
            }
            let gone = self.remove_slot_if(&key, |s| Arc::ptr_eq(&s.entry, &slot.entry));
            if gone.is_some() {
                pace.removed();
                if !cleared {
                    removed += 1;
                }
            }
        }
        self.shared.swept.store(epoch, Ordering::Release);
        self.expirations
            .fetch_add(removed as u64, Ordering::Relaxed);
        removed
    }

    /// Calls `visit` with every live entry, expired ones included, until it
    /// returns false. Walks the store, one entry under a shard lock at a
    /// time: run it off the request workers.
    pub fn visit(&self, mut visit: impl FnMut(&Arc<Entry>) -> bool) {
        let epoch = self.epoch();
        for (_, slot) in self.entries.iter() {
            if slot.epoch == epoch && !visit(&slot.entry) {
                return;
            }
        }
    }

    /// Every live entry, expired ones included. Walks the store and holds
    /// them all: for the shutdown snapshot and tests, never a request.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        let mut entries = Vec::with_capacity(self.len());
        self.visit(|entry| {
            entries.push(entry.clone());
            true
        });
        entries
    }

    /// Entries held, stale ones included (what the bounds count). O(1).
    pub fn len(&self) -> usize {
        self.shared.tally.load().entries()
    }

    /// Fresh and stale entries and their bytes, from the running tally
    /// (stale ones counted at most 10 ms after their TTL ends). O(1).
    pub fn census(&self, now: Instant) -> Census {
        self.shared.tally.load().census(now)
    }

    /// The same figures as [`Store::census`], counted by walking every
    /// entry: for tests and diagnostics, never a request.
    pub fn walk_census(&self, now: Instant) -> Census {
        let mut census = Census::default();
        self.visit(|entry| {
            if entry.is_fresh(now) {
                census.fresh += 1;
            } else {
                census.stale += 1;
            }
            census.bytes += entry.size();
            true
        });
        census
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by live entries. O(1).
    pub fn bytes(&self) -> u64 {
        self.shared.tally.load().bytes()
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
        self.shared.evictions.load(Ordering::Relaxed)
    }

    pub fn expirations(&self) -> u64 {
        self.expirations.load(Ordering::Relaxed)
    }

    /// The current clear epoch: a refresh started before a clear stops
    /// when this changes.
    pub fn clear_epoch(&self) -> u64 {
        self.epoch()
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
            headers: StoredHeaders::default(),
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

    fn assert_tally_matches_a_walk(store: &Store, now: Instant) {
        assert_eq!(store.census(now), store.walk_census(now));
        let walked = store.walk_census(now);
        assert_eq!(store.len(), walked.fresh + walked.stale);
        assert_eq!(store.bytes(), walked.bytes);
    }

    #[test]
    fn the_tally_agrees_with_a_walk_through_replacements_and_evictions() {
        let store = Store::new(64, 1 << 20, 1 << 12);
        for i in 0..1_000 {
            store
                .insert(key(i % 300), entry(10 + (i % 7) as usize, "d", HOUR), 0)
                .unwrap();
        }
        assert!(store.evictions() > 0);
        assert!(store.len() <= 64);
        assert_tally_matches_a_walk(&store, Instant::now());
    }

    #[test]
    fn the_tally_agrees_with_a_walk_after_invalidate() {
        let store = Store::new(1000, 1 << 20, 1 << 12);
        for i in 0..200 {
            let description = if i % 10 == 0 {
                "get_metrics Vale"
            } else {
                "get_actions Acme"
            };
            store
                .insert(key(i), entry(10, description, HOUR), 0)
                .unwrap();
        }
        assert_eq!(store.invalidate("Vale"), 20);
        assert_eq!(store.len(), 180);
        assert_tally_matches_a_walk(&store, Instant::now());
    }

    #[test]
    fn the_tally_agrees_with_a_walk_after_removals_by_key() {
        let store = Store::new(1000, 1 << 20, 1 << 12);
        for i in 0..20 {
            store.insert(key(i), entry(10, "d", HOUR), 0).unwrap();
        }
        for i in 0..5 {
            assert!(store.remove(&key(i)));
        }
        assert!(!store.remove(&key(0)));
        assert_eq!(store.len(), 15);
        assert_tally_matches_a_walk(&store, Instant::now());
    }

    #[test]
    fn the_tally_agrees_with_a_walk_after_expiry_and_purge() {
        let store = Store::new(1000, 1 << 20, 1 << 12);
        let mut windowed = Arc::into_inner(entry(10, "w", Duration::from_millis(1))).unwrap();
        windowed.stale.if_error = HOUR;
        store.insert(key(0), Arc::new(windowed), 0).unwrap();
        for i in 1..50 {
            let ttl = if i % 2 == 0 {
                Duration::from_millis(1)
            } else {
                HOUR
            };
            store.insert(key(i), entry(10, "d", ttl), 0).unwrap();
        }
        let later = Instant::now() + Duration::from_secs(2);
        let census = store.census(later);
        assert_eq!((census.fresh, census.stale), (25, 25));
        assert_tally_matches_a_walk(&store, later);
        assert!(matches!(store.get(&key(2), later), Lookup::Miss));
        assert_tally_matches_a_walk(&store, later);
        assert_eq!(store.purge_expired(later), 23);
        assert_eq!(store.expirations(), 24);
        assert_eq!(store.census(later).stale, 1, "kept for stale-if-error");
        assert_tally_matches_a_walk(&store, later);
    }

    #[test]
    fn clear_empties_at_once_and_the_sweep_returns_the_entries() {
        let store = Store::new(1000, 1 << 20, 1 << 12);
        for i in 0..300 {
            store.insert(key(i), entry(10, "d", HOUR), 0).unwrap();
        }
        assert_eq!(store.clear(), 300);
        let now = Instant::now();
        assert_eq!(store.len(), 0);
        assert!(matches!(store.get(&key(1), now), Lookup::Miss));
        assert!(store.peek(&key(1)).is_none());
        assert_eq!(
            store.entries.len(),
            300,
            "released by the sweep, not by clear"
        );
        store
            .insert(key(1), entry(10, "d", HOUR), store.generation())
            .unwrap();
        assert!(store.claim_sweep());
        assert!(!store.claim_sweep(), "one sweep at a time");
        assert_eq!(store.sweep(), 299);
        assert!(store.claim_sweep(), "the sweep ended its claim");
        assert_eq!(store.entries.len(), 1);
        assert_eq!(store.evictions(), 0, "cleared entries are not evictions");
        assert!(matches!(store.get(&key(1), now), Lookup::Fresh(_)));
        assert_tally_matches_a_walk(&store, now);
    }

    #[test]
    fn compacting_copies_a_slice_out_of_its_buffer() {
        let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut loose = Arc::into_inner(entry(0, "d", HOUR)).unwrap();
        loose.body = buffer.slice(0..10);
        let mut fields = HeaderMap::new();
        fields.insert(
            "x-a",
            HeaderValue::from_maybe_shared(buffer.slice(10..20)).unwrap(),
        );
        loose.headers = fields.into();
        let compact = loose.compacted();
        assert_eq!(compact.body.len(), 10);
        assert_eq!(compact.headers.get("x-a").unwrap().len(), 10);
        // The only owner of the big buffer left is `buffer` itself.
        assert!(Vec::<u8>::from(buffer).capacity() >= 64 * 1024);
    }

    #[test]
    fn what_a_fresh_hit_reads_fits_in_the_first_three_cache_lines() {
        use std::mem::{offset_of, size_of};
        // The `Arc`'s two counts come first in its allocation.
        let end = 2 * size_of::<usize>() + offset_of!(Entry, status) + size_of::<StatusCode>();
        assert!(end <= 192, "hot fields end at byte {end}");
        for cold in [
            offset_of!(Entry, stale),
            offset_of!(Entry, vary),
            offset_of!(Entry, route),
            offset_of!(Entry, description),
            offset_of!(Entry, replay),
        ] {
            assert!(cold > offset_of!(Entry, status));
        }
    }

    #[test]
    fn packing_puts_the_body_and_values_in_one_buffer_and_names_in_the_table() {
        let mut fields = HeaderMap::new();
        fields.insert("x-a", HeaderValue::from_static("aaa"));
        fields.insert("x-empty", HeaderValue::from_static(""));
        let mut secret = HeaderValue::from_static("bb");
        secret.set_sensitive(true);
        fields.insert("x-b", secret);
        let names = NameTable::new(8, 64);
        let body = Bytes::from_static(b"0123456789");
        let (body, fields) = packed(&body, &fields, Some(&names));
        let fields: StoredHeaders = fields.into_iter().collect();
        let value = |name: &str| fields.get(name).expect("stored");
        let start = body.as_ptr() as usize;
        let at = |name: &str| value(name).as_bytes().as_ptr() as usize - start;
        assert_eq!(&body[..], b"0123456789");
        assert_eq!((at("x-a"), at("x-b")), (10, 13));
        assert_eq!(value("x-a"), "aaa");
        assert_eq!(value("x-empty"), "");
        assert_eq!(value("x-b"), "bb");
        assert!(value("x-b").is_sensitive());
        assert!(!value("x-a").is_sensitive());
        // One block for body and values, counted once with its control
        // block; the names are the shared table's, counted there.
        assert_eq!(packed_size(&body, &fields, Some(&names)), block(15) + 32);
        assert!(fields.keys().all(|name| names.holds(name)));
        // A name the table could not take is the entry's own, and counted.
        let full = NameTable::new(0, 64);
        assert_eq!(
            packed_size(&body, &fields, Some(&full)),
            block(15) + 32 + [3, 7, 3].map(block).iter().sum::<u64>()
        );
        // Without a table (a replay's client fields) names stay as they came.
        let custom = http::HeaderName::from_static("x-client-field");
        let mut client = HeaderMap::new();
        client.insert(custom.clone(), HeaderValue::from_static("1"));
        let (_, kept) = packed(&Bytes::new(), &client, None);
        assert_eq!(kept[0].0.as_str().as_ptr(), custom.as_str().as_ptr());
    }
}
