//! Zero-miss refresh: `POST /api/cache/refresh` re-fetches entries in the
//! background with bounded concurrency, keeps serving the old answers until
//! each new one is stored, reports progress in stats, and drops (never
//! serves as fresh) an entry whose refresh fails.

mod support;

use http::{Method, StatusCode};
use support::flaky::{FlakyOrigin, Mode};
use support::{eventually, spawn_proxy, Behaviour, Client, Gate, Origin, ProxyHandle};

const ORGS: [&str; 3] = ["Vale", "Acme", "Globex"];

fn filters(org: &str) -> String {
    format!(r#"{{"org":"{org}"}}"#)
}

fn serial(reply: &support::Reply) -> u64 {
    reply.header("x-origin-serial").parse().expect("serial")
}

async fn refresh(proxy: &ProxyHandle, query: &str) -> support::Reply {
    Client::new()
        .send(
            Method::POST,
            &proxy.url(&format!("/api/cache/refresh{query}")),
            &[],
            "",
        )
        .await
}

fn refresh_stats(proxy: &ProxyHandle) -> dashcache::refresh::RefreshFigures {
    proxy.proxy.refresher.figures()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_answers_are_served_until_the_new_ones_are_stored() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), support::DASHBOARD_ROUTES).await;
    let client = Client::new();
    let mut old = Vec::new();
    for org in ORGS {
        old.push(client.post(&proxy.url("/api/metrics"), &filters(org)).await);
    }

    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    let accepted = refresh(&proxy, "").await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.text());
    assert_eq!(
        accepted.text(),
        r#"{"status":"accepted","keys_scheduled":3,"pattern":null,"message":"Refreshing all 3 cache keys in the background"}"#
    );
    origin.wait_for_total(6).await;
    for (org, before) in ORGS.iter().zip(&old) {
        let during = client.post(&proxy.url("/api/metrics"), &filters(org)).await;
        assert_eq!(during.x_cache(), "HIT", "no miss while refreshing");
        assert_eq!(serial(&during), serial(before), "the old answer");
    }
    let stats = proxy.stats().await;
    assert_eq!(stats["refresh"]["scheduled"], 3, "{stats}");
    assert_eq!(stats["refresh"]["running"], 3, "{stats}");

    gate.open();
    eventually("the refreshes to finish", || {
        refresh_stats(&proxy).done == 3
    })
    .await;
    for (org, before) in ORGS.iter().zip(&old) {
        let after = client.post(&proxy.url("/api/metrics"), &filters(org)).await;
        assert_eq!(after.x_cache(), "HIT");
        assert!(serial(&after) > 3, "the new answer, not {}", serial(before));
    }
    assert_eq!(origin.total(), 6, "one refresh per key, and no miss");
    assert_eq!(proxy.stats().await["refresh"]["running"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_run_at_most_refresh_concurrency_at_once() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "[cache]\nrefresh_concurrency = 2\n").await;
    let client = Client::new();
    for org in ["a", "b", "c", "d", "e"] {
        client.post(&proxy.url("/api/metrics"), &filters(org)).await;
    }
    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    assert_eq!(refresh(&proxy, "").await.json()["keys_scheduled"], 5);
    origin.wait_for_total(7).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(origin.total(), 7, "two refreshes at a time");
    assert_eq!(refresh_stats(&proxy).running, 2);
    gate.open();
    eventually("all five refreshed", || refresh_stats(&proxy).done == 5).await;
    assert_eq!(origin.total(), 10);
}

#[tokio::test]
async fn a_pattern_selects_the_entries_like_invalidate() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), support::DASHBOARD_ROUTES).await;
    let client = Client::new();
    for org in ORGS {
        client.post(&proxy.url("/api/metrics"), &filters(org)).await;
    }
    client
        .post(&proxy.url("/api/actions"), &filters("Vale"))
        .await;

    let reply = refresh(&proxy, "?pattern=Vale").await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let json = reply.json();
    assert_eq!(json["keys_scheduled"], 2, "{json}");
    assert_eq!(json["pattern"], "Vale");
    eventually("both refreshed", || refresh_stats(&proxy).done == 2).await;
    assert_eq!(origin.total(), 6);
}

#[tokio::test]
async fn an_entry_whose_refresh_fails_is_dropped_not_served() {
    let origin = FlakyOrigin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();
    client
        .post(&proxy.url("/api/metrics"), &filters("Vale"))
        .await;
    client
        .post(&proxy.url("/api/actions"), &filters("Vale"))
        .await;

    origin.set_mode(Mode::Fail(500));
    assert_eq!(
        refresh(&proxy, "?pattern=metrics").await.json()["keys_scheduled"],
        1
    );
    eventually("the refresh to fail", || refresh_stats(&proxy).failed == 1).await;
    assert_eq!(
        proxy.proxy.store.len(),
        1,
        "the failed entry is gone, the other stays"
    );

    origin.set_mode(Mode::Ok);
    let next = client
        .post(&proxy.url("/api/metrics"), &filters("Vale"))
        .await;
    assert_eq!(next.x_cache(), "MISS", "the next request is a miss");
    let other = client
        .post(&proxy.url("/api/actions"), &filters("Vale"))
        .await;
    assert_eq!(other.x_cache(), "HIT");
}

#[tokio::test]
async fn entries_fetched_with_credentials_are_dropped_not_replayed() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();
    let headers = [
        ("content-type", "application/json"),
        ("authorization", "Bearer alice"),
    ];
    client
        .send(
            Method::POST,
            &proxy.url("/api/metrics"),
            &headers,
            filters("Vale"),
        )
        .await;
    assert_eq!(proxy.proxy.store.len(), 1);

    assert_eq!(refresh(&proxy, "").await.json()["keys_scheduled"], 1);
    eventually("the entry to be dropped", || {
        refresh_stats(&proxy).dropped == 1
    })
    .await;
    assert!(proxy.proxy.store.is_empty());
    assert_eq!(origin.total(), 1, "the credential was never sent again");
}

#[tokio::test]
async fn refresh_needs_the_admin_token_and_post() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "admin_token = \"s3cret\"\n").await;
    let client = Client::new();
    let anonymous = refresh(&proxy, "").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    anonymous.error_message();
    let get = client.get(&proxy.url("/api/cache/refresh")).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    let authorized = client
        .send(
            Method::POST,
            &proxy.url("/api/cache/refresh"),
            &[("authorization", "Bearer s3cret")],
            "",
        )
        .await;
    assert_eq!(authorized.status, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_during_a_refresh_joins_it_instead_of_asking_again() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "[cache]\nhonor_client_no_cache = true\n").await;
    let client = Client::new();
    client
        .post(&proxy.url("/api/metrics"), &filters("Vale"))
        .await;

    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    refresh(&proxy, "").await;
    origin.wait_for_total(2).await;
    // A client that refuses stored answers misses, and meets the refresh's flight.
    let miss = {
        let url = proxy.url("/api/metrics");
        tokio::spawn(async move {
            Client::new()
                .send(
                    Method::POST,
                    &url,
                    &[
                        ("content-type", "application/json"),
                        ("cache-control", "no-cache"),
                    ],
                    filters("Vale"),
                )
                .await
        })
    };
    eventually("the miss to wait on the refresh", || {
        proxy.proxy.flights.waiting() == 1
    })
    .await;
    gate.open();
    let miss = miss.await.unwrap();
    assert_eq!(miss.status, StatusCode::OK);
    assert!(
        miss.header("cache-status").contains("collapsed"),
        "{}",
        miss.header("cache-status")
    );
    assert_eq!(serial(&miss), 2, "the refresh's answer");
    assert_eq!(
        origin.total(),
        2,
        "one upstream request for the refresh and the miss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_during_a_refresh_counts_the_rest_as_cancelled_not_done() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "[cache]\nrefresh_concurrency = 2\n").await;
    let client = Client::new();
    for i in 0..20 {
        client
            .get(&proxy.url(&format!("/api/report?page={i}")))
            .await;
    }
    let gate = Gate::new();
    origin.on("/api/report", Behaviour::new().gate(&gate));
    let accepted = refresh(&proxy, "").await;
    assert_eq!(accepted.json()["keys_scheduled"], 20);
    origin.wait_for_total(22).await;
    assert_eq!(refresh_stats(&proxy).running, 2);
    assert_eq!(refresh_stats(&proxy).queued, 18);

    let cleared = Client::new()
        .send(Method::POST, &proxy.url("/api/cache/clear"), &[], "")
        .await;
    assert_eq!(cleared.status, StatusCode::OK);
    gate.open();
    eventually("the refresh to wind down", || {
        let figures = refresh_stats(&proxy);
        figures.running == 0 && figures.queued == 0
    })
    .await;
    let figures = refresh_stats(&proxy);
    assert_eq!(figures.scheduled, 20);
    assert_eq!(
        figures.done, 0,
        "nothing refreshed survived the clear: {figures:?}"
    );
    assert_eq!(figures.cancelled, 20, "{figures:?}");
    assert_eq!(figures.failed, 0, "{figures:?}");
    assert_eq!(
        origin.total(),
        22,
        "the queued refreshes never reached the upstream"
    );
    assert_eq!(proxy.proxy.store.len(), 0);
}
