//! The upstream: one pooled keep-alive client for http and https backends,
//! with connect and response timeouts mapped to 502/504.
//!
//! One hyper-util legacy `Client` is shared by every request: it keeps idle
//! connections per host and negotiates HTTP/2 over TLS via ALPN. A pooled
//! connection is closed after `upstream_idle_timeout` (4 s by default),
//! before the backend's own keep-alive timeout closes it (uvicorn's
//! `--timeout-keep-alive` is 5 s). Should the backend close one anyway just
//! as a request goes out on it, a replayable request (a buffered body: the
//! cacheable reads, and the idempotent methods, which the proxy buffers for
//! this) is sent once more on a new connection from a second client that
//! never pools, so the retry cannot meet another stale connection. TLS is
//! rustls, verifying against the Mozilla roots, the system store and an
//! optional operator CA file; there is no switch to skip verification.
//! Every request (fill, pass-through, refresh) first takes a permit of the
//! `upstream_concurrency` cap, so the warehouse never runs more queries
//! from this proxy than that; callers beyond it queue (bounded), then get
//! 503 with `Retry-After`.

use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::UpstreamConfig;
use crate::error::ProxyError;
use crate::request_body::RequestBody;

/// Buffered (cacheable requests, replayable) or streamed (pass-through).
pub type UpstreamRequestBody = Either<Full<Bytes>, Limited<RequestBody>>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("cannot read upstream CA file {path}")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("upstream CA file {path} holds no usable certificate")]
    CaEmpty { path: std::path::PathBuf },
    #[error("cannot build the TLS client configuration")]
    Tls(#[from] rustls::Error),
}

type HttpClient = Client<HttpsConnector<HttpConnector>, UpstreamRequestBody>;

pub struct Upstream {
    client: HttpClient,
    /// Same connector, no pool: every request on it opens a new
    /// connection. Used for the one retry after a pooled connection died.
    fresh: HttpClient,
    /// The cap on requests the upstream has at once, with its queue.
    admission: Admission,
    origin: Uri,
    base_path: String,
    timeout: Duration,
    connect_timeout: Duration,
    /// The URL as configured, for messages.
    name: String,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamSetupError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));

        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(config.ca_file.as_deref())?)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);

        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_max_idle_per_host(256)
            // A pooled connection found closed before any byte of the
            // request was written is retried once on a new one (hyper-util's
            // default, made explicit); one that fails after bytes were sent
            // is retried by `send` only when the request is replayable.
            .retry_canceled_requests(true)
            .build(connector.clone());
        let fresh = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Ok(Self {
            client,
            fresh,
            admission: Admission {
                permits: Semaphore::new(config.concurrency),
                queued: AtomicUsize::new(0),
                queue: config.queue,
                queue_timeout: config.queue_timeout,
            },
            origin: config.origin.clone(),
            base_path: config.base_path.clone(),
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            name: config.display(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The upstream URI for a client's `path?query`.
    pub fn uri_for(&self, path_and_query: &str) -> Uri {
        let mut parts = self.origin.clone().into_parts();
        let joined = format!("{}{}", self.base_path, path_and_query);
        parts.path_and_query = Some(
            joined
                .parse()
                .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).expect("origin and a valid path make a valid URI")
    }

    /// Sends `request` and waits for the response head, within the timeout.
    ///
    /// It first takes one of the `upstream_concurrency` permits, held until
    /// the head arrives (the warehouse's query time), waiting in the bounded
    /// queue if need be: past the queue, or its wait, it fails with
    /// [`ProxyError::UpstreamBusy`] without reaching the upstream.
    ///
    /// A buffered request is sent a second time, once, on a new connection,
    /// when the first try died on a connection the upstream had already
    /// closed, before any byte of its answer (see [`is_stale_connection`]):
    /// keep-alive servers close idle connections at will, and the pool
    /// cannot know until it writes. The proxy buffers only requests that
    /// may be sent twice (reads and idempotent methods); a streamed request
    /// cannot be replayed and fails as it is.
    pub async fn send(
        &self,
        request: Request<UpstreamRequestBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let _permit =
            self.admission
                .admit()
                .await
                .map_err(|retry_after| ProxyError::UpstreamBusy {
                    upstream: self.name.clone(),
                    retry_after,
                })?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let replay = replayable(&request);
        let first = tokio::time::timeout_at(deadline, self.client.request(request)).await;
        let outcome = match (first, replay) {
            (Ok(Err(error)), Some(replay)) if is_stale_connection(&error) => {
                tracing::debug!(upstream = %self.name, error = %error, "pooled upstream connection was closed; sending again on a new one");
                tokio::time::timeout_at(deadline, self.fresh.request(replay)).await
            }
            (first, _) => first,
        };
        match outcome {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(self.classify(error)),
            Err(_) => Err(ProxyError::UpstreamTimeout {
                upstream: self.name.clone(),
                timeout: self.timeout,
            }),
        }
    }

    fn classify(&self, error: hyper_util::client::legacy::Error) -> ProxyError {
        let mut timed_out = false;
        let mut cause = error.source();
        while let Some(err) = cause {
            timed_out |= err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
            cause = err.source();
        }
        if timed_out && error.is_connect() {
            ProxyError::UpstreamConnectTimeout {
                upstream: self.name.clone(),
                timeout: self.connect_timeout,
            }
        } else if timed_out {
            ProxyError::UpstreamTimeout {
                upstream: self.name.clone(),
                timeout: self.timeout,
            }
        } else if error.is_connect() {
            ProxyError::UpstreamUnreachable {
                upstream: self.name.clone(),
                source: error.into(),
            }
        } else {
            ProxyError::UpstreamFailed {
                upstream: self.name.clone(),
                source: error.into(),
            }
        }
    }
}

/// The cap on concurrent upstream requests: `permits` (one per request in
/// flight) and a queue of at most `queue` callers waiting up to
/// `queue_timeout` for one. A semaphore, so a permit is returned however
/// the request ends (answer, error, or the caller dropped).
struct Admission {
    permits: Semaphore,
    /// Callers waiting for a permit now (bounded by `queue`).
    queued: AtomicUsize,
    queue: usize,
    queue_timeout: Duration,
}

/// Counts a caller in the queue for as long as it waits.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    /// A permit, or the `Retry-After` to give a caller that found the queue
    /// full or waited too long.
    async fn admit(&self) -> Result<SemaphorePermit<'_>, Duration> {
        if let Ok(permit) = self.permits.try_acquire() {
            return Ok(permit);
        }
        let retry_after = self.queue_timeout.max(Duration::from_secs(1));
        let ahead = self.queued.fetch_add(1, Ordering::Relaxed);
        let _queued = Queued(&self.queued);
        if ahead >= self.queue {
            return Err(retry_after);
        }
        match tokio::time::timeout(self.queue_timeout, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(retry_after),
        }
    }
}

/// A copy of a buffered request, for one retry; `None` for a streamed one.
fn replayable(request: &Request<UpstreamRequestBody>) -> Option<Request<UpstreamRequestBody>> {
    let Either::Left(body) = request.body() else {
        return None;
    };
    let mut copy = Request::new(Either::Left(body.clone()));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// True when the request died because its pooled connection was already
/// closed by the upstream, before any byte of an answer came back: hyper
/// saw the connection end (or be reset) while waiting for the response
/// head, or handed the request back unsent. A refused or timed-out
/// connect is not one of these: a second try would only wait again.
fn is_stale_connection(error: &hyper_util::client::legacy::Error) -> bool {
    if error.is_connect() {
        return false;
    }
    let mut cause = error.source();
    while let Some(err) = cause {
        if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() || hyper.is_canceled() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
            if matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe) {
                return true;
            }
        }
        cause = err.source();
    }
    false
}

fn root_store(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::RootCertStore, UpstreamSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // The system store adds corporate CAs; a missing or partly unreadable
    // store is not fatal because the Mozilla roots are already in.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|source| UpstreamSetupError::CaFile {
                path: path.to_owned(),
                source,
            })?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(UpstreamSetupError::CaEmpty {
                path: path.to_owned(),
            });
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(concurrency: usize, queue: usize) -> Admission {
        Admission {
            permits: Semaphore::new(concurrency),
            queued: AtomicUsize::new(0),
            queue,
            queue_timeout: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn callers_past_the_cap_and_a_full_queue_are_refused_at_once() {
        let admission = admission(1, 0);
        let _held = admission
            .admit()
            .await
            .expect("the first caller gets the slot");
        assert_eq!(admission.admit().await.err(), Some(Duration::from_secs(1)));
        assert_eq!(
            admission.queued.load(Ordering::Relaxed),
            0,
            "nobody left queued"
        );
    }

    #[tokio::test]
    async fn a_queued_caller_waits_for_a_returned_slot_but_not_forever() {
        let admission = admission(1, 1);
        let held = admission.admit().await.unwrap();
        assert!(
            admission.admit().await.is_err(),
            "the queue wait is bounded"
        );
        let (waiting, ()) = tokio::join!(admission.admit(), async { drop(held) });
        assert!(waiting.is_ok(), "a returned slot goes to the queue");
    }
}
