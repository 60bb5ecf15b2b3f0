//! Protecting the warehouse: at most `upstream_concurrency` requests reach
//! the upstream at once (fills and pass-throughs alike), at most
//! `upstream_queue` callers wait for a slot, for at most
//! `upstream_queue_timeout`; the rest get 503 JSON with `Retry-After`, or
//! the stale entry when the key has one.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::{spawn_proxy, Behaviour, Client, Gate, Origin};

const LIMITS: &str =
    "upstream_concurrency = 2\nupstream_queue = 1\nupstream_queue_timeout = \"300ms\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_and_its_queue_callers_get_503_with_retry_after() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    origin.on("/api/things/1", Behaviour::new().gate(&gate));
    let proxy = spawn_proxy(&origin.url(), LIMITS).await;

    // A fill and a pass-through take the two slots.
    let fill = {
        let url = proxy.url("/api/metrics");
        tokio::spawn(async move { Client::new().post(&url, r#"{"org":"Vale"}"#).await })
    };
    let pass = {
        let url = proxy.url("/api/things/1");
        tokio::spawn(async move { Client::new().send(Method::PUT, &url, &[], "{}").await })
    };
    origin.wait_for_total(2).await;

    // The third waits in the queue; the fourth finds it full.
    let queued = {
        let url = proxy.url("/api/metrics");
        tokio::spawn(async move { Client::new().post(&url, r#"{"org":"Acme"}"#).await })
    };
    support::eventually("a caller in the queue", || proxy.proxy.flights.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = Client::new()
        .post(&proxy.url("/api/metrics"), r#"{"org":"Globex"}"#)
        .await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert_eq!(refused.header("retry-after"), "1");
    let message = refused.error_message();
    assert!(message.contains("busy"), "{message}");

    let timed_out = queued.await.unwrap();
    assert_eq!(
        timed_out.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "queue wait is bounded"
    );
    timed_out.error_message();
    assert_eq!(origin.total(), 2, "the upstream never saw more than two");

    gate.open();
    assert_eq!(fill.await.unwrap().status, StatusCode::OK);
    assert_eq!(pass.await.unwrap().status, StatusCode::OK);
    let after = Client::new()
        .post(&proxy.url("/api/metrics"), r#"{"org":"Acme"}"#)
        .await;
    assert_eq!(after.status, StatusCode::OK, "slots are returned");
    assert_eq!(proxy.proxy.store.len(), 2, "no 503 was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_upstream_is_answered_with_the_stale_entry() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(
        &origin.url(),
        &format!("{LIMITS}[cache]\nttl = \"200ms\"\n"),
    )
    .await;
    let client = Client::new();
    client.post(&proxy.url("/api/actions"), "{}").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    let mut busy = Vec::new();
    for org in ["a", "b"] {
        let url = proxy.url("/api/metrics");
        let body = format!(r#"{{"org":"{org}"}}"#);
        busy.push(tokio::spawn(async move {
            Client::new().post(&url, &body).await
        }));
    }
    origin.wait_for_total(3).await;
    let stale = client.post(&proxy.url("/api/actions"), "{}").await;
    assert_eq!(stale.status, StatusCode::OK, "{}", stale.text());
    assert_eq!(stale.x_cache(), "STALE");
    assert!(stale
        .header("cache-status")
        .ends_with("detail=upstream-busy"));
    gate.open();
    for reply in busy {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
}
