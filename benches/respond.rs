//! Rendering a hit's answer from a stored entry (`respond::from_entry`):
//! the head (status, the stored headers, `Age`, `X-Cache`, `Cache-Status`,
//! then `X-Request-Id`) and a handle on the shared body, for a 20 KB answer.

mod common;

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use dashcache::request_id;
use dashcache::respond::{self, Ask, CacheStatus, CacheStatusField};

fn render(c: &mut Criterion) {
    let entry = common::entry(common::key(1), 20 * 1024);
    let ask = Ask::default();
    let request_id = request_id::generate();
    c.bench_function("respond/hit-head", |b| {
        b.iter(|| {
            let now = Instant::now();
            let field = CacheStatusField::hit(entry.ttl_left(now).as_secs());
            let mut response = respond::from_entry(&entry, CacheStatus::Hit, field, &ask, now);
            // As `Proxy::handle` then adds it to every answer.
            response
                .headers_mut()
                .insert(&request_id::X_REQUEST_ID, request_id.clone());
            response
        })
    });
}

criterion_group!(benches, render);
criterion_main!(benches);
