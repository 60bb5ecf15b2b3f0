//! Stale-if-error: an expired entry answers for an upstream that fails
//! (refused, cut, 5xx), with `X-Cache: STALE`, its `Age` and a
//! `Cache-Status` saying why; the error is never stored; the entry is kept
//! for its window (not counted in `size`) and purged after it.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::flaky::{FlakyOrigin, Mode};
use support::{spawn_proxy, Client, ProxyHandle};

const BODY: &str = r#"{"org":"Vale"}"#;

/// A proxy whose entries expire after 200 ms and are kept stale for an hour.
async fn proxy_for(origin: &FlakyOrigin, extra: &str) -> ProxyHandle {
    let toml = format!("[cache]\nttl = \"200ms\"\nstale_if_error = \"1h\"\n{extra}");
    spawn_proxy(&origin.url(), &toml).await
}

async fn expire() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_5xx_is_answered_with_the_stale_entry() {
    let origin = FlakyOrigin::start().await;
    let proxy = proxy_for(&origin, "").await;
    let client = Client::new();
    let first = client.post(&proxy.url("/api/metrics"), BODY).await;
    assert_eq!(first.x_cache(), "MISS");
    expire().await;

    origin.set_mode(Mode::Fail(503));
    let stale = client.post(&proxy.url("/api/metrics"), BODY).await;
    assert_eq!(stale.status, StatusCode::OK, "{}", stale.text());
    assert_eq!(stale.x_cache(), "STALE");
    assert_eq!(stale.body, first.body, "the stored answer, unchanged");
    let cache_status = stale.header("cache-status");
    assert!(
        cache_status.starts_with("dashcache; fwd=stale; fwd-status=503; ttl=-"),
        "{cache_status}"
    );
    assert!(
        cache_status.ends_with("detail=upstream-status"),
        "{cache_status}"
    );
    let age: u64 = stale.header("age").parse().expect("numeric Age");
    assert!(age <= 5, "Age counts the entry's residence: {age}");
    assert_eq!(origin.count("/api/metrics"), 2, "the upstream was asked");

    let stats = proxy.stats().await;
    assert_eq!(stats["stale"], 1, "{stats}");
    assert_eq!(stats["size"], 0, "size counts fresh entries only: {stats}");
    assert_eq!(stats["stale_entries"], 1, "{stats}");
    assert_eq!(proxy.proxy.store.len(), 1, "the 503 was not stored");

    origin.set_mode(Mode::Ok);
    origin.set_version(2);
    let fresh = client.post(&proxy.url("/api/metrics"), BODY).await;
    assert_eq!(
        fresh.x_cache(),
        "MISS",
        "a recovered upstream refills the key"
    );
    assert_eq!(fresh.json()["version"], 2);
}

#[tokio::test]
async fn an_unreachable_or_cutting_upstream_is_answered_with_the_stale_entry() {
    let origin = FlakyOrigin::start().await;
    let proxy = proxy_for(&origin, "").await;
    let client = Client::new();
    client.post(&proxy.url("/api/metrics"), BODY).await;
    expire().await;

    origin.set_mode(Mode::Cut);
    let cut = client.post(&proxy.url("/api/metrics"), BODY).await;
    assert_eq!(cut.status, StatusCode::OK, "{}", cut.text());
    assert_eq!(cut.x_cache(), "STALE");
    assert!(
        cut.header("cache-status").contains("detail=upstream-"),
        "{}",
        cut.header("cache-status")
    );

    origin.stop();
    let refused = client.post(&proxy.url("/api/metrics"), BODY).await;
    assert_eq!(refused.status, StatusCode::OK, "{}", refused.text());
    assert_eq!(refused.x_cache(), "STALE");
    assert!(
        refused
            .header("cache-status")
            .ends_with("detail=upstream-unreachable"),
        "{}",
        refused.header("cache-status")
    );

    let uncached = client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Acme"}"#)
        .await;
    assert_eq!(
        uncached.status,
        StatusCode::BAD_GATEWAY,
        "no stale entry: an error"
    );
    uncached.error_message();
    assert_eq!(proxy.stats().await["stale"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_a_failing_fill_share_the_stale_entry() {
    let origin = FlakyOrigin::start().await;
    let proxy = proxy_for(&origin, "").await;
    let client = Client::new();
    client.post(&proxy.url("/api/metrics"), BODY).await;
    expire().await;

    origin.set_mode(Mode::Fail(500));
    origin.set_delay(Duration::from_millis(300));
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let client = client.clone();
        let url = proxy.url("/api/metrics");
        requests.spawn(async move { client.post(&url, BODY).await });
    }
    while let Some(reply) = requests.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.x_cache(), "STALE");
    }
    assert_eq!(
        origin.count("/api/metrics"),
        2,
        "one fill for the eight callers"
    );
    assert_eq!(proxy.stats().await["stale"], 8);
}

#[tokio::test]
async fn origin_directives_override_the_stale_window() {
    let origin = FlakyOrigin::start().await;
    // No stale serving by default; the origin grants it per answer.
    let proxy = spawn_proxy(
        &origin.url(),
        "[cache]\nttl = \"200ms\"\nstale_if_error = 0\n",
    )
    .await;
    let client = Client::new();
    client.post(&proxy.url("/api/metrics"), BODY).await;
    origin.add_header("cache-control", "stale-if-error=3600");
    client.post(&proxy.url("/api/actions"), BODY).await;
    expire().await;

    origin.set_mode(Mode::Fail(503));
    let by_default = client.post(&proxy.url("/api/metrics"), BODY).await;
    assert_eq!(by_default.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(by_default.x_cache(), "MISS");
    let granted = client.post(&proxy.url("/api/actions"), BODY).await;
    assert_eq!(granted.status, StatusCode::OK);
    assert_eq!(granted.x_cache(), "STALE");
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale() {
    let origin = FlakyOrigin::start().await;
    origin.add_header("cache-control", "must-revalidate");
    let proxy = proxy_for(&origin, "").await;
    let client = Client::new();
    client.post(&proxy.url("/api/metrics"), BODY).await;
    expire().await;

    origin.set_mode(Mode::Fail(502));
    let reply = client.post(&proxy.url("/api/metrics"), BODY).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.x_cache(), "MISS");
}

#[tokio::test]
async fn stale_entries_are_purged_when_their_window_ends() {
    let origin = FlakyOrigin::start().await;
    let proxy = spawn_proxy(
        &origin.url(),
        "[cache]\nttl = \"200ms\"\nstale_if_error = \"600ms\"\npurge_interval = \"50ms\"\n",
    )
    .await;
    let client = Client::new();
    client.post(&proxy.url("/api/metrics"), BODY).await;
    expire().await;

    let stats = proxy.stats().await;
    assert_eq!(stats["size"], 0, "{stats}");
    assert_eq!(stats["stale_entries"], 1, "kept by the purge: {stats}");
    assert_eq!(stats["expirations"], 0, "{stats}");

    support::eventually("the purge to drop the stale entry", || {
        proxy.proxy.store.is_empty()
    })
    .await;
    let stats = proxy.stats().await;
    assert_eq!(stats["stale_entries"], 0, "{stats}");
    assert_eq!(stats["expirations"], 1, "{stats}");
    origin.set_mode(Mode::Fail(503));
    let reply = client.post(&proxy.url("/api/metrics"), BODY).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "past the window"
    );
}
