//! What may be stored, and for how long (pure; RFC 9111 where it applies).
//!
//! A response is stored only when its status is in the configured list and
//! nothing in it forbids a shared cache from keeping it: `Set-Cookie`
//! (another user's session), `Cache-Control: no-store`, `private` or
//! `no-cache` (we never revalidate), `Vary: *`. The origin's `s-maxage`,
//! else `max-age`, minus its `Age`, replaces the default TTL.

use std::time::Duration;

use http::header::{AGE, CACHE_CONTROL, SET_COOKIE, VARY};
use http::{HeaderMap, Method, StatusCode};

/// Why an answer was not stored; `as_str` feeds logs and `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    Status(StatusCode),
    SetCookie,
    NoStore,
    Private,
    NoCache,
    VaryStar,
    /// The origin's max-age is already used up.
    Expired,
    /// Larger than one entry may be.
    TooLarge,
}

impl NotStorable {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::SetCookie => "set-cookie",
            Self::NoStore => "no-store",
            Self::Private => "private",
            Self::NoCache => "no-cache",
            Self::VaryStar => "vary-star",
            Self::Expired => "expired",
            Self::TooLarge => "too-large",
        }
    }
}

/// Methods whose answers may come from the cache. PUT, PATCH, DELETE and
/// the rest always go upstream.
pub fn is_cacheable_method(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::POST)
}

/// The TTL to store this answer with, or why it must not be stored.
pub fn storable_ttl(
    status: StatusCode,
    headers: &HeaderMap,
    default_ttl: Duration,
    cacheable_statuses: &[StatusCode],
) -> Result<Duration, NotStorable> {
    if !cacheable_statuses.contains(&status) {
        return Err(NotStorable::Status(status));
    }
    if headers.contains_key(SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    if headers.get_all(VARY).iter().any(|v| {
        v.to_str()
            .map_or(true, |v| v.split(',').any(|f| f.trim() == "*"))
    }) {
        return Err(NotStorable::VaryStar);
    }
    let mut max_age = None;
    let mut s_maxage = None;
    for directive in cache_control(headers) {
        let (name, value) = match directive.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (directive, None),
        };
        let seconds = || value.and_then(|v| v.parse::<u64>().ok());
        match name.to_ascii_lowercase().as_str() {
            "no-store" => return Err(NotStorable::NoStore),
            "private" => return Err(NotStorable::Private),
            "no-cache" => return Err(NotStorable::NoCache),
            "max-age" => max_age = seconds(),
            "s-maxage" => s_maxage = seconds(),
            _ => {}
        }
    }
    match s_maxage.or(max_age) {
        None => Ok(default_ttl),
        Some(lifetime) => {
            let age = headers
                .get(AGE)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                .unwrap_or(0);
            match lifetime.saturating_sub(age) {
                0 => Err(NotStorable::Expired),
                left => Ok(Duration::from_secs(left)),
            }
        }
    }
}

/// Whether an answer that was not stored may still be handed to the
/// callers coalesced behind the one that fetched it. Only answers refused
/// for their status (a 500, a 404) qualify, and only when nothing marks
/// them personal (`Set-Cookie`, `private`, `no-store`, `no-cache`) or
/// dependent on request headers (`Vary`).
pub fn shareable(reason: NotStorable, headers: &HeaderMap) -> bool {
    matches!(reason, NotStorable::Status(_))
        && !headers.contains_key(SET_COOKIE)
        && !headers.contains_key(VARY)
        && !cache_control(headers).any(|d| {
            let name = d.split('=').next().unwrap_or_default().trim();
            ["private", "no-store", "no-cache"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
        })
}

/// True when the client's `Cache-Control` asks to skip stored answers.
pub fn client_wants_fresh(headers: &HeaderMap) -> bool {
    cache_control(headers)
        .any(|d| d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("max-age=0"))
}

fn cache_control(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const TTL: Duration = Duration::from_secs(14400);
    const OK: &[StatusCode] = &[StatusCode::OK];

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn ttl_of(pairs: &[(&'static str, &'static str)]) -> Result<Duration, NotStorable> {
        storable_ttl(StatusCode::OK, &headers(pairs), TTL, OK)
    }

    #[test]
    fn a_plain_200_gets_the_default_ttl() {
        assert_eq!(ttl_of(&[]), Ok(TTL));
    }

    #[test]
    fn only_listed_statuses_are_stored() {
        assert_eq!(
            storable_ttl(
                StatusCode::INTERNAL_SERVER_ERROR,
                &HeaderMap::new(),
                TTL,
                OK
            ),
            Err(NotStorable::Status(StatusCode::INTERNAL_SERVER_ERROR))
        );
        assert_eq!(
            storable_ttl(
                StatusCode::NOT_FOUND,
                &HeaderMap::new(),
                TTL,
                &[StatusCode::OK, StatusCode::NOT_FOUND]
            ),
            Ok(TTL)
        );
    }

    #[test]
    fn set_cookie_is_never_stored() {
        assert_eq!(
            ttl_of(&[("set-cookie", "s=1")]),
            Err(NotStorable::SetCookie)
        );
    }

    #[test]
    fn no_store_private_and_no_cache_forbid_storing() {
        assert_eq!(
            ttl_of(&[("cache-control", "no-store")]),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            ttl_of(&[("cache-control", "max-age=60, Private")]),
            Err(NotStorable::Private)
        );
        assert_eq!(
            ttl_of(&[("cache-control", "no-cache")]),
            Err(NotStorable::NoCache)
        );
    }

    #[test]
    fn vary_star_is_never_stored() {
        assert_eq!(
            ttl_of(&[("vary", "Accept-Encoding, *")]),
            Err(NotStorable::VaryStar)
        );
        assert_eq!(ttl_of(&[("vary", "Accept-Encoding")]), Ok(TTL));
    }

    #[test]
    fn s_maxage_beats_max_age_and_age_is_subtracted() {
        assert_eq!(
            ttl_of(&[("cache-control", "max-age=60")]),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            ttl_of(&[("cache-control", "max-age=60, s-maxage=600")]),
            Ok(Duration::from_secs(600))
        );
        assert_eq!(
            ttl_of(&[("cache-control", "max-age=60"), ("age", "20")]),
            Ok(Duration::from_secs(40))
        );
        assert_eq!(
            ttl_of(&[("cache-control", "max-age=0")]),
            Err(NotStorable::Expired)
        );
    }

    #[test]
    fn only_impersonal_error_answers_are_shared_with_waiters() {
        let err = NotStorable::Status(StatusCode::INTERNAL_SERVER_ERROR);
        assert!(shareable(err, &HeaderMap::new()));
        assert!(!shareable(err, &headers(&[("set-cookie", "a=1")])));
        assert!(!shareable(err, &headers(&[("cache-control", "private")])));
        assert!(!shareable(err, &headers(&[("vary", "accept-language")])));
        assert!(!shareable(
            NotStorable::SetCookie,
            &headers(&[("set-cookie", "a=1")])
        ));
        assert!(!shareable(NotStorable::NoStore, &HeaderMap::new()));
    }

    #[test]
    fn only_get_head_and_post_are_cacheable_methods() {
        assert!(is_cacheable_method(&Method::POST));
        assert!(is_cacheable_method(&Method::HEAD));
        assert!(!is_cacheable_method(&Method::PUT));
        assert!(!is_cacheable_method(&Method::PATCH));
        assert!(!is_cacheable_method(&Method::DELETE));
    }

    #[test]
    fn client_no_cache_is_recognised() {
        assert!(client_wants_fresh(&headers(&[(
            "cache-control",
            "no-cache"
        )])));
        assert!(client_wants_fresh(&headers(&[(
            "cache-control",
            "max-age=0"
        )])));
        assert!(!client_wants_fresh(&headers(&[(
            "cache-control",
            "max-age=60"
        )])));
    }
}
