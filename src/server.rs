//! Listeners and connections: the main listener (plain HTTP or TLS) and the
//! optional admin listener, HTTP/1.1 and HTTP/2 on each via hyper-util's
//! auto builder, the per-connection limits, graceful shutdown on
//! SIGTERM/SIGINT, the configuration and TLS reload on SIGHUP, and the background purge of
//! expired entries. With `snapshot_file` set, the store is loaded from it
//! at bind and written to it once the connections have drained.
//!
//! Limits, all from [`Limits`]: each listener serves at most
//! `max_connections` at once and closes further ones on accept; a new
//! connection must finish its TLS handshake and send a first request head
//! within `header_read_timeout`, and every later head (or an idle HTTP/1
//! keep-alive) gets the same time from hyper; an HTTP/2 connection with no
//! open request is closed after that time too; heads over `max_header_bytes`
//! get 431 (HTTP/1) or a refused stream (HTTP/2). Request bodies and answer
//! writes have their own deadlines in `client_io.rs`, and `admission.rs`
//! refuses conflicting framing and bad `Host` fields.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::background;
use crate::body::ProxyBody;
use crate::cache::snapshot;
use crate::client_io::{ClientDeadlines, ClientIo, ConnectionWatch, OnStall, Stall};
use crate::config::{Config, Limits};
use crate::error::{BoxError, ProxyError};
use crate::framing::FRAMING_CONFLICT;
use crate::metrics::Metrics;
use crate::proxy::{ClientInfo, Proxy, Served};
use crate::respond::{self, CacheStatus};
use crate::tls::{Tls, TlsError};
use crate::upstream::UpstreamSetupError;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for admin requests on {addr}")]
    BindAdmin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the upstream client")]
    Upstream(#[from] UpstreamSetupError),
    #[error("cannot set up TLS")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::WriteError),
}

/// Which paths a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The only listener: proxies, and answers `/api/cache/*` itself.
    Combined,
    /// The main listener when `admin_listen` is set: proxies only. The admin
    /// API answers 404 here rather than being passed upstream, so it is
    /// unreachable from the public port and the backend never sees
    /// `/api/cache/*` calls meant for dashcache.
    Public,
    /// The `admin_listen` listener: `/api/cache/*` only, 404 for the rest.
    Admin,
}

impl Surface {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Combined => "combined",
            Self::Public => "public",
            Self::Admin => "admin",
        }
    }

    /// Whether a request for `path` is answered on this listener.
    pub fn answers(self, path: &str) -> bool {
        let admin = crate::admin::is_admin_path(path);
        match self {
            Self::Combined => true,
            Self::Public => !admin,
            Self::Admin => admin,
        }
    }

    /// The 404 for a path this listener does not answer.
    pub fn refuse(self, path: &str) -> Served {
        debug!(
            path,
            listener = self.as_str(),
            "path not served on this listener"
        );
        Served {
            response: respond::error(&ProxyError::AdminNotFound {
                path: path.to_owned(),
            }),
            cache: CacheStatus::Admin,
            route: Arc::from("admin"),
            trace: crate::proxy::Trace::default(),
        }
    }
}

/// A bound, not yet running, proxy.
pub struct Server {
    main: TcpListener,
    admin: Option<TcpListener>,
    tls: Option<Arc<Tls>>,
    /// SIGHUP, registered at bind so that a hangup arriving before `run`
    /// polls it is queued rather than killing the process.
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
    proxy: Arc<Proxy>,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let tls = config.tls.as_ref().map(Tls::new).transpose()?.map(Arc::new);
        let proxy = Arc::new(Proxy::new(config)?);
        if let Some(path) = &proxy.config().cache.snapshot_file {
            snapshot::check_writable(path)?;
            snapshot::restore(proxy.store.memory(), &proxy.vary, path);
        }
        let addr = proxy.config().listen;
        let main = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let admin = match proxy.config().admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::BindAdmin { addr, source })?,
            ),
            None => None,
        };
        #[cfg(unix)]
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGHUP; configuration and TLS reload disabled");
                None
            }
        };
        Ok(Self {
            main,
            admin,
            tls,
            #[cfg(unix)]
            hangup,
            proxy,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.main
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The admin listener's address, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// TLS termination, when configured (its `reload` is what SIGHUP runs).
    pub fn tls(&self) -> Option<&Arc<Tls>> {
        self.tls.as_ref()
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets open
    /// requests finish for up to `shutdown_timeout`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            main,
            admin,
            tls,
            #[cfg(unix)]
            hangup,
            proxy,
        } = self;
        let config = proxy.config();
        let limits = &config.limits;
        info!(
            listen = %main.local_addr().map_or_else(|_| config.listen.to_string(), |a| a.to_string()),
            tls = tls.is_some(),
            admin_listen = %admin.as_ref().and_then(|l| l.local_addr().ok()).map_or_else(|| "-".to_owned(), |a| a.to_string()),
            upstream = proxy.upstream.name(),
            cache_enabled = config.cache.enabled,
            ttl_s = config.cache.ttl.as_secs(),
            maxsize = config.cache.maxsize,
            routes = config.routes.iter().count(),
            max_connections = limits.max_connections,
            credential_headers = %config.cache.credential_headers.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(","),
            "dashcache listening"
        );
        let purge = tokio::spawn(purge_expired(proxy.clone()));
        let history = tokio::spawn(crate::admin::history::sample(proxy.clone()));
        let redis_watch = crate::admin::history::join_shared_tier(
            &proxy,
            main.local_addr().map_or(config.listen.port(), |a| a.port()),
        );
        #[cfg(unix)]
        let reload =
            hangup.map(|hangup| tokio::spawn(reload_on_hangup(hangup, proxy.clone(), tls.clone())));

        let builder = connection_builder(limits);
        let deadlines = client_deadlines(limits);
        let graceful = GracefulShutdown::new();
        let mut main = Listener::new(
            main,
            if admin.is_some() {
                Surface::Public
            } else {
                Surface::Combined
            },
            tls,
            limits.max_connections,
        );
        let mut admin =
            admin.map(|l| Listener::new(l, Surface::Admin, None, limits.max_connections));

        tokio::pin!(shutdown);
        loop {
            let (on_admin, accepted) = tokio::select! {
                accepted = main.socket.accept() => (false, accepted),
                accepted = accept_or_pend(admin.as_ref()) => (true, accepted),
                () = &mut shutdown => break,
            };
            let listener = match admin.as_mut() {
                Some(admin) if on_admin => admin,
                _ => &mut main,
            };
            let (stream, addr) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(listener = listener.surface.as_str(), error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = listener.admit(addr) else {
                drop(stream);
                continue;
            };
            tokio::spawn(serve_connection(
                stream,
                Connection {
                    addr,
                    surface: listener.surface,
                    tls: listener.tls.clone(),
                    deadline: tokio::time::Instant::now() + limits.header_read_timeout,
                    deadlines,
                    idle_timeout: limits.header_read_timeout,
                    slot,
                },
                builder.clone(),
                proxy.clone(),
                graceful.watcher(),
            ));
        }

        drop((main, admin));
        purge.abort();
        history.abort();
        if let Some(watch) = redis_watch {
            watch.abort();
        }
        #[cfg(unix)]
        if let Some(reload) = reload {
            reload.abort();
        }
        let timeout = config.shutdown_timeout;
        info!(
            timeout_s = timeout.as_secs(),
            "shutting down: no new connections, draining open ones"
        );
        tokio::select! {
            () = graceful.shutdown() => info!("all connections closed"),
            () = tokio::time::sleep(timeout) => warn!("shutdown timeout reached; closing remaining connections"),
        }
        if let Some(path) = &config.cache.snapshot_file {
            snapshot::save(proxy.store.memory(), path);
        }
    }
}

/// hyper settings shared by every connection, from the configured limits.
fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    // Validated in config: 8 KiB ..= 16 MiB, so both conversions are exact.
    let max_header_bytes = limits.max_header_bytes as usize;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper starts this timer whenever it waits for a head, so it also
        // ends a keep-alive connection that stays idle this long.
        .header_read_timeout(limits.header_read_timeout)
        // A head that does not fit the read buffer is answered 431.
        .max_buf_size(max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_header_bytes as u32)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.http2_max_pending_accept_reset_streams)
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout);
    builder
}

/// The deadlines every connection's bytes get (see `client_io.rs`).
fn client_deadlines(limits: &Limits) -> ClientDeadlines {
    ClientDeadlines {
        // Validated in config: at most 16 MiB.
        max_header_bytes: limits.max_header_bytes as usize,
        body_read_timeout: limits.body_read_timeout,
        body_min_rate: limits.body_min_rate,
        send_timeout: limits.send_timeout,
    }
}

/// Counts and logs a client that ran out a body or send deadline.
fn stall_reporter(proxy: &Arc<Proxy>, client: SocketAddr) -> OnStall {
    let proxy = proxy.clone();
    Arc::new(move |stall| {
        let metrics = &proxy.metrics;
        match stall {
            Stall::Body => {
                Metrics::bump(&metrics.body_timeouts);
                info!(
                    client = %client.ip(),
                    stall = stall.as_str(),
                    "request body too slow (body_read_timeout, body_min_rate); answering 408 and closing"
                );
            }
            Stall::Send => {
                Metrics::bump(&metrics.send_timeouts);
                info!(
                    client = %client.ip(),
                    stall = stall.as_str(),
                    "client left its answer unread (send_timeout); closing"
                );
            }
        }
    })
}

/// A listening socket and what its connections get.
struct Listener {
    socket: TcpListener,
    surface: Surface,
    tls: Option<Arc<Tls>>,
    /// One permit per open connection. A semaphore rather than a counter so
    /// that the permit travels with the connection's task and is returned
    /// however that task ends.
    slots: Arc<Semaphore>,
    max_connections: usize,
    refusals: Refusals,
}

impl Listener {
    fn new(
        socket: TcpListener,
        surface: Surface,
        tls: Option<Arc<Tls>>,
        max_connections: usize,
    ) -> Self {
        Self {
            socket,
            surface,
            tls,
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            refusals: Refusals::default(),
        }
    }

    /// A slot for a new connection, or `None` (and a warning) at the cap.
    /// Closing at once, rather than leaving clients in the accept backlog,
    /// tells them (and a load balancer) to go elsewhere instead of waiting.
    fn admit(&mut self, client: SocketAddr) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                self.refusals
                    .note(client, self.surface, self.max_connections, Instant::now());
                None
            }
        }
    }
}

/// Keeps a connection flood from flooding the log: one warning a second at
/// most, carrying the number of connections closed since the last one.
#[derive(Default)]
struct Refusals {
    last_warning: Option<Instant>,
    since_warning: u64,
}

impl Refusals {
    fn note(&mut self, client: SocketAddr, surface: Surface, cap: usize, now: Instant) {
        self.since_warning += 1;
        if self
            .last_warning
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        warn!(
            client = %client,
            listener = surface.as_str(),
            max_connections = cap,
            refused = self.since_warning,
            "connection limit reached; closing new connections"
        );
        self.last_warning = Some(now);
        self.since_warning = 0;
    }
}

/// An accepted connection and what it may do.
struct Connection {
    addr: SocketAddr,
    surface: Surface,
    tls: Option<Arc<Tls>>,
    /// TLS handshake and first request head must both be done by then.
    deadline: tokio::time::Instant,
    /// Request body and answer write deadlines.
    deadlines: ClientDeadlines,
    /// How long an HTTP/2 connection may stay without an open request.
    idle_timeout: Duration,
    /// Returned to the listener when the connection ends.
    slot: OwnedSemaphorePermit,
}

/// Accepts on `listener`, or waits forever when there is none.
async fn accept_or_pend(listener: Option<&Listener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.socket.accept().await,
        None => std::future::pending().await,
    }
}

/// Runs one connection to its end: TLS, the first-request deadline, hyper.
async fn serve_connection(
    stream: TcpStream,
    connection: Connection,
    builder: auto::Builder<TokioExecutor>,
    proxy: Arc<Proxy>,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let addr = connection.addr;
    match connection.tls.clone() {
        None => serve_http(stream, "http", connection, builder, proxy, watcher).await,
        Some(tls) => {
            match tokio::time::timeout_at(connection.deadline, Box::pin(tls.accept(stream))).await {
                // Boxed so that the task of every plain connection is not as
                // large as a TLS session.
                Ok(Ok(stream)) => {
                    Box::pin(serve_http(
                        stream, "https", connection, builder, proxy, watcher,
                    ))
                    .await
                }
                Ok(Err(err)) => debug!(client = %addr, error = %err, "TLS handshake failed"),
                Err(_) => {
                    debug!(client = %addr, "TLS handshake not done within header_read_timeout; closing")
                }
            }
        }
    }
}

async fn serve_http<IO>(
    io: IO,
    scheme: &'static str,
    connection: Connection,
    builder: auto::Builder<TokioExecutor>,
    proxy: Arc<Proxy>,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Connection {
        addr,
        surface,
        deadline,
        deadlines,
        idle_timeout,
        slot: _slot,
        ..
    } = connection;
    let client = ClientInfo {
        addr,
        scheme,
        surface,
    };
    // Until the first request the connection has only the deadline, which
    // also covers what hyper's own head timeout does not: a client that
    // sends nothing, or stalls inside the HTTP/2 preface.
    let watch = Arc::new(ConnectionWatch::default());
    let on_stall = stall_reporter(&proxy, addr);
    let service = {
        let watch = watch.clone();
        service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            if watch.next_request_conflicts() {
                // Its head had Content-Length and Transfer-Encoding (seen by
                // ClientIo): the pipeline refuses it with 400.
                request
                    .headers_mut()
                    .insert(FRAMING_CONFLICT, http::HeaderValue::from_static("1"));
            }
            let proxy = proxy.clone();
            let stream = (request.version() == http::Version::HTTP_2).then(|| {
                watch.stream_opened();
                StreamGuard(watch.clone())
            });
            // Boxed per request: hyper keeps one slot for the service's
            // future for the whole life of an HTTP/1 connection, and the
            // pipeline's future is many KiB. Inline, every idle keep-alive
            // connection would keep that much memory.
            Box::pin(async move {
                let response = proxy.handle(request, client).await;
                Ok::<_, Infallible>(response.map(|body| Tracked {
                    body,
                    _stream: stream,
                }))
            })
        })
    };
    let io = TokioIo::new(ClientIo::new(io, deadlines, watch.clone(), on_stall));
    let served = watcher.watch(builder.serve_connection(io, service).into_owned());
    tokio::pin!(served);
    let mut check = deadline;
    let result = loop {
        tokio::select! {
            result = served.as_mut() => break result,
            () = tokio::time::sleep_until(check) => {}
        }
        if watch.requests() == 0 {
            debug!(client = %addr, "no request within header_read_timeout; closing");
            return;
        }
        if !watch.is_http2() {
            // hyper's own head timer closes an idle HTTP/1 connection.
            break served.await;
        }
        // hyper keeps an HTTP/2 connection whose client answers PINGs
        // forever: close it once no request has been open for
        // header_read_timeout, as an idle HTTP/1 connection is.
        let now = tokio::time::Instant::now();
        check = match watch.idle_since() {
            Some(since) if since + idle_timeout <= now => {
                debug!(client = %addr, "HTTP/2 connection idle for header_read_timeout; closing");
                return;
            }
            Some(since) => since + idle_timeout,
            None => now + idle_timeout,
        };
    };
    if let Err(err) = result {
        debug!(client = %addr, error = %err, "connection ended with an error");
    }
}

/// An answer body that tells the connection when its HTTP/2 stream ends
/// (finished or dropped), for the idle close.
struct Tracked {
    body: ProxyBody,
    _stream: Option<StreamGuard>,
}

struct StreamGuard(Arc<ConnectionWatch>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.stream_done();
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

async fn purge_expired(proxy: Arc<Proxy>) {
    let mut interval = tokio::time::interval(proxy.config().cache.purge_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        // A walk of the store: on a background thread, never a request worker.
        let walker = proxy.clone();
        let Some(removed) =
            background::run("purge", move || walker.store.purge_expired(Instant::now())).await
        else {
            continue;
        };
        if removed > 0 {
            debug!(removed, "expired entries purged");
        }
    }
}

/// The one SIGHUP handler: re-reads proxy.toml (see `reload.rs`), then the
/// TLS certificate when TLS is on. Neither touches the cache or any open
/// connection.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    proxy: Arc<Proxy>,
    tls: Option<Arc<Tls>>,
) {
    while hangup.recv().await.is_some() {
        info!("SIGHUP received: reloading the configuration");
        proxy.reload_config();
        if let Some(tls) = &tls {
            tls.reload_and_log();
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            warn!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("SIGINT received"),
        () = terminate => info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_combined_listener_answers_everything() {
        assert!(Surface::Combined.answers("/api/cache/stats"));
        assert!(Surface::Combined.answers("/api/metrics"));
    }

    #[test]
    fn the_public_listener_hides_the_admin_api() {
        assert!(!Surface::Public.answers("/api/cache/stats"));
        assert!(!Surface::Public.answers("/api/cache"));
        assert!(Surface::Public.answers("/api/cached-reports"));
        assert!(Surface::Public.answers("/api/metrics"));
    }

    #[test]
    fn the_admin_listener_answers_only_the_admin_api() {
        assert!(Surface::Admin.answers("/api/cache/clear"));
        assert!(!Surface::Admin.answers("/api/metrics"));
        assert!(!Surface::Admin.answers("/"));
    }

    #[test]
    fn refusals_warn_at_most_once_a_second() {
        let client: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let start = Instant::now();
        let mut refusals = Refusals::default();
        refusals.note(client, Surface::Combined, 1, start);
        assert_eq!(refusals.since_warning, 0, "the first refusal warns");
        refusals.note(
            client,
            Surface::Combined,
            1,
            start + Duration::from_millis(10),
        );
        refusals.note(
            client,
            Surface::Combined,
            1,
            start + Duration::from_millis(20),
        );
        assert_eq!(refusals.since_warning, 2, "later ones are counted");
        refusals.note(client, Surface::Combined, 1, start + Duration::from_secs(1));
        assert_eq!(refusals.since_warning, 0, "a second later, warns again");
    }
}
