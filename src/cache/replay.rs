//! What an entry keeps of the request that filled it, so that
//! `POST /api/cache/refresh` can ask the upstream the same question again.
//!
//! Only requests without credentials are kept for replay: a request that
//! carried `Authorization`, `Cookie` or another configured credential header
//! gets no [`Replay`], so no credential is ever held in the store or sent
//! again on a caller's behalf after the caller has gone (its entry is
//! dropped by a refresh instead, and the caller's next request is a miss
//! made with its own, current credentials). The headers kept are the
//! end-to-end ones that can shape the answer (`Accept`, `Content-Type`,
//! `Vary`-named fields…): hop-by-hop, conditional, range and forwarding
//! fields and the `X-Request-Id` are left out, since the proxy adds its own
//! on the way up.

use bytes::Bytes;
use http::header::{HeaderName, VIA};
use http::{HeaderMap, Method};

use super::store::headers_size;
use crate::headers::{self, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};

/// A credential-free copy of the request behind an entry.
#[derive(Debug, Clone)]
pub struct Replay {
    /// As sent upstream (GET for a HEAD request).
    pub method: Method,
    /// The client's `path?query` (the upstream base path is added again).
    pub path_and_query: String,
    pub body: Bytes,
    pub headers: HeaderMap,
}

impl Replay {
    /// The replayable copy of a request, or `None` when it carries any of
    /// the `credential_headers`.
    pub fn of(
        method: &Method,
        path_and_query: &str,
        body: &Bytes,
        request: &HeaderMap,
        credential_headers: &[HeaderName],
    ) -> Option<Self> {
        if credential_headers.iter().any(|n| request.contains_key(n)) {
            return None;
        }
        let mut headers = request.clone();
        headers::remove_hop_by_hop(&mut headers);
        headers::remove_conditionals(&mut headers);
        for name in [
            &X_FORWARDED_FOR,
            &X_FORWARDED_HOST,
            &X_FORWARDED_PROTO,
            &VIA,
            &crate::request_id::X_REQUEST_ID,
        ] {
            headers.remove(name);
        }
        Some(Self {
            method: method.clone(),
            path_and_query: path_and_query.to_owned(),
            body: body.clone(),
            headers,
        })
    }

    /// Bytes it holds, as counted against `max_bytes`.
    pub fn size(&self) -> u64 {
        (self.path_and_query.len() + self.body.len()) as u64 + headers_size(&self.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::map_of as request;

    const CREDENTIALS: [HeaderName; 2] = [http::header::AUTHORIZATION, http::header::COOKIE];

    #[test]
    fn a_request_with_credentials_is_never_kept() {
        let headers = request(&[("authorization", "Bearer secret")]);
        let body = Bytes::new();
        assert!(Replay::of(&Method::GET, "/x", &body, &headers, &CREDENTIALS).is_none());
    }

    #[test]
    fn only_end_to_end_fields_are_kept() {
        let headers = request(&[
            ("accept", "application/json"),
            ("content-type", "application/json"),
            ("connection", "keep-alive"),
            ("if-none-match", "\"v1\""),
            ("x-forwarded-for", "10.0.0.1"),
            ("via", "1.1 lb"),
            ("x-request-id", "5f0c9a1e22b4000000000012"),
        ]);
        let body = Bytes::from_static(b"{\"org\":\"Vale\"}");
        let replay = Replay::of(
            &Method::POST,
            "/api/metrics?x=1",
            &body,
            &headers,
            &CREDENTIALS,
        )
        .unwrap();
        let kept: Vec<_> = replay.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(kept, ["accept", "content-type"]);
        assert_eq!(replay.path_and_query, "/api/metrics?x=1");
        assert_eq!(replay.body, body);
        assert!(replay.size() > body.len() as u64);
    }
}
