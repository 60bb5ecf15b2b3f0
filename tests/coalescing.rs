//! Coalescing: concurrent misses for one key make one upstream request,
//! whatever happens to the client that started it.
//!
//! The origin holds its answer behind a [`Gate`] until the test has seen
//! every caller join the flight, so no test depends on timing.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::{
    eventually, spawn_proxy, Behaviour, Client, Gate, Origin, ProxyHandle, DASHBOARD_ROUTES,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const FILTERS: &str = r#"{"org":"Vale","period":"2024-Q1"}"#;

fn coalesced(proxy: &ProxyHandle) -> u64 {
    proxy.proxy.metrics.snapshot().coalesced
}

/// Starts `n` identical POSTs to `path`, each on its own connection.
fn post_many(proxy: &ProxyHandle, path: &str, n: usize) -> JoinSet<support::Reply> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let url = proxy.url(path);
        set.spawn(async move { Client::new().post(&url, FILTERS).await });
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_misses_make_one_upstream_request() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;

    let mut requests = post_many(&proxy, "/api/metrics", 200);
    eventually("199 callers to wait on the leader's fill", || {
        coalesced(&proxy) >= 199
    })
    .await;
    assert_eq!(origin.total(), 1, "only the leader reached the origin");
    assert_eq!(proxy.proxy.flights.len(), 1);
    gate.open();

    let mut bodies = Vec::new();
    while let Some(reply) = requests.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.x_cache(), "MISS");
        bodies.push(reply.body);
    }
    assert_eq!(bodies.len(), 200);
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "every caller got the same answer"
    );
    assert_eq!(origin.count("/api/metrics"), 1);

    let stats = proxy.stats().await;
    assert_eq!(stats["coalesced"], 199, "{stats}");
    assert_eq!(stats["upstream_requests"], 1, "{stats}");
    assert_eq!(stats["inflight"], 0, "{stats}");
    let after = Client::new()
        .post(&proxy.url("/api/metrics"), FILTERS)
        .await;
    assert_eq!(after.x_cache(), "HIT");
    assert_eq!(after.body, bodies[0]);
}

/// Sends a POST on a raw connection and returns the connection unread.
async fn start_raw_post(proxy: &ProxyHandle, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: dash.example\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{FILTERS}",
        FILTERS.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn a_leader_that_hangs_up_does_not_cancel_the_fill() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;

    let leader = start_raw_post(&proxy, "/api/metrics").await;
    origin.wait_for_total(1).await;
    drop(leader);
    // Give the proxy a moment to see the hang-up and drop the leader's request.
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.open();

    eventually("the detached fill to store the answer", || {
        proxy.proxy.store.len() == 1 && proxy.proxy.flights.is_empty()
    })
    .await;
    let later = Client::new()
        .post(&proxy.url("/api/metrics"), FILTERS)
        .await;
    assert_eq!(later.x_cache(), "HIT");
    assert_eq!(later.json()["request_body"], FILTERS);
    assert_eq!(origin.count("/api/metrics"), 1);
}

#[tokio::test]
async fn waiters_get_the_answer_when_the_leader_hangs_up() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;

    let leader = start_raw_post(&proxy, "/api/metrics").await;
    origin.wait_for_total(1).await;
    let mut waiters = post_many(&proxy, "/api/metrics", 3);
    eventually("3 waiters to join the flight", || coalesced(&proxy) >= 3).await;
    drop(leader);
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.open();

    while let Some(reply) = waiters.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["request_body"], FILTERS);
        assert!(
            reply.header("cache-status").contains("collapsed"),
            "{}",
            reply.header("cache-status")
        );
    }
    assert_eq!(origin.count("/api/metrics"), 1);
    let later = Client::new()
        .post(&proxy.url("/api/metrics"), FILTERS)
        .await;
    assert_eq!(later.x_cache(), "HIT");
    assert_eq!(origin.count("/api/metrics"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_error_is_shared_by_its_waiters_and_never_stored() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().status(500).gate(&gate));
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;

    let mut requests = post_many(&proxy, "/api/metrics", 20);
    eventually("19 callers to wait on the leader's fill", || {
        coalesced(&proxy) >= 19
    })
    .await;
    gate.open();

    let mut bodies = Vec::new();
    while let Some(reply) = requests.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 500);
        bodies.push(reply.body);
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]));
    assert_eq!(
        origin.count("/api/metrics"),
        1,
        "one upstream request for 20 callers"
    );
    assert_eq!(proxy.proxy.store.len(), 0);

    let next = Client::new()
        .post(&proxy.url("/api/metrics"), FILTERS)
        .await;
    assert_eq!(next.status, 500);
    assert_eq!(
        origin.count("/api/metrics"),
        2,
        "an error is not stored: the next request goes upstream"
    );
}

#[tokio::test]
async fn waiters_of_an_answer_too_large_to_store_get_it_whole() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    let big = Bytes::from((0..64 * 1024).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
    origin.on(
        "/api/export",
        Behaviour::new().body(big.clone()).gate(&gate),
    );
    let proxy = spawn_proxy(&origin.url(), "[cache]\nmax_object_bytes = \"16KiB\"\n").await;

    let mut requests = post_many(&proxy, "/api/export", 5);
    eventually("4 callers to wait on the leader's fill", || {
        coalesced(&proxy) >= 4
    })
    .await;
    gate.open();

    while let Some(reply) = requests.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.body == big, "every caller gets the whole answer");
    }
    assert_eq!(proxy.proxy.store.len(), 0);
    let asked = origin.count("/api/export");
    assert!(
        (1..=5).contains(&asked),
        "at most one upstream request per caller: {asked}"
    );
}

fn serial(reply: &support::Reply) -> u64 {
    reply
        .header("x-origin-serial")
        .parse()
        .expect("origin answers carry a serial")
}

#[tokio::test]
async fn a_private_answer_is_never_shared_with_waiters() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on(
        "/api/me",
        Behaviour::new()
            .header("cache-control", "private")
            .header("set-cookie", "session=for-the-leader-only")
            .gate(&gate),
    );
    let proxy = spawn_proxy(&origin.url(), "").await;

    let mut requests = post_many(&proxy, "/api/me", 3);
    eventually("2 callers to wait on the leader's fill", || {
        coalesced(&proxy) >= 2
    })
    .await;
    gate.open();

    let mut serials = Vec::new();
    while let Some(reply) = requests.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 200);
        serials.push(serial(&reply));
    }
    serials.sort_unstable();
    serials.dedup();
    assert_eq!(
        serials.len(),
        3,
        "each caller must get its own upstream answer, not the leader's private one"
    );
}

#[tokio::test]
async fn a_conditional_leaders_304_is_never_shared_with_waiters() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on(
        "/api/filter-options",
        Behaviour::new().etag("\"v1\"").gate(&gate),
    );
    let proxy = spawn_proxy(&origin.url(), "").await;
    let url = proxy.url("/api/filter-options");

    let leader = {
        let url = url.clone();
        tokio::spawn(async move {
            Client::new()
                .send(http::Method::GET, &url, &[("if-none-match", "\"v1\"")], "")
                .await
        })
    };
    origin.wait_for_total(1).await;
    let waiter = tokio::spawn(async move { Client::new().get(&url).await });
    eventually("the waiter to join the flight", || coalesced(&proxy) >= 1).await;
    gate.open();

    let leader = leader.await.unwrap();
    let waiter = waiter.await.unwrap();
    assert_eq!(leader.status, 304, "the revalidating browser gets its 304");
    assert_eq!(waiter.status, 200, "a plain GET must get the full answer");
    assert!(!waiter.body.is_empty());
}
