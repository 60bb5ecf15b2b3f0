//! Canonical JSON of arbitrary bytes: never panics; a canonical body is a
//! fixed point with the same key and the same value as the body as sent.

#![no_main]

use dashcache::cache::key::{KeyBody, KeyMemo, RequestIdentity};
use http::Method;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn key(body: &[u8]) -> dashcache::cache::CacheKey {
    RequestIdentity::new(&Method::POST, "/api/metrics", None, body).key()
}

fuzz_target!(|body: &[u8]| {
    let parsed = KeyBody::parse(body);
    let text = parsed.canonical_text();
    let memo = KeyMemo::new(64);
    assert_eq!(
        memo.key(&Method::POST, "/api/metrics", None, body),
        key(body)
    );
    let KeyBody::Json(_) = parsed else {
        return;
    };
    let again = KeyBody::parse(text.as_bytes());
    assert!(
        matches!(again, KeyBody::Json(_)),
        "canonical text {text:?} is not canonical JSON"
    );
    assert_eq!(
        again.canonical_text(),
        text,
        "canonicalising twice changed {text:?}"
    );
    assert_eq!(key(text.as_bytes()), key(body));
    if let (Ok(sent), Ok(canonical)) = (
        serde_json::from_slice::<Value>(body),
        serde_json::from_str::<Value>(&text),
    ) {
        assert_eq!(
            sent, canonical,
            "{text:?} means something else than the body sent"
        );
    }
});
