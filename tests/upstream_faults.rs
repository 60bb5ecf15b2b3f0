//! Upstream faults: an unreachable, slow, truncating, stalling or
//! non-HTTP upstream gives the client a JSON error with the right status and
//! leaves nothing in the cache; oversized request bodies never leave the proxy.

mod support;

use http::{Method, StatusCode};
use support::{
    closed_port_url, raw_request, spawn_proxy, Behaviour, Client, Gate, Origin, RawOrigin, Step,
};

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
        let message = reply.error_message();
        assert!(message.contains("unreachable"), "{message}");
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
        reply.error_message();
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
    let message = reply.error_message();
    assert!(message.contains("did not accept a connection"), "{message}");
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
