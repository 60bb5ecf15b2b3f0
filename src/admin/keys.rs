//! `GET /api/cache/keys`: the live entries, filtered by `pattern`, sorted
//! newest or hottest first, and bounded by `limit`.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::{Response, StatusCode};
use serde::Serialize;

use crate::body::ProxyBody;
use crate::cache::volatile::VolatileField;
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
pub(super) fn keys(proxy: &Proxy, query: Option<&str>) -> Result<Response<ProxyBody>, ProxyError> {
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
    let mut entries: Vec<_> = proxy
        .store
        .entries()
        .into_iter()
        .filter(|e| e.is_fresh(now) && e.description.contains(&pattern))
        .map(|e| (e.hits.load(Ordering::Relaxed), e))
        .collect();
    match order {
        KeyOrder::Newest => entries.sort_by_key(|e| Reverse(e.1.stored_at)),
        KeyOrder::Hottest => entries.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| b.1.stored_at.cmp(&a.1.stored_at))
        }),
    }
    let matched = entries.len();
    let keys: Vec<KeyInfo> = entries
        .into_iter()
        .take(limit)
        .map(|(hits, e)| KeyInfo {
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

/// Every route's suspected volatile fields (routes without any left out).
fn volatile_fields(proxy: &Proxy) -> BTreeMap<String, Vec<VolatileField>> {
    proxy.volatile.reports()
}
