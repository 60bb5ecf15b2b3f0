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

use super::key::{CacheKey, MemoSecret};

/// Digest of the request's credential headers, or `None` when it has none.
pub fn credential_digest(request: &HeaderMap, names: &[HeaderName]) -> Option<[u8; 16]> {
    let mut hasher = Md5::new();
    write_credentials(request, names, |bytes| hasher.update(bytes))
        .then(|| hasher.finalize().into())
}

/// Writes the request's credential headers as their digest reads them
/// (`name:value\n` for each value, names in the configured order, which
/// neither a name nor a value can blur); false, with nothing written, when
/// it has none.
fn write_credentials(
    request: &HeaderMap,
    names: &[HeaderName],
    mut write: impl FnMut(&[u8]),
) -> bool {
    // Most requests carry none: one pass over their few fields tells,
    // where a lookup per configured name hashes each name.
    if !request.keys().any(|field| names.contains(field)) {
        return false;
    }
    for name in names {
        for value in request.get_all(name) {
            write(name.as_str().as_bytes());
            write(b":");
            write(value.as_bytes());
            write(b"\n");
        }
    }
    true
}

/// Credential digests remembered by a keyed hash of the credentials as
/// sent: [`credential_digest`] at a quarter of its cost.
///
/// md5 takes about ten instructions per byte, so a session cookie or a
/// bearer token of a few KB cost a hit more than everything else it does
/// (62k instructions for a 6 KB cookie, against 15k for a whole hit
/// without one), and a client sends the same credentials with every
/// request. The memo's slot is SipHash-1-3 under a secret of its own, as
/// [`KeyMemo`](super::KeyMemo)'s: about 2.5 instructions per byte, and a
/// keyed PRF, so nobody who does not know the secret can make two
/// credentials share a slot. A pure function cache, bounded, 32 bytes per
/// credential: never stale, and the digest itself (what keys and the Redis
/// tier use) is unchanged.
pub struct CredentialDigests {
    digests: Cache<CacheKey, [u8; 16]>,
    secret: MemoSecret,
}

impl CredentialDigests {
    pub fn new(capacity: usize) -> Self {
        Self {
            digests: Cache::new(capacity.max(64)),
            secret: MemoSecret::random(),
        }
    }

    /// [`credential_digest`] of the request, from the memo when its
    /// credentials were seen before.
    pub fn digest(&self, request: &HeaderMap, names: &[HeaderName]) -> Option<[u8; 16]> {
        use std::hash::Hasher;
        let mut raw = self.secret.hasher();
        if !write_credentials(request, names, |bytes| raw.write(bytes)) {
            return None;
        }
        let slot = MemoSecret::slot(&raw);
        if let Some(digest) = self.digests.get(&slot) {
            return Some(digest);
        }
        let digest = credential_digest(request, names)?;
        self.digests.insert(slot, digest);
        Some(digest)
    }
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
    fn remembered_digests_are_the_digests_and_remembered_once_per_credential() {
        let memo = CredentialDigests::new(100);
        let other = CredentialDigests::new(100);
        let mut both = with(AUTHORIZATION, "Bearer a");
        both.append(COOKIE, HeaderValue::from_static("s=1"));
        both.append(COOKIE, HeaderValue::from_static("t=2"));
        let cookie_first = vec![COOKIE, AUTHORIZATION];
        let cases = [
            (HeaderMap::new(), names()),
            (with(http::header::HOST, "example.com"), names()),
            (with(AUTHORIZATION, "Bearer a"), names()),
            (with(AUTHORIZATION, "Bearer b"), names()),
            (with(COOKIE, "Bearer a"), names()),
            (both.clone(), names()),
            // The configured order is part of what the digest reads.
            (both, cookie_first),
        ];
        for round in 0..2 {
            for (request, names) in &cases {
                let digest = credential_digest(request, names);
                assert_eq!(memo.digest(request, names), digest, "round {round}");
                assert_eq!(other.digest(request, names), digest, "another secret");
            }
        }
        // The five with credentials, each once; the anonymous ones not at all.
        assert_eq!(memo.digests.len(), 5);
        let digests: std::collections::HashSet<_> = cases
            .iter()
            .filter_map(|(r, n)| memo.digest(r, n))
            .collect();
        assert_eq!(digests.len(), 5, "every credential its own digest");
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
