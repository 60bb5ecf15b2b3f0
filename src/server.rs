//! Listener and connections: HTTP/1.1 and HTTP/2 (prior knowledge) on one
//! port via hyper-util's auto builder, graceful shutdown on SIGTERM/SIGINT,
//! and the background purge of expired entries.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::proxy::{ClientInfo, Proxy};
use crate::upstream::UpstreamSetupError;

/// Time a client gets to send a request head (slow-header defence).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the upstream client")]
    Upstream(#[from] UpstreamSetupError),
}

/// A bound, not yet running, proxy.
pub struct Server {
    listener: TcpListener,
    proxy: Arc<Proxy>,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let addr = config.listen;
        let proxy = Arc::new(Proxy::new(config)?);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        Ok(Self { listener, proxy })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets open
    /// requests finish for up to `shutdown_timeout`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self { listener, proxy } = self;
        let config = &proxy.config;
        info!(
            listen = %listener.local_addr().map_or_else(|_| config.listen.to_string(), |a| a.to_string()),
            upstream = proxy.upstream.name(),
            cache_enabled = config.cache.enabled,
            ttl_s = config.cache.ttl.as_secs(),
            maxsize = config.cache.maxsize,
            routes = config.routes.iter().count(),
            "dashcache listening"
        );
        let purge = tokio::spawn(purge_expired(proxy.clone()));

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true);
        builder.http2().timer(TokioTimer::new());
        let graceful = GracefulShutdown::new();

        tokio::pin!(shutdown);
        loop {
            let (stream, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let client = ClientInfo {
                addr,
                scheme: "http",
            };
            let proxy = proxy.clone();
            let service = service_fn(move |request| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(request, client).await) }
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    debug!(client = %addr, error = %err, "connection ended with an error");
                }
            });
        }

        drop(listener);
        purge.abort();
        let timeout = config.shutdown_timeout;
        info!(
            timeout_s = timeout.as_secs(),
            "shutting down: no new connections, draining open ones"
        );
        tokio::select! {
            () = graceful.shutdown() => info!("all connections closed"),
            () = tokio::time::sleep(timeout) => warn!("shutdown timeout reached; closing remaining connections"),
        }
    }
}

async fn purge_expired(proxy: Arc<Proxy>) {
    let mut interval = tokio::time::interval(proxy.config.cache.purge_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let removed = proxy.store.purge_expired(Instant::now());
        if removed > 0 {
            debug!(removed, "expired entries purged");
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
