//! What the benchmarks share: entries shaped like the dashboard's answers,
//! distinct keys, and filter bodies of a given size.
#![allow(dead_code)]

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashcache::cache::stale::StaleWindows;
use dashcache::cache::{CacheKey, Entry};
use http::header::{HeaderValue, CONTENT_TYPE, DATE, SERVER};
use http::{HeaderMap, StatusCode};

/// The `n`th of many distinct keys.
pub fn key(n: u64) -> CacheKey {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    bytes[8..].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    CacheKey::from_bytes(bytes)
}

/// A stored 200 with a uvicorn-like head and a `body_len`-byte JSON body,
/// fresh for an hour.
pub fn entry(key: CacheKey, body_len: usize) -> Arc<Entry> {
    let now = Instant::now();
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        DATE,
        HeaderValue::from_static("Sun, 06 Dec 2026 21:00:00 GMT"),
    );
    headers.insert(SERVER, HeaderValue::from_static("uvicorn"));
    let mut body = vec![b' '; body_len.max(2)];
    body[0] = b'{';
    body[body_len.max(2) - 1] = b'}';
    Arc::new(
        Entry {
            key,
            base: key,
            vary: None,
            status: StatusCode::OK,
            headers: headers.into(),
            body: Bytes::from(body),
            route: "get_metrics".into(),
            description: format!("get_metrics POST /api/metrics {{\"org\":\"{key}\"}}"),
            stored_at: now,
            expires_at: now + Duration::from_secs(3600),
            stale: StaleWindows::default(),
            initial_age: 0,
            upstream_time: Duration::from_secs(2),
            hits: AtomicU64::new(0),
            replay: None,
        }
        // As the store holds it (exact buffers, room for the answer's fields).
        .compacted(),
    )
}

/// A dashboard filter body of about `len` bytes: an object of string,
/// number and list fields, keys out of order, as a frontend sends it.
pub fn filters(len: usize) -> Vec<u8> {
    let mut text = String::from("{");
    let mut i = 0;
    while text.len() + 64 < len {
        if i > 0 {
            text.push(',');
        }
        let field = 997 - (i * 31) % 997;
        match i % 3 {
            0 => text.push_str(&format!("\"org_{field}\":\"Vale do Rio {i}\"")),
            1 => text.push_str(&format!("\"limit_{field}\":{}", i * 17)),
            _ => text.push_str(&format!("\"regions_{field}\":[\"north\",\"south\",{i}]")),
        }
        i += 1;
    }
    text.push('}');
    text.into_bytes()
}
