//! The store at 1,000 and 1,000,000 live entries: a hit's lookup, and an
//! insert (which evicts once the store is full).

mod common;

use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dashcache::cache::{Lookup, Store};

/// Bytes budget large enough that the entry count is the bound.
const MAX_BYTES: u64 = 4 << 30;

fn store(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    for entries in [1_000u64, 1_000_000] {
        let store = Store::new(entries, MAX_BYTES, 1 << 20);
        for n in 0..entries {
            let key = common::key(n);
            store
                .insert(key, common::entry(key, 64), store.generation())
                .expect("the entry fits");
        }
        let label = if entries == 1_000 { "1k" } else { "1M" };
        let mut n = 0u64;
        group.bench_function(BenchmarkId::new("lookup", label), |b| {
            b.iter(|| {
                n = (n + 7_919) % entries;
                matches!(store.get(&common::key(n), Instant::now()), Lookup::Fresh(_))
            })
        });
        // Prepared outside the timing: one entry per iteration, new keys.
        let mut fresh = entries;
        group.bench_function(BenchmarkId::new("insert", label), |b| {
            b.iter_batched(
                || {
                    fresh += 1;
                    let key = common::key(fresh);
                    (key, common::entry(key, 64))
                },
                |(key, entry)| store.insert(key, entry, store.generation()),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
