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
//!
//! A route's [`KeyRules`] (`cache::key_rules`) are applied while the
//! canonical body and query are written: ignored fields and parameters are
//! left out, unordered arrays are sorted by their elements' canonical text,
//! so the key and the description both show the request as keyed.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use http::{HeaderMap, Method};
use jiter::{Jiter, JiterError, Peek};
use md5::{Digest, Md5};

use super::key_rules::{Cursor, KeyRules};

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

/// `bytes` as lowercase hex, in one write (every access line prints a key).
fn write_hex<const N: usize>(f: &mut fmt::Formatter<'_>, bytes: &[u8; N]) -> fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    let text = &mut text[..2 * N];
    for (pair, byte) in text.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
    f.write_str(std::str::from_utf8(text).expect("hex digits are ASCII"))
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
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
        let first: &[u8; 8] = self.0 .0[..8].try_into().expect("a key has 16 bytes");
        write_hex(f, first)
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
        Self::parse_with(body, &KeyRules::default())
    }

    /// The body as keyed under `rules`: a JSON body without its ignored
    /// fields and with its unordered arrays sorted; anything else as sent.
    pub fn parse_with(body: &'a [u8], rules: &KeyRules) -> Self {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        match first {
            None if body.is_empty() => Self::Empty,
            Some(b'{' | b'[' | b'"') | Some(b'0'..=b'9' | b'-' | b't' | b'f' | b'n') => {
                match canonical_json_with(body, rules) {
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
#[cfg(test)]
fn canonical_json(body: &[u8]) -> Result<String, NotCanonical> {
    canonical_json_with(body, &KeyRules::default())
}

/// [`canonical_json`] with a route's rules applied. Paths are matched
/// against the body as sent; an ignored value is still read whole (and a
/// body refused for its syntax, depth or repeated names anywhere), so the
/// rules never change which bodies count as JSON.
fn canonical_json_with(body: &[u8], rules: &KeyRules) -> Result<String, NotCanonical> {
    let mut jiter = Jiter::new(body);
    let mut out = Vec::with_capacity(body.len());
    let peek = jiter.peek()?;
    let walk = Walk {
        rules,
        at: Cursor::root(rules),
    };
    write_canonical(&mut jiter, peek, 0, &walk, &mut out)?;
    jiter.finish()?;
    // Only literals, ASCII numbers and strings serde_json escaped were
    // written, so this never fails.
    String::from_utf8(out).map_err(|_| NotCanonical::Syntax)
}

/// Where a canonical walk stands against a route's key rules.
struct Walk<'r> {
    rules: &'r KeyRules,
    at: Cursor,
}

impl<'r> Walk<'r> {
    fn below(&self, cursor: Cursor) -> Walk<'r> {
        Walk {
            rules: self.rules,
            at: cursor,
        }
    }
}

/// Writes the canonical form of the value `peek` starts.
fn write_canonical(
    jiter: &mut Jiter,
    peek: Peek,
    depth: usize,
    walk: &Walk,
    out: &mut Vec<u8>,
) -> Result<(), NotCanonical> {
    write_value(jiter, peek, depth, walk, false, out)
}

/// Writes one value; `unordered` sorts its elements if it is an array.
fn write_value(
    jiter: &mut Jiter,
    peek: Peek,
    depth: usize,
    walk: &Walk,
    unordered: bool,
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
        Peek::Array if unordered || !walk.at.is_empty() => {
            write_ruled_array(jiter, nested(depth)?, walk, unordered, out)?;
        }
        Peek::Array => {
            let depth = nested(depth)?;
            out.push(b'[');
            let mut next = jiter.known_array()?;
            while let Some(peek) = next {
                write_canonical(jiter, peek, depth, walk, out)?;
                next = jiter.array_step()?;
                if next.is_some() {
                    out.push(b',');
                }
            }
            out.push(b']');
        }
        Peek::Object => write_object(jiter, nested(depth)?, walk, out)?,
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

/// Writes an array whose elements some rule reaches: each element under
/// the rules below it, then, when `unordered`, the elements sorted by their
/// canonical text (duplicates kept: `[a,a,b]` is not `[a,b]`).
fn write_ruled_array(
    jiter: &mut Jiter,
    depth: usize,
    walk: &Walk,
    unordered: bool,
    out: &mut Vec<u8>,
) -> Result<(), NotCanonical> {
    let step = walk.at.element(walk.rules);
    let below = walk.below(step.below);
    let start = out.len();
    let mut elements: Vec<Range<usize>> = Vec::new();
    let mut next = jiter.known_array()?;
    while let Some(peek) = next {
        let from = out.len() - start;
        write_value(jiter, peek, depth, &below, step.unordered, out)?;
        elements.push(from..out.len() - start);
        next = jiter.array_step()?;
    }
    let values = out.split_off(start);
    if unordered {
        elements.sort_unstable_by(|a, b| values[a.clone()].cmp(&values[b.clone()]));
    }
    out.push(b'[');
    for (i, element) in elements.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&values[element]);
    }
    out.push(b']');
    Ok(())
}

/// Writes an object's members sorted by name. Each value is first written
/// canonically after `out`'s end, then the values are moved behind their
/// sorted names. A member an ignore rule names is read (so a repeated name
/// still refuses the body) but not written.
fn write_object(
    jiter: &mut Jiter,
    depth: usize,
    walk: &Walk,
    out: &mut Vec<u8>,
) -> Result<(), NotCanonical> {
    let start = out.len();
    let mut members: Vec<(String, Option<Range<usize>>)> = Vec::new();
    let mut name = jiter.known_object()?.map(str::to_owned);
    while let Some(member) = name {
        let from = out.len() - start;
        let peek = jiter.peek()?;
        if walk.at.is_empty() {
            write_canonical(jiter, peek, depth, walk, out)?;
            members.push((member, Some(from..out.len() - start)));
        } else {
            let step = walk.at.member(walk.rules, &member);
            write_value(
                jiter,
                peek,
                depth,
                &walk.below(step.below),
                step.unordered,
                out,
            )?;
            if step.ignored {
                out.truncate(start + from);
                members.push((member, None));
            } else {
                members.push((member, Some(from..out.len() - start)));
            }
        }
        name = jiter.next_key()?.map(str::to_owned);
    }
    let values = out.split_off(start);
    members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if members.windows(2).any(|pair| pair[0].0 == pair[1].0) {
        return Err(NotCanonical::DuplicateName);
    }
    out.push(b'{');
    let kept = members
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)));
    for (i, (name, value)) in kept.enumerate() {
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
    let mut named: Vec<(Cow<str>, &str)> = segments(query)
        .filter(|segment| !segment.is_empty())
        .map(|segment| (decoded_name(segment), segment))
        .collect();
    // Stable, so equal names keep their relative order.
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let segments: Vec<&str> = named.into_iter().map(|(_, segment)| segment).collect();
    Cow::Owned(segments.join("&"))
}

/// The query as keyed under `rules`: [`canonical_query`] without the
/// parameters `key_ignore_query` names (matched by decoded name).
pub fn canonical_query_with<'q>(query: &'q str, rules: &KeyRules) -> Cow<'q, str> {
    if !rules.has_query_rules() {
        return canonical_query(query);
    }
    let kept = segments(query)
        .filter(|segment| !segment.is_empty() && !rules.ignores_query(&decoded_name(segment)));
    if kept.clone().count() == segments(query).count() {
        return canonical_query(query);
    }
    let kept: Vec<&str> = kept.collect();
    Cow::Owned(canonical_query(&kept.join("&")).into_owned())
}

/// True when `query` is already sorted and has no empty segment: the common
/// case, checked without allocating.
fn is_canonical_query(query: &str) -> bool {
    let mut previous: Option<Cow<str>> = None;
    for segment in segments(query) {
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

/// `query`'s `&`-separated segments, empty ones included, as
/// `query.split('&')` gives them. A byte loop: for a query of a few dozen
/// bytes, `str::split`'s searcher spends more setting up than searching
/// (callgrind: about 130 instructions per call, four calls per keyed query).
fn segments(query: &str) -> impl Iterator<Item = &str> + Clone {
    let mut rest = Some(query);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.bytes().position(|b| b == b'&') {
            Some(at) => {
                rest = Some(&text[at + 1..]);
                Some(&text[..at])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// A query segment's name as `application/x-www-form-urlencoded` decodes
/// it; borrowed unless it holds `%` or `+`.
fn decoded_name(segment: &str) -> Cow<'_, str> {
    let name = segment
        .bytes()
        .position(|b| b == b'=')
        .map_or(segment, |at| &segment[..at]);
    if !name.bytes().any(|b| b == b'%' || b == b'+') {
        // Nothing to decode, and already UTF-8: the common case, without
        // the decoder's validation pass.
        return Cow::Borrowed(name);
    }
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
        Self::with_rules(method, path, query, body, &KeyRules::default())
    }

    /// The identity as a route's `rules` key it (without `key_headers`,
    /// which [`KeyMemo::keyed`] adds).
    pub fn with_rules(
        method: &'a Method,
        path: &'a str,
        query: Option<&'a str>,
        body: &'a [u8],
        rules: &KeyRules,
    ) -> Self {
        Self {
            method,
            path,
            query: query.map_or(Cow::Borrowed(""), |q| canonical_query_with(q, rules)),
            body: KeyBody::parse_with(body, rules),
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

    /// The description, followed by the `key_headers` values that joined
    /// the key (`get_metrics POST /api/metrics {} x-tenant=acme`).
    pub fn description_with(&self, route: &str, rules: &KeyRules, headers: &HeaderMap) -> String {
        let mut text = self.description(route);
        let named = rules.header_description(headers);
        if !named.is_empty() {
            text.push(' ');
            text.push_str(&named);
        }
        text
    }
}

/// The key of a request under its route's rules, `key_headers` included.
pub fn key_with_headers(identity: CacheKey, rules: &KeyRules, headers: &HeaderMap) -> CacheKey {
    match rules.header_identity(headers) {
        Some(values) => identity.derive(b"key-headers", &[&values]),
        None => identity,
    }
}

/// Canonical keys remembered by the digest of the request exactly as sent.
///
/// Canonicalising a JSON body means parsing it (a few µs for a dashboard's
/// filter body, the largest cost of a POST hit), while hashing the raw
/// bytes is many times cheaper, and a dashboard sends byte-identical bodies
/// over and over. The memo is a pure function cache (the same raw request
/// always has the same canonical key), so it can never be stale; it is
/// bounded and only holds 32 bytes per request shape.
///
/// The raw digest is SipHash-1-3 with 128-bit output under a key drawn from
/// the OS for each memo: about three times faster than md5 over a filter
/// body (`cargo bench --bench keys`), and a keyed PRF, so nobody who does
/// not know the key can make two different requests share a memo slot
/// (with an unkeyed hash that would hand one filter another's answer).
/// The cache key itself stays md5, as the seed document specifies.
pub struct KeyMemo {
    keys: quick_cache::sync::Cache<CacheKey, CacheKey>,
    secret: MemoSecret,
}

/// A memo's secret, drawn from the OS for each memo. A memo's slot for an
/// input is the SipHash-1-3 (128-bit) of that input under it: see
/// [`KeyMemo`] for why that is fast enough and safe.
#[derive(Clone, Copy)]
pub(super) struct MemoSecret(u64, u64);

impl MemoSecret {
    pub(super) fn random() -> Self {
        let mut secret = [0u8; 16];
        getrandom::getrandom(&mut secret).expect("the OS random source works");
        let (k0, k1) = secret.split_at(8);
        Self(
            u64::from_le_bytes(k0.try_into().expect("8 bytes")),
            u64::from_le_bytes(k1.try_into().expect("8 bytes")),
        )
    }

    pub(super) fn hasher(&self) -> siphasher::sip128::SipHasher13 {
        siphasher::sip128::SipHasher13::new_with_keys(self.0, self.1)
    }

    pub(super) fn slot(hasher: &siphasher::sip128::SipHasher13) -> CacheKey {
        use siphasher::sip128::Hasher128;
        CacheKey(u128::from(hasher.finish128()).to_le_bytes())
    }
}

impl KeyMemo {
    pub fn new(capacity: usize) -> Self {
        Self {
            keys: quick_cache::sync::Cache::new(capacity.max(64)),
            secret: MemoSecret::random(),
        }
    }

    /// The canonical key of a request, from the memo when it was seen before.
    pub fn key(&self, method: &Method, path: &str, query: Option<&str>, body: &[u8]) -> CacheKey {
        self.keyed(method, path, query, body, &KeyRules::default())
    }

    /// The key of a request under its route's `rules` (without
    /// `key_headers`: see [`key_with_headers`]). The rules' fingerprint
    /// joins the raw digest, so a reload that changes them never finds a
    /// key remembered under the old ones.
    pub fn keyed(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        body: &[u8],
        rules: &KeyRules,
    ) -> CacheKey {
        if body.is_empty() {
            // Nothing to parse: the canonical key is as cheap as the memo's.
            return RequestIdentity::with_rules(method, path, query, body, rules).key();
        }
        let raw = self.raw_digest(method, path, query, body, rules);
        if let Some(key) = self.keys.get(&raw) {
            return key;
        }
        let key = RequestIdentity::with_rules(method, path, query, body, rules).key();
        self.keys.insert(raw, key);
        key
    }

    /// The memo's slot: the request exactly as sent, under this memo's secret.
    fn raw_digest(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        body: &[u8],
        rules: &KeyRules,
    ) -> CacheKey {
        use std::hash::Hasher;
        let mut raw = self.secret.hasher();
        if !rules.is_empty() {
            raw.write(&rules.fingerprint());
        }
        // Fields end with a byte none of the first three may contain.
        raw.write(method.as_str().as_bytes());
        raw.write(b"\n");
        raw.write(path.as_bytes());
        raw.write(b"?");
        raw.write(query.unwrap_or_default().as_bytes());
        raw.write(b"\n");
        raw.write(body);
        MemoSecret::slot(&raw)
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
        // A plain name sorts against an encoded one by the decoded text.
        assert_eq!(canonical_query("b=1&%61=2"), "%61=2&b=1");
        assert_eq!(canonical_query("%62=1&a=2"), "a=2&%62=1");
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

    fn rules(ignore: &[&str], unordered: &[&str], query: &[&str], headers: &[&str]) -> KeyRules {
        let own = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        KeyRules::new(&own(ignore), &own(unordered), &own(query), &own(headers)).unwrap()
    }

    fn keyed_text(body: &str, rules: &KeyRules) -> String {
        KeyBody::parse_with(body.as_bytes(), rules)
            .canonical_text()
            .into_owned()
    }

    fn ruled_key(query: Option<&str>, body: &str, rules: &KeyRules) -> CacheKey {
        RequestIdentity::with_rules(&Method::POST, "/api/metrics", query, body.as_bytes(), rules)
            .key()
    }

    #[test]
    fn ignored_fields_are_left_out_at_the_top_and_nested() {
        let r = rules(&["requestId", "meta.sentAt"], &[], &[], &[]);
        assert_eq!(
            keyed_text(
                r#"{"requestId":"a1","org":"Vale","meta":{"sentAt":17,"v":"2"}}"#,
                &r
            ),
            r#"{"meta":{"v":"2"},"org":"Vale"}"#
        );
        assert_eq!(
            ruled_key(None, r#"{"requestId":"a1","org":"Vale"}"#, &r),
            ruled_key(None, r#"{"org":"Vale","requestId":"b2"}"#, &r)
        );
        assert_ne!(
            ruled_key(None, r#"{"requestId":"a1","org":"Vale"}"#, &r),
            ruled_key(None, r#"{"requestId":"a1","org":"Itau"}"#, &r)
        );
    }

    #[test]
    fn a_wildcard_segment_matches_any_one_member() {
        let r = rules(&["client.*"], &[], &[], &[]);
        assert_eq!(
            keyed_text(r#"{"client":{"v":"1.2","tz":"BRT"},"org":"Vale"}"#, &r),
            r#"{"client":{},"org":"Vale"}"#
        );
        let deeper = rules(&["*.sentAt"], &[], &[], &[]);
        assert_eq!(
            keyed_text(
                r#"{"a":{"sentAt":1,"x":1},"b":{"sentAt":2},"sentAt":3}"#,
                &deeper
            ),
            r#"{"a":{"x":1},"b":{},"sentAt":3}"#
        );
    }

    #[test]
    fn an_element_segment_reaches_into_arrays_of_objects() {
        let r = rules(&["items[].ts"], &[], &[], &[]);
        assert_eq!(
            keyed_text(r#"{"items":[{"id":1,"ts":5},{"id":2,"ts":6},3]}"#, &r),
            r#"{"items":[{"id":1},{"id":2},3]}"#
        );
        let top = rules(&["[].requestId"], &[], &[], &[]);
        assert_eq!(
            keyed_text(r#"[{"requestId":1,"q":"a"}]"#, &top),
            r#"[{"q":"a"}]"#
        );
    }

    #[test]
    fn absent_fields_and_fields_of_another_shape_are_left_alone() {
        let r = rules(&["meta.sentAt"], &["orgs"], &[], &[]);
        assert_eq!(keyed_text(r#"{"org":"Vale"}"#, &r), r#"{"org":"Vale"}"#);
        assert_eq!(
            keyed_text(r#"{"meta":"x","orgs":"b"}"#, &r),
            r#"{"meta":"x","orgs":"b"}"#
        );
        assert_eq!(keyed_text(r#"["meta"]"#, &r), r#"["meta"]"#);
    }

    #[test]
    fn unordered_arrays_of_strings_numbers_and_objects_are_sorted() {
        let r = rules(&[], &["orgs", "ids", "filters.locations"], &[], &[]);
        assert_eq!(
            keyed_text(r#"{"orgs":["Vale","Itau","Vale"]}"#, &r),
            r#"{"orgs":["Itau","Vale","Vale"]}"#
        );
        assert_eq!(
            keyed_text(r#"{"ids":[10,9,1.0]}"#, &r),
            r#"{"ids":[1.0,10,9]}"#
        );
        assert_eq!(
            keyed_text(
                r#"{"filters":{"locations":[{"n":"SP","b":1},{"b":0,"n":"RJ"}]}}"#,
                &r
            ),
            r#"{"filters":{"locations":[{"b":0,"n":"RJ"},{"b":1,"n":"SP"}]}}"#
        );
        assert_ne!(
            ruled_key(None, r#"{"orgs":["Vale","Itau"]}"#, &r),
            ruled_key(None, r#"{"orgs":["Vale","Itau","Itau"]}"#, &r),
            "a repeated element still counts"
        );
    }

    #[test]
    fn other_arrays_keep_their_order() {
        let r = rules(&[], &["orgs"], &[], &[]);
        assert_ne!(
            ruled_key(None, r#"{"orgs":[1,2],"range":[1,2]}"#, &r),
            ruled_key(None, r#"{"orgs":[2,1],"range":[2,1]}"#, &r)
        );
        assert_eq!(
            ruled_key(None, r#"{"orgs":[1,2],"range":[1,2]}"#, &r),
            ruled_key(None, r#"{"orgs":[2,1],"range":[1,2]}"#, &r)
        );
    }

    #[test]
    fn unordered_elements_are_sorted_after_their_own_rules() {
        let r = rules(&["items[].ts"], &["items"], &[], &[]);
        assert_eq!(
            keyed_text(r#"{"items":[{"id":2,"ts":1},{"id":1,"ts":9}]}"#, &r),
            r#"{"items":[{"id":1},{"id":2}]}"#
        );
        let nested = rules(&[], &["matrix[]"], &[], &[]);
        assert_eq!(
            keyed_text(r#"{"matrix":[[2,1],[4,3]]}"#, &nested),
            r#"{"matrix":[[1,2],[3,4]]}"#
        );
    }

    #[test]
    fn non_json_bodies_are_hashed_as_sent_whatever_the_rules() {
        let r = rules(&["requestId"], &["orgs"], &[], &[]);
        for body in ["requestId=1&org=Vale", "{\"requestId\":1,", "\u{0}bin"] {
            assert!(matches!(
                KeyBody::parse_with(body.as_bytes(), &r),
                KeyBody::Raw(_)
            ));
        }
        assert_ne!(
            ruled_key(None, "requestId=1&org=Vale", &r),
            ruled_key(None, "requestId=2&org=Vale", &r)
        );
    }

    #[test]
    fn a_repeated_name_refuses_the_body_even_when_it_is_ignored() {
        let r = rules(&["requestId"], &[], &[], &[]);
        let body = br#"{"requestId":1,"requestId":2,"org":"Vale"}"#;
        assert!(matches!(KeyBody::parse_with(body, &r), KeyBody::Raw(_)));
    }

    #[test]
    fn ignored_query_parameters_are_left_out_by_decoded_name() {
        let r = rules(&[], &[], &["utm_*", "_"], &[]);
        assert_eq!(
            canonical_query_with("org=Vale&utm_source=mail&_=1712", &r),
            "org=Vale"
        );
        assert_eq!(
            canonical_query_with("utm%5Fsource=x&b=1&a=2", &r),
            "a=2&b=1"
        );
        assert_eq!(canonical_query_with("__=1&_x=2", &r), "__=1&_x=2");
        assert_eq!(
            ruled_key(Some("org=Vale&_=1"), "", &r),
            ruled_key(Some("_=2&org=Vale&utm_campaign=z"), "", &r)
        );
        assert_ne!(
            ruled_key(Some("org=Vale"), "", &r),
            ruled_key(Some("org=Itau&_=1"), "", &r)
        );
    }

    #[test]
    fn key_headers_join_the_key_case_insensitively() {
        let r = rules(&[], &[], &[], &["X-Tenant"]);
        let identity = ruled_key(None, "{}", &r);
        let mut acme = HeaderMap::new();
        acme.insert("x-tenant", http::HeaderValue::from_static("acme"));
        let mut globex = HeaderMap::new();
        globex.insert("X-TENANT", http::HeaderValue::from_static("globex"));
        let a = key_with_headers(identity, &r, &acme);
        assert_ne!(a, key_with_headers(identity, &r, &globex));
        assert_ne!(a, key_with_headers(identity, &r, &HeaderMap::new()));
        assert_eq!(a, key_with_headers(identity, &r, &acme.clone()));
        assert_eq!(
            key_with_headers(identity, KeyRules::none(), &acme),
            identity,
            "no key_headers, no change"
        );
    }

    #[test]
    fn the_description_shows_the_request_as_keyed() {
        let r = rules(&["requestId"], &["orgs"], &["utm_*"], &["x-tenant"]);
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", http::HeaderValue::from_static("acme"));
        let id = RequestIdentity::with_rules(
            &Method::POST,
            "/api/metrics",
            Some("utm_source=x&v=1"),
            br#"{"requestId":"r-9","orgs":["Vale","Itau"]}"#,
            &r,
        );
        assert_eq!(
            id.description_with("get_metrics", &r, &headers),
            r#"get_metrics POST /api/metrics?v=1 {"orgs":["Itau","Vale"]} x-tenant=acme"#
        );
    }

    #[test]
    fn no_rules_key_exactly_as_before() {
        let body = br#"{"b":[2,1],"a":1}"#;
        assert_eq!(
            RequestIdentity::with_rules(
                &Method::POST,
                "/q",
                Some("b=1&a=2"),
                body,
                KeyRules::none()
            )
            .key(),
            RequestIdentity::new(&Method::POST, "/q", Some("b=1&a=2"), body).key()
        );
    }

    #[test]
    fn each_memo_files_a_request_under_a_secret_of_its_own() {
        let (a, b) = (KeyMemo::new(100), KeyMemo::new(100));
        let slot = |memo: &KeyMemo, body: &[u8]| {
            memo.raw_digest(&Method::POST, "/q", None, body, KeyRules::none())
        };
        let body = br#"{"org":"Vale"}"#;
        assert_eq!(slot(&a, body), slot(&a, body));
        assert_ne!(slot(&a, body), slot(&b, body), "secrets differ");
        assert_ne!(slot(&a, body), slot(&a, br#"{"org":"Vala"}"#));
        // Both give the same canonical (md5) key.
        assert_eq!(
            a.key(&Method::POST, "/q", None, body),
            b.key(&Method::POST, "/q", None, body)
        );
    }

    #[test]
    fn the_memo_never_answers_with_a_key_made_under_other_rules() {
        let memo = KeyMemo::new(100);
        let body = br#"{"requestId":"a","org":"Vale"}"#;
        let plain = memo.keyed(&Method::POST, "/q", None, body, KeyRules::none());
        let ignoring = rules(&["requestId"], &[], &[], &[]);
        let ruled = memo.keyed(&Method::POST, "/q", None, body, &ignoring);
        assert_ne!(plain, ruled);
        assert_eq!(ruled, ruled_key_at("/q", body, &ignoring));
        assert_eq!(
            memo.keyed(&Method::POST, "/q", None, body, KeyRules::none()),
            plain
        );
        let other = br#"{"requestId":"b","org":"Vale"}"#;
        assert_eq!(
            memo.keyed(&Method::POST, "/q", None, other, &ignoring),
            ruled
        );
    }

    #[test]
    fn segments_split_a_query_as_str_split_does() {
        for query in ["", "a", "a=1&b=2", "&", "a=1&&b", "&a&", "é=1&ü&x=%26"] {
            assert_eq!(
                segments(query).collect::<Vec<_>>(),
                query.split('&').collect::<Vec<_>>(),
                "{query:?}"
            );
        }
    }

    fn ruled_key_at(path: &str, body: &[u8], rules: &KeyRules) -> CacheKey {
        RequestIdentity::with_rules(&Method::POST, path, None, body, rules).key()
    }

    #[test]
    fn keys_render_as_32_hex_chars() {
        let k = key(&Method::GET, "/", None, "");
        assert_eq!(k.to_string().len(), 32);
        assert!(k.to_string().chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(k.short().to_string(), k.to_string()[..16]);
    }
}
