//! Coalescing under faults: waiters on a failed fill get its error (or the
//! stale entry), never one upstream request each; waiting is bounded by
//! `lock_timeout`, after which a waiter gets stale or 504, still without
//! asking the upstream; a waiter whose client hangs up stops waiting
//! without disturbing the others.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::{eventually, spawn_proxy, Behaviour, Client, Gate, Origin, ProxyHandle};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const BODY: &str = r#"{"org":"Vale"}"#;

fn post_many(proxy: &ProxyHandle, n: usize) -> JoinSet<support::Reply> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let url = proxy.url("/api/metrics");
        set.spawn(async move { Client::new().post(&url, BODY).await });
    }
    set
}

/// The first caller, whose request starts the fill.
fn spawn_leader(proxy: &ProxyHandle) -> tokio::task::JoinHandle<support::Reply> {
    let url = proxy.url("/api/metrics");
    tokio::spawn(async move { Client::new().post(&url, BODY).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_a_timed_out_fill_share_its_error() {
    let origin = Origin::start().await;
    let never = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&never));
    let proxy = spawn_proxy(&origin.url(), "upstream_timeout = \"500ms\"\n").await;

    let mut replies = post_many(&proxy, 6);
    while let Some(reply) = replies.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{}",
            reply.text()
        );
        reply.error_message();
    }
    assert_eq!(
        origin.count("/api/metrics"),
        1,
        "one upstream request for six callers"
    );
    assert_eq!(proxy.proxy.store.len(), 0, "the error was not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_past_lock_timeout_gets_504_without_asking_the_upstream() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    let proxy = spawn_proxy(&origin.url(), "[cache]\nlock_timeout = \"200ms\"\n").await;

    let leader = spawn_leader(&proxy);
    origin.wait_for_total(1).await;
    let mut waiters = post_many(&proxy, 4);
    while let Some(reply) = waiters.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{}",
            reply.text()
        );
        let message = reply.error_message();
        assert!(message.contains("lock_timeout"), "{message}");
    }
    assert_eq!(
        origin.count("/api/metrics"),
        1,
        "no stampede after the timeout"
    );

    gate.open();
    let leader = leader.await.unwrap();
    assert_eq!(
        leader.status,
        StatusCode::OK,
        "the leader still gets its answer"
    );
    let next = Client::new().post(&proxy.url("/api/metrics"), BODY).await;
    assert_eq!(next.x_cache(), "HIT", "and the fill still stored it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_past_lock_timeout_gets_the_stale_entry_when_there_is_one() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(
        &origin.url(),
        "[cache]\nttl = \"200ms\"\nlock_timeout = \"200ms\"\n",
    )
    .await;
    let first = Client::new().post(&proxy.url("/api/metrics"), BODY).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    let leader = spawn_leader(&proxy);
    origin.wait_for_total(2).await;
    let mut waiters = post_many(&proxy, 3);
    while let Some(reply) = waiters.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.x_cache(), "STALE");
        assert_eq!(reply.body, first.body);
        let cache_status = reply.header("cache-status");
        assert!(
            cache_status.ends_with("detail=lock-timeout"),
            "{cache_status}"
        );
    }
    assert_eq!(origin.total(), 2);
    gate.open();
    assert_eq!(leader.await.unwrap().x_cache(), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_hangs_up_stops_waiting_without_disturbing_the_others() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    let proxy = spawn_proxy(&origin.url(), "").await;

    let leader = spawn_leader(&proxy);
    origin.wait_for_total(1).await;
    let mut quitter = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!(
        "POST /api/metrics HTTP/1.1\r\nHost: dash.example\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    quitter.write_all(request.as_bytes()).await.unwrap();
    let mut stayers = post_many(&proxy, 2);
    eventually("three waiters", || proxy.proxy.flights.waiting() == 3).await;

    drop(quitter);
    eventually("the quitter to stop waiting", || {
        proxy.proxy.flights.waiting() == 2
    })
    .await;

    gate.open();
    while let Some(reply) = stayers.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(reply.header("cache-status").contains("collapsed"));
    }
    assert_eq!(leader.await.unwrap().status, StatusCode::OK);
    assert_eq!(origin.count("/api/metrics"), 1);
}
