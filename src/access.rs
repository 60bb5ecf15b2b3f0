//! The access line: the one log line each request writes, when its answer
//! is ready (`Proxy::finish`), on target `dashcache::access`.
//!
//! Its message keeps the seed's wording (`Cache HIT for get_metrics`,
//! `Cache MISS for get_metrics - forwarding upstream`), so a hit logs one
//! line, not a seed line and an access line. Its fields say who asked what,
//! the outcome, the key prefix, upstream and total time, and the request's
//! `X-Request-Id`. An answer the proxy made for a failure (502, 504, 413…)
//! logs its line at `warn` with the error's whole chain: the client only
//! got a short message, and the request id joins the two.
//!
//! The chain reaches the line through a task-local that
//! [`crate::respond::error`] writes: error answers are made deep in the
//! pipeline (a waiter, a fill's leader), which hands back only a response.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use http::{HeaderValue, Method, StatusCode};
use tokio::task::futures::TaskLocalFuture;
use tracing::{info, warn};

use crate::cache::CacheKey;
use crate::error::ProxyError;
use crate::respond::CacheStatus;

tokio::task_local! {
    /// The error chain behind this request's error answer, if it got one.
    static FAILURE: RefCell<Option<String>>;
}

/// `request` with room to note an error answer's chain: await it pinned,
/// then read the chain with [`failure`]. (A plain `async fn` wrapper would
/// hold the request's future twice in its own state, and the pipeline's
/// future is KiBs: every hit would copy it.)
pub fn noting_errors<F: Future>(request: F) -> TaskLocalFuture<RefCell<Option<String>>, F> {
    FAILURE.scope(RefCell::new(None), request)
}

/// The chain noted while a [`noting_errors`] future ran (call it once the
/// future is done).
pub fn failure<F: Future>(
    done: Pin<&mut TaskLocalFuture<RefCell<Option<String>>, F>>,
) -> Option<String> {
    done.take_value().and_then(RefCell::into_inner)
}

/// Notes `err` as the reason of the current request's answer (nothing
/// outside [`noting_errors`], e.g. in a background refresh).
pub fn note_error(err: &ProxyError) {
    let _ = FAILURE.try_with(|noted| *noted.borrow_mut() = Some(err.message()));
}

/// Everything one access line says.
pub struct AccessLine<'a> {
    pub client: IpAddr,
    pub method: &'a Method,
    pub path: &'a str,
    pub status: StatusCode,
    pub cache: CacheStatus,
    pub route: &'a str,
    pub key: Option<CacheKey>,
    pub upstream_time: Option<Duration>,
    pub saved: Option<Duration>,
    pub elapsed: Duration,
    pub request_id: &'a HeaderValue,
    /// The chain of the error this answer stands for.
    pub error: Option<&'a str>,
}

impl AccessLine<'_> {
    pub fn write(&self) {
        // Numbers, not strings, so JSON logs can be summed; whole µs in ms.
        // upstream_ms is on every line (0 when the upstream was not asked).
        let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
        let message = Message {
            cache: self.cache,
            route: self.route,
        };
        let request_id = self.request_id.to_str().unwrap_or_default();
        let key = self.key.map(|k| k.short());
        macro_rules! line {
            ($level:ident) => {
                $level!(
                    target: crate::log_format::ACCESS_TARGET,
                    client = %self.client,
                    method = %self.method,
                    path = self.path,
                    status = self.status.as_u16(),
                    cache = self.cache.as_str(),
                    route = self.route,
                    key = key.as_ref().map(tracing::field::display),
                    upstream_ms = self.upstream_time.map_or(0.0, ms),
                    saved_ms = self.saved.map(ms),
                    duration_ms = ms(self.elapsed),
                    request_id,
                    error = self.error,
                    "{message}"
                )
            };
        }
        if self.error.is_some() {
            line!(warn);
        } else {
            line!(info);
        }
    }
}

/// The line's message: the seed's wording for proxied requests.
struct Message<'a> {
    cache: CacheStatus,
    route: &'a str,
}

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = self.route;
        match self.cache {
            CacheStatus::Miss => write!(f, "Cache MISS for {route} - forwarding upstream"),
            CacheStatus::Admin => f.write_str("admin request"),
            status @ (CacheStatus::Hit | CacheStatus::Stale | CacheStatus::Bypass) => {
                write!(f, "Cache {} for {route}", status.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(cache: CacheStatus) -> String {
        Message {
            cache,
            route: "get_metrics",
        }
        .to_string()
    }

    #[test]
    fn messages_keep_the_seed_wording() {
        assert_eq!(message(CacheStatus::Hit), "Cache HIT for get_metrics");
        assert_eq!(
            message(CacheStatus::Miss),
            "Cache MISS for get_metrics - forwarding upstream"
        );
        assert_eq!(message(CacheStatus::Stale), "Cache STALE for get_metrics");
        assert_eq!(message(CacheStatus::Bypass), "Cache BYPASS for get_metrics");
        assert_eq!(message(CacheStatus::Admin), "admin request");
    }

    #[tokio::test]
    async fn an_error_noted_inside_a_request_comes_out_with_it() {
        let request = noting_errors(async {
            note_error(&ProxyError::FillAbandoned);
            42
        });
        tokio::pin!(request);
        assert_eq!(request.as_mut().await, 42);
        assert!(failure(request).unwrap().contains("abandoned"));
        let quiet = noting_errors(async {});
        tokio::pin!(quiet);
        quiet.as_mut().await;
        assert!(failure(quiet).is_none());
        note_error(&ProxyError::FillAbandoned); // outside a request: ignored
    }
}
