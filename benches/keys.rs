//! Key building for a POST with a JSON filter body of 1 KB and 20 KB:
//! canonical (parse, sort keys, md5: a first sight of the body) and raw
//! (a keyed SipHash of the bytes as sent, answered from the memo: every
//! later sight).

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dashcache::cache::{KeyMemo, RequestIdentity};
use http::Method;

fn keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("key");
    for (label, len) in [("1KB", 1024), ("20KB", 20 * 1024)] {
        let body = common::filters(len);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("canonical", label), &body, |b, body| {
            b.iter(|| RequestIdentity::new(&Method::POST, "/api/metrics", None, body).key())
        });
        let memo = KeyMemo::new(1024);
        memo.key(&Method::POST, "/api/metrics", None, &body);
        group.bench_with_input(BenchmarkId::new("raw-memo", label), &body, |b, body| {
            b.iter(|| memo.key(&Method::POST, "/api/metrics", None, body))
        });
    }
    group.finish();
}

criterion_group!(benches, keys);
criterion_main!(benches);
