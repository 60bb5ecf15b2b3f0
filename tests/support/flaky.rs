//! A flapping origin for the resilience tests: it can answer normally,
//! answer a status (500, 503), cut every connection without an answer, or
//! stop listening altogether (connection refused) and come back on the same
//! port. It records how many requests it served per path and, per request
//! identity (path, query and body), the most it ever had open at once, so a
//! test can assert "never more than one upstream request per key at a time".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// How the origin treats the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 with a JSON body naming the data version.
    Ok,
    /// This status, with a small JSON error body.
    Fail(u16),
    /// The connection is closed without an answer.
    Cut,
}

#[derive(Default)]
struct Counts {
    served: HashMap<String, usize>,
    open: HashMap<String, usize>,
    max_open: HashMap<String, usize>,
}

struct State {
    mode: Mutex<Mode>,
    delay: Mutex<Duration>,
    /// Put in every 200 body, so a test tells old data from new.
    version: AtomicU64,
    total: AtomicUsize,
    counts: Mutex<Counts>,
    /// Extra headers on every 200 answer.
    headers: Mutex<Vec<(String, String)>>,
}

pub struct FlakyOrigin {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl FlakyOrigin {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            mode: Mutex::new(Mode::Ok),
            delay: Mutex::new(Duration::ZERO),
            version: AtomicU64::new(1),
            total: AtomicUsize::new(0),
            counts: Mutex::default(),
            headers: Mutex::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        Self {
            addr,
            state,
            accept: Mutex::new(Some(accept)),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Time every request is held before it is answered (or cut).
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    pub fn set_version(&self, version: u64) {
        self.state.version.store(version, Ordering::SeqCst);
    }

    /// Adds a header to every 200 answer.
    pub fn add_header(&self, name: &str, value: &str) {
        self.state
            .headers
            .lock()
            .unwrap()
            .push((name.to_owned(), value.to_owned()));
    }

    /// Stops listening and drops every open connection: connections are
    /// refused until [`FlakyOrigin::resume`].
    pub fn stop(&self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&self) {
        self.stop();
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(err) => {
                    attempts += 1;
                    assert!(attempts < 100, "cannot rebind {}: {err}", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        *self.accept.lock().unwrap() =
            Some(tokio::spawn(accept_loop(listener, self.state.clone())));
    }

    pub fn total(&self) -> usize {
        self.state.total.load(Ordering::SeqCst)
    }

    /// Requests received for `path` (answered or not).
    pub fn count(&self, path: &str) -> usize {
        let counts = self.state.counts.lock().unwrap();
        counts.served.get(path).copied().unwrap_or(0)
    }

    /// The most requests with one identity (path, query, body) the origin
    /// ever had open at once.
    pub fn max_open_per_key(&self) -> usize {
        let counts = self.state.counts.lock().unwrap();
        counts.max_open.values().copied().max().unwrap_or(0)
    }
}

impl Drop for FlakyOrigin {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { answer(request, &state).await }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Decrements the open count of a request identity however the request ends.
struct Open<'a> {
    state: &'a State,
    identity: String,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let mut counts = self.state.counts.lock().unwrap();
        if let Some(open) = counts.open.get_mut(&self.identity) {
            *open -= 1;
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cut by the test")]
struct Cut;

async fn answer(request: Request<Incoming>, state: &State) -> Result<Response<Full<Bytes>>, Cut> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let serial = state.total.fetch_add(1, Ordering::SeqCst) + 1;
    let identity = format!(
        "{} {}",
        parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        String::from_utf8_lossy(&body)
    );
    let _open = {
        let mut counts = state.counts.lock().unwrap();
        *counts.served.entry(path.clone()).or_default() += 1;
        let open = counts.open.entry(identity.clone()).or_default();
        *open += 1;
        let now_open = *open;
        let max = counts.max_open.entry(identity.clone()).or_default();
        *max = (*max).max(now_open);
        Open { state, identity }
    };
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mode = *state.mode.lock().unwrap();
    let (status, body) = match mode {
        Mode::Cut => return Err(Cut),
        Mode::Fail(code) => (
            StatusCode::from_u16(code).expect("valid status"),
            json!({"error": "origin failing", "status": code}),
        ),
        Mode::Ok => (
            StatusCode::OK,
            json!({
                "path": path,
                "query": parts.uri.query().unwrap_or(""),
                "request_body": String::from_utf8_lossy(&body),
                "version": state.version.load(Ordering::SeqCst),
            }),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-origin-serial", HeaderValue::from(serial));
    if status == StatusCode::OK {
        for (name, value) in state.headers.lock().unwrap().iter() {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
    }
    Ok(response)
}
