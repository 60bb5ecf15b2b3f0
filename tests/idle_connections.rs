//! Idle HTTP/1.1 keep-alive connections are parked (hyper's state dropped,
//! the socket kept) and woken by their next request, without the client
//! seeing any difference: answers, split and pipelined requests, the idle
//! close at `header_read_timeout`, the connection cap, shutdown, TLS, and
//! HTTP/2 on the same port.
//!
//! Parking is seen in the proxy's debug log ("idle connection parked"),
//! captured per test; the park delay is shortened to 50 ms.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{
    eventually, read_until_closed, spawn_server_tuned, tls_connect, Behaviour, Client, Origin,
    ServerHandle, TestCa, DASHBOARD_ROUTES, PATIENCE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const PARK_AFTER: Duration = Duration::from_millis(50);
const GET: &[u8] = b"GET /api/filter-options?region=north HTTP/1.1\r\nHost: proxy\r\n\r\n";

// ---------------------------------------------------------------- log capture

/// The proxy's connection log lines, captured on this test's thread (the
/// tests run on one thread, so every connection task logs here).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let log = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("dashcache::keep_alive=debug")
            .with_ansi(false)
            .with_writer(log.clone())
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    fn count(&self, message: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(message)
            .count()
    }

    fn parked(&self) -> usize {
        self.count("idle connection parked")
    }

    async fn wait_for_parked(&self, n: usize) {
        eventually(&format!("{n} parked connections"), || self.parked() >= n).await;
    }
}

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;

    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

// ---------------------------------------------------------------- helpers

async fn proxy_with(origin: &Origin, limits: &str) -> ServerHandle {
    spawn_server_tuned(
        &origin.url(),
        &format!("{limits}\n{DASHBOARD_ROUTES}"),
        |c| {
            c.limits.idle_park_after = PARK_AFTER;
        },
    )
    .await
}

/// A proxy with `limits`, and one keep-alive connection that made one hit
/// and has been parked since.
struct ParkedSetup {
    log: Log,
    _guard: tracing::subscriber::DefaultGuard,
    _origin: Origin,
    proxy: ServerHandle,
    connection: KeepAlive,
}

async fn parked_after_one_request(limits: &str) -> ParkedSetup {
    let (log, _guard) = Log::capture();
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, limits).await;
    let mut connection = KeepAlive::open(&proxy).await;
    assert_eq!(connection.get(GET).await.status, 200);
    log.wait_for_parked(1).await;
    ParkedSetup {
        log,
        _guard,
        _origin: origin,
        proxy,
        connection,
    }
}

/// One answer read off a keep-alive connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lower-cased header lines, in order.
    headers: Vec<String>,
    body: Vec<u8>,
}

impl Answer {
    fn x_cache(&self) -> &str {
        self.headers
            .iter()
            .find_map(|line| line.strip_prefix("x-cache: "))
            .unwrap_or("")
    }

    fn has(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|line| line.starts_with(&format!("{name}:")))
    }
}

/// A raw HTTP/1.1 keep-alive connection: writes bytes as given, reads one
/// answer at a time (Content-Length or chunked).
struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    async fn open(proxy: &ServerHandle) -> Self {
        Self {
            stream: TcpStream::connect(proxy.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("the connection stays open");
        assert!(
            n > 0,
            "the proxy closed the connection instead of answering"
        );
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..at].to_vec();
                self.buf.drain(..at + 2);
                return line;
            }
            self.fill().await;
        }
    }

    async fn exactly(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill().await;
        }
        self.buf.drain(..n).collect()
    }

    /// The status and lower-cased field lines of the next answer.
    async fn head(&mut self) -> (u16, Vec<String>) {
        let status_line = String::from_utf8(self.line().await).unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let line = String::from_utf8(self.line().await).unwrap();
            if line.is_empty() {
                break;
            }
            headers.push(line.to_ascii_lowercase());
        }
        (status, headers)
    }

    /// The answer to a `HEAD` request: no body, whatever its length says.
    async fn answer_to_head(&mut self) -> Answer {
        let (status, headers) = self.head().await;
        Answer {
            status,
            headers,
            body: Vec::new(),
        }
    }

    async fn answer(&mut self) -> Answer {
        let (status, headers) = self.head().await;
        let length = headers
            .iter()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<usize>().unwrap());
        let body = match length {
            Some(length) => self.exactly(length).await,
            None => {
                let mut body = Vec::new();
                loop {
                    let size = String::from_utf8(self.line().await).unwrap();
                    let size = usize::from_str_radix(size.trim(), 16).unwrap();
                    body.extend(self.exactly(size).await);
                    assert!(self.line().await.is_empty());
                    if size == 0 {
                        break;
                    }
                }
                body
            }
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, request: &[u8]) -> Answer {
        self.send(request).await;
        self.answer().await
    }
}

/// The answer a fresh connection gets for `request`, to compare with.
async fn fresh_answer(proxy: &ServerHandle, request: &[u8]) -> Answer {
    let mut connection = KeepAlive::open(proxy).await;
    connection.get(request).await
}

fn assert_same_answer(woken: &Answer, fresh: &Answer) {
    assert_eq!(woken.status, 200);
    assert_eq!(woken.body, fresh.body);
    assert!(!woken.has("connection"), "{woken:?}");
    let names = |a: &Answer| {
        a.headers
            .iter()
            .map(|l| l.split(':').next().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(woken), names(fresh), "the same fields, in order");
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn an_idle_connection_is_parked_and_answers_its_next_request() {
    let (log, _guard) = Log::capture();
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "").await;

    let mut connection = KeepAlive::open(&proxy).await;
    let first = connection.get(GET).await;
    assert_eq!(first.status, 200);
    log.wait_for_parked(1).await;

    let woken = connection.get(GET).await;
    assert_same_answer(&woken, &fresh_answer(&proxy, GET).await);
    // A plain hit is the express lane's: no hyper connection starts again,
    // so none is parked, and the connection still answers after idling.
    tokio::time::sleep(PARK_AFTER * 6).await;
    assert_eq!(log.parked(), 1);
    let again = connection.get(GET).await;
    assert_eq!(again.status, 200, "idle and woken again");
    assert_eq!(
        origin.count("/api/filter-options"),
        1,
        "the others were hits"
    );
}

#[tokio::test]
async fn a_request_split_around_a_park_is_answered() {
    // Bound by name: `..` would drop the origin and the log capture here.
    let ParkedSetup {
        log,
        _guard,
        _origin,
        proxy,
        mut connection,
    } = parked_after_one_request("").await;

    // The first bytes wake it; the head stays unfinished for several park
    // delays, and a connection inside a head is never parked.
    let (start, rest) = GET.split_at(20);
    connection.send(start).await;
    tokio::time::sleep(PARK_AFTER * 6).await;
    assert_eq!(log.parked(), 1, "parked in the middle of a head");
    connection.send(rest).await;
    let answer = connection.answer().await;
    assert_same_answer(&answer, &fresh_answer(&proxy, GET).await);

    // Split at the end of the head line, just after a park.
    log.wait_for_parked(2).await;
    let (start, rest) = GET.split_at(GET.len() - 2);
    connection.send(start).await;
    tokio::task::yield_now().await;
    connection.send(rest).await;
    assert_eq!(connection.answer().await.status, 200);
}

#[tokio::test]
async fn pipelined_requests_after_a_park_are_answered_in_order() {
    // Bound by name: `..` would drop the origin and the log capture here.
    let ParkedSetup {
        log,
        _guard,
        _origin,
        proxy: _proxy,
        mut connection,
    } = parked_after_one_request("").await;

    let mut pipeline = Vec::new();
    for region in ["a", "b", "c"] {
        pipeline.extend_from_slice(
            format!("GET /api/filter-options?region={region} HTTP/1.1\r\nHost: proxy\r\n\r\n")
                .as_bytes(),
        );
    }
    connection.send(&pipeline).await;
    for region in ["a", "b", "c"] {
        let answer = connection.answer().await;
        assert_eq!(answer.status, 200);
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(
            body["query"],
            format!("region={region}"),
            "answered in order"
        );
    }
    log.wait_for_parked(2).await;
    assert_eq!(
        connection.get(GET).await.status,
        200,
        "parked again after the pipeline"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_when_header_read_timeout_runs_out() {
    let (log, _guard) = Log::capture();
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "header_read_timeout = \"10s\"").await;

    // Warm the cache so that the timed request is a hit (no origin timing).
    assert_eq!(fresh_answer(&proxy, GET).await.status, 200);
    let mut connection = KeepAlive::open(&proxy).await;
    assert_eq!(connection.get(GET).await.status, 200);
    // Paused time only moves when every task waits: the answer's end is now.
    // The hit was the express lane's, which holds no hyper connection. (The
    // pause keeps the read's own limit, PATIENCE, past the proxy's.)
    let answered = Instant::now();
    tokio::time::sleep(PARK_AFTER).await;

    let rest = read_until_closed(&mut connection.stream).await;
    assert!(rest.is_empty(), "closed without a word: {rest:?}");
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_secs(10) && idle < Duration::from_millis(10_010),
        "closed {idle:?} after the answer, as hyper would at 10 s"
    );
    assert_eq!(
        log.count("idle keep-alive connection reached header_read_timeout"),
        1,
        "closed while idle"
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_begun_while_parked_must_end_by_the_idle_deadline() {
    let (log, _guard) = Log::capture();
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "header_read_timeout = \"10s\"").await;

    let mut connection = KeepAlive::open(&proxy).await;
    assert_eq!(connection.get(GET).await.status, 200);
    let answered = Instant::now();
    log.wait_for_parked(1).await;

    // Woken 8 s into its 10 s, the next head gets what is left, not 10 s more.
    tokio::time::sleep_until(answered + Duration::from_secs(8)).await;
    connection.send(&GET[..10]).await;
    read_until_closed(&mut connection.stream).await;
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_secs(10) && idle < Duration::from_millis(10_010),
        "closed {idle:?} after the answer"
    );
}

#[tokio::test]
async fn a_parked_connection_keeps_its_slot() {
    // Bound by name: `..` would drop the origin and the log capture here.
    let ParkedSetup {
        log: _log,
        _guard,
        _origin,
        proxy,
        mut connection,
    } = parked_after_one_request("max_connections = 1").await;

    let mut refused = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = refused.write_all(GET).await;
    assert!(
        read_until_closed(&mut refused).await.is_empty(),
        "a second connection was let in past max_connections = 1"
    );
    assert_eq!(connection.get(GET).await.status, 200);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once() {
    let (log, _guard) = Log::capture();
    let origin = Origin::start().await;
    let mut proxy = proxy_with(&origin, "shutdown_timeout = \"60s\"").await;

    let mut connections = Vec::new();
    for _ in 0..3 {
        let mut connection = KeepAlive::open(&proxy).await;
        assert_eq!(connection.get(GET).await.status, 200);
        connections.push(connection);
    }
    // The first was a miss, hyper's, parked since; the others were hits,
    // the express lane's, waiting without hyper.
    log.wait_for_parked(1).await;

    let stopped = proxy.shutdown();
    tokio::time::timeout(PATIENCE, stopped)
        .await
        .expect("parked connections must not hold shutdown until shutdown_timeout")
        .unwrap();
    for connection in &mut connections {
        assert!(read_until_closed(&mut connection.stream).await.is_empty());
    }
    assert_eq!(log.count("shutting down: closing an idle connection"), 3);
}

#[tokio::test]
async fn http2_and_parked_http1_share_the_port() {
    // Bound by name: `..` would drop the origin and the log capture here.
    let ParkedSetup {
        log,
        _guard,
        _origin,
        proxy,
        connection: mut http1,
    } = parked_after_one_request("").await;

    let http2 = Client::http2();
    let reply = http2
        .get(&proxy.url("/api/filter-options?region=north"))
        .await;
    assert_eq!(reply.status.as_u16(), 200);
    assert_eq!(
        reply.x_cache(),
        "HIT",
        "HTTP/2 prior knowledge on the same port"
    );
    tokio::time::sleep(PARK_AFTER * 4).await;
    assert_eq!(log.parked(), 1, "HTTP/2 connections are not parked");
    assert_eq!(http1.get(GET).await.status, 200);
}

#[tokio::test]
async fn a_parked_tls_connection_answers_its_next_request() {
    let (log, _guard) = Log::capture();
    let origin = Origin::start().await;
    let ca = TestCa::new("dashcache");
    let issued = ca.issue("proxy");
    let toml = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n{DASHBOARD_ROUTES}",
        issued.cert_file.display().to_string(),
        issued.key_file.display().to_string()
    );
    let proxy = spawn_server_tuned(&origin.url(), &toml, |c| {
        c.limits.idle_park_after = PARK_AFTER;
    })
    .await;

    let mut connection = tls_connect(proxy.addr, ca.client_config(&[b"http/1.1"]))
        .await
        .expect("TLS handshake with the proxy");
    let filters = r#"{"org":"Vale"}"#;
    let first = connection.post("/api/metrics", filters).await;
    assert_eq!((first.status.as_u16(), first.x_cache()), (200, "MISS"));
    log.wait_for_parked(1).await;
    let woken = connection.post("/api/metrics", filters).await;
    assert_eq!((woken.status.as_u16(), woken.x_cache()), (200, "HIT"));
    assert_eq!(woken.body, first.body);
    assert!(!woken.headers.contains_key("connection"));

    // Filter bodies larger than a first read, within the express lane's
    // bounds and past them, spread over TLS records: each answered whole.
    for accounts in [1_500, 3_000] {
        let ids: Vec<String> = (0..accounts).map(|i| format!("\"acct-{i:06}\"")).collect();
        let filters = format!("{{\"accounts\":[{}]}}", ids.join(","));
        let miss = connection.post("/api/metrics", &filters).await;
        assert_eq!((miss.status.as_u16(), miss.x_cache()), (200, "MISS"));
        for _ in 0..3 {
            let hit = connection.post("/api/metrics", &filters).await;
            assert_eq!((hit.status.as_u16(), hit.x_cache()), (200, "HIT"));
            assert_eq!(hit.body, miss.body);
        }
    }
}

#[tokio::test]
async fn a_connection_waiting_on_its_answer_or_its_body_is_not_parked() {
    let (log, _guard) = Log::capture();
    let origin = Origin::start().await;
    origin.on(
        "/api/filter-options",
        support::Behaviour::new().delay(PARK_AFTER * 6),
    );
    let proxy = proxy_with(&origin, "").await;

    // The answer takes six park delays: hyper is busy all along, and a
    // park there would have added `Connection: close`.
    let mut connection = KeepAlive::open(&proxy).await;
    connection.send(GET).await;
    tokio::time::sleep(PARK_AFTER * 4).await;
    assert_eq!(log.parked(), 0, "parked while the answer was pending");
    let slow = connection.answer().await;
    assert_eq!(slow.status, 200);
    assert!(!slow.has("connection"), "{slow:?}");
    // At rest once it is out: parked at once.
    log.wait_for_parked(1).await;

    // A request body that pauses for six park delays.
    let body = r#"{"org":"Vale","period":"2024-Q1"}"#;
    let head = format!(
        "POST /api/metrics HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    connection.send(head.as_bytes()).await;
    connection.send(&body.as_bytes()[..5]).await;
    tokio::time::sleep(PARK_AFTER * 6).await;
    assert_eq!(log.parked(), 1, "parked in the middle of a body");
    connection.send(&body.as_bytes()[5..]).await;
    let answer = connection.answer().await;
    assert_eq!(answer.status, 200);
    assert!(!answer.has("connection"), "{answer:?}");
    log.wait_for_parked(2).await;
}

// ---------------------------------------------------------------- the express lane

/// An answer's head lines with the fields that change per answer blanked.
fn stable_lines(answer: &Answer) -> Vec<String> {
    answer
        .headers
        .iter()
        .map(|line| {
            let name = line.split(':').next().unwrap();
            match name {
                "date" | "age" | "x-request-id" | "cache-status" => format!("{name}: …"),
                _ => line.clone(),
            }
        })
        .collect()
}

#[tokio::test]
async fn a_plain_hit_is_answered_without_hyper_exactly_as_hyper_answers_it() {
    let (log, _guard) = Log::capture();
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "").await;
    const HEAD: &[u8] = b"HEAD /api/filter-options?region=north HTTP/1.1\r\nHost: proxy\r\n\r\n";

    // A miss: hyper answers it, then parks.
    let mut first = KeepAlive::open(&proxy).await;
    assert_eq!(first.get(GET).await.status, 200);
    log.wait_for_parked(1).await;

    // Two requests in one write are hyper's (pipelining): it parks after.
    let mut pipelined = KeepAlive::open(&proxy).await;
    pipelined.send(&[GET, HEAD].concat()).await;
    let by_hyper = pipelined.answer().await;
    let head_by_hyper = pipelined.answer_to_head().await;
    log.wait_for_parked(2).await;

    // One plain hit: the express lane's. No hyper connection starts, so
    // none is parked however long the connection stays idle.
    let mut express = KeepAlive::open(&proxy).await;
    let answer = express.get(GET).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, by_hyper.body);
    assert_eq!(stable_lines(&answer), stable_lines(&by_hyper));
    assert!(
        answer.has("x-request-id") && answer.has("date"),
        "{answer:?}"
    );
    express.send(HEAD).await;
    let head = express.answer_to_head().await;
    assert_eq!(stable_lines(&head), stable_lines(&head_by_hyper));
    tokio::time::sleep(PARK_AFTER * 6).await;
    assert_eq!(log.parked(), 2, "no hyper connection on the express one");
    assert_eq!(express.get(GET).await.status, 200, "still open");
    assert_eq!(origin.count("/api/filter-options"), 1, "the rest were hits");
}

#[tokio::test]
async fn what_the_express_lane_does_not_answer_goes_to_hyper_on_the_same_connection() {
    let (log, _guard) = Log::capture();
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "").await;
    let mut connection = KeepAlive::open(&proxy).await;
    // A miss, then a hit, then another miss on one connection: each time the
    // bytes reach hyper whole.
    assert_eq!(connection.get(GET).await.status, 200);
    log.wait_for_parked(1).await;
    assert_eq!(connection.get(GET).await.x_cache(), "hit");
    let other = b"GET /api/filter-options?region=south HTTP/1.1\r\nHost: proxy\r\n\r\n";
    let miss = connection.get(other).await;
    assert_eq!(miss.x_cache(), "miss");
    log.wait_for_parked(2).await;
    // A hit that closes the connection is hyper's too.
    let close = b"GET /api/filter-options?region=south HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n";
    let last = connection.get(close).await;
    assert_eq!(last.x_cache(), "hit");
    assert!(
        last.headers.contains(&"connection: close".to_owned()),
        "{last:?}"
    );
    assert!(
        read_until_closed(&mut connection.stream).await.is_empty(),
        "closed after the answer"
    );
    assert_eq!(origin.count("/api/filter-options"), 2);
}

#[tokio::test]
async fn a_post_hit_with_its_body_in_hand_is_answered_as_hyper_answers_it() {
    let (log, _guard) = Log::capture();
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "").await;
    let post = |filters: &str| {
        format!(
            "POST /api/metrics HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{filters}",
            filters.len()
        )
        .into_bytes()
    };
    // The same filters in another order: the same key.
    let first = post(r#"{"region":"north","period":"7d"}"#);
    let reordered = post(r#"{"period":"7d","region":"north"}"#);

    // A miss (hyper), then the same hit pipelined behind a GET (hyper's).
    let mut miss = KeepAlive::open(&proxy).await;
    assert_eq!(miss.get(&first).await.x_cache(), "miss");
    log.wait_for_parked(1).await;
    let mut pipelined = KeepAlive::open(&proxy).await;
    pipelined.send(&[GET, &first[..]].concat()).await;
    pipelined.answer().await;
    let by_hyper = pipelined.answer().await;
    assert_eq!(by_hyper.x_cache(), "hit");

    // Alone on its connection, with its body in the same read: the express
    // lane's, the same answer, and no hyper connection to park.
    let mut express = KeepAlive::open(&proxy).await;
    let answer = express.get(&reordered).await;
    assert_eq!(answer.body, by_hyper.body);
    assert_eq!(stable_lines(&answer), stable_lines(&by_hyper));
    log.wait_for_parked(2).await;
    tokio::time::sleep(PARK_AFTER * 6).await;
    assert_eq!(log.parked(), 2, "no hyper connection on the express one");

    // A body that arrives after its head is hyper's: the same answer.
    let (head, body) = first.split_at(first.len() - 5);
    express.send(head).await;
    tokio::time::sleep(PARK_AFTER).await;
    express.send(body).await;
    let split = express.answer().await;
    assert_eq!(split.body, by_hyper.body);
    assert_eq!(split.x_cache(), "hit");
    assert_eq!(origin.count("/api/metrics"), 1, "the rest were hits");
}

#[tokio::test]
async fn a_revalidation_is_answered_304_by_the_express_lane_as_by_hyper() {
    let (log, _guard) = Log::capture();
    let origin = Origin::start().await;
    origin.on("/api/filter-options", Behaviour::new().etag("\"v1\""));
    let proxy = proxy_with(&origin, "").await;
    const CONDITIONAL: &[u8] = b"GET /api/filter-options?region=north HTTP/1.1\r\nHost: proxy\r\nIf-None-Match: \"v1\"\r\n\r\n";

    let mut first = KeepAlive::open(&proxy).await;
    assert_eq!(first.get(GET).await.status, 200);
    log.wait_for_parked(1).await;
    // Pipelined behind a GET: hyper's.
    let mut pipelined = KeepAlive::open(&proxy).await;
    pipelined.send(&[GET, CONDITIONAL].concat()).await;
    pipelined.answer().await;
    let by_hyper = pipelined.answer_to_head().await;
    assert_eq!(by_hyper.status, 304);
    log.wait_for_parked(2).await;

    // Alone: the express lane's, the same 304, no body, and the connection
    // goes on.
    let mut express = KeepAlive::open(&proxy).await;
    express.send(CONDITIONAL).await;
    let answer = express.answer_to_head().await;
    assert_eq!(answer.status, 304);
    assert_eq!(stable_lines(&answer), stable_lines(&by_hyper));
    assert_eq!(express.get(GET).await.status, 200, "no body was sent");
    tokio::time::sleep(PARK_AFTER * 6).await;
    assert_eq!(log.parked(), 2, "no hyper connection on the express one");
    assert_eq!(origin.count("/api/filter-options"), 1);
}

#[tokio::test]
async fn the_framing_guard_counts_the_requests_the_express_lane_answers() {
    let (log, _guard) = Log::capture();
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "").await;
    let post = b"POST /api/metrics HTTP/1.1\r\nHost: proxy\r\nContent-Length: 2\r\n\r\n{}";
    let mut connection = KeepAlive::open(&proxy).await;
    assert_eq!(connection.get(GET).await.x_cache(), "miss");
    assert_eq!(connection.get(post).await.x_cache(), "miss");
    log.wait_for_parked(1).await;
    // A GET and a POST with its body the express lane answers: the framing
    // guard never parses their heads, but counts them.
    assert_eq!(connection.get(GET).await.x_cache(), "hit");
    assert_eq!(connection.get(post).await.x_cache(), "hit");
    // So the fifth head, with both framing fields, is the one hyper's
    // fifth request is refused for.
    let smuggled = b"POST /api/metrics HTTP/1.1\r\nHost: proxy\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let refused = connection.get(smuggled).await;
    assert_eq!(refused.status, 400);
    assert!(
        String::from_utf8_lossy(&refused.body).contains("Content-Length and Transfer-Encoding"),
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(origin.count("/api/metrics"), 1, "only the first POST");
}

#[tokio::test]
async fn after_a_miss_the_next_request_is_the_express_lanes_at_once() {
    let (log, _guard) = Log::capture();
    let origin = Origin::start().await;
    // No quiet time ever parks a connection in this test.
    let proxy = spawn_server_tuned(&origin.url(), DASHBOARD_ROUTES, |c| {
        c.limits.idle_park_after = Duration::from_secs(3600);
    })
    .await;
    let mut connection = KeepAlive::open(&proxy).await;
    let other = b"GET /api/filter-options?region=south HTTP/1.1\r\nHost: proxy\r\n\r\n";
    // Each miss is hyper's; its connection ends as soon as the answer is
    // out, so the hits sent right after are the express lane's.
    for (request, x_cache, hyper_runs) in [
        (GET, "miss", 1),
        (GET, "hit", 1),
        (other, "miss", 2),
        (GET, "hit", 2),
        (other, "hit", 2),
    ] {
        assert_eq!(connection.get(request).await.x_cache(), x_cache);
        eventually("hyper's connection ended at rest", || {
            log.parked() == hyper_runs
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.parked(), 2, "the hits started no hyper connection");
    assert_eq!(origin.count("/api/filter-options"), 2);

    // A request the lane never takes (a precondition) keeps its hyper
    // connection until it is quiet: its client likely sends more of them.
    let precondition =
        b"GET /api/filter-options?region=north HTTP/1.1\r\nHost: proxy\r\nIf-Match: *\r\n\r\n";
    for _ in 0..2 {
        assert_eq!(connection.get(precondition).await.x_cache(), "hit");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(log.parked(), 2, "hyper's connection stays");
    }
}

#[tokio::test]
async fn a_large_filter_body_and_a_browser_head_are_the_express_lanes_within_its_bounds() {
    let (log, _guard) = Log::capture();
    let origin = Origin::start().await;
    let proxy = proxy_with(&origin, "").await;
    // A dashboard's 20 KB filter body, and past the lane's 32 KiB.
    let post = |accounts: usize| {
        let ids: Vec<String> = (0..accounts).map(|i| format!("\"acct-{i:06}\"")).collect();
        let filters = format!("{{\"accounts\":[{}]}}", ids.join(","));
        format!(
            "POST /api/metrics HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{filters}",
            filters.len()
        )
        .into_bytes()
    };
    // A browser's head with a 6 KB session cookie, and one past 8 KiB.
    let get = |cookie: usize| {
        format!(
            "GET /api/filter-options?region=north HTTP/1.1\r\nHost: proxy\r\nCookie: session={}\r\n\r\n",
            "c".repeat(cookie)
        )
        .into_bytes()
    };
    let (large_post, larger_post) = (post(1_500), post(3_000));
    let (large_head, larger_head) = (get(6_000), get(9_000));
    assert!((20_000..32_768).contains(&large_post.len()) && larger_post.len() > 32_768);
    assert!((6_000..8_192).contains(&large_head.len()) && larger_head.len() > 8_192);

    // Each miss is hyper's, which parks at once after it.
    let mut connection = KeepAlive::open(&proxy).await;
    let mut misses = Vec::new();
    for (n, request) in [&large_post, &large_head, &larger_post, &larger_head]
        .into_iter()
        .enumerate()
    {
        let miss = connection.get(request).await;
        assert_eq!(miss.x_cache(), "miss");
        log.wait_for_parked(n + 1).await;
        misses.push(miss);
    }
    // Within the bounds, a hit is the express lane's: no hyper connection
    // starts, so none is parked.
    for (request, miss) in [(&large_post, &misses[0]), (&large_head, &misses[1])] {
        let hit = connection.get(request).await;
        assert_eq!(hit.x_cache(), "hit");
        assert_eq!(hit.body, miss.body);
    }
    tokio::time::sleep(PARK_AFTER * 6).await;
    assert_eq!(log.parked(), 4, "no hyper connection for the hits");
    // Past them, hyper answers the hit and parks when it is quiet.
    for (n, (request, miss)) in [(&larger_post, &misses[2]), (&larger_head, &misses[3])]
        .into_iter()
        .enumerate()
    {
        let hit = connection.get(request).await;
        assert_eq!(hit.x_cache(), "hit");
        assert_eq!(hit.body, miss.body);
        log.wait_for_parked(5 + n).await;
    }
    assert_eq!(origin.count("/api/metrics"), 2);
    assert_eq!(origin.count("/api/filter-options"), 2);
}
