//! Expiry: entries are served until their TTL and never after; route TTLs
//! and the origin's own max-age / s-maxage decide that TTL; the background
//! purge empties the store without any request.
//!
//! The proxy measures time with `std::time::Instant`, so these tests wait
//! real time: TTLs of one second and waits just past them.

mod support;

use std::time::{Duration, Instant};

use support::{eventually, spawn_proxy, Behaviour, Client, Origin};

/// Just past a one-second TTL, counted from when the entry was stored.
const PAST_ONE_SECOND: Duration = Duration::from_millis(1150);

async fn sleep_until(deadline: Instant) {
    tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
}

#[tokio::test]
async fn an_entry_is_a_hit_before_its_ttl_and_refetched_after() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "[cache]\nttl = 1\npurge_interval = \"1h\"\n").await;
    let client = Client::new();
    let url = proxy.url("/api/metrics");

    let miss = client.post(&url, r#"{"org":"Vale"}"#).await;
    let stored_by = Instant::now();
    let hit = client.post(&url, r#"{"org":"Vale"}"#).await;
    assert_eq!(miss.x_cache(), "MISS");
    assert_eq!(hit.x_cache(), "HIT");
    assert!(
        hit.cache_status_ttl().is_some_and(|ttl| ttl <= 1),
        "{}",
        hit.header("cache-status")
    );

    sleep_until(stored_by + PAST_ONE_SECOND).await;
    let after = client.post(&url, r#"{"org":"Vale"}"#).await;
    assert_eq!(after.x_cache(), "MISS", "an expired entry is never served");
    assert_eq!(origin.count("/api/metrics"), 2);

    let again = client.post(&url, r#"{"org":"Vale"}"#).await;
    assert_eq!(
        again.x_cache(),
        "HIT",
        "the refetched answer is stored again"
    );
    assert_eq!(origin.count("/api/metrics"), 2);
}

#[tokio::test]
async fn a_route_ttl_overrides_the_default() {
    let origin = Origin::start().await;
    let config = r#"
[cache]
ttl = "1h"
purge_interval = "1h"

[[route]]
name = "short"
path = "/api/short"
ttl = 1

[[route]]
name = "long"
path = "/api/long"
"#;
    let proxy = spawn_proxy(&origin.url(), config).await;
    let client = Client::new();

    client.get(&proxy.url("/api/short")).await;
    client.get(&proxy.url("/api/long")).await;
    let stored_by = Instant::now();
    assert_eq!(client.get(&proxy.url("/api/short")).await.x_cache(), "HIT");

    sleep_until(stored_by + PAST_ONE_SECOND).await;
    assert_eq!(
        client.get(&proxy.url("/api/short")).await.x_cache(),
        "MISS",
        "route ttl = 1 s"
    );
    assert_eq!(
        client.get(&proxy.url("/api/long")).await.x_cache(),
        "HIT",
        "default ttl = 1 h"
    );
    assert_eq!(origin.count("/api/short"), 2);
    assert_eq!(origin.count("/api/long"), 1);
}

#[tokio::test]
async fn the_origin_max_age_and_s_maxage_override_the_default_ttl() {
    let origin = Origin::start().await;
    origin.on(
        "/api/max-age",
        Behaviour::new().header("cache-control", "max-age=1"),
    );
    origin.on(
        "/api/s-maxage",
        Behaviour::new().header("cache-control", "public, max-age=3600, s-maxage=1"),
    );
    origin.on(
        "/api/long-max-age",
        Behaviour::new().header("cache-control", "max-age=7200"),
    );
    let proxy = spawn_proxy(
        &origin.url(),
        "[cache]\nttl = \"1h\"\npurge_interval = \"1h\"\n",
    )
    .await;
    let client = Client::new();
    let paths = ["/api/max-age", "/api/s-maxage", "/api/long-max-age"];

    for path in paths {
        assert_eq!(client.get(&proxy.url(path)).await.x_cache(), "MISS");
    }
    let stored_by = Instant::now();
    let long = client.get(&proxy.url("/api/long-max-age")).await;
    assert_eq!(long.x_cache(), "HIT");
    let ttl = long.cache_status_ttl().expect("a hit says its ttl");
    assert!(
        (7100..=7200).contains(&ttl),
        "max-age=7200 beats the 1 h default: {ttl}"
    );

    sleep_until(stored_by + PAST_ONE_SECOND).await;
    let max_age = client.get(&proxy.url("/api/max-age")).await;
    let s_maxage = client.get(&proxy.url("/api/s-maxage")).await;
    assert_eq!(max_age.x_cache(), "MISS", "max-age=1 beats the 1 h default");
    assert_eq!(
        s_maxage.x_cache(),
        "MISS",
        "s-maxage=1 beats max-age=3600 in a shared cache"
    );
    assert_eq!(origin.count("/api/max-age"), 2);
    assert_eq!(origin.count("/api/s-maxage"), 2);
}

#[tokio::test]
async fn the_purge_empties_the_store_without_any_request() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(
        &origin.url(),
        "[cache]\nttl = 1\npurge_interval = \"100ms\"\nstale_if_error = 0\n",
    )
    .await;
    let client = Client::new();

    for org in ["Vale", "Acme", "Globex"] {
        client
            .post(&proxy.url("/api/metrics"), &format!(r#"{{"org":"{org}"}}"#))
            .await;
    }
    assert_eq!(proxy.stats().await["size"], 3);

    let mut last = proxy.stats().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    // `size` counts fresh entries only; expired ones stay in `stale_entries`
    // until the purge removes them.
    while last["size"] != 0 || last["stale_entries"] != 0 {
        assert!(
            Instant::now() < deadline,
            "purge never emptied the store: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = proxy.stats().await;
    }
    assert_eq!(last["expirations"], 3, "{last}");
    assert_eq!(last["bytes"], 0, "{last}");
    assert_eq!(
        origin.total(),
        3,
        "only stats were asked; nothing went upstream"
    );
    eventually("the store to be empty", || proxy.proxy.store.is_empty()).await;
}

#[tokio::test]
async fn the_origin_age_counts_against_its_max_age() {
    let origin = Origin::start().await;
    origin.on(
        "/api/aged",
        Behaviour::new()
            .header("cache-control", "max-age=3600")
            .header("age", "100"),
    );
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();

    client.get(&proxy.url("/api/aged")).await;
    let hit = client.get(&proxy.url("/api/aged")).await;
    assert_eq!(hit.x_cache(), "HIT");
    let age: u64 = hit.header("age").parse().expect("numeric Age");
    assert!(
        (100..=105).contains(&age),
        "Age includes the origin's 100 s: {age}"
    );
    let ttl = hit.cache_status_ttl().expect("a hit says its ttl");
    assert!(
        (3400..=3500).contains(&ttl),
        "3600 s max-age minus 100 s of age: {ttl}"
    );
}
