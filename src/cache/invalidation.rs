//! Invalidation after unsafe methods (RFC 9111 §4.4): a non-error answer
//! to a request whose method is not safe makes the entries stored for its
//! target URI, and for the same-origin `Location` / `Content-Location` it
//! names, unusable.
//!
//! Entries are keyed by a digest of the whole request (and its `Vary`
//! variant), so the URI alone cannot name them all. Instead the base key
//! that a GET of the URI would have gets a tombstone with the instant of
//! the invalidation; an entry of that base key stored before the tombstone
//! is treated as absent (and dropped) by the next lookup, whatever its
//! variant. Tombstones live in a bounded map: one evicted after
//! `capacity` newer ones lets older entries of its URI be served again,
//! which is why the capacity follows the store's (four per entry).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http::Uri;
use quick_cache::sync::Cache;

use super::key::CacheKey;
use super::store::Entry;

/// Base keys invalidated since their entries were stored.
pub struct Invalidations {
    /// Base key → when it was last invalidated. A bounded cache, as the
    /// other side indexes are; lock-free reads on every lookup.
    tombstones: Cache<CacheKey, Instant>,
    /// False until the first invalidation: a cache that never sees an
    /// unsafe request (the dashboard's usual life) skips the map on hits.
    any: AtomicBool,
}

impl Invalidations {
    pub fn new(capacity: usize) -> Self {
        Self {
            tombstones: Cache::new(capacity.max(1)),
            any: AtomicBool::new(false),
        }
    }

    /// Marks every entry of `base` stored until `now` as invalidated.
    pub fn record(&self, base: CacheKey, now: Instant) {
        self.tombstones.insert(base, now);
        self.any.store(true, Ordering::Release);
    }

    /// True when `entry` was stored before its base key was invalidated.
    pub fn covers(&self, entry: &Entry) -> bool {
        self.any.load(Ordering::Acquire)
            && self
                .tombstones
                .get(&entry.base)
                .is_some_and(|at| entry.stored_at <= at)
    }

    pub fn clear(&self) {
        self.tombstones.clear();
    }
}

/// The path and query a `Location` or `Content-Location` value names, when
/// it is the same origin as the request: a relative reference (resolved
/// against `request_path`), or an absolute URI whose authority is the
/// request's `Host` or the upstream's own (whose base path is then taken
/// off). Anything else is another origin and must not invalidate.
pub fn same_origin_target(
    value: &str,
    request_path: &str,
    host: Option<&str>,
    upstream_authority: &str,
    upstream_base_path: &str,
) -> Option<(String, Option<String>)> {
    let value = value.trim();
    if value.is_empty() || value.starts_with("//") {
        return None;
    }
    if value.contains("://") {
        let uri: Uri = value.parse().ok()?;
        let authority = uri.authority()?;
        let authority = authority.as_str();
        let path = uri.path();
        let path = if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
            path.to_owned()
        } else if upstream_authority.eq_ignore_ascii_case(authority) {
            let rest = path.strip_prefix(upstream_base_path)?;
            if rest.starts_with('/') {
                rest.to_owned()
            } else {
                format!("/{rest}")
            }
        } else {
            return None;
        };
        return Some((path, uri.query().map(str::to_owned)));
    }
    let (path, query) = match value.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (value, None),
    };
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        let dir = &request_path[..request_path.rfind('/').map_or(0, |i| i + 1)];
        format!("{}{path}", if dir.is_empty() { "/" } else { dir })
    };
    Some((path, query))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(value: &str) -> Option<(String, Option<String>)> {
        same_origin_target(
            value,
            "/api/items/7",
            Some("proxy.example:8080"),
            "origin.internal:8000",
            "/v1",
        )
    }

    #[test]
    fn an_absolute_path_is_taken_as_is() {
        assert_eq!(
            target("/api/list?page=2"),
            Some(("/api/list".into(), Some("page=2".into())))
        );
    }

    #[test]
    fn a_relative_reference_resolves_against_the_request_path() {
        assert_eq!(target("8"), Some(("/api/items/8".into(), None)));
    }

    #[test]
    fn the_proxys_own_host_is_the_same_origin() {
        assert_eq!(
            target("http://proxy.example:8080/api/x"),
            Some(("/api/x".into(), None))
        );
    }

    #[test]
    fn the_upstreams_authority_is_the_same_origin_without_its_base_path() {
        assert_eq!(
            target("http://origin.internal:8000/v1/api/x"),
            Some(("/api/x".into(), None))
        );
        assert_eq!(target("http://origin.internal:8000/other"), None);
    }

    #[test]
    fn another_origin_never_invalidates() {
        assert_eq!(target("http://elsewhere.example/api/x"), None);
        assert_eq!(target("//elsewhere.example/api/x"), None);
        assert_eq!(target(""), None);
    }
}
