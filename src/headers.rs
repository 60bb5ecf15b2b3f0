//! Header rules for a forwarding proxy (pure functions, no I/O).
//!
//! RFC 9110 §7.6.1: a proxy removes the hop-by-hop fields (`Connection`,
//! the fields `Connection` lists, and the classic set below) before
//! forwarding a message in either direction, and they are never stored.
//! §7.6.3: a proxy adds itself to `Via`. The `X-Forwarded-*` fields give the
//! backend the client's address, scheme and host, as nginx and Varnish do.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, CONNECTION, ETAG, HOST, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED, RANGE, VIA,
};
use http::{HeaderMap, Method, Version};

use crate::cache::StoredHeaders;

/// Hop-by-hop fields that are removed even when `Connection` does not list them.
const HOP_BY_HOP: [&str; 9] = [
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

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes the hop-by-hop fields, including every field `Connection` names.
///
/// Each `Connection` field line is read element by element (RFC 9110 §7.6.1
/// lists names separated by commas): an element that is not a field name,
/// such as obs-text, is skipped alone, so the valid names beside it still go.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Usually empty (`Connection: keep-alive` lists only a classic name), and
    // then allocates nothing.
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .filter_map(|element| HeaderName::from_bytes(element.trim_ascii()).ok())
        .filter(|name| !is_hop_by_hop(name))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// True when `name` is hop-by-hop by itself (not counting `Connection` lists).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Rewrites a client request's headers for the upstream: hop-by-hop fields
/// out, `Host` left to the client (the upstream's own authority), the
/// original host in `X-Forwarded-Host`, the client appended to
/// `X-Forwarded-For`, and this proxy appended to `Via`.
pub fn prepare_upstream_request(
    headers: &mut HeaderMap,
    client_ip: IpAddr,
    client_scheme: &'static str,
    original_host: Option<HeaderValue>,
    version: Version,
) {
    remove_hop_by_hop(headers);
    headers.remove(HOST);

    append_to_list(headers, &X_FORWARDED_FOR, client_ip);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(client_scheme),
    );
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    append_via(headers, version);
}

/// Appends `<version> dashcache` to `Via` (RFC 9110 §7.6.3).
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    let hop = match version {
        Version::HTTP_2 => "2 dashcache",
        Version::HTTP_10 => "1.0 dashcache",
        _ => "1.1 dashcache",
    };
    if headers.contains_key(VIA) {
        append_to_list(headers, &VIA, hop);
    } else {
        headers.insert(VIA, HeaderValue::from_static(hop));
    }
}

/// Appends `element` to the list field `name`, leaving one field line that
/// holds every earlier element in order: RFC 9110 §5.3 makes several field
/// lines one comma-separated list, so a hop on the second line counts as
/// much as one on the first. Values are joined as bytes, so obs-text in an
/// earlier hop is carried on, not dropped.
fn append_to_list(headers: &mut HeaderMap, name: &HeaderName, element: impl fmt::Display) {
    let mut list = Vec::with_capacity(64);
    for line in headers.get_all(name) {
        let line = line.as_bytes().trim_ascii();
        if !line.is_empty() {
            list.extend_from_slice(line);
            list.extend_from_slice(b", ");
        }
    }
    write!(list, "{element}").expect("writing to memory cannot fail");
    // Earlier lines were valid values, and so are `, ` and the element; the
    // buffer becomes the value without a copy.
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(list)) {
        headers.insert(name, value);
    }
}

/// Removes the client's conditional and range fields from a cache fill:
/// the fill must fetch the full answer every caller can be served from,
/// and conditionals are then answered locally ([`Validators`]).
pub fn remove_conditionals(headers: &mut HeaderMap) {
    for name in [
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_MATCH,
        IF_UNMODIFIED_SINCE,
        IF_RANGE,
        RANGE,
    ] {
        headers.remove(name);
    }
}

/// True when a stored answer carries a validator (`ETag` or `Last-Modified`).
pub fn has_validator(response: &StoredHeaders) -> bool {
    response.contains_key(ETAG) || response.contains_key(LAST_MODIFIED)
}

/// Makes a fill conditional on the stored answer `stored` (RFC 9111
/// §4.3.1): its `ETag` as `If-None-Match`, its `Last-Modified` as
/// `If-Modified-Since`.
pub fn add_validators(request: &mut HeaderMap, stored: &StoredHeaders) {
    if let Some(etag) = stored.get(ETAG) {
        request.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.get(LAST_MODIFIED) {
        request.insert(IF_MODIFIED_SINCE, modified.clone());
    }
}

/// A GET or HEAD client's validators, to answer 304 from a stored answer
/// (RFC 9110 §13.1.2 and §13.1.3, evaluated in §13.2.2's order).
#[derive(Debug, Clone, Default)]
pub struct Validators {
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
}

impl Validators {
    pub fn from_request(method: &Method, headers: &HeaderMap) -> Self {
        if method != Method::GET && method != Method::HEAD {
            return Self::default();
        }
        Self {
            if_none_match: headers.get(IF_NONE_MATCH).cloned(),
            if_modified_since: headers.get(IF_MODIFIED_SINCE).cloned(),
        }
    }

    /// True when the answer whose headers are `response` has not changed
    /// for this client, so a 304 replaces it.
    pub fn not_modified(&self, response: &StoredHeaders) -> bool {
        if let Some(wanted) = &self.if_none_match {
            // If-None-Match, when present, decides alone (weak comparison).
            let Some(etag) = response.get(ETAG).and_then(|v| v.to_str().ok()) else {
                return false;
            };
            let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
            let current = opaque(etag);
            return wanted
                .to_str()
                .map(|list| {
                    list.split(',')
                        .any(|tag| tag.trim() == "*" || opaque(tag) == current)
                })
                .unwrap_or(false);
        }
        // The stored map is read only when the request asks: on a hit it
        // is cold memory.
        let Some(since) = &self.if_modified_since else {
            return false;
        };
        let Some(modified) = response.get(LAST_MODIFIED) else {
            return false;
        };
        let parse = |v: &HeaderValue| {
            v.to_str()
                .ok()
                .and_then(|t| httpdate::parse_http_date(t).ok())
        };
        match (parse(since), parse(modified)) {
            (Some(since), Some(modified)) => modified <= since,
            _ => false,
        }
    }
}

/// A map of `pairs`, in order, for tests.
#[cfg(test)]
pub(crate) fn map_of(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_static(value));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::map_of as map;
    use super::*;
    use std::net::Ipv4Addr;

    /// A stored answer's fields.
    fn answer(fields: &[(&'static str, &'static str)]) -> StoredHeaders {
        map(fields).into()
    }

    #[test]
    fn classic_hop_by_hop_fields_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("content-type", "application/json"),
        ]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("content-type"));
    }

    #[test]
    fn fields_named_by_connection_are_removed() {
        let mut headers = map(&[
            ("connection", "X-Secret, close"),
            ("x-secret", "1"),
            ("x-kept", "1"),
        ]);
        remove_hop_by_hop(&mut headers);
        assert!(!headers.contains_key("x-secret"));
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn names_listed_beside_an_obs_text_element_are_still_removed() {
        let mut headers = HeaderMap::new();
        headers.append(
            CONNECTION,
            HeaderValue::from_bytes(b"\xff\xfe, x-secret").unwrap(),
        );
        headers.append("x-secret", HeaderValue::from_static("hop-only"));
        headers.append("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        assert!(!headers.contains_key("x-secret"));
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn every_forwarded_for_and_via_line_is_kept_in_order() {
        let mut headers = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
            ("via", "1.1 edge"),
            ("via", "1.0 lb"),
        ]);
        prepare_upstream_request(
            &mut headers,
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            "http",
            None,
            Version::HTTP_11,
        );
        let all = |name| headers.get_all(name).iter().collect::<Vec<_>>();
        assert_eq!(
            all("x-forwarded-for"),
            ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.2"]
        );
        assert_eq!(all("via"), ["1.1 edge, 1.0 lb, 1.1 dashcache"]);
    }

    #[test]
    fn an_obs_text_hop_is_carried_on_and_empty_lines_are_skipped() {
        let mut headers = HeaderMap::new();
        headers.append(VIA, HeaderValue::from_bytes(b"1.1 caf\xe9").unwrap());
        headers.append(VIA, HeaderValue::from_static(""));
        append_via(&mut headers, Version::HTTP_11);
        assert_eq!(headers[VIA].as_bytes(), b"1.1 caf\xe9, 1.1 dashcache");
    }

    #[test]
    fn forwarded_for_is_appended_not_replaced() {
        let mut headers = map(&[("x-forwarded-for", "10.0.0.1"), ("host", "dash.example")]);
        prepare_upstream_request(
            &mut headers,
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            "http",
            Some(HeaderValue::from_static("dash.example")),
            Version::HTTP_11,
        );
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.2");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "dash.example");
        assert_eq!(headers["via"], "1.1 dashcache");
        assert!(
            !headers.contains_key("host"),
            "the client sets the upstream's own host"
        );
    }

    #[test]
    fn via_is_appended_to_an_existing_chain() {
        let mut headers = map(&[("via", "1.1 edge")]);
        append_via(&mut headers, Version::HTTP_2);
        assert_eq!(headers["via"], "1.1 edge, 2 dashcache");
    }

    #[test]
    fn conditionals_and_ranges_are_removed_from_fills() {
        let mut headers = map(&[
            ("if-none-match", "\"a\""),
            ("range", "bytes=0-1"),
            ("accept", "*/*"),
        ]);
        remove_conditionals(&mut headers);
        assert_eq!(headers.len(), 1);
    }

    #[test]
    fn a_matching_etag_is_not_modified() {
        let asked =
            Validators::from_request(&Method::GET, &map(&[("if-none-match", "\"x\", W/\"v1\"")]));
        assert!(asked.not_modified(&answer(&[("etag", "\"v1\"")])));
        assert!(!asked.not_modified(&answer(&[("etag", "\"v2\"")])));
        assert!(!asked.not_modified(&StoredHeaders::default()));
    }

    #[test]
    fn a_star_matches_any_current_answer() {
        let asked = Validators::from_request(&Method::GET, &map(&[("if-none-match", "*")]));
        assert!(asked.not_modified(&answer(&[("etag", "\"v9\"")])));
    }

    #[test]
    fn if_modified_since_compares_dates() {
        let asked = Validators::from_request(
            &Method::GET,
            &map(&[("if-modified-since", "Wed, 21 Oct 2026 07:28:00 GMT")]),
        );
        assert!(asked.not_modified(&answer(&[(
            "last-modified",
            "Wed, 21 Oct 2026 07:28:00 GMT"
        )])));
        assert!(asked.not_modified(&answer(&[(
            "last-modified",
            "Tue, 20 Oct 2026 07:28:00 GMT"
        )])));
        assert!(!asked.not_modified(&answer(&[(
            "last-modified",
            "Thu, 22 Oct 2026 07:28:00 GMT"
        )])));
    }

    #[test]
    fn if_none_match_takes_precedence_over_dates() {
        let asked = Validators::from_request(
            &Method::GET,
            &map(&[
                ("if-none-match", "\"old\""),
                ("if-modified-since", "Thu, 22 Oct 2026 07:28:00 GMT"),
            ]),
        );
        assert!(!asked.not_modified(&answer(&[
            ("etag", "\"new\""),
            ("last-modified", "Wed, 21 Oct 2026 07:28:00 GMT")
        ])));
    }

    #[test]
    fn post_requests_are_never_answered_304() {
        let asked = Validators::from_request(&Method::POST, &map(&[("if-none-match", "*")]));
        assert!(!asked.not_modified(&answer(&[("etag", "\"v\"")])));
    }

    #[test]
    fn a_fill_carries_the_stored_validators() {
        let mut request = map(&[("if-none-match", "\"client\"")]);
        let stored = answer(&[
            ("etag", "\"v1\""),
            ("last-modified", "Wed, 21 Oct 2026 07:28:00 GMT"),
        ]);
        add_validators(&mut request, &stored);
        assert_eq!(request["if-none-match"], "\"v1\"");
        assert_eq!(
            request["if-modified-since"],
            "Wed, 21 Oct 2026 07:28:00 GMT"
        );
        assert!(has_validator(&stored));
        assert!(!has_validator(&StoredHeaders::default()));
    }

    #[test]
    fn hop_by_hop_names_are_recognised() {
        assert!(is_hop_by_hop(&HeaderName::from_static("keep-alive")));
        assert!(!is_hop_by_hop(&HeaderName::from_static("content-length")));
    }
}
