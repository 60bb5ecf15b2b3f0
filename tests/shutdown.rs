//! Graceful shutdown: the listener closes at once, requests in flight still
//! complete, and draining is bounded.

mod support;

use std::net::SocketAddr;

use http::Method;
use support::{eventually, spawn_proxy, Behaviour, Client, Gate, Origin, PATIENCE};
use tokio::net::TcpStream;

/// Waits until connecting to `addr` is refused.
async fn wait_until_refused(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn requests_in_flight_complete_after_shutdown_starts() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    origin.on("/api/things/1", Behaviour::new().gate(&gate));
    let mut proxy = spawn_proxy(&origin.url(), "").await;

    let cached = {
        let url = proxy.url("/api/metrics");
        tokio::spawn(async move { Client::new().post(&url, r#"{"org":"Vale"}"#).await })
    };
    let streamed = {
        let url = proxy.url("/api/things/1");
        tokio::spawn(async move { Client::new().send(Method::PUT, &url, &[], "{}").await })
    };
    origin.wait_for_total(2).await;

    let stopped = proxy.shutdown();
    wait_until_refused(proxy.addr).await;
    assert!(
        !stopped.is_finished(),
        "run() waits for the requests in flight"
    );
    gate.open();

    let cached = cached.await.unwrap();
    let streamed = streamed.await.unwrap();
    assert_eq!((cached.status.as_u16(), cached.x_cache()), (200, "MISS"));
    assert_eq!(cached.json()["request_body"], r#"{"org":"Vale"}"#);
    assert_eq!(
        (streamed.status.as_u16(), streamed.x_cache()),
        (200, "BYPASS")
    );
    assert_eq!(streamed.json()["method"], "PUT");

    tokio::time::timeout(PATIENCE, stopped)
        .await
        .expect("run() returns once the requests are done")
        .unwrap();
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_hold_up_shutdown() {
    let origin = Origin::start().await;
    let mut proxy = spawn_proxy(&origin.url(), "shutdown_timeout = \"1h\"\n").await;
    let client = Client::new();
    assert_eq!(
        client.get(&proxy.url("/api/filter-options")).await.status,
        200
    );

    let stopped = proxy.shutdown();
    tokio::time::timeout(PATIENCE, stopped)
        .await
        .expect("an idle pooled connection must not make shutdown wait for shutdown_timeout")
        .unwrap();
    assert!(TcpStream::connect(proxy.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_timeout_bounds_a_request_that_never_finishes() {
    let origin = Origin::start().await;
    let never = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&never));
    let mut proxy = spawn_proxy(&origin.url(), "shutdown_timeout = \"300ms\"\n").await;

    let url = proxy.url("/api/metrics");
    let _stuck =
        tokio::spawn(async move { Client::new().try_send(Method::POST, &url, &[], "{}").await });
    origin.wait_for_total(1).await;

    let stopped = proxy.shutdown();
    tokio::time::timeout(PATIENCE, stopped)
        .await
        .expect("run() gives up after shutdown_timeout")
        .unwrap();
    eventually("the listener to close", || {
        std::net::TcpStream::connect(proxy.addr).is_err()
    })
    .await;
}
