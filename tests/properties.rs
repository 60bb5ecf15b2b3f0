//! Properties of the pure rules a shared cache must never get wrong: the
//! cache key and its JSON/query canonicalisation, route matching, hop-by-hop
//! header filtering, `Vary` variants and credential digests.
//!
//! Each property runs proptest's default 256 cases (`PROPTEST_CASES=5000`
//! for a deeper run). Failures are not persisted to a regression file: a
//! case worth keeping becomes a sentence-named unit test next to the code it
//! broke (`src/cache/key.rs`, `src/headers.rs`). The fuzz targets in `fuzz/`
//! drive the same functions with unstructured bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use dashcache::cache::credentials::credential_digest;
use dashcache::cache::key::{
    canonical_query, key_with_headers, CacheKey, KeyBody, KeyMemo, RequestIdentity,
};
use dashcache::cache::key_rules::KeyRules;
use dashcache::cache::vary::{variant_key, vary_names};
use dashcache::config::FileRoute;
use dashcache::headers::{prepare_upstream_request, remove_hop_by_hop};
use dashcache::routes::{PathPattern, Route, RouteTable};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, COOKIE};
use http::{HeaderMap, Method, Version};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::Value;

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// JSON bodies: a model that can be written many equivalent ways.

/// A JSON document whose objects hold each name once, so that every way of
/// writing it means the same value.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    /// Kept as written: `1`, `1.0` and `1e0` are different filters.
    Number(String),
    Text(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(text) => serde_json::from_str(text).expect("generated numbers are JSON"),
            Json::Text(text) => Value::String(text.clone()),
            Json::Array(items) => Value::Array(items.iter().map(Json::value).collect()),
            Json::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(name, v)| (name.clone(), v.value()))
                    .collect(),
            ),
        }
    }

    /// The document with every object's members sorted by name: two
    /// documents mean the same filter exactly when these are equal (numbers
    /// compared as text).
    fn normal(&self) -> Json {
        match self {
            Json::Array(items) => Json::Array(items.iter().map(Json::normal).collect()),
            Json::Object(entries) => {
                let mut entries: Vec<_> = entries
                    .iter()
                    .map(|(n, v)| (n.clone(), v.normal()))
                    .collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Json::Object(entries)
            }
            other => other.clone(),
        }
    }

    fn nodes(&self) -> usize {
        1 + match self {
            Json::Array(items) => items.iter().map(Json::nodes).sum(),
            Json::Object(entries) => entries.iter().map(|(_, v)| v.nodes()).sum(),
            _ => 0,
        }
    }
}

/// Generated choices that decide how a document is written: whitespace,
/// member order and string escapes. Read cyclically.
struct Style<'a> {
    choices: &'a [u8],
    at: usize,
}

impl<'a> Style<'a> {
    fn new(choices: &'a [u8]) -> Self {
        Self { choices, at: 0 }
    }

    fn pick(&mut self, n: usize) -> usize {
        if self.choices.is_empty() {
            return 0;
        }
        let choice = self.choices[self.at % self.choices.len()];
        self.at += 1;
        usize::from(choice) % n
    }

    /// Fisher–Yates, with the picks taken from the choices.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.pick(i + 1);
            items.swap(i, j);
        }
    }

    fn space(&mut self, out: &mut String) {
        out.push_str(["", "", " ", "\n", "\t", "\r\n  "][self.pick(6)]);
    }
}

fn write_json(json: &Json, style: &mut Style, out: &mut String) {
    style.space(out);
    match json {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(text) => out.push_str(text),
        Json::Text(text) => write_string(text, style, out),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, style, out);
            }
            style.space(out);
            out.push(']');
        }
        Json::Object(entries) => {
            let mut order: Vec<usize> = (0..entries.len()).collect();
            style.shuffle(&mut order);
            out.push('{');
            for (i, &at) in order.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                style.space(out);
                write_string(&entries[at].0, style, out);
                style.space(out);
                out.push(':');
                write_json(&entries[at].1, style, out);
            }
            style.space(out);
            out.push('}');
        }
    }
    style.space(out);
}

/// Writes a string with each character literal, short-escaped or `\u`-escaped.
fn write_string(text: &str, style: &mut Style, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        let literal = c != '"' && c != '\\' && c >= ' ';
        match (style.pick(3), short) {
            (0, _) if literal => out.push(c),
            (1, Some(escape)) => out.push_str(escape),
            _ => {
                let upper = style.pick(2) == 0;
                for unit in c.encode_utf16(&mut [0; 2]) {
                    if upper {
                        out.push_str(&format!("\\u{unit:04X}"));
                    } else {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
            }
        }
    }
    out.push('"');
}

fn written(json: &Json, choices: &[u8]) -> String {
    let mut out = String::new();
    write_json(json, &mut Style::new(choices), &mut out);
    out
}

/// Replaces one node (the `target`-th in preorder) by a near neighbour: the
/// kind of small difference a dashboard filter has from the next one.
fn mutate(json: &Json, target: &mut usize, style: &mut Style) -> Json {
    if *target == 0 {
        *target = usize::MAX;
        return neighbour(json, style);
    }
    *target -= 1;
    match json {
        Json::Array(items) => Json::Array(items.iter().map(|i| mutate(i, target, style)).collect()),
        Json::Object(entries) => Json::Object(
            entries
                .iter()
                .map(|(name, v)| (name.clone(), mutate(v, target, style)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn neighbour(json: &Json, style: &mut Style) -> Json {
    let choice = style.pick(4);
    match json {
        Json::Null => [
            Json::Bool(false),
            Json::Number("0".into()),
            Json::Text("null".into()),
            Json::Array(vec![]),
        ][choice]
            .clone(),
        Json::Bool(b) => match choice {
            0 => Json::Bool(!b),
            1 => Json::Text(b.to_string()),
            2 => Json::Number(u8::from(*b).to_string()),
            _ => Json::Null,
        },
        Json::Number(text) => match choice {
            // `00` is not JSON; `0.0` is a neighbour of `0` too.
            0 if text.trim_start_matches('-') != "0" => Json::Number(format!("{text}0")),
            0 | 1 if !text.contains(['.', 'e', 'E']) => Json::Number(format!("{text}.0")),
            0 | 1 => Json::Number(format!("{text}1")),
            2 => Json::Text(text.clone()),
            _ => Json::Array(vec![json.clone()]),
        },
        Json::Text(text) => match choice {
            0 => Json::Text(format!("{text}a")),
            1 => Json::Text(text.chars().skip(1).collect()),
            2 => Json::Text(text.to_uppercase()),
            _ => Json::Text(format!("{text}\u{0}")),
        },
        Json::Array(items) => match choice {
            0 => Json::Array(items.iter().rev().cloned().collect()),
            1 => Json::Array(items.iter().skip(1).cloned().collect()),
            2 => Json::Array(items.iter().cloned().chain([Json::Null]).collect()),
            _ => Json::Object(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v.clone()))
                    .collect(),
            ),
        },
        Json::Object(entries) => match choice {
            0 => Json::Object(entries.iter().skip(1).cloned().collect()),
            1 if !entries.iter().any(|(n, _)| n == "zz") => Json::Object(
                entries
                    .iter()
                    .cloned()
                    .chain([("zz".to_owned(), Json::Null)])
                    .collect(),
            ),
            2 => match entries.first() {
                Some((name, v)) if !entries.iter().any(|(n, _)| *n == format!("{name}x")) => {
                    let mut renamed = entries.clone();
                    renamed[0] = (format!("{name}x"), v.clone());
                    Json::Object(renamed)
                }
                _ => Json::Array(vec![]),
            },
            _ => Json::Array(entries.iter().map(|(_, v)| v.clone()).collect()),
        },
    }
}

fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "0",
            "-0",
            "1",
            "1.0",
            "1.00",
            "10",
            "1e5",
            "1E5",
            "1e+5",
            "1e05",
            "1e-5",
            "0.1",
            "-1.5e-7",
            "12345678901234567890123",
            "-9223372036854775809",
            "18446744073709551616",
            "1e400",
            "3.14159265358979323846264338327950288",
        ])
        .prop_map(String::from),
        "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,8})?([eE][+-]?[0-9]{1,3})?",
    ]
}

/// Short ASCII (so names and values collide often) or any characters at all:
/// controls, quotes, backslashes, non-BMP.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c]{0,3}",
        vec(any::<char>(), 0..6).prop_map(String::from_iter),
    ]
}

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        number_text().prop_map(Json::Number),
        text().prop_map(Json::Text),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Json::Array),
            btree_map(text(), inner, 0..4)
                .prop_map(|entries| Json::Object(entries.into_iter().collect())),
        ]
    })
}

fn choices() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 1..48)
}

/// Bodies that are not JSON: binary, text, JSON-looking starts, whitespace.
fn raw_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..24),
        "[ -~]{1,12}".prop_map(String::into_bytes),
        ("[\\[{\"0-9tfn-]", "[ -~]{0,8}").prop_map(|(a, b)| format!("{a}{b}").into_bytes()),
        "[ \t\r\n\u{c}]{1,4}".prop_map(String::into_bytes),
        "\u{c}\\{\\}|\u{feff}\\[\\]|\\{\"a\":\\}|\\[1,\\]".prop_map(String::into_bytes),
    ]
    .prop_filter("not JSON", |body| {
        serde_json::from_slice::<Value>(body).is_err()
    })
}

fn key(body: &[u8]) -> CacheKey {
    RequestIdentity::new(&Method::POST, "/api/metrics", None, body).key()
}

fn canonical(body: &[u8]) -> String {
    KeyBody::parse(body).canonical_text().into_owned()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn json_member_order_whitespace_and_escapes_never_split_a_key(
        json in json(),
        a in choices(),
        b in choices(),
    ) {
        let first = written(&json, &a);
        let second = written(&json, &b);
        prop_assert_eq!(key(first.as_bytes()), key(second.as_bytes()), "{} vs {}", first, second);
        prop_assert_eq!(canonical(first.as_bytes()), canonical(second.as_bytes()));
    }

    #[test]
    fn canonical_json_text_is_a_fixed_point_with_the_same_key_and_value(
        json in json(),
        choices in choices(),
    ) {
        let sent = written(&json, &choices);
        prop_assert!(matches!(KeyBody::parse(sent.as_bytes()), KeyBody::Json(_)), "{}", sent);
        let text = canonical(sent.as_bytes());
        prop_assert_eq!(&canonical(text.as_bytes()), &text);
        prop_assert_eq!(key(text.as_bytes()), key(sent.as_bytes()));
        let reparsed: Value = serde_json::from_str(&text).expect("canonical text is JSON");
        prop_assert_eq!(reparsed, json.value());
        let description = RequestIdentity::new(&Method::POST, "/q", None, sent.as_bytes())
            .description("r");
        prop_assert_eq!(description, format!("r POST /q {text}"));
    }

    #[test]
    fn different_json_values_never_share_a_key(json in json(), choices in choices()) {
        let mut style = Style::new(&choices);
        let mut target = style.pick(json.nodes());
        let other = mutate(&json, &mut target, &mut style);
        let (a, b) = (written(&json, &choices), written(&other, &choices[1..]));
        let same_value = json.normal() == other.normal();
        let same_text = canonical(a.as_bytes()) == canonical(b.as_bytes());
        prop_assert_eq!(same_value, same_text);
        prop_assert_eq!(same_value, key(a.as_bytes()) == key(b.as_bytes()), "{} vs {}", a, b);
    }

    #[test]
    fn numbers_keep_the_text_they_were_written_with(
        n in number_text(),
        m in number_text(),
    ) {
        let body = format!("{{ \"n\" : [ {n} ] }}");
        prop_assert_eq!(canonical(body.as_bytes()), format!("{{\"n\":[{n}]}}"));
        prop_assert_eq!(canonical(n.as_bytes()), n.clone());
        prop_assert_eq!(n == m, key(n.as_bytes()) == key(m.as_bytes()));
    }

    #[test]
    fn bodies_that_are_not_json_are_hashed_exactly_as_sent(
        a in raw_body(),
        b in raw_body(),
        json in json(),
        choices in choices(),
    ) {
        prop_assert!(!matches!(KeyBody::parse(&a), KeyBody::Json(_)));
        prop_assert_eq!(a == b, key(&a) == key(&b));
        let json = written(&json, &choices);
        prop_assert_ne!(key(&a), key(json.as_bytes()));
        if let Ok(text) = std::str::from_utf8(&a) {
            prop_assert_eq!(canonical(&a), text);
        }
    }
}

/// The object name serde_json's `arbitrary_precision` feature reserves for
/// itself: it reads a map holding only this name back as a number.
const SERDE_NUMBER_TOKEN: &str = "$serde_json::private::Number";

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_object_named_like_serde_json_private_numbers_never_shares_a_key_with_a_number(
        n in number_text(),
    ) {
        let object = format!("{{\"{SERDE_NUMBER_TOKEN}\":\"{n}\"}}");
        prop_assert_ne!(key(object.as_bytes()), key(n.as_bytes()), "{}", object);
        let nested = format!("{{\"org\":{object}}}");
        let plain = format!("{{\"org\":{n}}}");
        prop_assert_ne!(key(nested.as_bytes()), key(plain.as_bytes()), "{}", nested);
    }

    #[test]
    fn a_body_that_repeats_an_object_name_never_shares_a_key_with_a_first_or_last_wins_reading(
        name in text(),
        first in json(),
        last in json(),
        choices in choices(),
    ) {
        // The second spelling of the name may use other escapes.
        let mut name_texts = [String::new(), String::new()];
        for (i, text) in name_texts.iter_mut().enumerate() {
            write_string(&name, &mut Style::new(&choices[i..]), text);
        }
        let [name_a, name_b] = &name_texts;
        let (first, last) = (written(&first, &choices), written(&last, &choices));
        let repeated = format!("{{{name_a}:{first},{name_b}:{last}}}");
        prop_assert!(!matches!(KeyBody::parse(repeated.as_bytes()), KeyBody::Json(_)));
        for single in [format!("{{{name_a}:{first}}}"), format!("{{{name_b}:{last}}}")] {
            prop_assert_ne!(key(repeated.as_bytes()), key(single.as_bytes()), "{}", repeated);
        }
    }
}

// ---------------------------------------------------------------------------
// Method, path and query.

/// A request target as `http::Uri` could deliver it: a path with no `?`, a
/// query with no `#` or newline.
#[derive(Debug, Clone)]
struct Target {
    method: Method,
    path: String,
    query: Option<String>,
}

fn method() -> impl Strategy<Value = Method> {
    select(vec!["GET", "HEAD", "POST", "PUT", "PURGE", "get"])
        .prop_map(|m| Method::from_bytes(m.as_bytes()).expect("valid method"))
}

fn target() -> impl Strategy<Value = Target> {
    (
        method(),
        "/[ab/]{0,3}",
        proptest::option::of("[ab=&?/]{0,4}"),
    )
        .prop_map(|(method, path, query)| Target {
            method,
            path,
            query,
        })
        .prop_filter("a path and query http::Uri accepts", |t| {
            let text = match &t.query {
                Some(q) => format!("{}?{q}", t.path),
                None => t.path.clone(),
            };
            text.parse::<http::uri::PathAndQuery>()
                .is_ok_and(|pq| pq.path() == t.path && pq.query() == t.query.as_deref())
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        (json(), choices()).prop_map(|(json, choices)| written(&json, &choices).into_bytes()),
        raw_body(),
    ]
}

fn identity_key(t: &Target, body: &[u8]) -> CacheKey {
    RequestIdentity::new(&t.method, &t.path, t.query.as_deref(), body).key()
}

/// What a backend reads from a query (`application/x-www-form-urlencoded`,
/// as Starlette and the WHATWG URL standard decode it): each decoded name's
/// values in order. `a` and `a=` both read as `a=""`.
fn backend_reading(query: &str) -> BTreeMap<String, Vec<String>> {
    let mut reading: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        reading
            .entry(name.into_owned())
            .or_default()
            .push(value.into_owned());
    }
    reading
}

/// A parameter name, often percent- or `+`-encoded so that differently
/// written names decode alike (`ab`, `a%62`; `a+b`, `a%20b`; `%ab`, `%b2`
/// both decode to U+FFFD).
fn param_name() -> impl Strategy<Value = String> {
    "([a-c+.%]|%6[1-3]|%20){1,3}"
}

/// Query parameters as (name, segment suffixes in order), each name once as
/// a backend decodes it. A suffix is `=value`, or empty for a bare name:
/// `a` and `a=` are different spellings the key keeps apart.
fn params() -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
    let suffix = prop_oneof![
        1 => Just(String::new()),
        4 => "[a-c0-9=%+]{0,3}".prop_map(|value| format!("={value}")),
    ];
    vec((param_name(), vec(suffix, 1..3)), 0..5).prop_map(|params| {
        let mut seen = BTreeSet::new();
        params
            .into_iter()
            .filter(|(name, _)| seen.insert(backend_reading(name).into_keys().next()))
            .collect()
    })
}

/// One way to write `params`: names interleaved as `choices` say (each
/// name's segments in their order), stray `&`s.
fn write_query(params: &[(String, Vec<String>)], choices: &[u8]) -> String {
    let mut style = Style::new(choices);
    let mut next: Vec<usize> = vec![0; params.len()];
    let mut segments = Vec::new();
    loop {
        let open: Vec<usize> = (0..params.len())
            .filter(|&i| next[i] < params[i].1.len())
            .collect();
        if open.is_empty() {
            break;
        }
        let i = open[style.pick(open.len())];
        let (name, suffixes) = &params[i];
        segments.push(format!("{name}{}", suffixes[next[i]]));
        next[i] += 1;
        if style.pick(5) == 0 {
            segments.push(String::new());
        }
    }
    segments.join("&")
}

/// Segments whose names and values collide often, spelled many ways.
fn segments() -> impl Strategy<Value = Vec<String>> {
    let name = select(vec![
        "a", "b", "ab", "a%62", "%61b", "a+b", "a%20b", "%ab", "%b2",
    ]);
    let suffix = select(vec!["", "=", "=1", "=2", "=%31"]);
    vec((name, suffix).prop_map(|(n, s)| format!("{n}{s}")), 0..6)
}

fn segment_name(segment: &str) -> &str {
    segment.split('=').next().unwrap_or_default()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn method_path_and_query_each_separate_keys(
        a in target(),
        b in target(),
        body in body(),
    ) {
        let query = |t: &Target| canonical_query(t.query.as_deref().unwrap_or("")).into_owned();
        let same = a.method == b.method && a.path == b.path && query(&a) == query(&b);
        prop_assert_eq!(same, identity_key(&a, &body) == identity_key(&b, &body), "{:?} vs {:?}", a, b);
    }

    #[test]
    fn queries_sharing_a_canonical_form_read_the_same_to_a_backend(
        segments in segments(),
        order in choices(),
        other in segments(),
        reorder in any::<bool>(),
    ) {
        // A reordering of the same segments collides often; any query may.
        let first = segments.join("&");
        let second = if reorder {
            let mut shuffled = segments.clone();
            Style::new(&order).shuffle(&mut shuffled);
            shuffled
        } else {
            other
        };
        let second = second.join("&");
        if canonical_query(&first) == canonical_query(&second) {
            prop_assert_eq!(backend_reading(&first), backend_reading(&second), "{} vs {}", first, second);
        }
    }

    #[test]
    fn canonical_query_ignores_the_order_of_differently_named_parameters(
        params in params(),
        a in choices(),
        b in choices(),
    ) {
        let (first, second) = (write_query(&params, &a), write_query(&params, &b));
        prop_assert_eq!(canonical_query(&first), canonical_query(&second));
    }

    #[test]
    fn canonical_query_keeps_the_relative_order_of_repeated_names_and_every_segment(
        params in params(),
        choices in choices(),
    ) {
        let query = write_query(&params, &choices);
        let canonical = canonical_query(&query);
        for (name, _) in &params {
            let of = |q: &str| -> Vec<String> {
                q.split('&').filter(|s| segment_name(s) == name).map(String::from).collect()
            };
            prop_assert_eq!(of(&canonical), of(&query), "{} -> {}", query, canonical);
        }
        let segments = |q: &str| -> Vec<String> {
            let mut all: Vec<String> = q.split('&').filter(|s| !s.is_empty()).map(String::from).collect();
            all.sort();
            all
        };
        prop_assert_eq!(segments(&canonical), segments(&query));
    }

    #[test]
    fn canonical_query_is_idempotent(
        query in prop_oneof![
            "[ab=&]{0,12}".boxed(),
            segments().prop_map(|s| s.join("&")).boxed(),
            (params(), choices()).prop_map(|(p, c)| write_query(&p, &c)).boxed(),
        ],
    ) {
        let once = canonical_query(&query).into_owned();
        prop_assert_eq!(canonical_query(&once), once.as_str());
    }

    #[test]
    fn the_memo_always_gives_the_canonical_key_even_when_warmed_by_other_requests(
        requests in vec((target(), body()), 1..40),
        capacity in 0usize..100,
    ) {
        let memo = KeyMemo::new(capacity);
        for (t, body) in requests.iter().chain(requests.iter().rev()) {
            prop_assert_eq!(
                memo.key(&t.method, &t.path, t.query.as_deref(), body),
                identity_key(t, body),
                "{:?} {:?}", t, String::from_utf8_lossy(body)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Route matching.

/// A route as proxy.toml would give it; built through `FileRoute`'s serde
/// form so fields added later keep their defaults.
fn route(name: &str, path: &str, methods: Option<&[String]>) -> Route {
    let raw: FileRoute = serde_json::from_value(serde_json::json!({
        "name": name,
        "path": path,
        "methods": methods,
    }))
    .expect("a FileRoute");
    Route::from_file(&raw).expect("a valid route")
}

fn pattern_text() -> impl Strategy<Value = String> {
    ("/[ab/]{0,3}", any::<bool>()).prop_map(|(p, star)| if star { format!("{p}*") } else { p })
}

fn route_path() -> impl Strategy<Value = String> {
    "/[ab/]{0,4}"
}

fn route_methods() -> impl Strategy<Value = Option<Vec<String>>> {
    proptest::option::of(vec(
        select(vec!["GET", "get", "HEAD", "POST", "post", "PUT"]).prop_map(String::from),
        1..3,
    ))
}

/// The documented rule, written independently: file order, first match.
fn reference_lookup(
    routes: &[(String, Option<Vec<String>>)],
    method: &str,
    path: &str,
) -> Option<usize> {
    routes.iter().position(|(pattern, methods)| {
        let path_ok = match pattern.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == pattern,
        };
        let method_ok = methods.as_ref().is_none_or(|list| {
            list.iter().any(|m| {
                let m = m.to_ascii_uppercase();
                m == method || (method == "HEAD" && m == "GET")
            })
        });
        path_ok && method_ok
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_pattern_parses_only_when_rooted_with_a_star_at_most_at_its_end(text in "[/ab*?]{0,5}") {
        let valid = text.starts_with('/') && text.find('*').is_none_or(|i| i == text.len() - 1);
        prop_assert_eq!(PathPattern::parse(&text).is_ok(), valid, "{}", text);
    }

    #[test]
    fn an_exact_pattern_matches_only_its_own_path(pattern in "/[ab/]{0,3}", path in route_path()) {
        let parsed = PathPattern::parse(&pattern).expect("valid pattern");
        prop_assert_eq!(&parsed, &PathPattern::Exact(pattern.clone()));
        prop_assert_eq!(parsed.matches(&path), path == pattern);
        prop_assert!(parsed.matches(&pattern));
    }

    #[test]
    fn a_star_pattern_matches_exactly_the_paths_starting_with_its_prefix(
        prefix in "/[ab/]{0,3}",
        path in route_path(),
    ) {
        let parsed = PathPattern::parse(&format!("{prefix}*")).expect("valid pattern");
        prop_assert_eq!(parsed.matches(&path), path.starts_with(&prefix));
        prop_assert!(parsed.matches(&prefix));
    }

    #[test]
    fn the_route_table_picks_the_route_a_linear_scan_picks_first(
        routes in vec((pattern_text(), route_methods()), 0..6),
        method in select(vec!["GET", "HEAD", "POST", "PUT", "DELETE"]),
        path in route_path(),
    ) {
        let table = RouteTable::new(
            routes
                .iter()
                .enumerate()
                .map(|(i, (p, m))| route(&format!("r{i}"), p, m.as_deref()))
                .collect(),
        );
        let method_value = Method::from_bytes(method.as_bytes()).expect("valid method");
        let found = table.lookup(&method_value, &path).map(|r| r.name.to_string());
        let expected = reference_lookup(&routes, method, &path).map(|i| format!("r{i}"));
        prop_assert_eq!(found, expected);
    }

    #[test]
    fn a_get_only_route_also_answers_head_and_nothing_else(
        pattern in pattern_text(),
        path in route_path(),
        spelling in select(vec!["GET", "get", "Get"]),
    ) {
        let table = RouteTable::new(vec![route("r", &pattern, Some(&[spelling.to_owned()]))]);
        let matches = PathPattern::parse(&pattern).expect("valid pattern").matches(&path);
        prop_assert_eq!(table.lookup(&Method::GET, &path).is_some(), matches);
        prop_assert_eq!(table.lookup(&Method::HEAD, &path).is_some(), matches);
        prop_assert!(table.lookup(&Method::POST, &path).is_none());
    }
}

// ---------------------------------------------------------------------------
// Header filtering.

/// RFC 9110 §7.6.1 and RFC 9112's hop-by-hop fields, written here apart
/// from `src/headers.rs` so the properties check the rule, not a copy of it.
const CLASSIC_HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// End-to-end names (some of them ones a proxy rewrites) and the classic
/// hop-by-hop ones other than `connection`, which [`connection_value`] writes.
fn field_name() -> impl Strategy<Value = &'static str> {
    let end_to_end = [
        "x-a",
        "x-b",
        "content-type",
        "authorization",
        "x-forwarded-for",
        "via",
        "host",
        "cookie",
    ];
    let hop_by_hop = CLASSIC_HOP_BY_HOP
        .into_iter()
        .filter(|&n| n != "connection");
    select(hop_by_hop.chain(end_to_end).collect::<Vec<_>>())
}

/// Visible ASCII, or bytes beyond it (obs-text, allowed in values).
fn field_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[ -~]{0,8}".prop_map(String::into_bytes),
        1 => vec(0x80u8..=0xff, 1..3),
    ]
}

/// A `Connection` value: names in any case and spacing, with empty elements.
fn connection_value() -> impl Strategy<Value = Vec<u8>> {
    let option = select(vec![
        "close",
        "x-a",
        "X-A",
        " x-b ",
        "Via",
        "x-forwarded-for",
        "te",
        "cookie",
        "",
    ]);
    vec(option, 1..4).prop_map(|names| names.join(",").into_bytes())
}

fn fields() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    vec(
        prop_oneof![
            4 => (field_name().prop_map(String::from), field_value()),
            1 => (Just("connection".to_owned()), connection_value()),
        ],
        0..10,
    )
}

fn header_map(fields: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in fields {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
            HeaderValue::from_bytes(value).expect("valid value"),
        );
    }
    map
}

/// Every name's values, in order.
fn by_name(map: &HeaderMap) -> BTreeMap<String, Vec<Vec<u8>>> {
    map.keys()
        .map(|name| {
            let values = map.get_all(name).iter().map(|v| v.as_bytes().to_vec());
            (name.as_str().to_owned(), values.collect())
        })
        .collect()
}

/// The names the `Connection` fields list, lowercased.
fn listed_in_connection(fields: &[(String, Vec<u8>)]) -> BTreeSet<String> {
    fields
        .iter()
        .filter(|(name, _)| name == "connection")
        .flat_map(|(_, value)| value.split(|&b| b == b','))
        .map(|element| String::from_utf8_lossy(element).trim().to_ascii_lowercase())
        .filter(|element| !element.is_empty())
        .collect()
}

fn ip() -> impl Strategy<Value = IpAddr> {
    any::<IpAddr>()
}

fn version() -> impl Strategy<Value = Version> {
    select(vec![Version::HTTP_10, Version::HTTP_11, Version::HTTP_2])
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hop_by_hop_and_connection_listed_fields_go_and_every_other_field_stays_in_order(
        fields in fields(),
    ) {
        let mut map = header_map(&fields);
        remove_hop_by_hop(&mut map);
        let listed = listed_in_connection(&fields);
        let gone = |name: &str| CLASSIC_HOP_BY_HOP.contains(&name) || listed.contains(name);
        let expected = by_name(&header_map(
            &fields.iter().filter(|(n, _)| !gone(n)).cloned().collect::<Vec<_>>(),
        ));
        prop_assert_eq!(by_name(&map), expected);
    }

    #[test]
    fn the_upstream_gets_one_forwarded_for_ending_with_the_client_and_via_ending_with_dashcache(
        fields in fields(),
        client in ip(),
        scheme in select(vec!["http", "https"]),
        host in proptest::option::of("[a-z.]{1,8}"),
        version in version(),
    ) {
        let mut map = header_map(&fields);
        let original_host = host.as_deref().map(|h| HeaderValue::from_str(h).expect("valid host"));
        prepare_upstream_request(&mut map, client, scheme, original_host, version);

        // Earlier hops may hold obs-text, carried on as bytes.
        let forwarded: Vec<_> = map.get_all("x-forwarded-for").iter().collect();
        prop_assert_eq!(forwarded.len(), 1);
        let (forwarded, client) = (forwarded[0].as_bytes(), client.to_string());
        prop_assert!(
            forwarded == client.as_bytes() || forwarded.ends_with(format!(", {client}").as_bytes()),
            "{:?}", forwarded
        );
        let via: Vec<_> = map.get_all("via").iter().collect();
        prop_assert_eq!(via.len(), 1);
        prop_assert!(via[0].as_bytes().ends_with(b" dashcache"), "{:?}", via[0]);
        prop_assert_eq!(map.get("x-forwarded-proto").map(|v| v.as_bytes()), Some(scheme.as_bytes()));
        prop_assert!(!map.contains_key("host"));
        for name in CLASSIC_HOP_BY_HOP {
            prop_assert!(!map.contains_key(name), "{} forwarded", name);
        }
    }

    #[test]
    fn the_upstream_gets_every_earlier_forwarded_for_and_via_hop_in_order(
        forwarded in vec("[0-9.]{1,7}", 0..3),
        via in vec("1\\.1 [a-z]{1,5}", 0..3),
        client in ip(),
    ) {
        let fields: Vec<(String, Vec<u8>)> = forwarded
            .iter()
            .map(|v| ("x-forwarded-for".to_owned(), v.clone().into_bytes()))
            .chain(via.iter().map(|v| ("via".to_owned(), v.clone().into_bytes())))
            .collect();
        let mut map = header_map(&fields);
        prepare_upstream_request(&mut map, client, "http", None, Version::HTTP_11);
        let chain = |earlier: &[String], this: String| {
            earlier.iter().cloned().chain([this]).collect::<Vec<_>>().join(", ")
        };
        prop_assert_eq!(
            map.get("x-forwarded-for").map(|v| v.to_str().unwrap().to_owned()),
            Some(chain(&forwarded, client.to_string()))
        );
        prop_assert_eq!(
            map.get("via").map(|v| v.to_str().unwrap().to_owned()),
            Some(chain(&via, "1.1 dashcache".to_owned()))
        );
    }

    #[test]
    fn a_name_listed_beside_an_opaque_connection_element_is_still_removed(
        listed in select(vec!["x-a", "x-b", "cookie"]),
        opaque in vec(0x80u8..=0xff, 1..3),
        opaque_first in any::<bool>(),
    ) {
        let mut value = listed.as_bytes().to_vec();
        if opaque_first {
            value = [opaque.as_slice(), b", ", &value].concat();
        } else {
            value.extend_from_slice(b", ");
            value.extend_from_slice(&opaque);
        }
        let fields = vec![
            ("connection".to_owned(), value),
            (listed.to_owned(), b"hop-only".to_vec()),
        ];
        let mut map = header_map(&fields);
        remove_hop_by_hop(&mut map);
        prop_assert!(!map.contains_key(listed), "{:?}", map);
    }
}

// ---------------------------------------------------------------------------
// Vary variants and credential digests.

fn request_fields(names: Vec<&'static str>) -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    vec(
        (
            select(names).prop_map(String::from),
            select(vec![
                "en", "pt-BR", "", "gzip", "Bearer a", "Bearer b", "sid=1",
            ])
            .prop_map(|v| v.as_bytes().to_vec()),
        ),
        0..4,
    )
}

/// The values of `names` in `map`, per name and in order.
fn projection(map: &HeaderMap, names: &[HeaderName]) -> Vec<Vec<Vec<u8>>> {
    names
        .iter()
        .map(|name| {
            map.get_all(name)
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect()
        })
        .collect()
}

const VARY_POOL: [&str; 4] = ["accept-language", "accept-encoding", "x-tenant", "Accept"];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_variant_key_changes_with_any_varied_value_and_with_nothing_else(
        vary in vec(select(VARY_POOL.to_vec()), 1..4),
        a in request_fields(vec!["accept-language", "accept-encoding", "x-tenant", "accept", "user-agent", "x-other"]),
        b in request_fields(vec!["accept-language", "accept-encoding", "x-tenant", "accept", "user-agent", "x-other"]),
        unvaried in request_fields(vec!["user-agent", "x-other", "cookie"]),
    ) {
        let mut response = HeaderMap::new();
        response.insert("vary", HeaderValue::from_str(&vary.join(", ")).expect("valid value"));
        let names = vary_names(&response).expect("names");
        let base = CacheKey::from_bytes([9; 16]);
        let (a_map, b_map) = (header_map(&a), header_map(&b));
        prop_assert_eq!(
            projection(&a_map, &names) == projection(&b_map, &names),
            variant_key(&base, &names, &a_map) == variant_key(&base, &names, &b_map)
        );
        let unvaried: Vec<_> = unvaried
            .into_iter()
            .filter(|(n, _)| !vary.iter().any(|v| v.eq_ignore_ascii_case(n)))
            .collect();
        let widened = header_map(&[a.clone(), unvaried].concat());
        prop_assert_eq!(variant_key(&base, &names, &a_map), variant_key(&base, &names, &widened));
    }

    #[test]
    fn a_credential_digest_exists_exactly_when_a_credential_is_sent_and_tells_values_apart(
        a in request_fields(vec!["authorization", "cookie", "x-other", "accept"]),
        b in request_fields(vec!["authorization", "cookie", "x-other", "accept"]),
    ) {
        let names = [AUTHORIZATION, COOKIE];
        let (a_map, b_map) = (header_map(&a), header_map(&b));
        let sent = a.iter().any(|(n, _)| n == "authorization" || n == "cookie");
        let digest = credential_digest(&a_map, &names);
        prop_assert_eq!(digest.is_some(), sent);
        prop_assert_eq!(
            projection(&a_map, &names) == projection(&b_map, &names),
            digest == credential_digest(&b_map, &names)
        );
    }
}

// ---------------------------------------------------------------------------
// Key rules: ignored fields, unordered arrays, ignored query parameters.

/// One step of a generated rule path.
#[derive(Debug, Clone, PartialEq)]
enum RuleSegment {
    Member(&'static str),
    Any,
    Element,
}

/// One step of a concrete location in a document.
#[derive(Debug, Clone, PartialEq)]
enum Place {
    Member(String),
    Element,
}

/// A rule path as proxy.toml writes it (`a.*`, `a[].b`, `[].c`, `b[][]`).
fn rule_text(path: &[RuleSegment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            RuleSegment::Element => out.push_str("[]"),
            RuleSegment::Member(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            RuleSegment::Any => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('*');
            }
        }
    }
    out
}

/// The model's reading of a rule: it names exactly the places of its length
/// whose steps it matches one by one.
fn rule_matches(path: &[RuleSegment], place: &[Place]) -> bool {
    path.len() == place.len()
        && path
            .iter()
            .zip(place)
            .all(|(rule, step)| match (rule, step) {
                (RuleSegment::Member(name), Place::Member(member)) => name == member,
                (RuleSegment::Any, Place::Member(_)) => true,
                (RuleSegment::Element, Place::Element) => true,
                _ => false,
            })
}

/// The document as the rules key it: ignored members removed, unordered
/// arrays sorted by their elements' canonical text (serde_json writes
/// objects with sorted names and, with `arbitrary_precision`, numbers as
/// written), members sorted.
fn keyed_model(
    json: &Json,
    place: &mut Vec<Place>,
    ignore: &[Vec<RuleSegment>],
    unordered: &[Vec<RuleSegment>],
) -> Json {
    match json {
        Json::Object(entries) => {
            let mut kept = Vec::new();
            for (name, value) in entries {
                place.push(Place::Member(name.clone()));
                if !ignore.iter().any(|rule| rule_matches(rule, place)) {
                    kept.push((name.clone(), keyed_model(value, place, ignore, unordered)));
                }
                place.pop();
            }
            kept.sort_by(|a, b| a.0.cmp(&b.0));
            Json::Object(kept)
        }
        Json::Array(items) => {
            let sort = unordered.iter().any(|rule| rule_matches(rule, place));
            place.push(Place::Element);
            let mut items: Vec<Json> = items
                .iter()
                .map(|item| keyed_model(item, place, ignore, unordered))
                .collect();
            place.pop();
            if sort {
                items.sort_by_key(|item| serde_json::to_string(&item.value()).unwrap());
            }
            Json::Array(items)
        }
        other => other.clone(),
    }
}

fn rule_segment() -> impl Strategy<Value = RuleSegment> {
    prop_oneof![
        3 => select(vec!["a", "b", "c"]).prop_map(RuleSegment::Member),
        1 => Just(RuleSegment::Any),
        2 => Just(RuleSegment::Element),
    ]
}

fn rule_paths(ends_in_element: bool) -> impl Strategy<Value = Vec<Vec<RuleSegment>>> {
    vec(vec(rule_segment(), 1..4), 0..3).prop_map(move |paths| {
        paths
            .into_iter()
            .filter(|path| ends_in_element || path.last() != Some(&RuleSegment::Element))
            .collect()
    })
}

/// Small documents over the names `a`, `b`, `c` and a handful of leaves,
/// so that rules often apply and two documents are often equal once keyed.
fn rule_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        select(vec!["1", "2", "1.0"]).prop_map(|n| Json::Number(n.to_owned())),
        select(vec!["x", "y"]).prop_map(|t| Json::Text(t.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Json::Array),
            btree_map(select(vec!["a", "b", "c"]), inner, 0..3).prop_map(|entries| {
                Json::Object(
                    entries
                        .into_iter()
                        .map(|(n, v)| (n.to_owned(), v))
                        .collect(),
                )
            }),
        ]
    })
}

fn key_rules_of(ignore: &[Vec<RuleSegment>], unordered: &[Vec<RuleSegment>]) -> KeyRules {
    let texts = |paths: &[Vec<RuleSegment>]| paths.iter().map(|p| rule_text(p)).collect::<Vec<_>>();
    KeyRules::new(&texts(ignore), &texts(unordered), &[], &[]).expect("generated rules are valid")
}

/// A document changed where the rules say it does not matter: ignored
/// members given other values, unordered arrays reversed.
fn disturbed(
    json: &Json,
    place: &mut Vec<Place>,
    ignore: &[Vec<RuleSegment>],
    unordered: &[Vec<RuleSegment>],
) -> Json {
    match json {
        Json::Object(entries) => Json::Object(
            entries
                .iter()
                .map(|(name, value)| {
                    place.push(Place::Member(name.clone()));
                    let value = if ignore.iter().any(|rule| rule_matches(rule, place)) {
                        Json::Text(format!("changed-{}", place.len()))
                    } else {
                        disturbed(value, place, ignore, unordered)
                    };
                    place.pop();
                    (name.clone(), value)
                })
                .collect(),
        ),
        Json::Array(items) => {
            let reverse = unordered.iter().any(|rule| rule_matches(rule, place));
            place.push(Place::Element);
            let mut items: Vec<Json> = items
                .iter()
                .map(|item| disturbed(item, place, ignore, unordered))
                .collect();
            place.pop();
            if reverse {
                items.reverse();
            }
            Json::Array(items)
        }
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn two_bodies_share_a_key_exactly_when_equal_once_ignored_fields_go_and_unordered_arrays_sort(
        a in rule_json(),
        b in rule_json(),
        ignore in rule_paths(false),
        unordered in rule_paths(true),
        style_a in choices(),
        style_b in choices(),
    ) {
        let rules = key_rules_of(&ignore, &unordered);
        let (sent_a, sent_b) = (written(&a, &style_a), written(&b, &style_b));
        let key = |body: &str| {
            RequestIdentity::with_rules(&Method::POST, "/q", None, body.as_bytes(), &rules).key()
        };
        let model = |json: &Json| keyed_model(json, &mut Vec::new(), &ignore, &unordered);
        prop_assert_eq!(
            model(&a) == model(&b),
            key(&sent_a) == key(&sent_b),
            "rules {} / {}: {} vs {}", rules, sent_b, sent_a, sent_b
        );
        // The keyed text is the model, written canonically.
        let text = KeyBody::parse_with(sent_a.as_bytes(), &rules).canonical_text().into_owned();
        let reparsed: Value = serde_json::from_str(&text).expect("keyed text is JSON");
        prop_assert_eq!(reparsed, model(&a).value());
    }

    #[test]
    fn changing_only_what_the_rules_leave_out_never_changes_the_key(
        json in rule_json(),
        ignore in rule_paths(false),
        unordered in rule_paths(true),
        style in choices(),
    ) {
        let rules = key_rules_of(&ignore, &unordered);
        let other = disturbed(&json, &mut Vec::new(), &ignore, &unordered);
        let key = |json: &Json| {
            let body = written(json, &style);
            RequestIdentity::with_rules(&Method::POST, "/q", None, body.as_bytes(), &rules).key()
        };
        prop_assert_eq!(key(&json), key(&other));
    }

    #[test]
    fn ignored_query_parameters_never_change_the_key_and_others_always_do(
        kept in vec(("[a-d]{1,2}", "[0-9]{0,2}"), 0..4),
        noise in vec((select(vec!["utm_source", "utm_x", "_"]), "[0-9]{1,3}"), 0..4),
        at in vec(any::<usize>(), 4),
        extra in ("[a-d]{1,2}", "[0-9]{1,2}"),
    ) {
        let rules = KeyRules::new(&[], &[], &["utm_*".into(), "_".into()], &[]).unwrap();
        let join = |pairs: &[(String, String)]| {
            pairs.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("&")
        };
        let kept: Vec<(String, String)> = kept;
        let mut noisy = kept.clone();
        for (i, (name, value)) in noise.iter().enumerate() {
            let position = at[i % at.len()] % (noisy.len() + 1);
            noisy.insert(position, (name.to_string(), value.clone()));
        }
        let key = |query: &str| {
            RequestIdentity::with_rules(&Method::GET, "/q", Some(query), b"", &rules).key()
        };
        prop_assert_eq!(key(&join(&kept)), key(&join(&noisy)));
        let mut more = kept.clone();
        more.push(extra);
        prop_assert_ne!(key(&join(&kept)), key(&join(&more)));
    }

    #[test]
    fn key_headers_split_by_value_and_never_by_name_case(
        a in "[a-z0-9]{0,6}",
        b in "[a-z0-9]{0,6}",
        upper in any::<bool>(),
    ) {
        let rules = KeyRules::new(&[], &[], &[], &["X-Tenant".into()]).unwrap();
        let base = RequestIdentity::new(&Method::POST, "/q", None, b"{}").key();
        let with = |name: &str, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
            key_with_headers(base, &rules, &headers)
        };
        let name = if upper { "X-TENANT" } else { "x-tenant" };
        prop_assert_eq!(a == b, with(name, &a) == with("x-tenant", &b));
        prop_assert_ne!(with("x-tenant", &a), key_with_headers(base, &rules, &HeaderMap::new()));
    }
}
