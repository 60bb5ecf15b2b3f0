//! Hostile and sloppy clients, over real sockets: request bodies trickled a
//! byte at a time (cut with 408, and unable to lock others out at the
//! connection cap), answers never read (`send_timeout`), heads framed the
//! way httparse allows but the guard used to miss (bare LF, mixed line
//! endings, pipelined, split over many writes, at and over the size limit),
//! and the `Host` rules of RFC 9112 §3.2.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::{raw_request, spawn_server, Behaviour, Client, Origin, ServerHandle, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn proxy_with(origin: &Origin, toml: &str) -> ServerHandle {
    spawn_server(&origin.url(), toml).await
}

/// Sends `head`, then one body byte every `every` until the connection
/// closes; returns everything the proxy answered.
async fn trickle(addr: std::net::SocketAddr, head: &'static [u8], every: Duration) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    drive_trickle(stream, head, every).await
}

async fn drive_trickle(stream: TcpStream, head: &'static [u8], every: Duration) -> Vec<u8> {
    let (mut reader, mut writer) = stream.into_split();
    let drip = tokio::spawn(async move {
        writer.write_all(head).await?;
        for _ in 0..1000 {
            tokio::time::sleep(every).await;
            writer.write_all(b"x").await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut received = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 4096];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    drip.abort();
    assert!(closed.is_ok(), "the trickling client was never cut off");
    received
}

fn status_of(answer: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// All the status codes of the answers in `answer`, in order.
fn statuses(answer: &[u8]) -> Vec<u16> {
    String::from_utf8_lossy(answer)
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| {
            let text = String::from_utf8_lossy(answer);
            text[at + 9..at + 12].parse().unwrap()
        })
        .collect()
}

const CACHED_POST: &[u8] =
    b"POST /api/metrics HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";

/// `answer` is the 408 for a body too slow to arrive, nothing of it
/// reached the upstream, and the timeout was counted once, in stats and in
/// the Prometheus exposition.
async fn assert_one_body_timeout(answer: &str, origin: &Origin, proxy: &ServerHandle) {
    assert!(
        answer.contains(r#"{"status":"error","message":"request body not received in time"#),
        "{answer}"
    );
    assert_eq!(origin.total(), 0, "no (half) body reached the upstream");
    assert_eq!(proxy.proxy.metrics.body_timeouts.load(Ordering::Relaxed), 1);
    let metrics = Client::new()
        .get(&proxy.url("/api/cache/metrics"))
        .await
        .text();
    assert!(
        metrics.contains("dashcache_client_body_timeouts_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_trickled_body_is_cut_with_408() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "body_read_timeout = \"500ms\"").await;

    // Never a gap as long as body_read_timeout, far below body_min_rate.
    let answer = trickle(proxy.addr, CACHED_POST, Duration::from_millis(100)).await;
    assert_eq!(
        status_of(&answer),
        408,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_one_body_timeout(&String::from_utf8_lossy(&answer), &origin, &proxy).await;
}

#[tokio::test]
async fn a_silent_body_on_a_streamed_request_is_cut_with_408() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "body_read_timeout = \"300ms\"\nbody_min_rate = 0").await;
    // PUT streams to the upstream as it arrives: the stall surfaces there.
    let answer = trickle(
        proxy.addr,
        b"PUT /api/things/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        status_of(&answer),
        408,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(proxy.proxy.metrics.body_timeouts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_upgrade_header_earlier_on_the_connection_does_not_lift_the_body_deadline() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "body_read_timeout = \"500ms\"").await;
    let answer = trickle(
        proxy.addr,
        b"GET /api/filter-options HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\
          POST /api/metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n",
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(statuses(&answer), [200, 408]);
}

#[tokio::test]
async fn a_body_that_arrives_in_time_is_served() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "body_read_timeout = \"2s\"").await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            b"POST /api/metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    writer.write_all(b"}").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, reader.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&answer), 200);
    assert_eq!(proxy.proxy.metrics.body_timeouts.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn slow_bodies_filling_max_connections_lock_nobody_out_past_the_deadline() {
    let origin = Origin::start().await;
    let proxy = proxy_with(
        &origin,
        "max_connections = 3\nbody_read_timeout = \"500ms\"\nheader_read_timeout = \"30s\"",
    )
    .await;
    let addr = proxy.addr;
    // Connected before any other client, so accepted first: they take
    // every slot.
    let mut tricklers = Vec::new();
    for _ in 0..3 {
        let stream = TcpStream::connect(addr).await.unwrap();
        tricklers.push(tokio::spawn(drive_trickle(
            stream,
            CACHED_POST,
            Duration::from_millis(100),
        )));
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut refused_once = false;
    let served = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new client was served while the slow bodies held the slots"
        );
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream
            .write_all(b"GET /api/filter-options HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
        if answer.is_empty() {
            refused_once = true;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        break answer;
    };
    assert_eq!(status_of(&served), 200);
    assert!(
        refused_once,
        "the three slow clients did hold every slot for a while"
    );
    for trickler in tricklers {
        let answer = trickler.await.unwrap();
        assert_eq!(status_of(&answer), 408);
    }
    assert_eq!(proxy.proxy.metrics.body_timeouts.load(Ordering::Relaxed), 3);
}

/// An origin with a 32 MiB answer at `/api/export`, a proxy with a 300 ms
/// `send_timeout`, and a client socket with a 4 KiB receive buffer
/// connected to it, which the tests never read.
async fn export_to_a_small_window() -> (Origin, ServerHandle, TcpStream) {
    let origin = Origin::start().await;
    origin.on(
        "/api/export",
        Behaviour::new().body(vec![b'x'; 32 * 1024 * 1024]),
    );
    let proxy = proxy_with(&origin, "send_timeout = \"300ms\"").await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(proxy.addr).await.unwrap();
    (origin, proxy, stream)
}

#[tokio::test]
async fn a_client_that_never_reads_its_answer_is_closed() {
    let (_origin, proxy, mut stream) = export_to_a_small_window().await;
    // A pass-through (PUT) streams the 32 MiB answer; the client reads none.
    stream
        .write_all(b"PUT /api/export HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    support::eventually("the send timeout fires", || {
        proxy.proxy.metrics.send_timeouts.load(Ordering::Relaxed) == 1
    })
    .await;
}

/// One HTTP/2 frame (RFC 9113 §4.1).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[tokio::test]
async fn an_http2_client_that_never_reads_its_answer_is_closed() {
    // HTTP/2 answers leave in batches (`write_batch.rs`): the batch must
    // stay bounded, and `send_timeout` still apply, when the client opens
    // its flow-control windows wide and then reads nothing.
    let (origin, proxy, mut stream) = export_to_a_small_window().await;
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 2^31 - 1, and the connection window
    // raised to match.
    opening.extend(h2_frame(0x4, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]));
    opening.extend(h2_frame(
        0x8,
        0,
        0,
        &(0x7fff_ffffu32 - 65_535).to_be_bytes(),
    ));
    // HEADERS, END_STREAM | END_HEADERS: PUT (a pass-through, streamed)
    // /api/export, HPACK literals without indexing and without Huffman.
    let mut block = vec![0x02, 3];
    block.extend_from_slice(b"PUT");
    block.push(0x86); // :scheme http
    block.extend_from_slice(&[0x04, 11]);
    block.extend_from_slice(b"/api/export");
    block.extend_from_slice(&[0x01, 1, b'a']); // :authority a
    opening.extend(h2_frame(0x1, 0x5, 1, &block));
    stream.write_all(&opening).await.unwrap();

    support::eventually("the send timeout fires", || {
        proxy.proxy.metrics.send_timeouts.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(origin.count("/api/export"), 1);
    // And the connection is closed: what the socket holds, then the end.
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut received = 0;
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break received,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    let received = closed.expect("the connection stayed open");
    assert!(received < 32 * 1024 * 1024, "{received} bytes");
}

// ------------------------------------------------------------------ framing

const GET: &str = "GET /api/filter-options HTTP/1.1";

#[tokio::test]
async fn heads_with_bare_lf_or_mixed_line_endings_are_answered() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "").await;
    for head in [
        format!("{GET}\nHost: a\nConnection: close\n\n"),
        format!("{GET}\r\nHost: a\nConnection: close\r\n\n"),
        format!("{GET}\nHost: a\r\nConnection: close\n\r\n"),
    ] {
        let reply = raw_request(proxy.addr, head.as_bytes()).await;
        assert_eq!(reply.status, 200, "{head:?}");
    }
}

#[tokio::test]
async fn pipelined_requests_in_one_write_are_each_answered() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "").await;
    let requests = format!(
        "POST /api/metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{{}}\
         {GET}\nHost: a\n\n\
         {GET}\r\nHost: a\r\nConnection: close\r\n\r\n"
    );
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(statuses(&answer), [200, 200, 200]);
}

#[tokio::test]
async fn a_head_split_over_many_writes_is_answered() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "").await;
    let head = format!(
        "{GET}\r\nHost: a\r\nX-Long: {}\r\nConnection: close\r\n\r\n",
        "y".repeat(300)
    );
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for piece in head.as_bytes().chunks(7) {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&answer), 200);
}

/// A GET head of exactly `size` bytes.
fn head_of(size: usize) -> Vec<u8> {
    let bare = format!("{GET}\r\nHost: a\r\nConnection: close\r\nx-padding: \r\n\r\n");
    let padding = "p".repeat(size - bare.len());
    let head = format!("{GET}\r\nHost: a\r\nConnection: close\r\nx-padding: {padding}\r\n\r\n");
    assert_eq!(head.len(), size);
    head.into_bytes()
}

#[tokio::test]
async fn heads_at_the_limit_are_served_and_over_it_get_431() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "max_header_bytes = \"16KiB\"").await;
    let at = raw_request(proxy.addr, &head_of(16 * 1024)).await;
    assert_eq!(at.status, 200, "a head of exactly max_header_bytes");
    let over = raw_request(proxy.addr, &head_of(16 * 1024 + 1)).await;
    assert_eq!(over.status, 431, "one byte more");
    // Split over many writes, the same limits hold.
    for (size, status) in [(16 * 1024, 200), (16 * 1024 + 1, 431)] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        for piece in head_of(size).chunks(1000) {
            let _ = stream.write_all(piece).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
        assert_eq!(status_of(&answer), status, "{size} bytes in pieces");
    }
}

#[tokio::test]
async fn content_length_with_transfer_encoding_gets_400_in_any_line_ending() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "").await;
    for request in [
        &b"POST /api/metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST /api/metrics HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nContent-Length: 5\n\n0\r\n\r\n",
    ] {
        let reply = raw_request(proxy.addr, request).await;
        assert_eq!(reply.status, 400);
        assert!(
            String::from_utf8_lossy(&reply.body).contains("Content-Length and Transfer-Encoding"),
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn only_the_conflicting_request_of_a_pipeline_is_refused() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "").await;
    let requests = format!(
        "{GET}\r\nHost: a\r\n\r\n\
         POST /api/metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(statuses(&answer), [200, 400]);
    assert_eq!(origin.count("/api/metrics"), 0);
}

// ------------------------------------------------------------------ Host

#[tokio::test]
async fn http11_requests_need_exactly_one_valid_host() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "").await;
    for (request, why) in [
        (format!("{GET}\r\nConnection: close\r\n\r\n"), "no Host"),
        (
            format!("{GET}\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"),
            "two Host fields",
        ),
        (
            format!("{GET}\r\nHost: a\r\nHost: a\r\nConnection: close\r\n\r\n"),
            "two equal Host fields",
        ),
        (
            format!("{GET}\r\nHost: user@a\r\nConnection: close\r\n\r\n"),
            "userinfo in Host",
        ),
        (
            "GET http://b/api/filter-options HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                .to_owned(),
            "absolute-form target naming another host",
        ),
    ] {
        let reply = raw_request(proxy.addr, request.as_bytes()).await;
        assert_eq!(reply.status, 400, "{why}");
        let body = String::from_utf8_lossy(&reply.body);
        assert!(
            body.starts_with(r#"{"status":"error","message":""#),
            "{why}: {body}"
        );
    }
    assert_eq!(origin.total(), 0, "none reached the upstream");

    for (request, why) in [
        (
            "GET /api/filter-options HTTP/1.0\r\n\r\n".to_owned(),
            "HTTP/1.0 without Host",
        ),
        (
            "GET http://a/api/filter-options HTTP/1.1\r\nHost: A:80\r\nConnection: close\r\n\r\n"
                .to_owned(),
            "absolute-form target agreeing with Host",
        ),
    ] {
        let reply = raw_request(proxy.addr, request.as_bytes()).await;
        assert_eq!(reply.status, 200, "{why}");
    }
}

#[tokio::test]
async fn http2_requests_are_judged_by_their_authority() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "").await;
    let client = Client::http2();
    let fine = client.get(&proxy.url("/api/filter-options")).await;
    assert_eq!(fine.status.as_u16(), 200);
    let mismatched = client
        .send(
            http::Method::GET,
            &proxy.url("/api/filter-options"),
            &[("host", "elsewhere.example")],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(mismatched.status.as_u16(), 400);
}

/// An HTTP/2 request body that sends what the test puts in its channel and
/// waits, with the stream open, while the channel stays empty.
struct StalledBody(tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>);

impl http_body::Body for StalledBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// Sends `method path` over HTTP/2 (prior knowledge) with one body chunk,
/// then stalls; returns the status and body of the answer.
async fn stalled_http2_request(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        StalledBody,
    >,
    method: http::Method,
    url: &str,
) -> (u16, String) {
    use http_body_util::BodyExt;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(bytes::Bytes::from_static(b"{\"a\":")).unwrap();
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(StalledBody(rx))
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("the stalled HTTP/2 body was never cut off")
        .unwrap();
    let status = response.status().as_u16();
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    drop(tx);
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn http2_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    StalledBody,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

#[tokio::test]
async fn a_stalled_http2_body_is_cut_with_408_and_the_connection_serves_on() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "body_read_timeout = \"300ms\"\nbody_min_rate = 0").await;
    let client = http2_client();

    // A cacheable POST: its body is read whole before anything else.
    let (status, body) =
        stalled_http2_request(&client, http::Method::POST, &proxy.url("/api/metrics")).await;
    assert_eq!(status, 408, "{body}");
    assert_one_body_timeout(&body, &origin, &proxy).await;

    // The same connection still answers a request whose body is complete.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(bytes::Bytes::from_static(b"{}")).unwrap();
    drop(tx);
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(proxy.url("/api/metrics"))
        .header("content-type", "application/json")
        .body(StalledBody(rx))
        .unwrap();
    let fine = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fine.status().as_u16(), 200);
    assert_eq!(proxy.proxy.metrics.body_timeouts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_stalled_http2_body_on_a_streamed_request_is_cut_with_408() {
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "body_read_timeout = \"300ms\"\nbody_min_rate = 0").await;
    // PUT streams to the upstream as it arrives: the stall surfaces there.
    let (status, body) = stalled_http2_request(
        &http2_client(),
        http::Method::PUT,
        &proxy.url("/api/things/1"),
    )
    .await;
    assert_eq!(status, 408, "{body}");
    assert!(body.contains(r#""status":"error""#), "{body}");
    assert_eq!(proxy.proxy.metrics.body_timeouts.load(Ordering::Relaxed), 1);
}
