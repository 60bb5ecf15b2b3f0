//! `Vary` (RFC 9111 §4.1): an answer that names request headers in `Vary`
//! is stored per combination of those headers' values.
//!
//! The names are only known once the upstream has answered, so the index
//! remembers, per base key, the names the last stored answer varied on.
//! Lookups then derive the *variant key* from the request's values of those
//! headers; an answer without `Vary` is stored under the base key itself.
//! `Vary: *` never reaches here: such answers are not stored at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::{HeaderName, VARY};
use http::HeaderMap;
use quick_cache::sync::Cache;

use super::key::CacheKey;

/// Request header names an answer varies on: lowercase, sorted, deduplicated.
pub type VaryNames = Arc<[HeaderName]>;

/// The `Vary` names of an answer, or `None` when it does not vary.
pub fn vary_names(response: &HeaderMap) -> Option<VaryNames> {
    let mut names: Vec<HeaderName> = response
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    (!names.is_empty()).then(|| names.into())
}

/// The key of the variant of `base` selected by `request`'s values of `names`.
pub fn variant_key(base: &CacheKey, names: &[HeaderName], request: &HeaderMap) -> CacheKey {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(names.len() * 4);
    for name in names {
        parts.push(name.as_str().as_bytes());
        for value in request.get_all(name) {
            parts.push(b"\x00");
            parts.push(value.as_bytes());
        }
        parts.push(b"\n");
    }
    base.derive(b"vary", &parts)
}

/// Which base keys vary, and on what.
pub struct VaryIndex {
    names: Cache<CacheKey, VaryNames>,
    /// Whether any answer ever varied: until one does (dashboard APIs
    /// rarely send `Vary`), a lookup skips the probe of `names`.
    used: AtomicBool,
}

impl VaryIndex {
    pub fn new(capacity: usize) -> Self {
        Self {
            names: Cache::new(capacity.max(64)),
            used: AtomicBool::new(false),
        }
    }

    /// The key to look `base` up under for this request.
    pub fn storage_key(&self, base: &CacheKey, request: &HeaderMap) -> CacheKey {
        if !self.used.load(Ordering::Acquire) {
            return *base;
        }
        match self.names.get(base) {
            Some(names) => variant_key(base, &names, request),
            None => *base,
        }
    }

    /// Records what the answer just stored for `base` varies on.
    pub fn record(&self, base: CacheKey, names: Option<VaryNames>) {
        match names {
            Some(names) => {
                self.names.insert(base, names);
                self.used.store(true, Ordering::Release);
            }
            None => {
                self.names.remove(&base);
            }
        }
    }

    pub fn clear(&self) {
        self.names.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::map_of as headers;

    fn base() -> CacheKey {
        CacheKey::from_bytes([7; 16])
    }

    #[test]
    fn vary_names_are_normalised() {
        let names = vary_names(&headers(&[
            ("vary", "Accept-Language, accept-encoding"),
            ("vary", "Accept-Language"),
        ]))
        .unwrap();
        let names: Vec<_> = names.iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["accept-encoding", "accept-language"]);
        assert!(vary_names(&HeaderMap::new()).is_none());
    }

    #[test]
    fn different_values_select_different_variants() {
        let names = vary_names(&headers(&[("vary", "accept-language")])).unwrap();
        let pt = variant_key(&base(), &names, &headers(&[("accept-language", "pt-BR")]));
        let en = variant_key(&base(), &names, &headers(&[("accept-language", "en")]));
        let none = variant_key(&base(), &names, &HeaderMap::new());
        assert_ne!(pt, en);
        assert_ne!(pt, none);
        assert_eq!(
            pt,
            variant_key(&base(), &names, &headers(&[("accept-language", "pt-BR")]))
        );
    }

    #[test]
    fn unrelated_headers_do_not_split_variants() {
        let names = vary_names(&headers(&[("vary", "accept-language")])).unwrap();
        let a = variant_key(
            &base(),
            &names,
            &headers(&[("accept-language", "en"), ("x-a", "1")]),
        );
        let b = variant_key(
            &base(),
            &names,
            &headers(&[("accept-language", "en"), ("x-a", "2")]),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn the_index_follows_the_latest_answer() {
        let index = VaryIndex::new(10);
        let request = headers(&[("accept-language", "en")]);
        assert_eq!(index.storage_key(&base(), &request), base());
        index.record(base(), vary_names(&headers(&[("vary", "accept-language")])));
        assert_ne!(index.storage_key(&base(), &request), base());
        index.record(base(), None);
        assert_eq!(index.storage_key(&base(), &request), base());
    }
}
