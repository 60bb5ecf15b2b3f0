//! Limits against abusive clients: oversized heads (431), slow heads
//! (slowloris), idle keep-alive connections, silent connections, the
//! connection cap, and HTTP/2's bound on concurrent streams.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    raw_request, read_until_closed, spawn_server, Behaviour, Client, Gate, Origin, ServerHandle,
    DASHBOARD_ROUTES, PATIENCE,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn proxy_with(origin: &Origin, limits: &str) -> ServerHandle {
    spawn_server(&origin.url(), &format!("{limits}\n{DASHBOARD_ROUTES}")).await
}

/// A GET whose head carries one `x-padding` header of `padding` bytes.
fn padded_request(padding: usize) -> Vec<u8> {
    format!(
        "GET /api/filter-options HTTP/1.1\r\nHost: proxy\r\nx-padding: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(padding)
    )
    .into_bytes()
}

/// An HTTP/1.1 connection driven by hyper's client; the returned handle
/// resolves when the server closes the connection.
async fn http1_connection(
    proxy: &ServerHandle,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    (sender, tokio::spawn(connection))
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> Result<http::StatusCode, hyper::Error> {
    let request = Request::get(path)
        .header("host", "proxy")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("an answer in time")?;
    Ok(response.status())
}

#[tokio::test]
async fn a_request_head_over_max_header_bytes_gets_431() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "max_header_bytes = \"16KiB\"").await;

    let small = raw_request(proxy.addr, &padded_request(8 * 1024)).await;
    assert_eq!(small.status, 200, "a head under the limit is served");
    let large = raw_request(proxy.addr, &padded_request(20 * 1024)).await;
    assert_eq!(large.status, 431, "a head over the limit is refused");
    // The limit holds to the byte, however the head was read: each of
    // these arrives in one write, which the express lane reads up to
    // 32 KiB of before it hands the head to hyper.
    let just_under = padded_request(16 * 1024 - 200);
    let just_over = padded_request(16 * 1024);
    assert!(just_under.len() < 16 * 1024 && just_over.len() > 16 * 1024);
    assert_eq!(raw_request(proxy.addr, &just_under).await.status, 200);
    assert_eq!(raw_request(proxy.addr, &just_over).await.status, 431);
    assert_eq!(
        origin.count("/api/filter-options"),
        1,
        "the refused requests never went upstream"
    );
}

#[tokio::test]
async fn the_default_header_limit_is_64_kib() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "").await;

    let under = raw_request(proxy.addr, &padded_request(60 * 1024)).await;
    assert_eq!(under.status, 200);
    let over = raw_request(proxy.addr, &padded_request(70 * 1024)).await;
    assert_eq!(over.status, 431);
}

#[tokio::test]
async fn http2_answers_431_to_an_oversized_header_list() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "max_header_bytes = \"16KiB\"").await;
    let client = Client::http2();
    let padding = "a".repeat(20 * 1024);

    // h2 answers 431 itself (RFC 9113 §10.5.1) and resets the stream.
    let refused = client
        .send(
            Method::GET,
            &proxy.url("/api/filter-options"),
            &[("x-padding", &padding)],
            Bytes::new(),
        )
        .await;
    assert_eq!(refused.status.as_u16(), 431);
    assert_eq!(origin.total(), 0, "nothing reached the upstream");
    let fine = client.get(&proxy.url("/api/filter-options")).await;
    assert_eq!(
        fine.status.as_u16(),
        200,
        "the connection still serves small heads"
    );
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "header_read_timeout = \"300ms\"").await;

    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One header byte every 100 ms: the head would take a minute to finish.
    let drip = tokio::spawn(async move {
        writer
            .write_all(b"GET /api/filter-options HTTP/1.1\r\nHost: proxy\r\n")
            .await?;
        for _ in 0..600 {
            writer.write_all(b"x").await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<_, std::io::Error>(())
    });

    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match tokio::io::AsyncReadExt::read(&mut reader, &mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow client was not cut off");
    assert!(
        !received.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(origin.total(), 0);
    drip.abort();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "header_read_timeout = \"1s\"").await;

    let (mut sender, connection) = http1_connection(&proxy).await;
    assert_eq!(get(&mut sender, "/api/filter-options").await.unwrap(), 200);
    assert_eq!(
        get(&mut sender, "/api/filter-options").await.unwrap(),
        200,
        "the connection is kept alive between requests"
    );
    let ended = tokio::time::timeout(PATIENCE, connection).await;
    assert!(ended.is_ok(), "the idle connection was not closed");
}

#[tokio::test]
async fn an_answer_slower_than_header_read_timeout_still_arrives_on_a_kept_connection() {
    let origin = Origin::start().await;
    // The upstream takes longer than the head deadline: a request in
    // flight is not a wait for a head, before or after its answer starts.
    origin.on(
        "/api/slow-query",
        Behaviour::new().delay(Duration::from_millis(900)),
    );
    let proxy = proxy_with(&origin, "header_read_timeout = \"300ms\"").await;

    let (mut sender, _connection) = http1_connection(&proxy).await;
    for _ in 0..2 {
        assert_eq!(get(&mut sender, "/api/slow-query").await.unwrap(), 200);
        // Back within the deadline: the next head is due 300 ms after the
        // answer, not after the request.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(origin.count("/api/slow-query"), 1, "the second was a hit");
    assert_eq!(get(&mut sender, "/api/other").await.unwrap(), 200);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "header_read_timeout = \"300ms\"").await;

    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    read_until_closed(&mut silent).await;

    // Stalled inside the HTTP/2 preface, where hyper has no head timer yet.
    let mut stalled = TcpStream::connect(proxy.addr).await.unwrap();
    stalled.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    read_until_closed(&mut stalled).await;
}

#[tokio::test]
async fn connections_past_max_connections_are_closed() {
    let origin = Origin::start().await;
    let proxy = proxy_with(
        &origin,
        "max_connections = 2\nheader_read_timeout = \"30s\"",
    )
    .await;

    let (mut first, _first_conn) = http1_connection(&proxy).await;
    let (mut second, _second_conn) = http1_connection(&proxy).await;
    assert_eq!(get(&mut first, "/api/filter-options").await.unwrap(), 200);
    assert_eq!(get(&mut second, "/api/filter-options").await.unwrap(), 200);

    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /api/filter-options HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .await;
    let received = read_until_closed(&mut third).await;
    assert!(
        received.is_empty(),
        "the third connection was served: {}",
        String::from_utf8_lossy(&received)
    );

    // A freed slot serves a new connection again.
    drop((first, _first_conn));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (mut sender, _conn) = http1_connection(&proxy).await;
        if let Ok(status) = get(&mut sender, "/api/filter-options").await {
            assert_eq!(status, 200);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no slot was freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(&mut second, "/api/filter-options").await.unwrap(), 200);
}

#[tokio::test]
async fn http2_streams_per_connection_are_bounded() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    for n in 1..=3 {
        origin.on(&format!("/api/things/{n}"), Behaviour::new().gate(&gate));
    }
    let proxy = proxy_with(&origin, "http2_max_concurrent_streams = 2").await;

    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    // One exchange first, so the client has the server's SETTINGS: a client
    // that ignores them gets REFUSED_STREAM for the extra streams instead.
    let warm_up = Request::get(proxy.url("/api/filter-options"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let warm_up = sender.clone().send_request(warm_up).await.unwrap();
    assert_eq!(warm_up.status(), 200);
    let requests: Vec<_> = (1..=3)
        .map(|n| {
            let mut sender = sender.clone();
            let uri = proxy.url(&format!("/api/things/{n}"));
            tokio::spawn(async move {
                sender.ready().await?;
                let request = Request::builder()
                    .method(Method::PUT)
                    .uri(uri)
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap();
                sender.send_request(request).await.map(|r| r.status())
            })
        })
        .collect();

    origin.wait_for_total(3).await;
    // The third stream has to wait for a free one: give it the chance to
    // (wrongly) arrive before the gate opens.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(origin.total(), 3, "only two streams are open at once");
    gate.open();
    for request in requests {
        let status = tokio::time::timeout(PATIENCE, request)
            .await
            .expect("answered in time")
            .unwrap()
            .unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(origin.total(), 4);
}

/// An HTTP/2 connection (prior knowledge) driven by hyper's client; the
/// returned handle resolves when the server closes the connection.
async fn http2_connection(
    proxy: &ServerHandle,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (sender, tokio::spawn(connection))
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_but_not_a_busy_one() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on("/api/slow", Behaviour::new().gate(&gate));
    let proxy = proxy_with(&origin, "header_read_timeout = \"300ms\"").await;

    // Busy: one stream open for several idle timeouts is not cut.
    let (mut sender, connection) = http2_connection(&proxy).await;
    let slow = {
        let request = Request::get(proxy.url("/api/slow"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        tokio::spawn(sender.send_request(request))
    };
    origin.wait_for_total(1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!connection.is_finished(), "closed while a stream was open");
    gate.open();
    let answer = tokio::time::timeout(PATIENCE, slow).await.unwrap().unwrap();
    assert_eq!(answer.unwrap().status(), 200);

    // Idle: no stream open for header_read_timeout closes it, although the
    // client answers every PING.
    sender.ready().await.unwrap();
    let ended = tokio::time::timeout(PATIENCE, connection).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was kept");
}
