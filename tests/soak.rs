//! Soak: mixed load for a bounded time while the upstream flaps between
//! answering, failing with 500/503, cutting connections and refusing them.
//! Keys with a stored (possibly stale) entry never see an error; keys
//! without one fail cleanly (a complete JSON answer); no response is lost;
//! the store never passes its bounds; and the upstream never has two
//! requests for one key at once.
//!
//! Runs for `DASHCACHE_SOAK_SECS` seconds (default 8, at most 60).

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::flaky::{FlakyOrigin, Mode};
use support::{spawn_proxy, Client};

const WARM_KEYS: u64 = 16;
const COLD_KEYS: u64 = 200;
const WORKERS: usize = 8;
const MAXSIZE: u64 = 500;
const MAX_BYTES: u64 = 1 << 20;

fn soak_duration() -> Duration {
    let secs = std::env::var("DASHCACHE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(8)
        .clamp(1, 60);
    Duration::from_secs(secs)
}

/// A small deterministic generator (xorshift), one per worker.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Default)]
struct Tally {
    sent: AtomicUsize,
    answered: AtomicUsize,
    lost: AtomicUsize,
    warm_errors: AtomicUsize,
    cold_errors: AtomicUsize,
    stale: AtomicUsize,
    bad_answers: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_with_a_flapping_upstream() {
    let origin = FlakyOrigin::start().await;
    origin.set_delay(Duration::from_millis(5));
    let toml = format!(
        "connect_timeout = \"300ms\"\nupstream_timeout = \"3s\"\n\
         [cache]\nttl = \"300ms\"\nstale_if_error = \"1h\"\nlock_timeout = \"3s\"\n\
         maxsize = {MAXSIZE}\nmax_bytes = {MAX_BYTES}\nmax_object_bytes = \"64KiB\"\n"
    );
    let proxy = spawn_proxy(&origin.url(), &toml).await;
    let client = Client::new();
    for key in 0..WARM_KEYS {
        let reply = client
            .post(&proxy.url("/api/metrics"), &format!(r#"{{"warm":{key}}}"#))
            .await;
        assert_eq!(reply.status, 200, "warm-up");
    }

    let deadline = Instant::now() + soak_duration();
    let tally = Arc::new(Tally::default());
    let running = Arc::new(AtomicBool::new(true));

    // The upstream flaps through every failure mode.
    let flapper = {
        let running = running.clone();
        let origin = Arc::new(origin);
        let handle = origin.clone();
        let task = tokio::spawn(async move {
            let modes = [
                Some(Mode::Ok),
                Some(Mode::Fail(500)),
                Some(Mode::Ok),
                Some(Mode::Cut),
                Some(Mode::Fail(503)),
                None,
                Some(Mode::Ok),
            ];
            let mut i = 0;
            while running.load(Ordering::SeqCst) {
                match modes[i % modes.len()] {
                    Some(mode) => {
                        handle.resume().await;
                        handle.set_mode(mode);
                    }
                    None => handle.stop(),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            handle.resume().await;
            handle.set_mode(Mode::Ok);
        });
        (task, origin)
    };

    // The store's bounds, sampled throughout.
    let sampler = {
        let running = running.clone();
        let proxy = proxy.proxy.clone();
        tokio::spawn(async move {
            let mut samples = 0;
            while running.load(Ordering::SeqCst) {
                let census = proxy.store.census(Instant::now());
                assert!(proxy.store.len() as u64 <= MAXSIZE, "entries past maxsize");
                assert!(
                    census.bytes <= MAX_BYTES,
                    "bytes past max_bytes: {}",
                    census.bytes
                );
                samples += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        })
    };

    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let tally = tally.clone();
        let url = proxy.url("/api/metrics");
        let client = client.clone();
        workers.spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (worker as u64 + 1));
            while Instant::now() < deadline {
                let roll = rng.next();
                let warm = roll % 10 < 7;
                let body = if warm {
                    format!(r#"{{"warm":{}}}"#, (roll >> 8) % WARM_KEYS)
                } else {
                    format!(r#"{{"cold":{}}}"#, (roll >> 8) % COLD_KEYS)
                };
                tally.sent.fetch_add(1, Ordering::Relaxed);
                let reply = match client
                    .try_send(
                        http::Method::POST,
                        &url,
                        &[("content-type", "application/json")],
                        body.clone(),
                    )
                    .await
                {
                    Ok(reply) => reply,
                    Err(err) => {
                        tally.lost.fetch_add(1, Ordering::Relaxed);
                        eprintln!("lost {body}: {err}");
                        continue;
                    }
                };
                tally.answered.fetch_add(1, Ordering::Relaxed);
                if reply.x_cache() == "STALE" {
                    tally.stale.fetch_add(1, Ordering::Relaxed);
                }
                // Every answer is complete JSON: the data, the upstream's
                // own error, or the proxy's error.
                if serde_json::from_slice::<serde_json::Value>(&reply.body).is_err() {
                    tally.bad_answers.fetch_add(1, Ordering::Relaxed);
                    eprintln!("not JSON for {body}: {} {}", reply.status, reply.text());
                }
                if reply.status != 200 {
                    let errors = if warm {
                        eprintln!(
                            "warm key failed {body}: {} {} {}",
                            reply.status,
                            reply.header("cache-status"),
                            reply.text()
                        );
                        &tally.warm_errors
                    } else {
                        &tally.cold_errors
                    };
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(worker) = workers.join_next().await {
        worker.unwrap();
    }
    running.store(false, Ordering::SeqCst);
    let (flapper, origin) = flapper;
    flapper.await.unwrap();
    let samples = sampler.await.expect("the store stayed within its bounds");

    let load = |c: &AtomicUsize| c.load(Ordering::Relaxed);
    let summary = format!(
        "sent {} answered {} lost {} warm errors {} cold errors {} stale {} bad {} origin {} samples {samples}",
        load(&tally.sent),
        load(&tally.answered),
        load(&tally.lost),
        load(&tally.warm_errors),
        load(&tally.cold_errors),
        load(&tally.stale),
        load(&tally.bad_answers),
        origin.total(),
    );
    eprintln!("{summary}");
    assert_eq!(load(&tally.lost), 0, "no lost responses: {summary}");
    assert_eq!(load(&tally.answered), load(&tally.sent), "{summary}");
    assert_eq!(
        load(&tally.warm_errors),
        0,
        "keys with entries never fail: {summary}"
    );
    assert_eq!(load(&tally.bad_answers), 0, "{summary}");
    assert!(
        load(&tally.stale) > 0,
        "stale answers were given: {summary}"
    );
    assert!(
        load(&tally.cold_errors) > 0,
        "the upstream did fail: {summary}"
    );
    assert!(samples > 0);
    assert_eq!(
        origin.max_open_per_key(),
        1,
        "one upstream request per key at a time"
    );

    // Once the upstream is back, every key answers fresh data again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reply = client
        .post(&proxy.url("/api/metrics"), r#"{"warm":0}"#)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.x_cache(), "MISS", "{}", reply.header("cache-status"));
}
