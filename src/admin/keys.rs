//! `GET /api/cache/keys`: the live entries, filtered by `pattern`, sorted
//! newest or hottest first, and bounded by `limit`.
//!
//! Without a pattern, nothing walks the store: `matched` is the fresh-entry
//! counter, `sort=newest` reads the ring of recent inserts and
//! `sort=hottest` the top list recomputed at most every 10 s
//! (`cache::listing`, whose docs give the staleness bound). With a pattern
//! the listing walks the store (matching needs every description), so its
//! cost is proportional to the store's size; it runs on a blocking thread,
//! one entry under a shard lock at a time, keeping only the best `limit` in
//! a heap: a hit never waits for it and its memory is O(limit).

use std::cmp::{Ordering as Order, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::{Response, StatusCode};
use serde::Serialize;

use crate::body::ProxyBody;
use crate::cache::listing;
use crate::cache::volatile::VolatileField;
use crate::cache::Entry;
use crate::error::ProxyError;
use crate::proxy::Proxy;
use crate::respond;

/// The order `keys` lists entries in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum KeyOrder {
    /// Most recently stored first.
    Newest,
    /// Most hits first (newest first among equals).
    Hottest,
}

const DEFAULT_KEYS_LIMIT: usize = 100;
const MAX_KEYS_LIMIT: usize = 10_000;
// The ring and the top list must be able to answer the largest limit.
const _: () = assert!(listing::RING_CAPACITY >= 4 * MAX_KEYS_LIMIT);
const _: () = assert!(listing::HOT_LIST_LEN >= MAX_KEYS_LIMIT);

#[derive(Serialize)]
struct KeysAnswer {
    status: &'static str,
    /// Live entries matching the pattern (before `limit`).
    matched: usize,
    count: usize,
    sort: KeyOrder,
    keys: Vec<KeyInfo>,
    /// Per route, the fields suspected of changing on every request.
    volatile_fields: BTreeMap<String, Vec<VolatileField>>,
}

#[derive(Serialize)]
struct KeyInfo {
    key: String,
    route: String,
    description: String,
    age_s: u64,
    ttl_left_s: u64,
    bytes: u64,
    hits: u64,
}

/// `GET /api/cache/keys?pattern=&limit=&sort=newest|hottest`: the live
/// entries whose description contains `pattern` (all when absent).
pub(super) async fn keys(
    proxy: &Arc<Proxy>,
    query: Option<&str>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut pattern = String::new();
    let mut limit = DEFAULT_KEYS_LIMIT;
    let mut order = KeyOrder::Newest;
    for (name, value) in query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
    {
        match &*name {
            "pattern" => pattern = value.into_owned(),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_KEYS_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ProxyError::AdminParameter(format!(
                            "query parameter 'limit' must be a number from 1 to {MAX_KEYS_LIMIT}, not '{value}'"
                        ))
                    })?;
            }
            "sort" => {
                order = match &*value {
                    "newest" => KeyOrder::Newest,
                    "hottest" => KeyOrder::Hottest,
                    other => {
                        return Err(ProxyError::AdminParameter(format!(
                            "query parameter 'sort' must be 'newest' or 'hottest', not '{other}'"
                        )))
                    }
                };
            }
            _ => {}
        }
    }
    let now = Instant::now();
    let walker = proxy.clone();
    let (matched, best) =
        tokio::task::spawn_blocking(move || list(&walker, &pattern, order, limit, now))
            .await
            .map_err(|source| ProxyError::AdminTask {
                task: "keys listing",
                source,
            })?;
    let keys: Vec<KeyInfo> = best
        .into_iter()
        .map(|Ranked { hits, entry: e, .. }| KeyInfo {
            key: e.key.to_string(),
            route: e.route.to_string(),
            description: e.description.clone(),
            age_s: e.age(now),
            ttl_left_s: e.ttl_left(now).as_secs(),
            bytes: e.size(),
            hits,
        })
        .collect();
    Ok(respond::json(
        StatusCode::OK,
        &KeysAnswer {
            status: "ok",
            matched,
            count: keys.len(),
            sort: order,
            keys,
            volatile_fields: volatile_fields(proxy),
        },
    ))
}

/// One listed entry with what it is ranked by; `Ord` puts the entry that
/// should be listed first as the greatest.
struct Ranked {
    hits: u64,
    order: KeyOrder,
    entry: Arc<Entry>,
}

impl Ranked {
    fn rank(&self) -> (u64, Instant) {
        match self.order {
            KeyOrder::Newest => (0, self.entry.stored_at),
            KeyOrder::Hottest => (self.hits, self.entry.stored_at),
        }
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Order::Equal
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Order> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Order {
        self.rank().cmp(&other.rank())
    }
}

/// How many fresh entries match `pattern`, and the first `limit` of them
/// in `order`: without a pattern from the counters, the ring and the top
/// list; with one (or when the ring holds fewer live entries than asked and
/// the store has more) by a walk.
fn list(
    proxy: &Proxy,
    pattern: &str,
    order: KeyOrder,
    limit: usize,
    now: Instant,
) -> (usize, Vec<Ranked>) {
    if !pattern.is_empty() {
        return best_entries(proxy, pattern, order, limit, now);
    }
    let store = proxy.store.memory();
    let matched = store.census(now).fresh;
    let ranked = match order {
        KeyOrder::Newest => {
            let newest = store.newest(limit, now);
            if newest.len() < limit.min(matched) {
                tracing::debug!(
                    listed = newest.len(),
                    fresh = matched,
                    "recent inserts too few for the keys listing; walking the store"
                );
                return best_entries(proxy, pattern, order, limit, now);
            }
            newest
                .into_iter()
                .map(|entry| Ranked {
                    hits: entry.hits.load(Ordering::Relaxed),
                    order,
                    entry,
                })
                .collect()
        }
        KeyOrder::Hottest => store
            .hottest(limit, now)
            .into_iter()
            .map(|(hits, entry)| Ranked { hits, order, entry })
            .collect(),
    };
    (matched, ranked)
}

/// Walks the store for the fresh entries matching `pattern`: how many
/// there are, and the first `limit` of them in `order`.
fn best_entries(
    proxy: &Proxy,
    pattern: &str,
    order: KeyOrder,
    limit: usize,
    now: Instant,
) -> (usize, Vec<Ranked>) {
    let mut matched = 0;
    // A min-heap of the best `limit` so far: its top is the one to drop.
    let mut best: BinaryHeap<Reverse<Ranked>> = BinaryHeap::with_capacity(limit + 1);
    proxy.store.memory().visit(|entry| {
        if entry.is_fresh(now) && entry.description.contains(pattern) {
            matched += 1;
            best.push(Reverse(Ranked {
                hits: entry.hits.load(Ordering::Relaxed),
                order,
                entry: entry.clone(),
            }));
            if best.len() > limit {
                best.pop();
            }
        }
        true
    });
    let mut best: Vec<Ranked> = best.into_iter().map(|Reverse(r)| r).collect();
    best.sort_by(|a, b| b.cmp(a));
    (matched, best)
}

/// Every route's suspected volatile fields (routes without any left out).
fn volatile_fields(proxy: &Proxy) -> BTreeMap<String, Vec<VolatileField>> {
    proxy.volatile.reports()
}
