//! Shared harness for the integration tests: a programmable, counting origin
//! on 127.0.0.1:0 (plus a raw-TCP origin for broken upstreams), a proxy
//! spawner, and small HTTP/1 and HTTP/2 clients.
//!
//! Each test binary uses only part of this module, hence the `dead_code`
//! allowance.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub mod binary;
pub mod flaky;
pub mod redis;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Upper bound for every "wait until" loop in the suite.
pub const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- gate

/// A latch the origin can wait on, so a test decides exactly when a slow
/// answer is released (no timing guesses).
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

// ---------------------------------------------------------------- origin

/// How the origin answers one path.
#[derive(Clone, Default)]
pub struct Behaviour {
    pub delay: Option<Duration>,
    pub gate: Option<Gate>,
    pub status: Option<StatusCode>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Replaces the default JSON body.
    pub body: Option<Bytes>,
    /// Copies this request header's value into the default JSON body.
    pub echo_header: Option<HeaderName>,
    /// Sends this `ETag`, and answers 304 to a matching `If-None-Match`.
    pub etag: Option<String>,
}

impl Behaviour {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(StatusCode::from_u16(status).expect("valid status"));
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((
            HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            HeaderValue::from_str(value).expect("valid header value"),
        ));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    pub fn gate(mut self, gate: &Gate) -> Self {
        self.gate = Some(gate.clone());
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    pub fn etag(mut self, tag: &str) -> Self {
        self.etag = Some(tag.to_owned());
        self
    }

    pub fn echo_header(mut self, name: &str) -> Self {
        self.echo_header =
            Some(HeaderName::from_bytes(name.as_bytes()).expect("valid header name"));
        self
    }
}

/// One request as the origin received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    /// Path and query exactly as received.
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
struct OriginState {
    total: AtomicUsize,
    per_path: Mutex<HashMap<String, usize>>,
    last: Mutex<Option<Seen>>,
    behaviours: Mutex<HashMap<String, Behaviour>>,
}

/// An in-process HTTP origin that counts what it serves. Requests are
/// counted when their head and body have arrived, before any delay or gate;
/// every answer carries `x-origin-serial`, the request's ordinal, so a test
/// can tell which upstream request an answer came from.
pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<OriginState>,
    accept: JoinHandle<()>,
}

impl Origin {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState::default());
        let accept = tokio::spawn(serve_origin(listener, state.clone()));
        Self {
            addr,
            state,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets how `path` (without query) is answered.
    pub fn on(&self, path: &str, behaviour: Behaviour) {
        self.state
            .behaviours
            .lock()
            .unwrap()
            .insert(path.to_owned(), behaviour);
    }

    pub fn total(&self) -> usize {
        self.state.total.load(Ordering::SeqCst)
    }

    /// Requests served for `path` (without query).
    pub fn count(&self, path: &str) -> usize {
        self.state
            .per_path
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn last(&self) -> Option<Seen> {
        self.state.last.lock().unwrap().clone()
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.last().expect("the origin has seen a request").headers
    }

    /// Waits until the origin has received `n` requests in total.
    pub async fn wait_for_total(&self, n: usize) {
        eventually(&format!("origin to receive {n} requests"), || {
            self.total() >= n
        })
        .await;
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve_origin(listener: TcpListener, state: Arc<OriginState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(origin_answer(request, &state).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn origin_answer(request: Request<Incoming>, state: &OriginState) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let seen = Seen {
        method: parts.method.clone(),
        uri: parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    };
    let behaviour = {
        let behaviours = state.behaviours.lock().unwrap();
        behaviours.get(&path).cloned().unwrap_or_default()
    };
    *state.last.lock().unwrap() = Some(seen);
    *state
        .per_path
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default() += 1;
    let serial = state.total.fetch_add(1, Ordering::SeqCst) + 1;

    if let Some(gate) = &behaviour.gate {
        gate.wait().await;
    }
    if let Some(delay) = behaviour.delay {
        tokio::time::sleep(delay).await;
    }
    let body = behaviour.body.clone().unwrap_or_else(|| {
        let echoed = behaviour
            .echo_header
            .as_ref()
            .and_then(|name| parts.headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        default_body(&parts.method, &path, parts.uri.query(), &body, echoed)
    });
    let not_modified = behaviour.etag.as_deref().is_some_and(|tag| {
        parts
            .headers
            .get(http::header::IF_NONE_MATCH)
            .is_some_and(|v| v.as_bytes() == tag.as_bytes())
    });
    let body = if not_modified { Bytes::new() } else { body };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = match behaviour.status {
        _ if not_modified => StatusCode::NOT_MODIFIED,
        Some(status) => status,
        None => StatusCode::OK,
    };
    let headers = response.headers_mut();
    headers.insert("x-origin-serial", HeaderValue::from(serial));
    if let Some(tag) = &behaviour.etag {
        headers.insert(
            http::header::ETAG,
            HeaderValue::from_str(tag).expect("valid etag"),
        );
    }
    if behaviour.body.is_none() && !not_modified {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    for (name, value) in &behaviour.headers {
        headers.append(name.clone(), value.clone());
    }
    response
}

/// The origin's default answer: JSON derived from the request, so equal
/// requests get equal bodies and different ones differ.
pub fn default_body(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    echoed: Option<String>,
) -> Bytes {
    let mut value = json!({
        "method": method.as_str(),
        "path": path,
        "query": query.unwrap_or(""),
        "request_body": String::from_utf8_lossy(body),
    });
    if let Some(echoed) = echoed {
        value["echo"] = Value::String(echoed);
    }
    Bytes::from(value.to_string())
}

// ---------------------------------------------------------------- raw origin

/// One step of a raw origin's answer.
#[derive(Clone, Debug)]
pub enum Step {
    Write(Vec<u8>),
    Sleep(Duration),
    /// Keep the connection open and silent forever.
    Hang,
    /// Wait for the next request on the same connection (a keep-alive
    /// client reusing it), read it, and go on without answering it.
    ReadRequest,
    /// Abort the connection with a TCP reset (RST), not a clean close.
    Reset,
}

/// A TCP origin that reads one request per connection and answers with a
/// fixed byte script, then closes: for upstreams that break HTTP.
pub struct RawOrigin {
    pub addr: SocketAddr,
    served: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl RawOrigin {
    pub async fn start(script: Vec<Step>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw origin");
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let script = script.clone();
                let counter = counter.clone();
                tokio::spawn(raw_answer(stream, script, counter));
            }
        });
        Self {
            addr,
            served,
            accept,
        }
    }

    /// Sends `Content-Length: 1000`, then 10 bytes, then closes.
    pub async fn truncated() -> Self {
        Self::start(vec![Step::Write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n0123456789".to_vec(),
        )])
        .await
    }

    /// Answers with bytes that are not HTTP.
    pub async fn garbage() -> Self {
        Self::start(vec![Step::Write(
            b"this is not http at all\r\n\r\n\x00\x01\x02".to_vec(),
        )])
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests whose head (and declared body) arrived.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn raw_answer(mut stream: TcpStream, script: Vec<Step>, served: Arc<AtomicUsize>) {
    if read_request(&mut stream).await.is_none() {
        return;
    }
    served.fetch_add(1, Ordering::SeqCst);
    for step in script {
        match step {
            Step::Write(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
            }
            Step::Sleep(delay) => tokio::time::sleep(delay).await,
            Step::Hang => std::future::pending::<()>().await,
            Step::ReadRequest => {
                if read_request(&mut stream).await.is_none() {
                    return;
                }
            }
            Step::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
        }
    }
    let _ = stream.shutdown().await;
}

/// Reads one request head and its `Content-Length` body; `None` on EOF.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An address nothing listens on (bound, then released).
pub async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

// ---------------------------------------------------------------- proxy

/// A running dashcache; shut down when dropped.
pub struct ProxyHandle {
    pub addr: SocketAddr,
    pub proxy: Arc<dashcache::proxy::Proxy>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts dashcache on 127.0.0.1:0 in front of `upstream`, configured by
/// `toml` (a proxy.toml snippet).
pub async fn spawn_proxy(upstream: &str, toml: &str) -> ProxyHandle {
    let file = dashcache::config::FileConfig::parse(toml, std::path::Path::new("test.toml"))
        .expect("test config parses");
    let cli = dashcache::Cli {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        upstream: Some(upstream.to_owned()),
        ..Default::default()
    };
    let config = dashcache::Config::resolve(&cli, file, None).expect("test config is valid");
    start(config).await
}

/// Starts dashcache with a ready configuration.
pub async fn start(config: dashcache::Config) -> ProxyHandle {
    let server = dashcache::Server::bind(config).await.expect("proxy binds");
    let addr = server.local_addr();
    let proxy = server.proxy().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    ProxyHandle {
        addr,
        proxy,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl ProxyHandle {
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// Signals shutdown; the returned handle resolves when `run` returns.
    pub fn shutdown(&mut self) -> JoinHandle<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("shutdown is called once")
    }

    /// `GET /api/cache/stats`'s `cache` object.
    pub async fn stats(&self) -> Value {
        let reply = Client::new().get(&self.url("/api/cache/stats")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "stats answers 200: {}",
            reply.text()
        );
        reply.json()["cache"].clone()
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

// ---------------------------------------------------------------- client

/// A complete answer as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The `X-Cache` header ("" when absent).
    pub fn x_cache(&self) -> &str {
        self.header("x-cache")
    }

    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `ttl=` member of `Cache-Status`, if any.
    pub fn cache_status_ttl(&self) -> Option<u64> {
        self.header("cache-status")
            .split(';')
            .find_map(|p| p.trim().strip_prefix("ttl="))
            .and_then(|t| t.parse().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// Asserts the seed's error shape and returns the message.
    pub fn error_message(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            "application/json",
            "error answers are JSON"
        );
        let json = self.json();
        assert_eq!(json["status"], "error", "{json}");
        let message = json["message"]
            .as_str()
            .unwrap_or_else(|| panic!("message is a string: {json}"));
        assert!(!message.is_empty(), "error message is not empty");
        message.to_owned()
    }
}

/// A pooled hyper-util legacy client (HTTP/1, or HTTP/2 prior knowledge).
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        Self { inner }
    }

    pub fn http2() -> Self {
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        Self { inner }
    }

    pub async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, BoxError> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into()))?;
        let response = tokio::time::timeout(PATIENCE, self.inner.request(request)).await??;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(PATIENCE, body.collect())
            .await??
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let description = format!("{method} {url}");
        self.try_send(method, url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{description} failed: {e:?}"))
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn post(&self, url: &str, body: &str) -> Reply {
        self.send(
            Method::POST,
            url,
            &[("content-type", "application/json")],
            body.to_owned(),
        )
        .await
    }
}

/// An answer read off a raw socket (the request must end the connection,
/// e.g. with `Connection: close`).
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// Lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Writes `request` verbatim and reads the answer until the server closes.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.expect("connect to proxy");
    stream.write_all(request).await.expect("write request");
    // A reset after the answer (the server closing with request bytes
    // unread) ends the read but keeps what arrived.
    RawReply::parse(&read_until_closed(&mut stream).await)
}

impl RawReply {
    /// One answer as it came off the wire: head, then body.
    pub fn parse(answer: &[u8]) -> Self {
        let head_end = find(answer, b"\r\n\r\n").expect("a complete answer head") + 4;
        let head = String::from_utf8_lossy(&answer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        RawReply {
            status,
            headers,
            body: answer[head_end..].to_vec(),
        }
    }
}

// ---------------------------------------------------------------- waiting

/// Polls `condition` every 10 ms until it holds; panics after [`PATIENCE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The route config most tests use: the seed's dashboard functions.
pub const DASHBOARD_ROUTES: &str = r#"
[[route]]
name = "get_metrics"
path = "/api/metrics"
methods = ["POST"]

[[route]]
name = "get_actions"
path = "/api/actions"
methods = ["POST"]

[[route]]
name = "get_filter_options"
path = "/api/filter-options"
methods = ["GET"]

[[route]]
name = "health"
path = "/health"
cache = false
"#;

// ---------------------------------------------------------------- listeners and TLS

/// A running dashcache with what [`ProxyHandle`] lacks: the admin listener's
/// address and the TLS termination (for reloads). Derefs to the handle.
pub struct ServerHandle {
    pub handle: ProxyHandle,
    pub admin_addr: Option<SocketAddr>,
    pub tls: Option<Arc<dashcache::tls::Tls>>,
}

impl std::ops::Deref for ServerHandle {
    type Target = ProxyHandle;

    fn deref(&self) -> &ProxyHandle {
        &self.handle
    }
}

impl std::ops::DerefMut for ServerHandle {
    fn deref_mut(&mut self) -> &mut ProxyHandle {
        &mut self.handle
    }
}

impl ServerHandle {
    /// `http://ADMIN_ADDR{path_and_query}`
    pub fn admin_url(&self, path_and_query: &str) -> String {
        let addr = self.admin_addr.expect("admin_listen is configured");
        format!("http://{addr}{path_and_query}")
    }
}

/// Like [`spawn_proxy`], for configs with `admin_listen`, TLS or limits.
pub async fn spawn_server(upstream: &str, toml: &str) -> ServerHandle {
    spawn_server_tuned(upstream, toml, |_| {}).await
}

/// Like [`spawn_server`], with a last change to the resolved configuration,
/// for what is not an option (such as `limits.idle_park_after`).
pub async fn spawn_server_tuned(
    upstream: &str,
    toml: &str,
    tune: impl FnOnce(&mut dashcache::Config),
) -> ServerHandle {
    let file = dashcache::config::FileConfig::parse(toml, std::path::Path::new("test.toml"))
        .expect("test config parses");
    let cli = dashcache::Cli {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        upstream: Some(upstream.to_owned()),
        ..Default::default()
    };
    let mut config = dashcache::Config::resolve(&cli, file, None).expect("test config is valid");
    tune(&mut config);
    let server = dashcache::Server::bind(config).await.expect("proxy binds");
    let addr = server.local_addr();
    let admin_addr = server.admin_addr();
    let tls = server.tls().cloned();
    let proxy = server.proxy().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    ServerHandle {
        handle: ProxyHandle {
            addr,
            proxy,
            shutdown: Some(tx),
            task: Some(task),
        },
        admin_addr,
        tls,
    }
}

/// A certificate authority made for one test, and the PEM files it issues
/// (in a directory removed with it).
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: rustls::pki_types::CertificateDer<'static>,
    pub dir: tempfile::TempDir,
    /// The CA certificate as a PEM file (for `upstream_ca_file`).
    pub cert_file: std::path::PathBuf,
}

/// A server certificate issued by a [`TestCa`] for 127.0.0.1 and localhost.
pub struct Issued {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        let cert_file = dir.path().join(format!("{name}-ca.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("write CA certificate");
        Self {
            issuer: rcgen::Issuer::new(params, key),
            der: cert.der().clone(),
            dir,
            cert_file,
        }
    }

    /// Issues a server certificate for 127.0.0.1 and localhost, written to
    /// `{name}.pem` and `{name}.key` in the CA's directory.
    pub fn issue(&self, name: &str) -> Issued {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        let cert_file = self.dir.path().join(format!("{name}.pem"));
        let key_file = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("write certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        Issued {
            cert_file,
            key_file,
            der: cert.der().clone(),
        }
    }

    /// A rustls client trusting only this CA and offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.der.clone())
            .expect("CA certificate is valid");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A rustls server presenting `issued`, offering h2 and http/1.1.
    pub fn server_config(&self, issued: &Issued) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        let chain = vec![issued.der.clone()];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&issued.key_file).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key match");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Origin {
    /// The counting origin, served over TLS with `config`.
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState::default());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let served = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = served.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(origin_answer(request, &state).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    /// `https://127.0.0.1:PORT`
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// One client connection over TLS, speaking the protocol ALPN chose.
pub struct TlsConnection {
    /// The ALPN protocol the server picked, if any.
    pub alpn: Option<Vec<u8>>,
    /// The leaf certificate the server presented.
    pub peer_certificate: rustls::pki_types::CertificateDer<'static>,
    authority: String,
    sender: TlsSender,
}

enum TlsSender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// Connects to `addr` over TLS (server name 127.0.0.1) and starts HTTP/2
/// if ALPN chose `h2`, HTTP/1.1 otherwise.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsConnection, BoxError> {
    let tcp = tokio::time::timeout(PATIENCE, TcpStream::connect(addr)).await??;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio::time::timeout(
        PATIENCE,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await??;
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let peer_certificate = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .expect("the server presented a certificate")
        .clone()
        .into_owned();
    let io = TokioIo::new(tls);
    let sender = if alpn.as_deref() == Some(b"h2") {
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(connection);
        TlsSender::Http2(sender)
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        TlsSender::Http1(sender)
    };
    Ok(TlsConnection {
        alpn,
        peer_certificate,
        authority: addr.to_string(),
        sender,
    })
}

impl TlsConnection {
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut request = Request::builder().method(method);
        request = match self.sender {
            // HTTP/2 takes :scheme and :authority from an absolute URI.
            TlsSender::Http2(_) => request.uri(format!("https://{}{path}", self.authority)),
            TlsSender::Http1(_) => request.uri(path).header("host", &self.authority),
        };
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        let response = match &mut self.sender {
            TlsSender::Http1(sender) => {
                tokio::time::timeout(PATIENCE, sender.send_request(request)).await
            }
            TlsSender::Http2(sender) => {
                tokio::time::timeout(PATIENCE, sender.send_request(request)).await
            }
        }
        .expect("the proxy answers in time")
        .expect("the request succeeds");
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(PATIENCE, body.collect())
            .await
            .expect("the body arrives in time")
            .expect("the body is complete")
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn post(&mut self, path: &str, body: &str) -> Reply {
        self.send(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            body.to_owned(),
        )
        .await
    }
}

/// Waits until the peer closes `stream` (EOF or reset) and returns what it
/// sent before; panics if it is still open after [`PATIENCE`].
pub async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => panic!("the server kept the connection open"),
            Ok(Ok(0)) | Ok(Err(_)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
        }
    }
}
