//! What keying costs a request, in nanoseconds: the memoised key of a
//! dashboard POST with and without key rules, and the volatile-field
//! sampler's share (steady state, and the warm-up when every request is
//! sampled). A criterion-free micro measure: the best of five runs, in
//! this thread's CPU time (so that other processes on a loaded machine
//! count less than in wall-clock time).
//!
//! `cargo run --release --example key_cost`

use std::hint::black_box;
use std::sync::Arc;

use dashcache::cache::key::key_with_headers;
use dashcache::cache::key_rules::KeyRules;
use dashcache::cache::volatile::{VolatileDetector, WARMUP};
use dashcache::cache::KeyMemo;
use http::{HeaderMap, Method};

const BODY: &str = r#"{"requestId":"9f1c-0042","orgs":["Vale","Itau","Ambev"],"range":"30d","meta":{"sentAt":1765000000000,"app":"dash"},"locations":["Sao Paulo","Rio de Janeiro"],"status":"open"}"#;

/// This thread's CPU time, in nanoseconds.
fn cpu_ns() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(ok, 0, "clock_gettime");
    now.tv_sec as f64 * 1e9 + now.tv_nsec as f64
}

/// Best-of-five CPU nanoseconds per call of `f`.
fn per_call(label: &str, iterations: u64, mut f: impl FnMut(u64)) -> f64 {
    let best = (0..5)
        .map(|_| {
            let started = cpu_ns();
            for i in 0..iterations {
                f(i);
            }
            (cpu_ns() - started) / iterations as f64
        })
        .fold(f64::INFINITY, f64::min);
    println!("{label:<58} {best:>9.1} ns");
    best
}

fn main() {
    let rules = KeyRules::new(
        &["requestId".into(), "meta.sentAt".into()],
        &["orgs".into()],
        &["utm_*".into(), "_".into()],
        &["x-tenant".into()],
    )
    .unwrap();
    let memo = KeyMemo::new(4096);
    let headers = HeaderMap::new();
    let body = BODY.as_bytes();
    let n = 200_000;

    per_call("memoised key, no rules (a hit's keying)", n, |_| {
        black_box(memo.keyed(&Method::POST, "/api/metrics", None, body, KeyRules::none()));
    });
    per_call("memoised key, four rules + key_headers", n, |_| {
        let key = memo.keyed(&Method::POST, "/api/metrics", None, body, &rules);
        black_box(key_with_headers(key, &rules, &headers));
    });
    per_call(
        "canonical key with rules (memo miss: new request id)",
        n / 10,
        |i| {
            let body = BODY.replace("0042", &format!("{:04}", i % 10_000));
            black_box(
                dashcache::cache::RequestIdentity::with_rules(
                    &Method::POST,
                    "/api/metrics",
                    None,
                    body.as_bytes(),
                    &rules,
                )
                .key(),
            );
        },
    );

    let route: Arc<str> = "get_metrics".into();
    let mut detector = VolatileDetector::default();
    let warm = per_call("sampler, warm-up (every request sampled)", WARMUP, |i| {
        if i == 0 {
            detector = VolatileDetector::default();
        }
        detector.observe(
            &route,
            KeyRules::none(),
            &Method::POST,
            "/api/metrics",
            None,
            body,
        );
    });
    let steady = per_call(
        "sampler, steady state (stride follows sample cost), average",
        n,
        |_| {
            detector.observe(
                &route,
                KeyRules::none(),
                &Method::POST,
                "/api/metrics",
                None,
                body,
            );
        },
    );
    println!("one sample costs about {warm:.0} ns; averaged per request {steady:.1} ns");

    // The benchmark harness's POST: a 20 KiB JSON body.
    let big = format!(
        r#"{{"org":"Vale","rows":[{}]}}"#,
        (0..600)
            .map(|i| format!(r#"{{"id":{i},"v":"x"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let big = big.as_bytes();
    println!("large body: {} bytes", big.len());
    let mut detector = VolatileDetector::default();
    let warm = per_call(
        "sampler, warm-up, large body (every request sampled)",
        WARMUP,
        |i| {
            if i == 0 {
                detector = VolatileDetector::default();
            }
            detector.observe(
                &route,
                KeyRules::none(),
                &Method::POST,
                "/api/metrics",
                None,
                big,
            );
        },
    );
    let steady = per_call("sampler, steady state, large body, average", n, |_| {
        detector.observe(
            &route,
            KeyRules::none(),
            &Method::POST,
            "/api/metrics",
            None,
            big,
        );
    });
    println!("one large sample costs about {warm:.0} ns; averaged per request {steady:.1} ns");
}
