//! Who may see which entry: credentials never cross between callers.
//!
//! By default a request carrying any of the credential headers
//! (`Authorization`, `Cookie`) is keyed with a digest of their values, so it
//! only ever meets entries made for the very same credentials, and an
//! anonymous request never meets an authenticated one.
//!
//! A route declared `shared = true` serves one entry to every caller, for
//! data that does not depend on who asks. A credential may read it only
//! after the upstream accepted that same credential (a 2xx) on that route
//! within `auth_ttl`; a 401 or 403 revokes it at once. [`Grants`] keeps
//! those acceptances.

use std::time::{Duration, Instant};

use http::header::HeaderName;
use http::HeaderMap;
use md5::{Digest, Md5};
use quick_cache::sync::Cache;

use super::key::CacheKey;

/// Digest of the request's credential headers, or `None` when it has none.
pub fn credential_digest(request: &HeaderMap, names: &[HeaderName]) -> Option<[u8; 16]> {
    // Most requests carry none: one pass over their few fields tells,
    // where a lookup per configured name hashes each name.
    if !request.keys().any(|field| names.contains(field)) {
        return None;
    }
    let mut hasher = Md5::new();
    for name in names {
        for value in request.get_all(name) {
            hasher.update(name.as_str());
            hasher.update(b":");
            hasher.update(value.as_bytes());
            hasher.update(b"\n");
        }
    }
    Some(hasher.finalize().into())
}

/// Acceptances of credentials by the upstream, per route.
pub struct Grants {
    accepted: Cache<CacheKey, Instant>,
    ttl: Duration,
}

impl Grants {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            accepted: Cache::new(capacity.max(64)),
            ttl,
        }
    }

    fn key(route: &str, credential: &[u8; 16]) -> CacheKey {
        CacheKey::from_bytes(*credential).derive(b"grant", &[route.as_bytes()])
    }

    pub fn is_granted(&self, route: &str, credential: &[u8; 16], now: Instant) -> bool {
        self.accepted
            .get(&Self::key(route, credential))
            .is_some_and(|at| now.saturating_duration_since(at) < self.ttl)
    }

    pub fn grant(&self, route: &str, credential: &[u8; 16], now: Instant) {
        self.accepted.insert(Self::key(route, credential), now);
    }

    pub fn revoke(&self, route: &str, credential: &[u8; 16]) {
        self.accepted.remove(&Self::key(route, credential));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{AUTHORIZATION, COOKIE};
    use http::HeaderValue;

    fn names() -> Vec<HeaderName> {
        vec![AUTHORIZATION, COOKIE]
    }

    fn with(name: HeaderName, value: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, HeaderValue::from_static(value));
        map
    }

    #[test]
    fn anonymous_requests_have_no_credential() {
        assert!(credential_digest(&HeaderMap::new(), &names()).is_none());
    }

    #[test]
    fn different_tokens_have_different_digests() {
        let a = credential_digest(&with(AUTHORIZATION, "Bearer a"), &names());
        let b = credential_digest(&with(AUTHORIZATION, "Bearer b"), &names());
        assert!(a.is_some());
        assert_ne!(a, b);
    }

    #[test]
    fn a_credential_among_other_fields_is_found_and_other_fields_are_not() {
        let mut request = with(http::header::HOST, "example.com");
        request.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(credential_digest(&request, &names()).is_none());
        let alone = credential_digest(&with(COOKIE, "s=1"), &names());
        request.insert(COOKIE, HeaderValue::from_static("s=1"));
        assert!(alone.is_some());
        assert_eq!(credential_digest(&request, &names()), alone);
    }

    #[test]
    fn a_cookie_is_not_confused_with_a_token() {
        let a = credential_digest(&with(AUTHORIZATION, "x"), &names());
        let b = credential_digest(&with(COOKIE, "x"), &names());
        assert_ne!(a, b);
    }

    #[test]
    fn grants_expire_and_can_be_revoked() {
        let grants = Grants::new(10, Duration::from_secs(300));
        let now = Instant::now();
        let cred = [1; 16];
        assert!(!grants.is_granted("r", &cred, now));
        grants.grant("r", &cred, now);
        assert!(grants.is_granted("r", &cred, now));
        assert!(
            !grants.is_granted("other", &cred, now),
            "grants are per route"
        );
        assert!(!grants.is_granted("r", &cred, now + Duration::from_secs(301)));
        grants.revoke("r", &cred);
        assert!(!grants.is_granted("r", &cred, now));
    }
}
