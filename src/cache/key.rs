//! Cache keys: md5 over the request's identity, and the entry's readable
//! description.
//!
//! Identity is the method, the path, the query with its parameters sorted by
//! name, and the body. A body that parses as JSON is canonicalised first
//! (object names sorted, insignificant whitespace dropped, string escapes
//! normalised, numbers kept byte for byte as written) so the same filters
//! always land on the same entry; anything else is hashed as sent. Every
//! rule here may split two requests a backend reads alike into two entries
//! (a miss too many), never merge two it reads differently (a wrong answer).
//! The description (`route METHOD path?query body`) is kept with each entry
//! for `invalidate` and is only built on a miss.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use http::Method;
use jiter::{Jiter, JiterError, Peek};
use md5::{Digest, Md5};

/// 128-bit md5 of a request's identity; shown as 32 hex chars.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 16]);

impl CacheKey {
    /// The first 16 hex chars, for logs (the seed's `Cache SET: a3f2b8c1d4e5f6g7...`).
    pub fn short(&self) -> ShortKey {
        ShortKey(*self)
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 digest bytes (what the entry codec writes).
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A key derived from this one and more identity (credentials, `Vary`
    /// values); `tag` keeps different derivations apart.
    pub fn derive(&self, tag: &[u8], parts: &[&[u8]]) -> CacheKey {
        let mut hasher = Md5::new();
        hasher.update(self.0);
        hasher.update(tag);
        for part in parts {
            hasher.update(part);
        }
        CacheKey(hasher.finalize().into())
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

pub struct ShortKey(CacheKey);

impl fmt::Display for ShortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0 .0[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A request's body in the form it is keyed by.
pub enum KeyBody<'a> {
    Empty,
    /// A JSON body, as its canonical text.
    Json(String),
    Raw(&'a [u8]),
}

impl<'a> KeyBody<'a> {
    pub fn parse(body: &'a [u8]) -> Self {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        match first {
            None if body.is_empty() => Self::Empty,
            Some(b'{' | b'[' | b'"') | Some(b'0'..=b'9' | b'-' | b't' | b'f' | b'n') => {
                match canonical_json(body) {
                    Ok(text) => Self::Json(text),
                    Err(_) => Self::Raw(body),
                }
            }
            _ => Self::Raw(body),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Empty => b"",
            Self::Json(text) => text.as_bytes(),
            Self::Raw(raw) => raw,
        }
    }

    /// The canonical body as text, for descriptions.
    pub fn canonical_text(&self) -> Cow<'_, str> {
        match self {
            Self::Empty => Cow::Borrowed(""),
            Self::Json(text) => Cow::Borrowed(text),
            Self::Raw(raw) => match std::str::from_utf8(raw) {
                Ok(text) => Cow::Borrowed(text),
                Err(_) => Cow::Owned(format!("<{} bytes of binary>", raw.len())),
            },
        }
    }
}

/// Why a body that looks like JSON is hashed as sent instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotCanonical {
    /// Not JSON (RFC 8259) at all.
    Syntax,
    /// An object repeats a name. Backends disagree on what that means (the
    /// last wins in Python and serde_json, the first in some, others refuse
    /// it), so no canonical form is safe: merging `{"org":"a","org":"b"}`
    /// with `{"org":"b"}` would give a first-wins backend's answer to the
    /// wrong filter.
    DuplicateName,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl From<JiterError> for NotCanonical {
    fn from(_: JiterError) -> Self {
        Self::Syntax
    }
}

/// Nesting beyond this is hashed as sent. It bounds the recursion of
/// [`write_canonical`], as serde_json's own limit of 128 bounds its parser.
const MAX_DEPTH: usize = 128;

/// The canonical text of a JSON body: object members sorted by name, no
/// insignificant whitespace, strings re-escaped the one way serde_json
/// writes them, numbers byte for byte as sent (`1`, `1.0`, `1e5` and `1E5`
/// are different text a backend may read differently, e.g. int against
/// float or `Decimal`).
///
/// jiter, the parser pydantic uses, hands over each number's own bytes,
/// which serde_json cannot: its `arbitrary_precision` mode rewrites
/// exponents (`1E5` becomes `1e+5`) and reads an object whose only name is
/// `$serde_json::private::Number` as a number, merging it with one.
fn canonical_json(body: &[u8]) -> Result<String, NotCanonical> {
    let mut jiter = Jiter::new(body);
    let mut out = Vec::with_capacity(body.len());
    let peek = jiter.peek()?;
    write_canonical(&mut jiter, peek, 0, &mut out)?;
    jiter.finish()?;
    // Only literals, ASCII numbers and strings serde_json escaped were
    // written, so this never fails.
    String::from_utf8(out).map_err(|_| NotCanonical::Syntax)
}

/// Writes the canonical form of the value `peek` starts.
fn write_canonical(
    jiter: &mut Jiter,
    peek: Peek,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), NotCanonical> {
    match peek {
        Peek::Null => {
            jiter.known_null()?;
            out.extend_from_slice(b"null");
        }
        Peek::True | Peek::False => {
            let text: &[u8] = if jiter.known_bool(peek)? {
                b"true"
            } else {
                b"false"
            };
            out.extend_from_slice(text);
        }
        Peek::String => write_string(out, jiter.known_str()?),
        Peek::Array => {
            let depth = nested(depth)?;
            out.push(b'[');
            let mut next = jiter.known_array()?;
            while let Some(peek) = next {
                write_canonical(jiter, peek, depth, out)?;
                next = jiter.array_step()?;
                if next.is_some() {
                    out.push(b',');
                }
            }
            out.push(b']');
        }
        Peek::Object => write_object(jiter, nested(depth)?, out)?,
        _ if peek.is_num() => out.extend_from_slice(jiter.known_number_bytes(peek)?),
        _ => return Err(NotCanonical::Syntax),
    }
    Ok(())
}

fn nested(depth: usize) -> Result<usize, NotCanonical> {
    if depth < MAX_DEPTH {
        Ok(depth + 1)
    } else {
        Err(NotCanonical::TooDeep)
    }
}

/// Writes an object's members sorted by name. Each value is first written
/// canonically after `out`'s end, then the values are moved behind their
/// sorted names.
fn write_object(jiter: &mut Jiter, depth: usize, out: &mut Vec<u8>) -> Result<(), NotCanonical> {
    let start = out.len();
    let mut members: Vec<(String, Range<usize>)> = Vec::new();
    let mut name = jiter.known_object()?.map(str::to_owned);
    while let Some(member) = name {
        let from = out.len() - start;
        let peek = jiter.peek()?;
        write_canonical(jiter, peek, depth, out)?;
        members.push((member, from..out.len() - start));
        name = jiter.next_key()?.map(str::to_owned);
    }
    let values = out.split_off(start);
    members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if members.windows(2).any(|pair| pair[0].0 == pair[1].0) {
        return Err(NotCanonical::DuplicateName);
    }
    out.push(b'{');
    for (i, (name, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, &name);
        out.push(b':');
        out.extend_from_slice(&values[value]);
    }
    out.push(b'}');
    Ok(())
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(out, text).expect("writing a string to memory cannot fail");
}

/// Query parameters sorted by name; repeated names keep their relative order
/// (`a=2&a=1` is a list whose order may matter). Empty segments are dropped.
///
/// Names are compared as the backend reads them, percent- and `+`-decoded,
/// so `ab=2&a%62=1` (the list `ab=[2,1]`) keeps its order instead of being
/// sorted into `a%62=1&ab=2` (`ab=[1,2]`). Segments themselves are kept as
/// sent, so `a` and `a=` stay apart: Starlette reads both as `a=""` but
/// Rack reads `a` as nil, and a split costs only a miss.
pub fn canonical_query(query: &str) -> Cow<'_, str> {
    if is_canonical_query(query) {
        return Cow::Borrowed(query);
    }
    let mut named: Vec<(Cow<str>, &str)> = query
        .split('&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| (decoded_name(segment), segment))
        .collect();
    // Stable, so equal names keep their relative order.
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let segments: Vec<&str> = named.into_iter().map(|(_, segment)| segment).collect();
    Cow::Owned(segments.join("&"))
}

/// True when `query` is already sorted and has no empty segment: the common
/// case, checked without allocating.
fn is_canonical_query(query: &str) -> bool {
    let mut previous: Option<Cow<str>> = None;
    for segment in query.split('&') {
        if segment.is_empty() {
            return query.is_empty();
        }
        let name = decoded_name(segment);
        if previous.as_ref().is_some_and(|previous| *previous > name) {
            return false;
        }
        previous = Some(name);
    }
    true
}

/// A query segment's name as `application/x-www-form-urlencoded` decodes
/// it; borrowed unless it holds `%` or `+`.
fn decoded_name(segment: &str) -> Cow<'_, str> {
    let name = segment.split_once('=').map_or(segment, |(name, _)| name);
    form_urlencoded::parse(name.as_bytes())
        .next()
        .map_or(Cow::Borrowed(""), |(name, _)| name)
}

/// The identity of a cacheable request, ready to hash or describe.
pub struct RequestIdentity<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Cow<'a, str>,
    pub body: KeyBody<'a>,
}

impl<'a> RequestIdentity<'a> {
    pub fn new(method: &'a Method, path: &'a str, query: Option<&'a str>, body: &'a [u8]) -> Self {
        Self {
            method,
            path,
            query: query.map_or(Cow::Borrowed(""), canonical_query),
            body: KeyBody::parse(body),
        }
    }

    pub fn key(&self) -> CacheKey {
        let mut hasher = Md5::new();
        hasher.update(self.method.as_str());
        hasher.update(b"\n");
        hasher.update(self.path);
        hasher.update(b"?");
        hasher.update(self.query.as_bytes());
        hasher.update(b"\n");
        hasher.update(self.body.as_bytes());
        CacheKey(hasher.finalize().into())
    }

    /// `get_metrics POST /api/metrics {"org":"Vale"}`: what `invalidate` matches.
    pub fn description(&self, route: &str) -> String {
        let mut text = format!("{route} {} {}", self.method, self.path);
        if !self.query.is_empty() {
            text.push('?');
            text.push_str(&self.query);
        }
        let body = self.body.canonical_text();
        if !body.is_empty() {
            text.push(' ');
            text.push_str(&body);
        }
        text
    }
}

/// Canonical keys remembered by the digest of the request exactly as sent.
///
/// Canonicalising a JSON body means parsing it (a few µs for a dashboard's
/// filter body, the largest cost of a POST hit), while md5 over the raw
/// bytes is several times cheaper, and a dashboard sends byte-identical
/// bodies over and over. The memo is a pure function cache (the same raw
/// request always has the same canonical key), so it can never be stale; it
/// is bounded and only holds 32 bytes per request shape.
pub struct KeyMemo {
    keys: quick_cache::sync::Cache<CacheKey, CacheKey>,
}

impl KeyMemo {
    pub fn new(capacity: usize) -> Self {
        Self {
            keys: quick_cache::sync::Cache::new(capacity.max(64)),
        }
    }

    /// The canonical key of a request, from the memo when it was seen before.
    pub fn key(&self, method: &Method, path: &str, query: Option<&str>, body: &[u8]) -> CacheKey {
        if body.is_empty() {
            // Nothing to parse: the canonical key is as cheap as the memo's.
            return RequestIdentity::new(method, path, query, body).key();
        }
        let mut raw = Md5::new();
        raw.update(b"raw\n");
        raw.update(method.as_str());
        raw.update(b"\n");
        raw.update(path);
        raw.update(b"?");
        raw.update(query.unwrap_or_default());
        raw.update(b"\n");
        raw.update(body);
        let raw = CacheKey(raw.finalize().into());
        if let Some(key) = self.keys.get(&raw) {
            return key;
        }
        let key = RequestIdentity::new(method, path, query, body).key();
        self.keys.insert(raw, key);
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(method: &Method, path: &str, query: Option<&str>, body: &str) -> CacheKey {
        RequestIdentity::new(method, path, query, body.as_bytes()).key()
    }

    #[test]
    fn json_key_order_and_whitespace_do_not_split_entries() {
        let a = key(
            &Method::POST,
            "/api/metrics",
            None,
            r#"{"org":"Vale","location":"Sao Paulo"}"#,
        );
        let b = key(
            &Method::POST,
            "/api/metrics",
            None,
            "{ \"location\" : \"Sao Paulo\",\n  \"org\": \"Vale\" }",
        );
        assert_eq!(a, b);
    }

    #[test]
    fn nested_objects_are_sorted_too() {
        let a = key(
            &Method::POST,
            "/q",
            None,
            r#"{"f":{"b":1,"a":[{"y":1,"x":2}]}}"#,
        );
        let b = key(
            &Method::POST,
            "/q",
            None,
            r#"{"f":{"a":[{"x":2,"y":1}],"b":1}}"#,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn different_filters_get_different_keys() {
        let a = key(&Method::POST, "/api/metrics", None, r#"{"org":"Vale"}"#);
        let b = key(&Method::POST, "/api/metrics", None, r#"{"org":"Valé"}"#);
        let c = key(&Method::POST, "/api/metrics", None, r#"{"org":["Vale"]}"#);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn array_order_is_significant() {
        let a = key(&Method::POST, "/q", None, "[1,2]");
        let b = key(&Method::POST, "/q", None, "[2,1]");
        assert_ne!(a, b);
    }

    #[test]
    fn numbers_are_kept_as_written() {
        let a = key(&Method::POST, "/q", None, r#"{"n":1.0}"#);
        let b = key(&Method::POST, "/q", None, r#"{"n":1}"#);
        assert_ne!(
            a, b,
            "1.0 and 1 are different text; the backend may treat them differently"
        );
        let big = RequestIdentity::new(
            &Method::POST,
            "/q",
            None,
            br#"{"n":12345678901234567890123}"#,
        );
        assert_eq!(
            big.description("r"),
            r#"r POST /q {"n":12345678901234567890123}"#
        );
    }

    #[test]
    fn exponents_are_kept_as_written() {
        // serde_json's arbitrary_precision would give `1e+400` and merge `1E5` with `1e5`.
        assert_eq!(KeyBody::parse(b"1e400").canonical_text(), "1e400");
        assert_eq!(
            KeyBody::parse(br#"{ "n" : [ 1E5 ] }"#).canonical_text(),
            r#"{"n":[1E5]}"#
        );
        assert_ne!(
            key(&Method::POST, "/q", None, "1E5"),
            key(&Method::POST, "/q", None, "1e5")
        );
    }

    #[test]
    fn an_object_named_like_serde_json_private_numbers_is_not_a_number() {
        let object = r#"{"$serde_json::private::Number":"5"}"#;
        assert_eq!(KeyBody::parse(object.as_bytes()).canonical_text(), object);
        assert_ne!(
            key(&Method::POST, "/q", None, object),
            key(&Method::POST, "/q", None, "5")
        );
    }

    #[test]
    fn a_body_that_repeats_an_object_name_is_hashed_as_sent() {
        let repeated = r#"{"org":"a","org":"b"}"#;
        assert!(matches!(
            KeyBody::parse(repeated.as_bytes()),
            KeyBody::Raw(_)
        ));
        assert_eq!(
            canonical_json(br#"{"x":{"a":1,"b":2,"a":3}}"#),
            Err(NotCanonical::DuplicateName)
        );
        assert_ne!(
            key(&Method::POST, "/q", None, repeated),
            key(&Method::POST, "/q", None, r#"{"org":"b"}"#)
        );
    }

    #[test]
    fn names_that_differ_only_in_escapes_are_repeats() {
        assert_eq!(
            canonical_json(br#"{"a":1,"\u0061":2}"#),
            Err(NotCanonical::DuplicateName)
        );
    }

    #[test]
    fn string_escapes_do_not_split_entries() {
        let plain = key(&Method::POST, "/q", None, r#"{"org":"Valé/x"}"#);
        let escaped = key(&Method::POST, "/q", None, r#"{"\u006frg":"Val\u00E9\/x"}"#);
        assert_eq!(plain, escaped);
    }

    #[test]
    fn nesting_up_to_the_limit_is_canonicalised_and_beyond_it_hashed_as_sent() {
        let nest = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(canonical_json(nest(MAX_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            canonical_json(nest(MAX_DEPTH + 1).as_bytes()),
            Err(NotCanonical::TooDeep)
        );
        let deep = nest(100_000);
        assert!(matches!(KeyBody::parse(deep.as_bytes()), KeyBody::Raw(_)));
    }

    #[test]
    fn near_json_is_hashed_as_sent() {
        for body in [
            "NaN",
            "-Infinity",
            "01",
            "1.",
            "[1,]",
            "{\"a\":1,}",
            "\"\\ud800\"",
            "1 2",
        ] {
            assert!(
                matches!(KeyBody::parse(body.as_bytes()), KeyBody::Raw(_)),
                "{body}"
            );
        }
    }

    #[test]
    fn method_path_and_body_all_count() {
        let base = key(&Method::POST, "/api/metrics", None, "{}");
        assert_ne!(base, key(&Method::GET, "/api/metrics", None, "{}"));
        assert_ne!(base, key(&Method::POST, "/api/actions", None, "{}"));
        assert_ne!(base, key(&Method::POST, "/api/metrics", None, "[]"));
        assert_ne!(base, key(&Method::POST, "/api/metrics", Some("a=1"), "{}"));
    }

    #[test]
    fn path_and_query_cannot_be_confused() {
        assert_ne!(
            key(&Method::GET, "/a", Some("b"), ""),
            key(&Method::GET, "/a?b", None, "")
        );
    }

    #[test]
    fn query_parameters_are_sorted_by_name() {
        assert_eq!(canonical_query("b=2&a=1"), "a=1&b=2");
        assert_eq!(canonical_query("a=1&b=2"), "a=1&b=2");
        assert!(matches!(canonical_query("a=1&b=2"), Cow::Borrowed(_)));
        assert_eq!(canonical_query("b=1&a=2&a=1"), "a=2&a=1&b=1");
        assert_eq!(canonical_query("a=1&&b=2&"), "a=1&b=2");
    }

    #[test]
    fn a_bare_name_and_an_empty_value_stay_apart() {
        // Starlette reads both as `a=""`, Rack reads `a` as nil: split, never merge.
        assert_ne!(
            key(&Method::GET, "/q", Some("a"), ""),
            key(&Method::GET, "/q", Some("a="), "")
        );
        assert_eq!(canonical_query("b&a="), "a=&b");
    }

    #[test]
    fn names_equal_once_decoded_keep_their_relative_order() {
        // `ab=2&a%62=1` is the list ab=[2,1]; sorting by raw text would make it [1,2].
        assert_eq!(canonical_query("ab=2&a%62=1"), "ab=2&a%62=1");
        assert_eq!(canonical_query("z=1&a+b=2&a%20b=3"), "a+b=2&a%20b=3&z=1");
        assert_ne!(
            canonical_query("ab=2&a%62=1"),
            canonical_query("a%62=1&ab=2")
        );
    }

    #[test]
    fn malformed_json_is_hashed_raw() {
        let a = key(&Method::POST, "/q", None, "{\"org\": ");
        let b = key(&Method::POST, "/q", None, "{\"org\":");
        assert_ne!(a, b);
    }

    #[test]
    fn description_carries_route_target_and_canonical_body() {
        let id = RequestIdentity::new(
            &Method::POST,
            "/api/metrics",
            Some("z=1&a=2"),
            br#"{ "org" : "Vale" }"#,
        );
        assert_eq!(
            id.description("get_metrics"),
            r#"get_metrics POST /api/metrics?a=2&z=1 {"org":"Vale"}"#
        );
    }

    #[test]
    fn the_memo_gives_the_canonical_key() {
        let memo = KeyMemo::new(100);
        let body = br#"{ "org": "Vale", "a": 1 }"#;
        let canonical = RequestIdentity::new(&Method::POST, "/api/metrics", None, body).key();
        assert_eq!(
            memo.key(&Method::POST, "/api/metrics", None, body),
            canonical
        );
        assert_eq!(
            memo.key(&Method::POST, "/api/metrics", None, body),
            canonical,
            "from the memo"
        );
        let reordered = br#"{"a":1,"org":"Vale"}"#;
        assert_eq!(
            memo.key(&Method::POST, "/api/metrics", None, reordered),
            canonical
        );
        assert_ne!(
            memo.key(&Method::POST, "/api/actions", None, body),
            canonical
        );
        assert_eq!(
            memo.key(&Method::GET, "/x", Some("b=1&a=2"), b""),
            RequestIdentity::new(&Method::GET, "/x", Some("a=2&b=1"), b"").key()
        );
    }

    #[test]
    fn keys_render_as_32_hex_chars() {
        let k = key(&Method::GET, "/", None, "");
        assert_eq!(k.to_string().len(), 32);
        assert!(k.to_string().chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(k.short().to_string(), k.to_string()[..16]);
    }
}
