//! Answers to clients: cache outcome headers on proxied answers, and the
//! JSON bodies of errors and the admin API.
//!
//! Every proxied answer carries `X-Cache` (the short status the seed's users
//! grep for), `Age` when it comes from a stored entry, and an RFC 9211
//! `Cache-Status` that says why.

use std::fmt::Write as _;
use std::sync::LazyLock;
use std::time::Instant;

use http::header::{
    HeaderName, HeaderValue, AGE, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Response, StatusCode};

use crate::body::{self, ProxyBody, UpstreamBody};
use crate::cache::flight::BufferedAnswer;
use crate::cache::policy::NotStorable;
use crate::cache::stale::StaleReason;
use crate::cache::Entry;
use crate::error::ProxyError;
use crate::head_writer::HeadWriter;
use crate::headers::Validators;
use crate::request_id;

pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What the cache did for one request; the same word in headers, logs and stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Bypass,
    /// An expired entry, answered for a failing upstream or while a
    /// background fill refreshes it (`cache::stale`).
    Stale,
    /// Answered by the admin API, not a proxied request.
    Admin,
}

impl CacheStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
            Self::Stale => "STALE",
            Self::Admin => "ADMIN",
        }
    }

    fn header_value(&self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// The RFC 9211 `Cache-Status` member this proxy adds for one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStatusField {
    pub hit: bool,
    /// `fwd=`: why the request went upstream (`miss`, `bypass`, `request`).
    pub fwd: Option<&'static str>,
    pub fwd_status: Option<u16>,
    /// Freshness left in seconds; negative for a stale answer.
    pub ttl: Option<i64>,
    pub stored: bool,
    pub collapsed: bool,
    pub detail: Option<&'static str>,
}

impl CacheStatusField {
    pub fn hit(ttl_left: u64) -> Self {
        Self {
            hit: true,
            ttl: Some(ttl_left as i64),
            ..Self::default()
        }
    }

    /// A stale entry answered instead of (or while) asking the upstream:
    /// `fwd=stale`, the upstream's status if it gave one, how stale, and why.
    pub fn stale(entry: &Entry, reason: StaleReason, now: Instant) -> Self {
        Self {
            fwd: Some("stale"),
            fwd_status: reason.upstream_status(),
            ttl: Some(entry.ttl_signed(now)),
            detail: Some(reason.as_str()),
            ..Self::default()
        }
    }

    pub fn forward(fwd: &'static str) -> Self {
        Self {
            fwd: Some(fwd),
            ..Self::default()
        }
    }

    pub fn not_stored(mut self, reason: NotStorable) -> Self {
        self.detail = Some(reason.as_str());
        self
    }

    fn render(&self) -> HeaderValue {
        let plain_hit = CacheStatusField {
            ttl: self.ttl,
            ..CacheStatusField::hit(0)
        };
        if *self == plain_hit {
            if let Some(value) = self.ttl.and_then(|ttl| HIT_STATUS.get(ttl)) {
                return value;
            }
        }
        let mut text = String::from("dashcache");
        if self.hit {
            text.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            let _ = write!(text, "; fwd={fwd}");
        }
        if let Some(status) = self.fwd_status {
            let _ = write!(text, "; fwd-status={status}");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(text, "; ttl={ttl}");
        }
        if self.stored {
            text.push_str("; stored");
        }
        if self.collapsed {
            text.push_str("; collapsed");
        }
        if let Some(detail) = self.detail {
            let _ = write!(text, "; detail={detail}");
        }
        HeaderValue::from_str(&text).expect("cache-status is ASCII")
    }
}

/// Header values that only a number changes, rendered once for the first
/// [`RENDERED_SECONDS`] values: the `Age` of a hit and its `Cache-Status`
/// (`dashcache; hit; ttl=N`). A hit then copies no text and allocates
/// nothing for them; larger numbers are rendered per answer.
struct Rendered {
    /// Every value, one after the other.
    text: &'static str,
    /// Where the value for `n` ends in `text`.
    ends: Vec<u32>,
}

/// Past the default 4 h TTL (14,400 s), for ages and TTLs alike.
const RENDERED_SECONDS: usize = 16_384;

impl Rendered {
    fn new(prefix: &str) -> Self {
        // `get` relies on it: every value is the prefix and ASCII digits.
        assert!(
            HeaderValue::from_str(prefix).is_ok(),
            "a field value prefix"
        );
        let mut text = String::with_capacity(RENDERED_SECONDS * (prefix.len() + 5));
        let mut ends = Vec::with_capacity(RENDERED_SECONDS);
        for n in 0..RENDERED_SECONDS {
            text.push_str(prefix);
            let _ = write!(text, "{n}");
            ends.push(text.len() as u32);
        }
        // Built once per process (about 0.5 MiB for both tables) and kept
        // for its whole life, so hits can hand out `'static` slices.
        Self {
            text: Box::leak(text.into_boxed_str()),
            ends,
        }
    }

    fn get<N: TryInto<usize>>(&self, n: N) -> Option<HeaderValue> {
        let n = n.try_into().ok()?;
        let end = *self.ends.get(n)? as usize;
        let start = n
            .checked_sub(1)
            .map_or(0, |before| self.ends[before] as usize);
        let value = bytes::Bytes::from_static(&self.text.as_bytes()[start..end]);
        // SAFETY: the prefix is a valid field value (checked in `new`) and
        // the rest is ASCII digits. (`from_static` would check every byte
        // again on every hit.)
        Some(unsafe { HeaderValue::from_maybe_shared_unchecked(value) })
    }
}

static AGE_VALUES: LazyLock<Rendered> = LazyLock::new(|| Rendered::new(""));
static HIT_STATUS: LazyLock<Rendered> = LazyLock::new(|| Rendered::new("dashcache; hit; ttl="));

/// An `Age` value: from the table when it is in range.
fn age_value(seconds: u64) -> HeaderValue {
    AGE_VALUES
        .get(seconds)
        .unwrap_or_else(|| HeaderValue::from(seconds))
}

fn mark(headers: &mut HeaderMap, status: CacheStatus, field: CacheStatusField) {
    headers.insert(X_CACHE.clone(), status.header_value());
    headers.insert(CACHE_STATUS.clone(), field.render());
}

/// How a client asked: whether it wants a body, and what it already holds.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    pub head: bool,
    pub validators: Validators,
}

/// Fields a 304 carries over from the answer it stands for (RFC 9110 §15.4.5).
const NOT_MODIFIED_FIELDS: [HeaderName; 7] = [
    http::header::CACHE_CONTROL,
    http::header::CONTENT_LOCATION,
    http::header::DATE,
    http::header::ETAG,
    http::header::EXPIRES,
    http::header::LAST_MODIFIED,
    http::header::VARY,
];

/// Marks an error answer the proxy made itself (no upstream answer behind it).
pub fn mark_error(headers: &mut HeaderMap, status: CacheStatus) {
    let fwd = if status == CacheStatus::Bypass {
        "bypass"
    } else {
        "miss"
    };
    let field = CacheStatusField {
        detail: Some("error"),
        ..CacheStatusField::forward(fwd)
    };
    mark(headers, status, field);
}

/// An answer from a stored entry: a hit, or a miss that a fill stored;
/// a 304 when the client's validators match it.
pub fn from_entry(
    entry: &Entry,
    status: CacheStatus,
    field: CacheStatusField,
    ask: &Ask,
    now: Instant,
) -> Response<ProxyBody> {
    let not_modified = ask.validators.not_modified(&entry.headers);
    let added = added_fields(entry, status, field, now);
    // Sized for the added fields and `X-Request-Id` (`Proxy::finish`) at
    // once: growing a map rehashes every field.
    let mut headers = HeaderMap::with_capacity(entry.headers.len() + ADDED_FIELDS);
    let added: [(&HeaderName, &HeaderValue); 3] = added.each_ref().map(|(n, v)| (n, v));
    answer_fields(entry, not_modified, &added, |name, value| {
        headers.append(name.clone(), value.clone());
    });
    let (code, body) = if not_modified {
        (StatusCode::NOT_MODIFIED, body::empty())
    } else if ask.head {
        (entry.status, body::empty())
    } else {
        (entry.status, body::full(entry.body.clone()))
    };
    let mut response = Response::new(body);
    *response.status_mut() = code;
    *response.headers_mut() = headers;
    response
}

/// The fields of the answer to `entry`, to `emit` in the order its map
/// holds them: for a 304, the stored fields it carries over; otherwise
/// every stored one (grouped by name, as they come from a map). Each of
/// `added` takes the place of the stored fields of its name, or comes after
/// them, as `HeaderMap::insert` puts it.
fn answer_fields<'f>(
    entry: &'f Entry,
    not_modified: bool,
    added: &[(&'f HeaderName, &'f HeaderValue)],
    mut emit: impl FnMut(&HeaderName, &HeaderValue),
) {
    let mut placed = [false; ADDED_FIELDS];
    let mut stored = |name: &HeaderName, value: &HeaderValue| match added
        .iter()
        .position(|(added, _)| *added == name)
    {
        Some(at) if placed[at] => {}
        Some(at) => {
            placed[at] = true;
            emit(added[at].0, added[at].1);
        }
        None => emit(name, value),
    };
    if not_modified {
        for name in &NOT_MODIFIED_FIELDS {
            for value in entry.headers.get_all(name) {
                stored(name, value);
            }
        }
    } else {
        for (name, value) in &entry.headers {
            stored(name, value);
        }
    }
    for (&(name, value), placed) in added.iter().zip(placed) {
        if !placed {
            emit(name, value);
        }
    }
}

/// Fields a hit's answer gets beyond the stored ones: `Age`, `X-Cache`,
/// `Cache-Status` and `X-Request-Id`.
const ADDED_FIELDS: usize = 4;

/// The fields [`from_entry`] sets on top of the stored ones, in order: each
/// replaces a stored field of its name in place, or comes after them.
fn added_fields(
    entry: &Entry,
    status: CacheStatus,
    field: CacheStatusField,
    now: Instant,
) -> [(HeaderName, HeaderValue); 3] {
    [
        (AGE, age_value(entry.age(now))),
        (X_CACHE.clone(), status.header_value()),
        (CACHE_STATUS.clone(), field.render()),
    ]
}

/// The head of [`from_entry`]'s answer, with `request_id` set as its
/// `X-Request-Id` (as `Proxy::finish` sets it), written in HTTP/1.1 wire
/// form (`head_writer.rs`) without building the answer's map: the stored
/// fields in order, each added one in place of a stored field of its name
/// or after them. Returns the answer's status and whether the entry's body
/// is to be sent after the head.
pub fn write_from_entry(
    entry: &Entry,
    status: CacheStatus,
    field: CacheStatusField,
    ask: &Ask,
    now: Instant,
    request_id: &HeaderValue,
    out: &mut Vec<u8>,
) -> (StatusCode, bool) {
    let not_modified = ask.validators.not_modified(&entry.headers);
    let [age, x_cache, cache_status] = added_fields(entry, status, field, now);
    let added = [
        (&age.0, &age.1),
        (&x_cache.0, &x_cache.1),
        (&cache_status.0, &cache_status.1),
        (&request_id::X_REQUEST_ID, request_id),
    ];
    let (code, body_len) = match (not_modified, ask.head) {
        (true, _) => (StatusCode::NOT_MODIFIED, 0),
        (false, true) => (entry.status, 0),
        (false, false) => (entry.status, entry.body.len()),
    };
    let mut head = HeadWriter::start(out, code, ask.head, body_len);
    answer_fields(entry, not_modified, &added, |name, value| {
        head.field(name, value)
    });
    (code, head.finish())
}

/// A complete answer that was not stored (shared with coalesced waiters).
pub fn from_buffered(
    answer: &BufferedAnswer,
    field: CacheStatusField,
    head: bool,
) -> Response<ProxyBody> {
    let body = if head {
        body::empty()
    } else {
        body::full(answer.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    headers.clone_from(&answer.headers);
    mark(headers, CacheStatus::Miss, field.not_stored(answer.reason));
    response
}

/// An upstream answer passed through as a stream.
pub fn streamed(
    mut parts: http::response::Parts,
    body: UpstreamBody,
    status: CacheStatus,
    field: CacheStatusField,
    head: bool,
) -> Response<ProxyBody> {
    mark(&mut parts.headers, status, field);
    let body = if head {
        body::empty()
    } else {
        http_body_util::Either::Right(body)
    };
    Response::from_parts(parts, body)
}

/// A JSON answer; fields keep the order `T` declares (the seed's order).
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<ProxyBody> {
    let body = serde_json::to_vec(value).expect("admin and error answers serialise");
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[derive(serde::Serialize)]
struct ErrorAnswer {
    status: &'static str,
    message: std::borrow::Cow<'static, str>,
}

/// `{"status":"error","message":…}` with the error's status, its short
/// client message, and any header its status calls for (`Allow` on 405,
/// `WWW-Authenticate` on 401). The whole chain is noted for the request's
/// access line.
pub fn error(err: &ProxyError) -> Response<ProxyBody> {
    crate::access::note_error(err);
    let mut response = json(
        err.status(),
        &ErrorAnswer {
            status: "error",
            message: err.client_message(),
        },
    );
    match err {
        ProxyError::MethodNotAllowed { allow, .. } => {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        ProxyError::AdminUnauthorized => {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="dashcache""#),
            );
        }
        ProxyError::UpstreamBusy { retry_after, .. } => {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::Method;

    use super::*;
    use crate::head_writer::tests::encode_head;

    fn entry(status: u16, fields: &[(&str, &str)], body: &'static str) -> Entry {
        let now = Instant::now();
        let fields: crate::cache::StoredHeaders = fields
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect();
        Entry::for_test(
            crate::cache::CacheKey::from_bytes([1; 16]),
            StatusCode::from_u16(status).unwrap(),
            fields,
            Bytes::from_static(body.as_bytes()),
            now - Duration::from_secs(7),
        )
    }

    /// The head hyper writes for `from_entry`'s answer once `Proxy::finish`
    /// set its id, and the one written straight from the entry.
    fn both_heads(entry: &Entry, ask: &Ask) -> (String, String, bool) {
        let now = Instant::now();
        let field = CacheStatusField::hit(entry.ttl_left(now).as_secs());
        let id = HeaderValue::from_static("0123456789abcdef01234567");
        let mut response = from_entry(entry, CacheStatus::Hit, field, ask, now);
        response
            .headers_mut()
            .insert(&request_id::X_REQUEST_ID, id.clone());
        let body_len = http_body::Body::size_hint(response.body()).exact().unwrap() as usize;
        let (parts, _) = response.into_parts();
        let mut by_map = Vec::new();
        let map_sends = encode_head(&parts, ask.head, body_len, &mut by_map);
        let mut direct = Vec::new();
        let (status, sends) =
            write_from_entry(entry, CacheStatus::Hit, field, ask, now, &id, &mut direct);
        assert_eq!(status, parts.status);
        assert_eq!(sends, map_sends);
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        (text(by_map), text(direct), sends)
    }

    #[test]
    fn added_fields_take_a_stored_fields_place_as_a_map_insert_does() {
        let stored = [
            ("x-cache", "MISS"),
            ("vary", "accept"),
            ("age", "100"),
            ("age", "101"),
            ("etag", "\"v1\""),
        ];
        let entry = entry(200, &stored, "{}");
        let now = Instant::now();
        let field = CacheStatusField::hit(60);
        let mut expected = HeaderMap::new();
        for (name, value) in &entry.headers {
            expected.append(name.clone(), value.clone());
        }
        for (name, value) in added_fields(&entry, CacheStatus::Hit, field, now) {
            expected.insert(name, value);
        }
        let answer = from_entry(&entry, CacheStatus::Hit, field, &Ask::default(), now);
        let fields = |map: &HeaderMap| {
            map.iter()
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(answer.headers()), fields(&expected));
    }

    #[test]
    fn a_hit_head_written_from_the_entry_is_the_one_its_map_gives() {
        let get = Ask::default();
        let head = Ask {
            head: true,
            ..Ask::default()
        };
        let plain = [
            ("content-type", "application/json"),
            ("date", "Mon, 07 Dec 2026 12:00:00 GMT"),
        ];
        // Stored fields the answer sets again, repeated ones, and a stored
        // length and date, which hyper's rules treat apart.
        let awkward = [
            ("x-cache", "MISS"),
            ("content-length", "2"),
            ("vary", "accept"),
            ("vary", "x-tenant"),
            ("age", "100"),
            ("age", "101"),
            ("x-request-id", "upstream-id"),
            ("etag", "\"v1\""),
            ("cache-status", "origin; hit"),
        ];
        for (fields, status, body) in [
            (&plain[..], 200, "{}"),
            (&awkward[..], 200, "{}"),
            (&awkward[..], 404, ""),
            (&[][..], 203, "x"),
        ] {
            let entry = entry(status, fields, body);
            for ask in [&get, &head] {
                let (by_map, direct, _) = both_heads(&entry, ask);
                assert_eq!(direct, by_map, "{fields:?} {status} head={}", ask.head);
            }
        }
        // A 304 for matching validators (the express lane sends those to
        // hyper, but the head is the same).
        let mut conditional = HeaderMap::new();
        conditional.insert("if-none-match", HeaderValue::from_static("\"v1\""));
        let revalidating = Ask {
            head: false,
            validators: Validators::from_request(&Method::GET, &conditional),
        };
        let (by_map, direct, sends) = both_heads(&entry(200, &awkward, "{}"), &revalidating);
        assert!(
            direct.starts_with("HTTP/1.1 304 Not Modified\r\n"),
            "{direct}"
        );
        assert_eq!(direct, by_map);
        assert!(!sends);
    }

    #[test]
    fn a_hit_reports_its_ttl() {
        assert_eq!(CacheStatusField::hit(42).render(), "dashcache; hit; ttl=42");
    }

    #[test]
    fn every_rendered_value_is_a_valid_field_value() {
        // What `Rendered::get`'s unchecked construction relies on.
        for table in [&*AGE_VALUES, &*HIT_STATUS] {
            for n in 0..RENDERED_SECONDS {
                let value = table.get(n).expect("in range");
                assert!(HeaderValue::from_bytes(value.as_bytes()).is_ok(), "{n}");
                assert!(value.as_bytes().ends_with(n.to_string().as_bytes()));
            }
            assert!(table.get(RENDERED_SECONDS).is_none());
        }
    }

    #[test]
    fn rendered_values_match_the_formatted_ones() {
        for ttl in [0, 1, 9, 10, 14_399, 14_400, 16_383, 16_384, 86_400] {
            let field = CacheStatusField::hit(ttl);
            assert_eq!(field.render(), format!("dashcache; hit; ttl={ttl}"));
            assert_eq!(age_value(ttl), ttl.to_string());
        }
        // A hit with anything more than its TTL is rendered in full.
        let collapsed = CacheStatusField {
            collapsed: true,
            ..CacheStatusField::hit(5)
        };
        assert_eq!(collapsed.render(), "dashcache; hit; ttl=5; collapsed");
    }

    #[test]
    fn a_stored_miss_says_so() {
        let field = CacheStatusField {
            fwd_status: Some(200),
            stored: true,
            ..CacheStatusField::forward("miss")
        };
        assert_eq!(
            field.render(),
            "dashcache; fwd=miss; fwd-status=200; stored"
        );
    }

    #[test]
    fn a_stale_answer_says_why_and_how_stale() {
        let field = CacheStatusField {
            fwd: Some("stale"),
            fwd_status: Some(503),
            ttl: Some(-42),
            detail: Some("upstream-status"),
            ..CacheStatusField::default()
        };
        assert_eq!(
            field.render(),
            "dashcache; fwd=stale; fwd-status=503; ttl=-42; detail=upstream-status"
        );
        assert_eq!(CacheStatus::Stale.as_str(), "STALE");
    }

    #[test]
    fn an_unstored_miss_gives_the_reason() {
        let field = CacheStatusField::forward("miss").not_stored(NotStorable::SetCookie);
        assert_eq!(field.render(), "dashcache; fwd=miss; detail=set-cookie");
    }

    #[test]
    fn errors_are_json_with_the_seed_shape() {
        let response = error(&ProxyError::BodyTooLarge { limit: 10 });
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn unauthorized_answers_name_the_scheme() {
        let response = error(&ProxyError::AdminUnauthorized);
        assert!(response.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
    }
}
