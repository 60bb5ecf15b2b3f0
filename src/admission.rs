//! What a request head must satisfy before the pipeline looks at it, beyond
//! what hyper already refuses: consistent framing (marked by `client_io.rs`)
//! and the `Host` rules of RFC 9112 §3.2 and RFC 9113 §8.3.1.
//!
//! - An HTTP/1.1 request needs exactly one `Host` field; HTTP/1.0 may omit
//!   it. Two `Host` fields, or one that is not a valid authority, are 400
//!   in every version.
//! - An absolute-form target (`GET http://a/x HTTP/1.1`) carries its own
//!   authority; a `Host` field that names another one is 400 rather than
//!   silently ignored, so the proxy and whatever sits behind it cannot
//!   disagree about which host was asked for. HTTP/2's `:authority` is held
//!   to the same rule; an HTTP/2 request may carry neither.

use http::header::HOST;
use http::uri::Authority;
use http::{request, HeaderMap, Request, Uri, Version};

use crate::error::{HostProblem, ProxyError};
use crate::framing::FRAMING_CONFLICT;

/// Why the request is refused before the pipeline, if it is.
pub fn refusal<B>(request: &Request<B>) -> Option<ProxyError> {
    refusal_of(request.version(), request.uri(), request.headers())
}

/// [`refusal`] for a request taken apart (its head).
pub fn head_refusal(head: &request::Parts) -> Option<ProxyError> {
    refusal_of(head.version, &head.uri, &head.headers)
}

fn refusal_of(version: Version, uri: &Uri, headers: &HeaderMap) -> Option<ProxyError> {
    if headers.contains_key(FRAMING_CONFLICT) {
        return Some(ProxyError::FramingConflict);
    }
    check_host(version, uri, headers)
        .err()
        .map(|problem| ProxyError::InvalidHost { problem })
}

/// The `Host` rules above, on a request's version, target and fields.
pub fn check_host(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<(), HostProblem> {
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostProblem::Repeated);
    }
    let host = match host {
        None if version == Version::HTTP_11 && uri.authority().is_none() => {
            return Err(HostProblem::Missing)
        }
        None => return Ok(()),
        // The common request: a plain name to check, no target to compare
        // it with, and no copy made to parse it.
        Some(value) if uri.authority().is_none() && is_plain_host_and_port(value.as_bytes()) => {
            return Ok(())
        }
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.parse::<Authority>().ok())
            .filter(is_host_and_port)
            .ok_or(HostProblem::Invalid)?,
    };
    match uri.authority() {
        Some(target) if !same_authority(target, &host, uri.scheme_str()) => {
            Err(HostProblem::Mismatch)
        }
        _ => Ok(()),
    }
}

/// `host` or `host:port`, as RFC 9110 §7.2 defines `Host`: no userinfo,
/// and a port, when present, a number.
fn is_host_and_port(authority: &Authority) -> bool {
    let host = authority.host();
    !host.is_empty()
        && !authority.as_str().contains('@')
        && (authority.as_str().len() == host.len() || authority.port_u16().is_some())
}

/// `name` or `name:port` with nothing but letters, digits, `-` and `.` in
/// the name and a port that fits 16 bits: a subset of what
/// [`is_host_and_port`] accepts, judged without parsing an `Authority`.
/// Anything else (an IP literal, an encoded byte) takes the full parse.
fn is_plain_host_and_port(value: &[u8]) -> bool {
    let (name, port) = match memchr::memchr(b':', value) {
        Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
        None => (value, None),
    };
    let plain_name = !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let plain_port = port.is_none_or(|port| {
        (1..=5).contains(&port.len())
            && port.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(port).is_ok_and(|port| port.parse::<u16>().is_ok())
    });
    plain_name && plain_port
}

/// Host names compare without case, and a missing port is the scheme's
/// default one (`a` and `a:80` are the same http authority).
fn same_authority(target: &Authority, host: &Authority, scheme: Option<&str>) -> bool {
    let default_port = match scheme {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    let port = |a: &Authority| a.port_u16().or(default_port);
    target.host().eq_ignore_ascii_case(host.host()) && port(target) == port(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(version: Version, target: &str, hosts: &[&str]) -> Result<(), HostProblem> {
        let mut headers = HeaderMap::new();
        for host in hosts {
            headers.append(HOST, host.parse().unwrap());
        }
        check_host(version, &target.parse().unwrap(), &headers)
    }

    #[test]
    fn an_http11_request_needs_one_host() {
        assert_eq!(check(Version::HTTP_11, "/x", &["a"]), Ok(()));
        assert_eq!(
            check(Version::HTTP_11, "/x", &[]),
            Err(HostProblem::Missing)
        );
        assert_eq!(
            check(Version::HTTP_11, "/x", &["a", "a"]),
            Err(HostProblem::Repeated)
        );
    }

    #[test]
    fn an_http10_request_may_omit_host_but_not_repeat_it() {
        assert_eq!(check(Version::HTTP_10, "/x", &[]), Ok(()));
        assert_eq!(
            check(Version::HTTP_10, "/x", &["a", "b"]),
            Err(HostProblem::Repeated)
        );
    }

    #[test]
    fn a_host_that_is_not_an_authority_is_invalid() {
        for bad in ["a b", "a/b", "user@a", "a:port", ""] {
            assert_eq!(
                check(Version::HTTP_11, "/x", &[bad]),
                Err(HostProblem::Invalid),
                "{bad:?}"
            );
        }
        assert_eq!(check(Version::HTTP_11, "/x", &["[::1]:8080"]), Ok(()));
    }

    #[test]
    fn the_quick_check_of_a_plain_host_agrees_with_the_full_parse() {
        let full = |value: &str| {
            value
                .parse::<Authority>()
                .ok()
                .filter(is_host_and_port)
                .is_some()
        };
        let samples = [
            "a",
            "A",
            "localhost",
            "127.0.0.1",
            "proxy:8080",
            "a.b-c.example:1",
            "a:65535",
            "a:65536",
            "a:0",
            "a:",
            ":80",
            "a::80",
            "a:8a",
            "a:123456",
            "-",
            ".",
            "a_b",
            "a b",
            "a/b",
            "user@a",
            "[::1]",
            "[::1]:8080",
            "%61",
            "a:+80",
            "",
        ];
        for value in samples {
            if is_plain_host_and_port(value.as_bytes()) {
                assert!(
                    full(value),
                    "{value:?}: quick says plain, the parse refuses it"
                );
            }
            // Whichever way it goes, the answer is the full parse's.
            let expected = if full(value) {
                Ok(())
            } else {
                Err(HostProblem::Invalid)
            };
            assert_eq!(
                check(Version::HTTP_11, "/x", &[value]),
                expected,
                "{value:?}"
            );
        }
        assert!(is_plain_host_and_port(b"proxy:8080"));
        assert!(
            !is_plain_host_and_port(b"[::1]:8080"),
            "IP literals take the full parse"
        );
    }

    #[test]
    fn an_absolute_target_must_agree_with_host() {
        assert_eq!(check(Version::HTTP_11, "http://a/x", &["A"]), Ok(()));
        assert_eq!(check(Version::HTTP_11, "http://a/x", &["a:80"]), Ok(()));
        assert_eq!(check(Version::HTTP_11, "https://a:443/x", &["a"]), Ok(()));
        assert_eq!(
            check(Version::HTTP_11, "http://a/x", &["b"]),
            Err(HostProblem::Mismatch)
        );
        assert_eq!(
            check(Version::HTTP_11, "http://a/x", &["a:8080"]),
            Err(HostProblem::Mismatch)
        );
        assert_eq!(
            check(Version::HTTP_11, "http://a/x", &[]),
            Ok(()),
            "the target's authority stands in for Host"
        );
    }

    #[test]
    fn http2_authority_follows_the_same_rule_and_may_be_absent() {
        assert_eq!(check(Version::HTTP_2, "https://a/x", &[]), Ok(()));
        assert_eq!(check(Version::HTTP_2, "/x", &[]), Ok(()));
        assert_eq!(
            check(Version::HTTP_2, "https://a/x", &["b"]),
            Err(HostProblem::Mismatch)
        );
    }
}
