//! Upstream faults: an unreachable, slow, truncating, stalling or
//! non-HTTP upstream gives the client a JSON error with the right status and
//! leaves nothing in the cache; oversized request bodies never leave the proxy.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Method, StatusCode};
use support::{
    closed_port_url, raw_request, spawn_proxy, Behaviour, Client, Gate, Origin, RawOrigin, Step,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_json_error() {
    let proxy = spawn_proxy(&closed_port_url().await, "").await;
    let client = Client::new();

    let cached = client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    let bypass = client
        .send(Method::PUT, &proxy.url("/api/metrics"), &[], "{}")
        .await;

    for reply in [&cached, &bypass] {
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            reply.error_message(),
            "upstream unreachable",
            "short and stable, naming neither the upstream nor the OS error"
        );
        assert_eq!(reply.header("x-request-id").len(), 24);
        assert!(
            reply.headers["cache-status"]
                .to_str()
                .unwrap()
                .contains("detail=error"),
            "the proxy's own error answers carry Cache-Status"
        );
    }
    assert_eq!(cached.x_cache(), "MISS");
    assert_eq!(bypass.x_cache(), "BYPASS");
    assert_eq!(proxy.proxy.store.len(), 0);
    assert!(proxy.stats().await["upstream_errors"].as_u64().unwrap() >= 2);
}

#[tokio::test]
async fn a_slow_upstream_is_a_504_json_error() {
    let origin = Origin::start().await;
    let never = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&never));
    let proxy = spawn_proxy(&origin.url(), "upstream_timeout = \"300ms\"\n").await;
    let client = Client::new();

    let cached = client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    let bypass = client
        .send(Method::PUT, &proxy.url("/api/metrics"), &[], "{}")
        .await;

    for reply in [&cached, &bypass] {
        assert_eq!(
            reply.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{}",
            reply.text()
        );
        assert_eq!(reply.error_message(), "upstream timed out");
    }
    assert_eq!(origin.count("/api/metrics"), 2);
    assert_eq!(proxy.proxy.store.len(), 0);
    assert!(
        proxy.proxy.flights.is_empty(),
        "a timed-out fill leaves no flight behind"
    );
}

/// Asks twice for a cacheable answer the origin cuts short: each time the
/// client sees a 502 (or a failed read), never a short body presented as
/// complete, and the origin is asked again (nothing was stored).
async fn ask_twice_for_a_cut_answer(proxy: &support::ProxyHandle, origin: &RawOrigin) {
    let client = Client::new();
    for round in 1..=2 {
        let result = client
            .try_send(
                Method::POST,
                &proxy.url("/api/metrics"),
                &[],
                r#"{"org":"Vale"}"#,
            )
            .await;
        // A failed read is also honest; a 200 with a short body is not.
        if let Ok(reply) = result {
            assert_eq!(
                reply.status,
                StatusCode::BAD_GATEWAY,
                "round {round}: {}",
                reply.text()
            );
            reply.error_message();
        }
        assert_eq!(origin.served(), round, "round {round}: nothing was stored");
    }
}

#[tokio::test]
async fn a_truncated_body_is_never_stored_nor_presented_as_complete() {
    let origin = RawOrigin::truncated().await;
    let proxy = spawn_proxy(&origin.url(), "").await;

    ask_twice_for_a_cut_answer(&proxy, &origin).await;
    assert_eq!(proxy.proxy.store.len(), 0);
}

#[tokio::test]
async fn a_truncated_pass_through_body_fails_the_client_read() {
    let origin = RawOrigin::truncated().await;
    let proxy = spawn_proxy(&origin.url(), "").await;

    let result = Client::new()
        .try_send(Method::PUT, &proxy.url("/api/things/1"), &[], "{}")
        .await;
    if let Ok(reply) = result {
        assert_ne!(
            reply.status,
            StatusCode::OK,
            "a 200 with {} of 1000 bytes must not look complete",
            reply.body.len()
        );
    }
    assert_eq!(origin.served(), 1);
}

#[tokio::test]
async fn a_body_that_stalls_is_an_error_and_never_stored() {
    let origin = RawOrigin::start(vec![
        Step::Write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"partial\":".to_vec()),
        Step::Hang,
    ])
    .await;
    let proxy = spawn_proxy(&origin.url(), "upstream_timeout = \"300ms\"\n").await;
    let client = Client::new();

    for round in 1..=2 {
        let result = client
            .try_send(
                Method::POST,
                &proxy.url("/api/metrics"),
                &[],
                r#"{"org":"Vale"}"#,
            )
            .await;
        if let Ok(reply) = result {
            assert!(
                reply.status.is_server_error(),
                "round {round}: {} {}",
                reply.status,
                reply.text()
            );
            reply.error_message();
        }
        assert_eq!(origin.served(), round, "round {round}: nothing was stored");
    }
    assert_eq!(proxy.proxy.store.len(), 0);
    assert!(proxy.proxy.flights.is_empty());
}

#[tokio::test]
async fn a_body_silent_past_upstream_timeout_is_a_504() {
    let origin = RawOrigin::start(vec![
        Step::Write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"partial\":".to_vec()),
        Step::Hang,
    ])
    .await;
    let proxy = spawn_proxy(&origin.url(), "upstream_timeout = \"300ms\"\n").await;

    let reply = Client::new()
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    reply.error_message();
}

#[tokio::test]
async fn garbage_from_the_upstream_is_a_502_json_error() {
    let origin = RawOrigin::garbage().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();

    let cached = client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    let bypass = client
        .send(Method::DELETE, &proxy.url("/api/things/1"), &[], "")
        .await;

    for reply in [&cached, &bypass] {
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
        reply.error_message();
    }
    assert_eq!(proxy.proxy.store.len(), 0);
}

#[tokio::test]
async fn a_request_body_above_max_body_bytes_is_a_413_and_never_forwarded() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "max_body_bytes = \"1KiB\"\n").await;
    let client = Client::new();
    let big = format!(r#"{{"org":"{}"}}"#, "V".repeat(4096));

    let cached = client.post(&proxy.url("/api/metrics"), &big).await;
    let bypass = client
        .send(Method::PUT, &proxy.url("/api/metrics"), &[], big.clone())
        .await;
    for reply in [&cached, &bypass] {
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        let message = reply.error_message();
        assert!(
            message.contains("1024"),
            "the message names the limit: {message}"
        );
    }

    let within = client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    assert_eq!(within.status, 200, "bodies within the limit still pass");
    assert_eq!(
        origin.total(),
        1,
        "the oversized requests never reached the origin"
    );
}

/// `Transfer-Encoding: chunked` request of `len` bytes, in 512-byte chunks.
fn chunked_request(method: &str, len: usize) -> Vec<u8> {
    let mut request = format!(
        "{method} /api/metrics HTTP/1.1\r\nHost: dash.example\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..len / 512 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b' '; 512]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

#[tokio::test]
async fn a_chunked_request_body_above_max_body_bytes_is_a_413() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "max_body_bytes = \"1KiB\"\n").await;

    let reply = raw_request(proxy.addr, &chunked_request("POST", 4096)).await;
    assert_eq!(
        reply.status,
        413,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        origin.total(),
        0,
        "a cacheable request is read whole before forwarding"
    );
}

#[tokio::test]
async fn a_chunked_pass_through_body_above_max_body_bytes_is_a_413() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "max_body_bytes = \"1KiB\"\n").await;

    let reply = raw_request(proxy.addr, &chunked_request("PUT", 4096)).await;
    assert_eq!(
        reply.status,
        413,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_retried_once_on_a_new_one() {
    // Each connection answers one request as keep-alive, then reads the
    // next one and closes without answering, as a server does when it drops
    // an idle connection just as the proxy reuses it.
    let answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}".to_vec();
    let origin = RawOrigin::start(vec![Step::Write(answer), Step::ReadRequest]).await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();

    let first = client
        .post(&proxy.url("/api/metrics"), r#"{"org":"a"}"#)
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let second = client
        .post(&proxy.url("/api/metrics"), r#"{"org":"b"}"#)
        .await;

    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    assert_eq!(second.text(), r#"{"ok":true}"#);
    assert_eq!(second.x_cache(), "MISS");
    // The second request's answer came from a second connection.
    assert_eq!(origin.served(), 2);
    let stats = proxy.stats().await;
    assert_eq!(stats["upstream_errors"], 0);
}

#[tokio::test]
async fn a_connection_closed_on_every_try_is_a_502_after_one_retry() {
    // Every connection reads the request and closes: a retry cannot help.
    let origin = RawOrigin::start(vec![]).await;
    let proxy = spawn_proxy(&origin.url(), "").await;

    let reply = Client::new()
        .post(&proxy.url("/api/metrics"), r#"{"org":"a"}"#)
        .await;

    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(origin.served(), 2, "one try and one retry, no more");
}

// ------------------------------------------------------------ issue 4 faults

/// A listener whose accept queue is full and never drained: a new
/// connection to it gets no SYN-ACK, as with a host that drops packets.
async fn unaccepting_listener() -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut parked = Vec::new();
    // Fill the accept queue; connections past it stay pending.
    for _ in 0..8 {
        match tokio::time::timeout(
            std::time::Duration::from_millis(100),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => parked.push(stream),
            _ => break,
        }
    }
    (listener, parked)
}

#[tokio::test]
async fn a_connect_timeout_is_a_504_json_error() {
    let (listener, _parked) = unaccepting_listener().await;
    let url = format!("http://{}", listener.local_addr().unwrap());
    let proxy = spawn_proxy(&url, "connect_timeout = \"300ms\"\n").await;

    let reply = Client::new()
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    assert_eq!(reply.error_message(), "upstream connect timed out");
    assert_eq!(proxy.proxy.store.len(), 0);
}

#[tokio::test]
async fn a_reset_mid_body_is_never_stored_nor_presented_as_complete() {
    let origin = RawOrigin::start(vec![
        Step::Write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"partial\":".to_vec()),
        Step::Sleep(std::time::Duration::from_millis(50)),
        Step::Reset,
    ])
    .await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();

    ask_twice_for_a_cut_answer(&proxy, &origin).await;
    let streamed = client
        .try_send(Method::PUT, &proxy.url("/api/things/1"), &[], "{}")
        .await;
    if let Ok(reply) = streamed {
        assert_ne!(
            reply.status,
            StatusCode::OK,
            "a cut stream must not look complete"
        );
    }
    assert_eq!(proxy.proxy.store.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_storm_is_passed_through_and_never_stored() {
    let origin = Origin::start().await;
    origin.on(
        "/api/metrics",
        Behaviour::new()
            .status(500)
            .body(r#"{"detail":"warehouse down"}"#),
    );
    let proxy = spawn_proxy(&origin.url(), "").await;

    let mut storm = tokio::task::JoinSet::new();
    for i in 0..40 {
        let url = proxy.url("/api/metrics");
        storm.spawn(async move {
            Client::new()
                .post(&url, &format!(r#"{{"org":"org-{}"}}"#, i % 10))
                .await
        });
    }
    while let Some(reply) = storm.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            reply.text(),
            r#"{"detail":"warehouse down"}"#,
            "the upstream's own answer"
        );
        assert_eq!(reply.x_cache(), "MISS");
    }
    assert_eq!(proxy.proxy.store.len(), 0, "no 5xx was stored");
    assert!(
        origin.count("/api/metrics") >= 10,
        "each key asked the upstream"
    );
    let again = Client::new()
        .post(&proxy.url("/api/metrics"), r#"{"org":"org-1"}"#)
        .await;
    assert_eq!(
        again.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "asked again, not cached"
    );
}

#[tokio::test]
async fn pooled_connections_the_origin_closed_are_not_used() {
    // Keep-alive answers, then the origin closes each connection after
    // 50 ms idle (as a server's keep-alive timeout does).
    let origin = RawOrigin::start(vec![
        Step::Write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                .to_vec(),
        ),
        Step::Sleep(std::time::Duration::from_millis(50)),
    ])
    .await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();
    for round in 1..=5 {
        let reply = client
            .send(Method::PUT, &proxy.url("/api/things/1"), &[], "{}")
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "round {round}: {}",
            reply.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    assert_eq!(origin.served(), 5, "one fresh connection per request");
}

// ------------------------------------------------------------ idle keep-alive

/// A keep-alive answer; the connection stays open for the next request.
const KEEP_ALIVE_ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";

/// Answers the first request on each connection, then reads the next one
/// and closes without answering: what a backend whose keep-alive timeout
/// fires as the proxy reuses the connection looks like, without a race.
async fn closes_on_reuse() -> RawOrigin {
    RawOrigin::start(vec![
        Step::Write(KEEP_ALIVE_ANSWER.to_vec()),
        Step::ReadRequest,
    ])
    .await
}

const UNCACHED_ROUTE: &str =
    "[[route]]\nname = \"things\"\npath = \"/api/things/*\"\ncache = false\n";

#[tokio::test]
async fn idempotent_pass_through_requests_are_retried_once_on_a_new_connection() {
    for method in [Method::PUT, Method::DELETE, Method::OPTIONS, Method::GET] {
        let origin = closes_on_reuse().await;
        let proxy = spawn_proxy(&origin.url(), UNCACHED_ROUTE).await;
        let client = Client::new();
        let url = proxy.url("/api/things/1");

        let first = client.send(method.clone(), &url, &[], "{}").await;
        assert_eq!(first.status, StatusCode::OK, "{method}");
        let second = client.send(method.clone(), &url, &[], "{}").await;

        assert_eq!(second.status, StatusCode::OK, "{method}: {}", second.text());
        assert_eq!(second.text(), r#"{"ok":true}"#);
        assert_eq!(second.x_cache(), "BYPASS");
        assert_eq!(
            origin.served(),
            2,
            "{method}: answered on a second connection"
        );
        assert_eq!(proxy.stats().await["upstream_errors"], 0);
    }
}

#[tokio::test]
async fn a_large_put_body_is_buffered_and_sent_again_on_the_retry() {
    let dropping = closes_on_reuse().await;
    let proxy = spawn_proxy(&dropping.url(), UNCACHED_ROUTE).await;
    let client = Client::new();
    let big = "x".repeat(100_000);
    for _ in 0..2 {
        let reply = client
            .send(Method::PUT, &proxy.url("/api/things/1"), &[], big.clone())
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(dropping.served(), 2);
}

#[tokio::test]
async fn a_non_idempotent_pass_through_is_not_sent_twice() {
    let origin = closes_on_reuse().await;
    let proxy = spawn_proxy(&origin.url(), UNCACHED_ROUTE).await;
    let client = Client::new();
    let url = proxy.url("/api/things/1");

    for method in [Method::POST, Method::PATCH] {
        let first = client.send(method.clone(), &url, &[], "{}").await;
        assert_eq!(first.status, StatusCode::OK, "{method}");
        let second = client.send(method.clone(), &url, &[], "{}").await;
        assert_eq!(
            second.status,
            StatusCode::BAD_GATEWAY,
            "{method}: the upstream may have acted on it; not sent again"
        );
        assert_eq!(second.error_message(), "upstream request failed");
    }
    assert_eq!(
        origin.served(),
        2,
        "one connection per first request, no retry"
    );
}

/// An origin that holds each connection's first answer until `hold`
/// connections are open, then answers it keep-alive, reads the next
/// request on it and closes without answering.
struct DroppingPool {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl DroppingPool {
    async fn start(hold: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let barrier = Arc::new(tokio::sync::Barrier::new(hold));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let nth = counter.fetch_add(1, Ordering::SeqCst);
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    if read_head(&mut stream).await.is_none() {
                        return;
                    }
                    if nth < hold {
                        barrier.wait().await;
                        stream.write_all(KEEP_ALIVE_ANSWER).await.unwrap();
                        // The next request on this connection is dropped.
                        let _ = read_head(&mut stream).await;
                    } else {
                        let _ = stream.write_all(KEEP_ALIVE_ANSWER).await;
                        let _ = read_head(&mut stream).await;
                    }
                });
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }
}

impl Drop for DroppingPool {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one bodiless request head; `None` at EOF.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<()> {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1024];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&byte[..n]);
    }
    Some(())
}

#[tokio::test]
async fn the_retry_opens_a_new_connection_rather_than_take_another_pooled_one() {
    let origin = DroppingPool::start(2).await;
    let proxy = spawn_proxy(&format!("http://{}", origin.addr), UNCACHED_ROUTE).await;
    let client = Client::new();
    let url = proxy.url("/api/things/1");

    // Two requests at once leave two pooled connections, both of which the
    // origin drops on reuse.
    let other = Client::new();
    let (a, b) = tokio::join!(client.get(&url), other.get(&url));
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 2);

    let reply = client.get(&url).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        origin.accepted.load(Ordering::SeqCst),
        3,
        "the retry went to a third, new connection"
    );
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_upstream_idle_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_head(&mut stream).await.unwrap();
        stream.write_all(KEEP_ALIVE_ANSWER).await.unwrap();
        // Keeps the connection; waits for the proxy to close it.
        let mut rest = [0u8; 64];
        let eof = matches!(stream.read(&mut rest).await, Ok(0) | Err(_));
        let _ = closed_tx.send(eof);
    });
    let proxy = spawn_proxy(
        &url,
        &format!("upstream_idle_timeout = \"200ms\"\n{UNCACHED_ROUTE}"),
    )
    .await;

    let reply = Client::new().get(&proxy.url("/api/things/1")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let closed = tokio::time::timeout(support::PATIENCE, closed_rx)
        .await
        .expect("the proxy closed the idle connection")
        .unwrap();
    assert!(closed, "closed, with no second request on it");
}
