//! The storage seam: the one interface the pipeline, fills, refresh and the
//! admin API use for entries (lookup, insert, remove, invalidate by
//! pattern, clear, list), whatever holds them.
//!
//! Two shapes, one enum (dispatch is a `match`, no boxing on the hit path):
//!
//! - [`Storage::Memory`]: the bounded in-memory [`Store`] alone, exactly
//!   the proxy's behaviour without Redis;
//! - [`Storage::Tiered`]: the same store as L1 in front of Redis
//!   ([`RedisTier`], L2) shared by every replica. L1 answers first; its
//!   copies of shared entries live at most `redis.l1_ttl` (so a lost
//!   invalidation heals by itself) and never past the entry's own expiry
//!   (both tiers read the same stored timestamps). A miss in L1 asks L2
//!   under the Redis time budget; Redis down or slow turns into L1 alone.
//!
//! Every mutation acts on both tiers: L2 first (so `keys_deleted` counts
//! shared entries), then this L1, then the events channel tells the other
//! replicas' L1 (`events.rs`).

mod connection;
pub mod events;
pub mod figures;
pub mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use tracing::warn;

use self::events::Event;
pub use self::redis::{L2Error, RedisTier};
use super::store::Refused;
use super::{CacheKey, Entry, Lookup, Store};
use crate::background;

/// Why [`Storage::matching_keys`] found nothing to list.
#[derive(Debug)]
pub enum KeysError {
    /// The shared tier could not be asked.
    Shared(L2Error),
    /// The in-memory walk did not complete (it panicked, or the runtime is
    /// shutting down).
    Walk(tokio::task::JoinError),
}

/// Where entries live: memory alone, or memory in front of Redis.
pub enum Storage {
    Memory(Arc<Store>),
    Tiered(Tiered),
}

/// L1 (memory) in front of L2 (Redis).
pub struct Tiered {
    l1: Arc<Store>,
    l2: Arc<RedisTier>,
    /// Until when each L1 copy may answer without asking L2 again
    /// (`redis.l1_ttl` after it entered L1). Sized like L1; a key whose
    /// line was evicted simply asks L2 again.
    l1_until: Cache<CacheKey, Instant>,
    l1_ttl: Duration,
}

impl Storage {
    /// Memory in front of `l2`; starts the health task and the events
    /// listener (so it must run inside the runtime).
    pub fn tiered(l1: Store, l2: RedisTier) -> Self {
        let l1 = Arc::new(l1);
        let l2 = Arc::new(l2);
        l2.spawn_health();
        events::spawn_listener(&l2, &l1);
        let l1_ttl = l2.config().l1_ttl;
        let capacity = (l1.maxsize() as usize).clamp(64, 1 << 20);
        Self::Tiered(Tiered {
            l1,
            l2,
            l1_until: Cache::new(capacity),
            l1_ttl,
        })
    }

    /// The in-memory store (L1 when tiered): its bounds and counters.
    pub fn memory(&self) -> &Store {
        match self {
            Self::Memory(store) => store,
            Self::Tiered(tiered) => &tiered.l1,
        }
    }

    /// The in-memory store as a handle a blocking walk can own.
    fn memory_handle(&self) -> Arc<Store> {
        match self {
            Self::Memory(store) => store.clone(),
            Self::Tiered(tiered) => tiered.l1.clone(),
        }
    }

    /// Removes `pattern`'s entries from memory on a background thread (the
    /// walk visits every entry: never on a request worker).
    async fn invalidate_memory(&self, pattern: &str) -> usize {
        let store = self.memory_handle();
        let pattern = pattern.to_owned();
        background::run("invalidate", move || store.invalidate(&pattern))
            .await
            .unwrap_or(0)
    }

    /// Empties memory at once (by epoch) and releases the cleared entries
    /// on a background thread; returns how many entries memory held.
    fn clear_memory(&self) -> usize {
        let store = self.memory_handle();
        let removed = store.clear();
        if !store.claim_sweep() {
            // One is running; it (or the next purge walk) takes these too.
            return removed;
        }
        // Not awaited: the entries already read as misses; this only
        // returns their memory.
        drop(background::run("sweep", move || {
            let started = std::time::Instant::now();
            let swept = store.sweep();
            tracing::info!(swept, elapsed = ?started.elapsed(), "cleared entries released");
        }));
        removed
    }

    /// The shared tier, when there is one.
    pub fn shared(&self) -> Option<&Arc<RedisTier>> {
        match self {
            Self::Memory(_) => None,
            Self::Tiered(tiered) => Some(&tiered.l2),
        }
    }

    /// The credential part of a key: as computed in memory alone; keyed with
    /// the shared secret when keys leave the process, so nothing in Redis
    /// lets a reader confirm a guessed token.
    pub fn scope_credential(&self, digest: [u8; 16]) -> [u8; 16] {
        match self {
            Self::Memory(_) => digest,
            Self::Tiered(tiered) => tiered.l2.scope_credential(&digest),
        }
    }

    /// What the storage holds for `key` now.
    pub async fn lookup(&self, key: &CacheKey, now: Instant) -> Lookup {
        match self {
            Self::Memory(store) => store.get(key, now),
            Self::Tiered(tiered) => match tiered.local(key, now) {
                Ok(found) => found,
                // Boxed: the Redis round trip's state would otherwise sit in
                // every request's future (see `Proxy::cached`).
                Err(local) => Box::pin(tiered.shared(key, now, local)).await,
            },
        }
    }

    /// What [`Storage::lookup`] finds, when it can tell without I/O: always
    /// in memory alone; with Redis, when memory's answer is current or
    /// Redis is down. `None` when only Redis can tell.
    pub fn lookup_now(&self, key: &CacheKey, now: Instant) -> Option<Lookup> {
        match self {
            Self::Memory(store) => Some(store.get(key, now)),
            Self::Tiered(tiered) => tiered.local(key, now).ok(),
        }
    }

    /// The expired entry under `key` that may answer for a failing upstream.
    pub async fn stale_if_error(&self, key: &CacheKey, now: Instant) -> Option<Arc<Entry>> {
        match self.lookup(key, now).await {
            Lookup::Stale(entry) if entry.serves_if_error(now) => Some(entry),
            Lookup::Fresh(_) | Lookup::Stale(_) | Lookup::Miss => {
                self.memory().stale_if_error(key, now)
            }
        }
    }

    /// The clear/invalidate generation a fill reads before asking upstream.
    pub fn generation(&self) -> u64 {
        self.memory().generation()
    }

    /// Stores `entry` (fetched since `generation`) in every tier.
    pub async fn insert(&self, entry: Arc<Entry>, generation: u64) -> Result<(), Refused> {
        match self {
            Self::Memory(store) => store.insert(entry.key, entry, generation),
            Self::Tiered(tiered) => tiered.insert(entry, generation).await,
        }
    }

    /// Removes `entry` if it is still the one stored (L1), and its key from
    /// the shared tier; true when something was removed.
    pub async fn remove_entry(&self, entry: &Arc<Entry>) -> bool {
        match self {
            Self::Memory(store) => store.remove_entry(entry),
            Self::Tiered(tiered) => {
                let local = tiered.l1.remove_entry(entry);
                let event = Event::Removed(entry.key).message(&tiered.l2.replica);
                let shared = tiered.l2.delete(&entry.key, &event).await;
                local || shared.unwrap_or(false)
            }
        }
    }

    /// Whether `entry` is still current (refresh skips superseded ones).
    pub fn holds(&self, entry: &Arc<Entry>) -> bool {
        match self {
            Self::Memory(store) => store.holds(entry),
            // Refresh found it in L2 a moment ago; a newer one replaces it anyway.
            Self::Tiered(_) => true,
        }
    }

    /// Removes the entries whose description contains `pattern`; returns
    /// how many the shared tier (else memory) held. Fails only when the
    /// shared tier cannot be reached: other replicas would keep them.
    pub async fn invalidate(&self, pattern: &str) -> Result<usize, L2Error> {
        match self {
            Self::Memory(_) => Ok(self.invalidate_memory(pattern).await),
            Self::Tiered(tiered) => {
                let local = self.invalidate_memory(pattern).await;
                let shared = tiered.l2.delete_matching(Some(pattern)).await?;
                // Fills that started before the walk are refused by L1's
                // generation; say it again for replicas that stored meanwhile.
                self.invalidate_memory(pattern).await;
                let event = Event::Invalidated(pattern.to_owned()).message(&tiered.l2.replica);
                tiered.announce(&event).await;
                tracing::debug!(
                    l1_removed = local,
                    shared_removed = shared,
                    "invalidated both tiers"
                );
                Ok(shared)
            }
        }
    }

    /// Removes every entry; returns how many the shared tier (else memory) held.
    pub async fn clear(&self) -> Result<usize, L2Error> {
        match self {
            Self::Memory(_) => Ok(self.clear_memory()),
            Self::Tiered(tiered) => {
                self.clear_memory();
                let shared = tiered.l2.delete_matching(None).await?;
                self.clear_memory();
                tiered
                    .announce(&Event::Cleared.message(&tiered.l2.replica))
                    .await;
                Ok(shared)
            }
        }
    }

    /// The keys of the entries whose description contains `pattern` (all
    /// for ""), for refresh: every shared entry when tiered, whichever
    /// replica stored it. Memory is walked on a blocking thread.
    pub async fn matching_keys(&self, pattern: &str) -> Result<Vec<CacheKey>, KeysError> {
        match self {
            Self::Memory(store) => {
                let store = store.clone();
                let pattern = pattern.to_owned();
                tokio::task::spawn_blocking(move || {
                    let mut keys = Vec::new();
                    store.visit(|entry| {
                        if entry.description.contains(&pattern) {
                            keys.push(entry.key);
                        }
                        true
                    });
                    keys
                })
                .await
                .map_err(KeysError::Walk)
            }
            Self::Tiered(tiered) => tiered.l2.matching(pattern).await.map_err(KeysError::Shared),
        }
    }

    /// Every entry in memory (for the admin listing), expired ones included.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.memory().entries()
    }
}

impl Tiered {
    /// Memory's answer when it is the lookup's: Redis is down, or the
    /// entry in memory is still within `redis_l1_ttl`. Otherwise memory's
    /// answer as `Err`, for [`Tiered::shared`] to fall back on.
    fn local(&self, key: &CacheKey, now: Instant) -> Result<Lookup, Lookup> {
        let local = self.l1.get(key, now);
        if !self.l2.is_up() {
            // Redis down: L1 answers alone, as if there were no Redis.
            return Ok(local);
        }
        let current = !matches!(local, Lookup::Miss)
            && self.l1_until.get(key).is_some_and(|until| now < until);
        if current {
            Ok(local)
        } else {
            Err(local)
        }
    }

    /// The lookup's answer from Redis, or `local` when Redis fails.
    async fn shared(&self, key: &CacheKey, now: Instant, local: Lookup) -> Lookup {
        match self.l2.get(key).await {
            Ok(Some(entry)) if now < entry.keep_until() => {
                let entry = Arc::new(entry);
                self.admit(&entry, now);
                if entry.is_fresh(now) {
                    Lookup::Fresh(entry)
                } else {
                    Lookup::Stale(entry)
                }
            }
            Ok(_) => {
                // Gone from the shared tier (invalidated, expired, evicted).
                self.l1.remove(key);
                Lookup::Miss
            }
            Err(_) => local,
        }
    }

    /// Keeps a copy of a shared entry in L1 for at most `l1_ttl`.
    fn admit(&self, entry: &Arc<Entry>, now: Instant) {
        let generation = self.l1.generation();
        if self.l1.insert(entry.key, entry.clone(), generation).is_ok() {
            self.l1_until.insert(entry.key, now + self.l1_ttl);
        }
    }

    async fn insert(&self, entry: Arc<Entry>, generation: u64) -> Result<(), Refused> {
        self.l1.insert(entry.key, entry.clone(), generation)?;
        self.l1_until
            .insert(entry.key, Instant::now() + self.l1_ttl);
        let event = Event::Stored(entry.key).message(&self.l2.replica);
        if let Err(err) = self.l2.put(&entry, &event).await {
            // Kept in L1: Redis down is no worse than no Redis.
            warn!(key = %entry.key.short(), error = err.as_str(), "entry not written to redis; kept in memory");
        }
        Ok(())
    }

    /// Tells the other replicas, with a budget fit for an admin call.
    async fn announce(&self, message: &str) {
        if let Err(err) = self.l2.publish(message, Some(Duration::from_secs(2))).await {
            warn!(error = err.as_str(), "invalidation not announced; other replicas' memory copies expire within redis.l1_ttl");
        }
    }
}

/// The in-memory store's figures, read through the seam (stats, tests).
impl Storage {
    pub fn len(&self) -> usize {
        self.memory().len()
    }

    pub fn is_empty(&self) -> bool {
        self.memory().is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.memory().bytes()
    }

    pub fn census(&self, now: Instant) -> super::Census {
        self.memory().census(now)
    }

    pub fn purge_expired(&self, now: Instant) -> usize {
        self.memory().purge_expired(now)
    }

    pub fn maxsize(&self) -> u64 {
        self.memory().maxsize()
    }

    pub fn max_bytes(&self) -> u64 {
        self.memory().max_bytes()
    }

    pub fn max_entry_bytes(&self) -> u64 {
        self.memory().max_entry_bytes()
    }

    pub fn evictions(&self) -> u64 {
        self.memory().evictions()
    }

    pub fn expirations(&self) -> u64 {
        self.memory().expirations()
    }
}
