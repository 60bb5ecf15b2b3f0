//! What may be stored, and for how long (pure; RFC 9111 where it applies).
//!
//! [`assess`] reads an upstream answer once and says whether a shared cache
//! may keep it, for how long it is fresh, how old it already is, and which
//! fields the stored copy must leave out. The governing directives are the
//! first configured targeted field present (`CDN-Cache-Control`, RFC 9213),
//! else `Cache-Control`. Freshness is `s-maxage`, else `max-age`, else
//! `Expires` − `Date` (an invalid `Expires` means already expired), else the
//! mode's default: the configured TTL (dashboard) or a heuristic of 10 % of
//! the time since `Last-Modified` capped at the TTL (RFC 9111 §4.2.2), or
//! nothing. `Age` and the answer's `Date` give its age on arrival (§4.2.3).
//! An answer that is already stale, or marked `no-cache`, is kept only when
//! it carries a validator, so that it can be revalidated (§4.3).

use std::time::{Duration, SystemTime};

use http::header::{HeaderName, AUTHORIZATION, DATE, ETAG, LAST_MODIFIED, SET_COOKIE, VARY};
use http::{HeaderMap, Method, StatusCode};

pub use super::directives::Directives;
use super::freshness::{expires_lifetime, heuristic, http_date, initial_age};

/// Which rules the cache follows (`[cache] mode`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// The seed's behaviour: header-less 200s cached for the TTL, POSTs on
    /// caching routes are reads, the client's `Cache-Control` ignored.
    #[default]
    Dashboard,
    /// A shared HTTP cache per RFC 9111 and RFC 9213.
    Standard,
}

impl CacheMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Dashboard => "dashboard",
            Self::Standard => "standard",
        }
    }
}

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
    /// No explicit freshness and nothing to base a heuristic on.
    NoFreshness,
    /// The request carried `Authorization` and the answer does not say it
    /// may be shared (RFC 9111 §3.5; standard mode).
    Authorization,
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
            Self::NoFreshness => "no-freshness",
            Self::Authorization => "authorization",
        }
    }
}

/// Methods whose answers may come from the cache. PUT, PATCH, DELETE and
/// the rest always go upstream; POST is a read only in the dashboard mode.
pub fn is_cacheable_method(method: &Method, mode: CacheMode) -> bool {
    match mode {
        CacheMode::Dashboard => matches!(*method, Method::GET | Method::HEAD | Method::POST),
        CacheMode::Standard => matches!(*method, Method::GET | Method::HEAD),
    }
}

/// Methods RFC 9110 §9.2.1 calls safe; an answer to any other invalidates
/// (RFC 9111 §4.4).
pub fn is_safe_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The settings [`assess`] applies.
#[derive(Debug, Clone, Copy)]
pub struct StoreRules<'a> {
    pub mode: CacheMode,
    /// Freshness of an answer without explicit freshness, or the
    /// heuristic's cap when `heuristic` is set.
    pub ttl: Duration,
    pub heuristic: bool,
    pub cacheable_statuses: &'a [StatusCode],
    /// Targeted `Cache-Control` fields, in order of precedence (RFC 9213).
    pub targeted: &'a [HeaderName],
}

/// What [`assess`] allows for one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storable {
    /// Freshness left once stored (zero: stored only to be revalidated).
    pub ttl: Duration,
    /// Age on arrival, in seconds (RFC 9111 §4.2.3).
    pub initial_age: u64,
    /// The directives that govern this cache (targeted field or `Cache-Control`).
    pub directives: Directives,
    /// Fields the stored copy leaves out: `no-cache="…"` and `private="…"`
    /// lists (§5.2.2.4, §5.2.2.7) and `Set-Cookie`.
    pub strip: Vec<HeaderName>,
}

/// Whether and how an answer may be stored. `now` is the wall clock when
/// the answer arrived; `authorized` says whether its request carried
/// `Authorization`.
pub fn assess(
    status: StatusCode,
    headers: &HeaderMap,
    rules: &StoreRules<'_>,
    now: SystemTime,
    authorized: bool,
) -> Result<Storable, NotStorable> {
    let standard = rules.mode == CacheMode::Standard;
    if matches!(
        status,
        StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
    ) || status.is_informational()
    {
        return Err(NotStorable::Status(status));
    }
    let targeted = rules
        .targeted
        .iter()
        .find_map(|name| Directives::of_targeted(headers, name));
    let from_targeted = targeted.is_some();
    let directives = targeted.unwrap_or_else(|| Directives::cache_control(headers));
    if directives.no_store {
        return Err(NotStorable::NoStore);
    }
    let mut strip = Vec::new();
    match &directives.private {
        Some(fields) if fields.is_empty() => return Err(NotStorable::Private),
        Some(fields) => strip.extend(fields.iter().cloned()),
        None => {}
    }
    if let Some(fields) = &directives.no_cache {
        strip.extend(fields.iter().cloned());
    }
    if headers.get_all(VARY).iter().any(|v| {
        v.to_str()
            .map_or(true, |v| v.split(',').any(|f| f.trim() == "*"))
    }) {
        return Err(NotStorable::VaryStar);
    }
    if authorized
        && standard
        && !(directives.public || directives.must_revalidate || directives.s_maxage.is_some())
    {
        return Err(NotStorable::Authorization);
    }

    let date = http_date(headers, &DATE);
    let explicit = if from_targeted {
        directives.s_maxage.or(directives.max_age)
    } else {
        directives
            .s_maxage
            .or(directives.max_age)
            .or_else(|| expires_lifetime(headers, date.unwrap_or(now)))
    };
    if headers.contains_key(SET_COOKIE) {
        if !standard || (explicit.is_none() && !directives.public) {
            return Err(NotStorable::SetCookie);
        }
        strip.push(SET_COOKIE);
    }
    let initial_age = initial_age(headers, date, now);
    let fresh_for = match explicit {
        Some(seconds) if standard => Duration::from_secs(seconds.saturating_sub(initial_age)),
        _ if !rules.cacheable_statuses.contains(&status) => {
            return Err(NotStorable::Status(status));
        }
        Some(seconds) => Duration::from_secs(seconds.saturating_sub(initial_age)),
        None if rules.heuristic => {
            let lifetime = heuristic(headers, date.unwrap_or(now), rules.ttl)
                .ok_or(NotStorable::NoFreshness)?;
            Duration::from_secs(lifetime.saturating_sub(initial_age))
        }
        // The operator's TTL is the entry's own: the origin's clock and
        // `Age` do not shorten it.
        None => rules.ttl,
    };
    let validated = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
    let ttl = if matches!(&directives.no_cache, Some(fields) if fields.is_empty()) {
        if !validated {
            return Err(NotStorable::NoCache);
        }
        Duration::ZERO
    } else {
        fresh_for
    };
    if ttl.is_zero() && !validated {
        return Err(NotStorable::Expired);
    }
    Ok(Storable {
        ttl,
        initial_age,
        directives,
        strip,
    })
}

/// True when the request carries `Authorization` (RFC 9111 §3.5).
pub fn is_authorized(request: &HeaderMap) -> bool {
    request.contains_key(AUTHORIZATION)
}

/// Whether an answer that was not stored may still be handed to the
/// callers coalesced behind the one that fetched it. Only answers refused
/// for their status (a 500, a 404) qualify, and only when nothing marks
/// them personal (`Set-Cookie`, `private`,
/// `no-store`, `no-cache`) or dependent on request headers (`Vary`).
pub fn shareable(reason: NotStorable, headers: &HeaderMap) -> bool {
    let d = Directives::cache_control(headers);
    matches!(reason, NotStorable::Status(_))
        && !headers.contains_key(SET_COOKIE)
        && !headers.contains_key(VARY)
        && !d.no_store
        && d.private.is_none()
        && d.no_cache.is_none()
}

/// True when the client's `Cache-Control` asks to skip stored answers.
pub fn client_wants_fresh(headers: &HeaderMap) -> bool {
    let d = Directives::cache_control(headers);
    d.no_cache.is_some() || d.no_store || d.max_age == Some(0)
}

/// Whether a fresh entry `age` seconds old with `ttl_left` of freshness
/// satisfies the client's `max-age` and `min-fresh` (RFC 9111 §5.2.1).
pub fn client_accepts_fresh(request: &Directives, age: u64, ttl_left: Duration) -> bool {
    request.max_age.is_none_or(|max| age <= max)
        && request
            .min_fresh
            .is_none_or(|min| ttl_left >= Duration::from_secs(min))
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

    fn rules(mode: CacheMode) -> StoreRules<'static> {
        static CDN: std::sync::LazyLock<[HeaderName; 1]> =
            std::sync::LazyLock::new(|| [HeaderName::from_static("cdn-cache-control")]);
        StoreRules {
            mode,
            ttl: TTL,
            heuristic: mode == CacheMode::Standard,
            cacheable_statuses: OK,
            targeted: &*CDN,
        }
    }

    fn now() -> SystemTime {
        httpdate::parse_http_date("Sun, 06 Dec 2026 12:00:00 GMT").unwrap()
    }

    fn assess_in(
        mode: CacheMode,
        status: StatusCode,
        pairs: &[(&'static str, &'static str)],
    ) -> Result<Storable, NotStorable> {
        assess(status, &headers(pairs), &rules(mode), now(), false)
    }

    fn ttl_of(pairs: &[(&'static str, &'static str)]) -> Result<Duration, NotStorable> {
        assess_in(CacheMode::Dashboard, StatusCode::OK, pairs).map(|s| s.ttl)
    }

    fn standard_ttl(pairs: &[(&'static str, &'static str)]) -> Result<Duration, NotStorable> {
        assess_in(CacheMode::Standard, StatusCode::OK, pairs).map(|s| s.ttl)
    }

    const SECS: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_plain_200_gets_the_default_ttl_in_the_dashboard_mode() {
        assert_eq!(ttl_of(&[]), Ok(TTL));
    }

    #[test]
    fn the_dashboard_ttl_is_not_shortened_by_the_origins_clock() {
        assert_eq!(
            ttl_of(&[("date", "Sun, 06 Dec 2026 08:00:00 GMT"), ("age", "60")]),
            Ok(TTL)
        );
    }

    #[test]
    fn only_listed_statuses_are_stored_without_explicit_freshness() {
        assert_eq!(
            assess_in(CacheMode::Dashboard, StatusCode::INTERNAL_SERVER_ERROR, &[]),
            Err(NotStorable::Status(StatusCode::INTERNAL_SERVER_ERROR))
        );
        assert_eq!(
            assess_in(
                CacheMode::Standard,
                StatusCode::NOT_FOUND,
                &[("last-modified", "Sun, 06 Dec 2026 02:00:00 GMT")]
            ),
            Err(NotStorable::Status(StatusCode::NOT_FOUND))
        );
    }

    #[test]
    fn the_standard_mode_stores_any_status_with_explicit_freshness_but_206() {
        let stored = assess_in(
            CacheMode::Standard,
            StatusCode::BAD_GATEWAY,
            &[("cache-control", "max-age=60")],
        );
        assert_eq!(stored.map(|s| s.ttl), Ok(SECS(60)));
        assert_eq!(
            assess_in(
                CacheMode::Standard,
                StatusCode::PARTIAL_CONTENT,
                &[("cache-control", "max-age=60")]
            ),
            Err(NotStorable::Status(StatusCode::PARTIAL_CONTENT))
        );
        assert_eq!(
            assess_in(
                CacheMode::Dashboard,
                StatusCode::BAD_GATEWAY,
                &[("cache-control", "max-age=60")]
            ),
            Err(NotStorable::Status(StatusCode::BAD_GATEWAY))
        );
    }

    #[test]
    fn set_cookie_is_stored_only_in_the_standard_mode_with_explicit_freshness_and_stripped() {
        assert_eq!(
            ttl_of(&[("set-cookie", "s=1")]),
            Err(NotStorable::SetCookie)
        );
        assert_eq!(
            standard_ttl(&[
                ("set-cookie", "s=1"),
                ("last-modified", "Sun, 06 Dec 2026 02:00:00 GMT")
            ]),
            Err(NotStorable::SetCookie)
        );
        let stored = assess_in(
            CacheMode::Standard,
            StatusCode::OK,
            &[("set-cookie", "s=1"), ("cache-control", "max-age=60")],
        )
        .unwrap();
        assert_eq!(stored.strip, [SET_COOKIE]);
    }

    #[test]
    fn no_store_and_private_forbid_storing() {
        assert_eq!(
            ttl_of(&[("cache-control", "no-store")]),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            ttl_of(&[("cache-control", "max-age=60, Private")]),
            Err(NotStorable::Private)
        );
    }

    #[test]
    fn no_cache_is_stored_only_with_a_validator_and_stale_at_once() {
        assert_eq!(
            ttl_of(&[("cache-control", "no-cache")]),
            Err(NotStorable::NoCache)
        );
        assert_eq!(
            ttl_of(&[
                ("cache-control", "no-cache, max-age=60"),
                ("etag", "\"v1\"")
            ]),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn field_lists_of_no_cache_and_private_are_stripped_from_the_stored_copy() {
        let stored = assess_in(
            CacheMode::Standard,
            StatusCode::OK,
            &[(
                "cache-control",
                "max-age=60, no-cache=\"x-a\", private=\"x-b\"",
            )],
        )
        .unwrap();
        assert_eq!(stored.strip, ["x-b", "x-a"].map(HeaderName::from_static));
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
        assert_eq!(ttl_of(&[("cache-control", "max-age=60")]), Ok(SECS(60)));
        assert_eq!(
            ttl_of(&[("cache-control", "max-age=60, s-maxage=600")]),
            Ok(SECS(600))
        );
        assert_eq!(
            ttl_of(&[("cache-control", "max-age=60"), ("age", "20")]),
            Ok(SECS(40))
        );
        assert_eq!(
            ttl_of(&[("cache-control", "max-age=0")]),
            Err(NotStorable::Expired)
        );
    }

    #[test]
    fn an_age_list_shortens_the_lifetime_by_its_first_member() {
        assert_eq!(
            ttl_of(&[("cache-control", "max-age=7300"), ("age", "7200, 0")]),
            Ok(SECS(100))
        );
    }

    #[test]
    fn the_apparent_age_from_date_counts_when_larger_than_age() {
        assert_eq!(
            standard_ttl(&[
                ("cache-control", "max-age=600"),
                ("date", "Sun, 06 Dec 2026 11:58:00 GMT")
            ]),
            Ok(SECS(480))
        );
    }

    #[test]
    fn expires_minus_date_is_the_lifetime_and_an_invalid_expires_is_expired() {
        assert_eq!(
            standard_ttl(&[
                ("date", "Sun, 06 Dec 2026 12:00:00 GMT"),
                ("expires", "Sun, 06 Dec 2026 13:00:00 GMT")
            ]),
            Ok(SECS(3600))
        );
        assert_eq!(
            standard_ttl(&[
                ("expires", "0"),
                ("last-modified", "Sun, 06 Dec 2026 02:00:00 GMT")
            ]),
            Ok(Duration::ZERO),
            "kept for revalidation only"
        );
        assert_eq!(
            standard_ttl(&[("expires", "soon")]),
            Err(NotStorable::Expired)
        );
        assert_eq!(
            standard_ttl(&[("cache-control", "max-age=60"), ("expires", "0")]),
            Ok(SECS(60)),
            "max-age wins over Expires"
        );
    }

    #[test]
    fn the_heuristic_is_a_tenth_of_the_last_modified_age_capped_at_the_ttl() {
        assert_eq!(
            standard_ttl(&[("last-modified", "Sun, 06 Dec 2026 02:00:00 GMT")]),
            Ok(SECS(3600))
        );
        assert_eq!(
            standard_ttl(&[("last-modified", "Sun, 01 Jan 2006 00:00:00 GMT")]),
            Ok(TTL)
        );
        assert_eq!(standard_ttl(&[]), Err(NotStorable::NoFreshness));
    }

    #[test]
    fn a_targeted_field_wins_over_cache_control_and_expires() {
        assert_eq!(
            standard_ttl(&[
                ("cdn-cache-control", "max-age=600"),
                ("cache-control", "no-store")
            ]),
            Ok(SECS(600))
        );
        assert_eq!(
            standard_ttl(&[
                ("cdn-cache-control", "private"),
                ("cache-control", "max-age=600")
            ]),
            Err(NotStorable::Private)
        );
        assert_eq!(
            standard_ttl(&[
                ("cdn-cache-control", "public"),
                ("expires", "0"),
                ("last-modified", "Sun, 06 Dec 2026 02:00:00 GMT")
            ]),
            Ok(SECS(3600)),
            "Expires is not read when a targeted field governs"
        );
    }

    #[test]
    fn an_authorized_answer_is_stored_only_when_marked_shareable_in_the_standard_mode() {
        let pairs = headers(&[("cache-control", "max-age=60")]);
        let standard = rules(CacheMode::Standard);
        assert_eq!(
            assess(StatusCode::OK, &pairs, &standard, now(), true),
            Err(NotStorable::Authorization)
        );
        let public = headers(&[("cache-control", "max-age=60, public")]);
        assert!(assess(StatusCode::OK, &public, &standard, now(), true).is_ok());
        assert!(assess(
            StatusCode::OK,
            &pairs,
            &rules(CacheMode::Dashboard),
            now(),
            true
        )
        .is_ok());
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
    fn post_is_a_read_only_in_the_dashboard_mode() {
        assert!(is_cacheable_method(&Method::POST, CacheMode::Dashboard));
        assert!(!is_cacheable_method(&Method::POST, CacheMode::Standard));
        assert!(is_cacheable_method(&Method::HEAD, CacheMode::Standard));
        for mode in [CacheMode::Dashboard, CacheMode::Standard] {
            assert!(!is_cacheable_method(&Method::PUT, mode));
            assert!(!is_cacheable_method(&Method::DELETE, mode));
        }
    }

    #[test]
    fn unsafe_methods_are_everything_but_get_head_options_and_trace() {
        assert!(is_safe_method(&Method::OPTIONS));
        assert!(!is_safe_method(&Method::POST));
        assert!(!is_safe_method(&Method::from_bytes(b"M-SEARCH").unwrap()));
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

    #[test]
    fn client_max_age_and_min_fresh_narrow_which_fresh_entries_do() {
        let d = Directives::parse("max-age=10, min-fresh=5");
        assert!(client_accepts_fresh(&d, 10, SECS(5)));
        assert!(!client_accepts_fresh(&d, 11, SECS(60)));
        assert!(!client_accepts_fresh(&d, 0, SECS(4)));
    }
}
