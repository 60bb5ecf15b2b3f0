//! Header rules for a forwarding proxy (pure functions, no I/O).
//!
//! RFC 9110 §7.6.1: a proxy removes the hop-by-hop fields (`Connection`,
//! the fields `Connection` lists, and the classic set below) before
//! forwarding a message in either direction, and they are never stored.
//! §7.6.3: a proxy adds itself to `Via`. The `X-Forwarded-*` fields give the
//! backend the client's address, scheme and host, as nginx and Varnish do.

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, VIA};
use http::{HeaderMap, Version};

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
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
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

    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {client_ip}"),
        None => client_ip.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
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
    let value = match headers.get(VIA).and_then(|v| v.to_str().ok()) {
        Some(previous) => HeaderValue::from_str(&format!("{previous}, {hop}")).ok(),
        None => Some(HeaderValue::from_static(hop)),
    };
    if let Some(value) = value {
        headers.insert(VIA, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
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
    fn hop_by_hop_names_are_recognised() {
        assert!(is_hop_by_hop(&HeaderName::from_static("keep-alive")));
        assert!(!is_hop_by_hop(&HeaderName::from_static("content-length")));
    }
}
