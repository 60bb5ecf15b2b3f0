//! The versioned binary encoding of a stored [`Entry`], shared by the Redis
//! tier (one value per entry) and the snapshot file (one record per entry).
//!
//! Layout: one version byte ([`VERSION`]), then fields until the end of the
//! input, each `tag: u8, length: LEB128, payload[length]`. Integers inside
//! payloads are LEB128; strings and byte strings carry their own length
//! prefix; the body is stored as the upstream's raw bytes. Tags below
//! [`OPTIONAL_TAGS`] are *required knowledge*: a reader that does not know
//! one refuses the entry (a field that changes the meaning of others, such
//! as a body encoding, goes there). Tags from [`OPTIONAL_TAGS`] up may be
//! skipped by a reader that does not know them (counters, hints). A change
//! that older readers must not misread bumps [`VERSION`].
//!
//! Instants do not leave the process: stored-at and expiry travel as unix
//! milliseconds, converted through a [`Clock`] (one reading of both
//! clocks) on each side, so the remaining TTL and the `Age` carry over a
//! restart or to another replica (to the millisecond, give or take the
//! clocks' skew).
//!
//! Decoding trusts nothing: every length is checked against the bytes left
//! before anything is allocated (so allocations never exceed the input's
//! length), counts and durations are capped, names, values and UTF-8 are
//! validated, and every failure is a typed [`DecodeError`], never a panic.
//! Callers turn an error into a miss (and log it once); callers also cap
//! the input's length before reading it.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode};

use super::key::CacheKey;
use super::replay::Replay;
use super::stale::{revalidate_window, StaleWindows};
use super::store::Entry;
use super::stored_headers::StoredHeaders;

/// The format written by [`encode`]; the only one [`decode`] reads.
pub const VERSION: u8 = 1;

/// Field tags from this one up may be skipped by readers that do not know them.
pub const OPTIONAL_TAGS: u8 = 128;

/// The longest duration a decoded entry may carry (TTL left, each stale
/// window, `Age`, upstream time): ten years, far past any real setting,
/// and small enough that `Instant` arithmetic can never overflow.
pub const MAX_SPAN: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Most header fields (response, or replayed request) an entry may hold.
pub const MAX_HEADERS: usize = 1024;

/// Most `Vary` names an entry may hold.
pub const MAX_VARY_NAMES: usize = 64;

/// Field tags of version 1.
mod tag {
    pub const KEY: u8 = 1;
    pub const BASE: u8 = 2;
    pub const STATUS: u8 = 3;
    pub const HEADERS: u8 = 4;
    pub const BODY: u8 = 5;
    pub const ROUTE: u8 = 6;
    pub const DESCRIPTION: u8 = 7;
    pub const STORED_AT: u8 = 8;
    pub const EXPIRES_AT: u8 = 9;
    pub const STALE: u8 = 10;
    pub const VARY: u8 = 11;
    pub const INITIAL_AGE: u8 = 12;
    pub const UPSTREAM_TIME: u8 = 13;
    pub const REPLAY: u8 = 14;
    /// Optional: hits served so far (`/api/cache/keys?sort=hottest`).
    pub const HITS: u8 = 128;
}

/// One reading of the wall clock and the monotonic clock, taken together:
/// the bridge between the `Instant`s an entry holds in memory and the unix
/// times it is written with.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub wall: SystemTime,
    pub mono: Instant,
}

impl Clock {
    pub fn now() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    /// Unix milliseconds of `instant` (saturating at the epoch).
    pub fn unix_ms(&self, instant: Instant) -> u64 {
        let wall = if instant >= self.mono {
            self.wall.checked_add(instant - self.mono)
        } else {
            self.wall.checked_sub(self.mono - instant)
        };
        wall.and_then(|w| w.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// How far `unix_ms` lies from this reading: `Ok` ahead (or now),
    /// `Err` behind.
    fn offset(&self, unix_ms: u64) -> Result<Duration, Duration> {
        let now_ms = self
            .wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if unix_ms >= now_ms {
            Ok(Duration::from_millis(unix_ms - now_ms))
        } else {
            Err(Duration::from_millis(now_ms - unix_ms))
        }
    }
}

/// Why bytes are not an entry. Callers treat every case as a miss.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty entry")]
    Empty,
    #[error("unknown entry format version {0}")]
    UnknownVersion(u8),
    #[error("entry ends inside {0}")]
    Truncated(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("{0} out of range")]
    OutOfRange(&'static str),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("{0} appears twice")]
    Duplicate(&'static str),
    #[error("unknown required field tag {0}")]
    UnknownField(u8),
}

impl DecodeError {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::UnknownVersion(_) => "unknown-version",
            Self::Truncated(_) => "truncated",
            Self::Invalid(_) => "invalid",
            Self::OutOfRange(_) => "out-of-range",
            Self::Missing(_) => "missing",
            Self::Duplicate(_) => "duplicate",
            Self::UnknownField(_) => "unknown-field",
        }
    }
}

/// `entry` in the current format, its instants read against `clock`.
pub fn encode(entry: &Entry, clock: &Clock) -> Vec<u8> {
    let mut out = Vec::with_capacity(entry.size() as usize + 64);
    out.push(VERSION);
    raw_field(&mut out, tag::KEY, entry.key.as_bytes());
    raw_field(&mut out, tag::BASE, entry.base.as_bytes());
    field(&mut out, tag::STATUS, |b| {
        put_uint(b, u64::from(entry.status.as_u16()))
    });
    field(&mut out, tag::HEADERS, |b| put_headers(b, &entry.headers));
    raw_field(&mut out, tag::BODY, &entry.body);
    raw_field(&mut out, tag::ROUTE, entry.route.as_bytes());
    raw_field(&mut out, tag::DESCRIPTION, entry.description.as_bytes());
    field(&mut out, tag::STORED_AT, |b| {
        put_uint(b, clock.unix_ms(entry.stored_at))
    });
    field(&mut out, tag::EXPIRES_AT, |b| {
        put_uint(b, clock.unix_ms(entry.expires_at))
    });
    field(&mut out, tag::STALE, |b| {
        put_uint(b, millis(entry.stale.if_error));
        put_uint(b, millis(entry.stale.while_revalidate));
    });
    if let Some(names) = &entry.vary {
        field(&mut out, tag::VARY, |b| {
            for name in names.iter() {
                put_bytes(b, name.as_str().as_bytes());
            }
        });
    }
    field(&mut out, tag::INITIAL_AGE, |b| {
        put_uint(b, entry.initial_age)
    });
    field(&mut out, tag::UPSTREAM_TIME, |b| {
        put_uint(
            b,
            u64::try_from(entry.upstream_time.as_micros()).unwrap_or(u64::MAX),
        )
    });
    if let Some(replay) = &entry.replay {
        field(&mut out, tag::REPLAY, |b| {
            put_bytes(b, replay.method.as_str().as_bytes());
            put_bytes(b, replay.path_and_query.as_bytes());
            put_bytes(b, &replay.body);
            let mut headers = Vec::new();
            put_headers(&mut headers, &replay.headers);
            put_bytes(b, &headers);
        });
    }
    field(&mut out, tag::HITS, |b| {
        put_uint(b, entry.hits.load(Ordering::Relaxed))
    });
    out
}

/// The entry `input` encodes, its instants placed against `clock`: the
/// time left to expiry and the `Age` continue from when it was encoded.
/// It comes in the store's form ([`Entry::compacted`]), so what
/// [`Entry::size`] counts for it is what it holds, and its hits are as
/// cheap as those of an entry filled here.
pub fn decode(input: &[u8], clock: &Clock) -> Result<Entry, DecodeError> {
    let (&version, fields) = input.split_first().ok_or(DecodeError::Empty)?;
    if version != VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let mut parts = Parts::default();
    let mut reader = Reader::new(fields);
    while !reader.is_empty() {
        let tag = reader.byte("field tag")?;
        let payload = reader.prefixed("field")?;
        parts.take(tag, payload)?;
    }
    parts.into_entry(clock).map(Entry::compacted)
}

/// The fields of one entry as read, before they are checked together.
#[derive(Default)]
struct Parts {
    key: Option<CacheKey>,
    base: Option<CacheKey>,
    status: Option<StatusCode>,
    headers: Option<HeaderMap>,
    body: Option<Bytes>,
    route: Option<Arc<str>>,
    description: Option<String>,
    stored_at: Option<u64>,
    expires_at: Option<u64>,
    stale: Option<StaleWindows>,
    vary: Option<Arc<[HeaderName]>>,
    initial_age: Option<u64>,
    upstream_time: Option<Duration>,
    replay: Option<Replay>,
    hits: Option<u64>,
}

/// Stores `value` in `slot`, refusing a second copy of the field.
fn once<T>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Duplicate(name));
    }
    *slot = Some(value);
    Ok(())
}

impl Parts {
    fn take(&mut self, tag: u8, payload: &[u8]) -> Result<(), DecodeError> {
        match tag {
            tag::KEY => once(&mut self.key, "key", read_key(payload, "key")?),
            tag::BASE => once(&mut self.base, "base key", read_key(payload, "base key")?),
            tag::STATUS => {
                let mut r = Reader::new(payload);
                let code = r.uint("status")?;
                r.finish("status")?;
                let status = u16::try_from(code)
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or(DecodeError::Invalid("status"))?;
                once(&mut self.status, "status", status)
            }
            tag::HEADERS => once(
                &mut self.headers,
                "headers",
                read_headers(payload, "headers")?,
            ),
            tag::BODY => once(&mut self.body, "body", Bytes::copy_from_slice(payload)),
            tag::ROUTE => once(&mut self.route, "route", Arc::from(utf8(payload, "route")?)),
            tag::DESCRIPTION => once(
                &mut self.description,
                "description",
                utf8(payload, "description")?.to_owned(),
            ),
            tag::STORED_AT => once(
                &mut self.stored_at,
                "stored-at",
                single(payload, "stored-at")?,
            ),
            tag::EXPIRES_AT => once(
                &mut self.expires_at,
                "expires-at",
                single(payload, "expires-at")?,
            ),
            tag::STALE => {
                let mut r = Reader::new(payload);
                let if_error = span_ms(r.uint("stale windows")?, "stale-if-error")?;
                let while_revalidate = span_ms(r.uint("stale windows")?, "stale-while-revalidate")?;
                r.finish("stale windows")?;
                once(
                    &mut self.stale,
                    "stale windows",
                    StaleWindows {
                        if_error,
                        while_revalidate,
                        // Derived from the headers once they are read.
                        revalidate: Duration::ZERO,
                    },
                )
            }
            tag::VARY => once(&mut self.vary, "vary names", read_vary(payload)?),
            tag::INITIAL_AGE => {
                let age = single(payload, "initial age")?;
                if age > MAX_SPAN.as_secs() {
                    return Err(DecodeError::OutOfRange("initial age"));
                }
                once(&mut self.initial_age, "initial age", age)
            }
            tag::UPSTREAM_TIME => {
                let micros = single(payload, "upstream time")?;
                let time = Duration::from_micros(micros);
                if time > MAX_SPAN {
                    return Err(DecodeError::OutOfRange("upstream time"));
                }
                once(&mut self.upstream_time, "upstream time", time)
            }
            tag::REPLAY => once(&mut self.replay, "replay", read_replay(payload)?),
            tag::HITS => once(&mut self.hits, "hits", single(payload, "hits")?),
            tag if tag >= OPTIONAL_TAGS => Ok(()),
            tag => Err(DecodeError::UnknownField(tag)),
        }
    }

    fn into_entry(self, clock: &Clock) -> Result<Entry, DecodeError> {
        let stored_ms = self.stored_at.ok_or(DecodeError::Missing("stored-at"))?;
        let expires_ms = self.expires_at.ok_or(DecodeError::Missing("expires-at"))?;
        if expires_ms < stored_ms {
            return Err(DecodeError::Invalid("expires-at before stored-at"));
        }
        let mut stale = self.stale.ok_or(DecodeError::Missing("stale windows"))?;
        let headers = StoredHeaders::from(self.headers.ok_or(DecodeError::Missing("headers"))?);
        // Not encoded: an entry with a validator is kept for revalidation.
        stale.revalidate = revalidate_window(crate::headers::has_validator(&headers));
        let mut initial_age = self
            .initial_age
            .ok_or(DecodeError::Missing("initial age"))?;
        let now = clock.mono;
        // Expired further back than the monotonic clock reaches: expired
        // now, with the stale windows shortened by the time already spent
        // in them, so they still end when they would have.
        let expires_at = match clock.offset(expires_ms) {
            Ok(ahead) if ahead > MAX_SPAN => return Err(DecodeError::OutOfRange("expires-at")),
            Ok(ahead) => now + ahead,
            Err(ago) => now.checked_sub(ago).unwrap_or_else(|| {
                stale.if_error = stale.if_error.saturating_sub(ago);
                stale.while_revalidate = stale.while_revalidate.saturating_sub(ago);
                stale.revalidate = stale.revalidate.saturating_sub(ago);
                now
            }),
        };
        // Stored "in the future" (another replica's clock runs ahead): age
        // counts from now. Stored before this host's monotonic clock can
        // reach: stored at expiry (or now), and the age it had gathered
        // before that moves into `initial_age`, so `Age` still adds up.
        let stored_at = match clock.offset(stored_ms) {
            Ok(_) => now,
            Err(ago) => now.checked_sub(ago).unwrap_or_else(|| {
                let base = expires_at.min(now);
                let before_base = ago.saturating_sub(now - base);
                initial_age = initial_age
                    .saturating_add(before_base.as_secs())
                    .min(MAX_SPAN.as_secs());
                base
            }),
        };
        Ok(Entry {
            key: self.key.ok_or(DecodeError::Missing("key"))?,
            base: self.base.ok_or(DecodeError::Missing("base key"))?,
            vary: self.vary,
            status: self.status.ok_or(DecodeError::Missing("status"))?,
            headers,
            body: self.body.ok_or(DecodeError::Missing("body"))?,
            route: self.route.ok_or(DecodeError::Missing("route"))?,
            description: self
                .description
                .ok_or(DecodeError::Missing("description"))?,
            stored_at,
            expires_at,
            stale,
            initial_age,
            upstream_time: self
                .upstream_time
                .ok_or(DecodeError::Missing("upstream time"))?,
            hits: AtomicU64::new(self.hits.unwrap_or(0)),
            replay: self.replay,
        })
    }
}

fn read_key(payload: &[u8], name: &'static str) -> Result<CacheKey, DecodeError> {
    let bytes: [u8; 16] = payload.try_into().map_err(|_| DecodeError::Invalid(name))?;
    Ok(CacheKey::from_bytes(bytes))
}

/// A payload that is exactly one integer.
fn single(payload: &[u8], name: &'static str) -> Result<u64, DecodeError> {
    let mut r = Reader::new(payload);
    let value = r.uint(name)?;
    r.finish(name)?;
    Ok(value)
}

fn span_ms(ms: u64, name: &'static str) -> Result<Duration, DecodeError> {
    let span = Duration::from_millis(ms);
    if span > MAX_SPAN {
        return Err(DecodeError::OutOfRange(name));
    }
    Ok(span)
}

fn utf8<'a>(bytes: &'a [u8], name: &'static str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| DecodeError::Invalid(name))
}

fn read_headers(payload: &[u8], name: &'static str) -> Result<HeaderMap, DecodeError> {
    let mut r = Reader::new(payload);
    let mut headers = HeaderMap::new();
    while !r.is_empty() {
        if headers.len() == MAX_HEADERS {
            return Err(DecodeError::OutOfRange(name));
        }
        let field = HeaderName::from_bytes(r.prefixed(name)?)
            .map_err(|_| DecodeError::Invalid("header name"))?;
        let value = HeaderValue::from_bytes(r.prefixed(name)?)
            .map_err(|_| DecodeError::Invalid("header value"))?;
        headers.append(field, value);
    }
    Ok(headers)
}

fn read_vary(payload: &[u8]) -> Result<Arc<[HeaderName]>, DecodeError> {
    let mut r = Reader::new(payload);
    let mut names = Vec::new();
    while !r.is_empty() {
        if names.len() == MAX_VARY_NAMES {
            return Err(DecodeError::OutOfRange("vary names"));
        }
        let name = HeaderName::from_bytes(r.prefixed("vary names")?)
            .map_err(|_| DecodeError::Invalid("vary name"))?;
        names.push(name);
    }
    if names.is_empty() {
        return Err(DecodeError::Invalid("vary names"));
    }
    Ok(names.into())
}

fn read_replay(payload: &[u8]) -> Result<Replay, DecodeError> {
    let mut r = Reader::new(payload);
    let method = Method::from_bytes(r.prefixed("replay")?)
        .map_err(|_| DecodeError::Invalid("replay method"))?;
    let path_and_query = utf8(r.prefixed("replay")?, "replay path")?;
    PathAndQuery::from_str(path_and_query).map_err(|_| DecodeError::Invalid("replay path"))?;
    let body = Bytes::copy_from_slice(r.prefixed("replay")?);
    let headers = read_headers(r.prefixed("replay")?, "replay headers")?;
    r.finish("replay")?;
    Ok(Replay {
        method,
        path_and_query: path_and_query.to_owned(),
        body,
        headers,
    })
}

fn millis(span: Duration) -> u64 {
    u64::try_from(span.as_millis()).unwrap_or(u64::MAX)
}

/// Appends one field whose payload is `bytes` as they are (no copy through
/// a scratch buffer: the body is most of an entry).
fn raw_field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    put_bytes(out, bytes);
}

/// Appends one field: tag, payload length, payload.
fn field(out: &mut Vec<u8>, tag: u8, payload: impl FnOnce(&mut Vec<u8>)) {
    let mut body = Vec::new();
    payload(&mut body);
    out.push(tag);
    put_bytes(out, &body);
}

fn put_headers<'a>(
    out: &mut Vec<u8>,
    headers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    for (name, value) in headers {
        put_bytes(out, name.as_str().as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_uint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// LEB128: seven bits a byte, low first, the high bit set on all but the last.
pub(crate) fn put_uint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A cursor over untrusted bytes; every read checks what is left first.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn byte(&mut self, name: &'static str) -> Result<u8, DecodeError> {
        let (&first, rest) = self
            .rest
            .split_first()
            .ok_or(DecodeError::Truncated(name))?;
        self.rest = rest;
        Ok(first)
    }

    /// A LEB128 integer of at most ten bytes that fits in 64 bits, in its
    /// shortest form (so one value has one encoding).
    pub(crate) fn uint(&mut self, name: &'static str) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.byte(name)?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                return Err(DecodeError::OutOfRange(name));
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                if i > 0 && byte == 0 {
                    return Err(DecodeError::Invalid(name));
                }
                return Ok(value);
            }
        }
        Err(DecodeError::OutOfRange(name))
    }

    /// A length-prefixed slice, borrowed from the input.
    pub(crate) fn prefixed(&mut self, name: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.uint(name)?;
        if len > self.rest.len() as u64 {
            return Err(DecodeError::Truncated(name));
        }
        let (taken, rest) = self.rest.split_at(len as usize);
        self.rest = rest;
        Ok(taken)
    }

    fn finish(&self, name: &'static str) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Invalid(name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn clock() -> Clock {
        Clock {
            wall: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            mono: Instant::now() + Duration::from_secs(86_400),
        }
    }

    fn sample(clock: &Clock) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-tag", HeaderValue::from_static("a"));
        headers.append("x-tag", HeaderValue::from_static("b"));
        let mut request = HeaderMap::new();
        request.insert("accept", HeaderValue::from_static("application/json"));
        Entry {
            key: CacheKey::from_bytes([7; 16]),
            base: CacheKey::from_bytes([8; 16]),
            vary: Some(vec![HeaderName::from_static("accept-language")].into()),
            status: StatusCode::OK,
            headers: headers.into(),
            body: Bytes::from_static(br#"{"total":42,"org":"Vale"}"#),
            route: Arc::from("get_metrics"),
            description: r#"get_metrics POST /api/metrics {"org":"Vale"}"#.into(),
            stored_at: clock.mono - Duration::from_secs(100),
            expires_at: clock.mono + HOUR,
            stale: StaleWindows {
                if_error: Duration::from_secs(86_400),
                while_revalidate: Duration::from_secs(30),
                revalidate: Duration::ZERO,
            },
            initial_age: 5,
            upstream_time: Duration::from_micros(2_500_123),
            hits: AtomicU64::new(17),
            replay: Some(Replay {
                method: Method::POST,
                path_and_query: "/api/metrics?b=2&a=1".into(),
                body: Bytes::from_static(br#"{"org":"Vale"}"#),
                headers: request,
            }),
        }
    }

    fn assert_same(a: &Entry, b: &Entry) {
        assert_eq!(a.key, b.key);
        assert_eq!(a.base, b.base);
        assert_eq!(a.vary, b.vary);
        assert_eq!(a.status, b.status);
        assert_eq!(a.headers, b.headers);
        assert_eq!(a.body, b.body);
        assert_eq!(a.route, b.route);
        assert_eq!(a.description, b.description);
        assert_eq!(a.stale, b.stale);
        assert_eq!(a.initial_age, b.initial_age);
        assert_eq!(a.upstream_time, b.upstream_time);
        assert_eq!(
            a.hits.load(Ordering::Relaxed),
            b.hits.load(Ordering::Relaxed)
        );
        match (&a.replay, &b.replay) {
            (None, None) => {}
            (Some(x), Some(y)) => {
                assert_eq!(x.method, y.method);
                assert_eq!(x.path_and_query, y.path_and_query);
                assert_eq!(x.body, y.body);
                assert_eq!(x.headers, y.headers);
            }
            _ => panic!("replay lost or invented"),
        }
    }

    #[test]
    fn an_entry_survives_a_round_trip() {
        let clock = clock();
        let entry = sample(&clock);
        let decoded = decode(&encode(&entry, &clock), &clock).unwrap();
        assert_same(&entry, &decoded);
        assert_eq!(decoded.stored_at, entry.stored_at);
        assert_eq!(decoded.expires_at, entry.expires_at);
    }

    #[test]
    fn a_decoded_entry_holds_its_body_and_values_in_one_buffer() {
        let clock = clock();
        let entry = sample(&clock);
        let decoded = decode(&encode(&entry, &clock), &clock).unwrap();
        let body = decoded.body.as_ptr_range();
        let mut next = body.end;
        for value in decoded.headers.values() {
            assert_eq!(value.as_bytes().as_ptr(), next, "{value:?} follows");
            next = value.as_bytes().as_ptr_range().end;
        }
        assert!(decoded.headers.len() > 1 && !decoded.body.is_empty());
    }

    #[test]
    fn the_body_is_stored_as_raw_bytes() {
        let clock = clock();
        let entry = sample(&clock);
        let bytes = encode(&entry, &clock);
        assert!(bytes
            .windows(entry.body.len())
            .any(|w| w == entry.body.as_ref()));
        assert!(bytes.len() < entry.size() as usize, "{} bytes", bytes.len());
    }

    #[test]
    fn remaining_ttl_and_age_continue_after_a_restart() {
        let before = clock();
        let entry = sample(&before);
        let bytes = encode(&entry, &before);
        // Ten minutes later, in another process whose monotonic clock
        // started recently.
        let after = Clock {
            wall: before.wall + Duration::from_secs(600),
            mono: Instant::now(),
        };
        let decoded = decode(&bytes, &after).unwrap();
        assert_eq!(
            decoded.ttl_left(after.mono),
            entry.ttl_left(before.mono) - Duration::from_secs(600)
        );
        assert_eq!(decoded.age(after.mono), entry.age(before.mono) + 600);
    }

    #[test]
    fn an_entry_expired_while_away_decodes_as_expired_with_its_stale_window() {
        let before = clock();
        let entry = sample(&before);
        let bytes = encode(&entry, &before);
        let after = Clock {
            wall: before.wall + 2 * HOUR,
            mono: Instant::now(),
        };
        let decoded = decode(&bytes, &after).unwrap();
        assert!(!decoded.is_fresh(after.mono));
        assert!(decoded.serves_if_error(after.mono));
        assert_eq!(decoded.ttl_signed(after.mono), -3600);
    }

    #[test]
    fn times_older_than_the_monotonic_clock_keep_age_and_window_ends() {
        let before = Clock {
            wall: UNIX_EPOCH + Duration::from_secs(1_000_000_000),
            mono: Instant::now(),
        };
        let entry = sample(&before);
        let bytes = encode(&entry, &before);
        // Years later: no Instant reaches back that far on this host.
        let years = Duration::from_secs(5 * 365 * 86_400);
        let after = Clock {
            wall: before.wall + years,
            mono: Instant::now(),
        };
        let mut long = sample(&before);
        long.stale.if_error = years + HOUR;
        let decoded = decode(&encode(&long, &before), &after).unwrap();
        assert!(decoded.age(after.mono) >= years.as_secs());
        assert!(decoded.serves_if_error(after.mono));
        assert!(!decoded.serves_if_error(after.mono + 2 * HOUR));
        decode(&bytes, &after).unwrap();
    }

    #[test]
    fn an_entry_stored_ahead_of_this_clock_has_only_its_initial_age() {
        let before = clock();
        let entry = sample(&before);
        let behind = Clock {
            wall: before.wall - Duration::from_secs(1000),
            mono: before.mono,
        };
        let decoded = decode(&encode(&entry, &before), &behind).unwrap();
        assert_eq!(decoded.age(behind.mono), entry.initial_age);
    }

    #[test]
    fn an_entry_with_a_validator_decodes_with_its_revalidation_window() {
        let clock = clock();
        let mut entry = sample(&clock);
        let mut headers = entry.headers.to_map();
        headers.insert("etag", HeaderValue::from_static("\"v1\""));
        entry.headers = headers.into();
        let decoded = decode(&encode(&entry, &clock), &clock).unwrap();
        assert_eq!(
            decoded.stale.revalidate,
            crate::cache::stale::REVALIDATE_WINDOW
        );
        assert_eq!(decoded.stale.if_error, entry.stale.if_error);
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let clock = clock();
        let mut bytes = encode(&sample(&clock), &clock);
        bytes[0] = 2;
        assert_eq!(
            decode(&bytes, &clock).unwrap_err(),
            DecodeError::UnknownVersion(2)
        );
        assert_eq!(decode(&[], &clock).unwrap_err(), DecodeError::Empty);
    }

    #[test]
    fn unknown_optional_fields_are_skipped_and_unknown_required_ones_refused() {
        let clock = clock();
        let mut bytes = encode(&sample(&clock), &clock);
        let mut optional = bytes.clone();
        field(&mut optional, 200, |b| b.extend_from_slice(b"later"));
        decode(&optional, &clock).unwrap();
        field(&mut bytes, 99, |b| b.push(1));
        assert_eq!(
            decode(&bytes, &clock).unwrap_err(),
            DecodeError::UnknownField(99)
        );
    }

    /// Where each field ends in an encoding.
    fn field_ends(bytes: &[u8]) -> Vec<usize> {
        let mut r = Reader::new(&bytes[1..]);
        let mut ends = Vec::new();
        while !r.is_empty() {
            r.byte("tag").unwrap();
            r.prefixed("payload").unwrap();
            ends.push(bytes.len() - r.rest.len());
        }
        ends
    }

    #[test]
    fn every_truncation_inside_a_field_or_before_a_required_one_is_an_error() {
        let clock = clock();
        let bytes = encode(&sample(&clock), &clock);
        let ends = field_ends(&bytes);
        // Only the trailing optional-presence fields (replay, hits) may be
        // cut off whole; the snapshot's record checksum and Redis' atomic
        // values catch that.
        let last_required = ends[ends.len() - 3];
        for len in 0..bytes.len() {
            let result = decode(&bytes[..len], &clock);
            if ends.contains(&len) && len >= last_required {
                assert!(result.is_ok(), "length {len}");
            } else {
                assert!(result.is_err(), "length {len}");
            }
        }
    }

    #[test]
    fn a_duplicate_field_is_refused() {
        let clock = clock();
        let mut bytes = encode(&sample(&clock), &clock);
        field(&mut bytes, tag::BODY, |b| b.extend_from_slice(b"other"));
        assert_eq!(
            decode(&bytes, &clock).unwrap_err(),
            DecodeError::Duplicate("body")
        );
    }

    #[test]
    fn a_huge_length_is_refused_without_allocating() {
        let clock = clock();
        let mut bytes = vec![VERSION, tag::BODY];
        put_uint(&mut bytes, u64::MAX);
        assert_eq!(
            decode(&bytes, &clock).unwrap_err(),
            DecodeError::Truncated("field")
        );
    }

    #[test]
    fn durations_past_the_cap_are_refused() {
        let clock = clock();
        let mut entry = sample(&clock);
        entry.stale.if_error = MAX_SPAN + HOUR;
        assert_eq!(
            decode(&encode(&entry, &clock), &clock).unwrap_err(),
            DecodeError::OutOfRange("stale-if-error")
        );
        let mut entry = sample(&clock);
        entry.expires_at = clock.mono + MAX_SPAN + HOUR;
        assert_eq!(
            decode(&encode(&entry, &clock), &clock).unwrap_err(),
            DecodeError::OutOfRange("expires-at")
        );
    }

    #[test]
    fn integers_have_one_encoding() {
        let mut r = Reader::new(&[0x80, 0x00]);
        assert!(r.uint("n").is_err(), "overlong zero");
        let mut r = Reader::new(&[0xff; 11]);
        assert!(r.uint("n").is_err(), "eleven bytes");
        let mut out = Vec::new();
        put_uint(&mut out, u64::MAX);
        assert_eq!(Reader::new(&out).uint("n"), Ok(u64::MAX));
    }

    #[test]
    fn invalid_header_names_are_refused() {
        let clock = clock();
        let bytes = encode(&sample(&clock), &clock);
        let mut headers = Vec::new();
        put_bytes(&mut headers, b"bad name");
        put_bytes(&mut headers, b"v");
        // A second HEADERS field is a duplicate; build an entry without one.
        let mut without = vec![VERSION];
        let mut r = Reader::new(&bytes[1..]);
        while !r.is_empty() {
            let t = r.byte("t").unwrap();
            let p = r.prefixed("p").unwrap();
            if t != tag::HEADERS {
                field(&mut without, t, |b| b.extend_from_slice(p));
            }
        }
        field(&mut without, tag::HEADERS, |b| {
            b.extend_from_slice(&headers)
        });
        assert_eq!(
            decode(&without, &clock).unwrap_err(),
            DecodeError::Invalid("header name")
        );
    }

    /// Measurement, not a check (`docs/scaling-codec` figures):
    /// `cargo test --release --lib codec_speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement; run in release with --ignored --nocapture"]
    fn codec_speed_on_a_20_kb_json_body() {
        let clock = clock();
        let mut entry = sample(&clock);
        entry.body = Bytes::from_static(include_bytes!("../../tests/fixtures/dashboard_20kb.json"));
        let rounds: u32 = 20_000;
        let started = Instant::now();
        let mut bytes = Vec::new();
        for _ in 0..rounds {
            bytes = std::hint::black_box(encode(std::hint::black_box(&entry), &clock));
        }
        let encode_time = started.elapsed() / rounds;
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(decode(std::hint::black_box(&bytes), &clock).unwrap());
        }
        let decode_time = started.elapsed() / rounds;
        println!(
            "body {} B, encoded {} B, encode {:?}, decode {:?}",
            entry.body.len(),
            bytes.len(),
            encode_time,
            decode_time
        );
    }

    fn header_map() -> impl Strategy<Value = HeaderMap> {
        proptest::collection::vec(("[a-z][a-z0-9-]{0,12}", "[ -~]{0,40}"), 0..8).prop_map(|pairs| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(&value).unwrap(),
                );
            }
            map
        })
    }

    proptest! {
        #[test]
        fn any_entry_round_trips(
            key in any::<[u8; 16]>(),
            status in 100u16..1000,
            headers in header_map(),
            body in proptest::collection::vec(any::<u8>(), 0..2048),
            route in "\\PC{0,20}",
            description in "\\PC{0,80}",
            stored_ago_ms in 0u64..1_000_000_000,
            ttl_ms in 0u64..1_000_000_000,
            if_error_ms in 0u64..1_000_000_000,
            swr_ms in 0u64..1_000_000_000,
            initial_age in 0u64..1_000_000,
            upstream_us in 0u64..100_000_000,
            hits in any::<u64>(),
            replay in proptest::option::of(("/[a-z0-9/?=&]{0,30}", proptest::collection::vec(any::<u8>(), 0..64), header_map())),
            vary in proptest::option::of(proptest::collection::vec("[a-z][a-z-]{0,10}", 1..4)),
        ) {
            let clock = clock();
            let stored_at = clock.mono - Duration::from_millis(stored_ago_ms);
            let headers = StoredHeaders::from(headers);
            let revalidate = revalidate_window(crate::headers::has_validator(&headers));
            let entry = Entry {
                key: CacheKey::from_bytes(key),
                base: CacheKey::from_bytes(key),
                vary: vary.map(|names| names.iter().map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()).collect()),
                status: StatusCode::from_u16(status).unwrap(),
                headers,
                body: Bytes::from(body),
                route: Arc::from(route),
                description,
                stored_at,
                expires_at: stored_at + Duration::from_millis(ttl_ms),
                stale: StaleWindows {
                    if_error: Duration::from_millis(if_error_ms),
                    while_revalidate: Duration::from_millis(swr_ms),
                    revalidate,
                },
                initial_age,
                upstream_time: Duration::from_micros(upstream_us),
                hits: AtomicU64::new(hits),
                replay: replay.map(|(path, body, headers)| Replay {
                    method: Method::POST,
                    path_and_query: path,
                    body: Bytes::from(body),
                    headers,
                }),
            };
            let bytes = encode(&entry, &clock);
            let decoded = decode(&bytes, &clock).unwrap();
            assert_same(&entry, &decoded);
            prop_assert_eq!(decoded.stored_at, entry.stored_at);
            prop_assert_eq!(decoded.expires_at, entry.expires_at);
            prop_assert_eq!(encode(&decoded, &clock), bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let clock = clock();
            let mut input = vec![VERSION];
            input.extend_from_slice(&bytes);
            let _ = decode(&input, &clock);
        }
    }
}
