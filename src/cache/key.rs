//! Cache keys: md5 over the request's identity, and the entry's readable
//! description.
//!
//! Identity is the method, the path, the query with its parameters sorted by
//! name, and the body. A body that parses as JSON is canonicalised first
//! (object keys sorted, insignificant whitespace dropped, numbers and strings
//! kept as written) so the same filters always land on the same entry;
//! anything else is hashed as sent. The description (`route METHOD
//! path?query body`) is kept with each entry for `invalidate` and is only
//! built on a miss.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use http::Method;
use md5::{Digest, Md5};
use serde_json::Value;

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
    /// Parsed JSON; hashed and described in canonical form.
    Json(Value),
    Raw(&'a [u8]),
}

impl<'a> KeyBody<'a> {
    pub fn parse(body: &'a [u8]) -> Self {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        match first {
            None if body.is_empty() => Self::Empty,
            Some(b'{' | b'[' | b'"') | Some(b'0'..=b'9' | b'-' | b't' | b'f' | b'n') => {
                match serde_json::from_slice::<Value>(body) {
                    Ok(value) => Self::Json(value),
                    Err(_) => Self::Raw(body),
                }
            }
            _ => Self::Raw(body),
        }
    }

    fn write_to(&self, out: &mut impl Write) {
        match self {
            Self::Empty => {}
            // serde_json's default map is a BTreeMap, so keys come out sorted
            // and `to_writer` emits no whitespace.
            Self::Json(value) => {
                serde_json::to_writer(out, value).expect("writing JSON to memory cannot fail")
            }
            Self::Raw(raw) => out.write_all(raw).expect("writing to memory cannot fail"),
        }
    }

    /// The canonical body as text, for descriptions.
    pub fn canonical_text(&self) -> Cow<'_, str> {
        match self {
            Self::Empty => Cow::Borrowed(""),
            Self::Json(value) => Cow::Owned(value.to_string()),
            Self::Raw(raw) => match std::str::from_utf8(raw) {
                Ok(text) => Cow::Borrowed(text),
                Err(_) => Cow::Owned(format!("<{} bytes of binary>", raw.len())),
            },
        }
    }
}

/// Query parameters sorted by name; repeated names keep their relative order
/// (`a=2&a=1` is a list whose order may matter). Empty segments are dropped.
pub fn canonical_query(query: &str) -> Cow<'_, str> {
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    let name = |pair: &&str| pair.split('=').next().unwrap_or_default().to_owned();
    let sorted = pairs.windows(2).all(|w| name(&w[0]) <= name(&w[1]));
    if sorted && pairs.len() == query.split('&').count() {
        return Cow::Borrowed(query);
    }
    pairs.sort_by_key(name);
    Cow::Owned(pairs.join("&"))
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
        let mut hasher = HashWriter(Md5::new());
        hasher.0.update(self.method.as_str());
        hasher.0.update(b"\n");
        hasher.0.update(self.path);
        hasher.0.update(b"?");
        hasher.0.update(self.query.as_bytes());
        hasher.0.update(b"\n");
        self.body.write_to(&mut hasher);
        CacheKey(hasher.0.finalize().into())
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

/// Feeds serialised JSON straight into the digest, with no buffer between.
struct HashWriter(Md5);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
