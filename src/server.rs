//! Listeners: the main listener (plain HTTP or TLS) and the optional admin
//! listener, the connection cap, graceful shutdown on SIGTERM/SIGINT (the
//! drain, `drain.rs`), the configuration and TLS reload on SIGHUP, and the
//! background purge of expired entries. With `snapshot_file` set, the store
//! is loaded from it at bind and written to it once the connections have
//! drained. Each accepted connection is served by `connection.rs` (TLS,
//! HTTP/1.1 or HTTP/2) and, for HTTP/1.1, `keep_alive.rs` (which parks idle
//! keep-alive connections so that they hold little memory).
//!
//! Limits, all from [`crate::config::Limits`]: each listener serves at most
//! `max_connections` at once and closes further ones on accept; a new
//! connection must finish its TLS handshake and send a first request head
//! within `header_read_timeout`, and every later head (or an idle HTTP/1
//! keep-alive) gets the same time from hyper; an HTTP/2 connection with no
//! open request is closed after that time too; heads over `max_header_bytes`
//! get 431 (HTTP/1) or a refused stream (HTTP/2). A parked connection keeps
//! its slot and is closed at the moment an unparked one would be. Request bodies and answer
//! writes have their own deadlines in `client_io.rs`, and `admission.rs`
//! refuses conflicting framing and bad `Host` fields.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::background;
use crate::cache::snapshot;
use crate::config::Config;
use crate::connection::{serve_connection, Connection, Settings};
use crate::drain::Drain;
use crate::error::ProxyError;
use crate::proxy::{Proxy, Served};
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

        let settings = Arc::new(Settings::new(limits));
        let drain = Drain::new();
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
                    slot,
                },
                settings.clone(),
                proxy.clone(),
                drain.watcher(),
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
            () = drain.drain() => info!("all connections closed"),
            () = tokio::time::sleep(timeout) => warn!("shutdown timeout reached; closing remaining connections"),
        }
        if let Some(path) = &config.cache.snapshot_file {
            snapshot::save(proxy.store.memory(), path);
        }
    }
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

/// Accepts on `listener`, or waits forever when there is none.
async fn accept_or_pend(listener: Option<&Listener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.socket.accept().await,
        None => std::future::pending().await,
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
