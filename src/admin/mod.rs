//! The admin API under `/api/cache/`, answered by the proxy itself: the
//! seed's `stats`, `clear`, `invalidate?pattern=` with its exact JSON shapes,
//! plus `metrics` (Prometheus), `health`, `history`, `keys`, `refresh`
//! (answered by `refresh.rs`) and the status page at `/api/cache/`.
//!
//! `stats`, `metrics`, `health`, `history` and the page are readable by anyone who can
//! reach the proxy. The mutations (`clear`, `invalidate`, `refresh`) and the `keys`
//! listing (descriptions carry the dashboard's filters) require the bearer
//! token when one is configured, compared in constant time; with no token
//! they answer loopback clients only, so a proxy exposed by mistake cannot
//! be emptied or read from outside.
//!
//! This file dispatches each path to its endpoint family and holds what they
//! share (method checks, authorisation, the `pattern` parameter): `stats`
//! (stats + Prometheus), `health`, `history` (and its sampler), `keys`, `purge` (clear + invalidate),
//! `status_page`; `refresh` lives in `crate::refresh`.

use std::sync::Arc;

use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL};
use http::{HeaderMap, Method, Request};
use subtle::ConstantTimeEq;
use tracing::warn;

use crate::error::ProxyError;
use crate::proxy::{ClientInfo, Proxy, Served, Trace};
use crate::refresh as refresher;
use crate::request_body::ClientBody;
use crate::respond::{self, CacheStatus};

mod health;
pub mod history;
mod history_redis;
mod keys;
mod purge;
mod stats;
mod status_page;

use health::health;
use keys::keys;
use purge::{clear, invalidate};
use stats::{prometheus, stats};

const PREFIX: &str = "/api/cache";

pub fn is_admin_path(path: &str) -> bool {
    path == PREFIX
        || path
            .strip_prefix(PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
}

pub async fn handle(
    proxy: &Arc<Proxy>,
    request: Request<ClientBody>,
    client: ClientInfo,
) -> Served {
    let path = request.uri().path().trim_end_matches('/');
    let endpoint = path.strip_prefix(PREFIX).unwrap_or_default();
    let readable = allow(&request, &[Method::GET, Method::HEAD], "GET, HEAD");
    let result = match endpoint {
        "" => readable.map(|()| status_page::page()),
        "/stats" => readable.map(|()| stats(proxy)),
        "/metrics" => readable.map(|()| prometheus(proxy)),
        "/history" => match readable {
            Ok(()) => history::history(proxy, request.uri().query()).await,
            Err(err) => Err(err),
        },
        "/health" => match readable {
            Ok(()) => {
                let trusted = authorize(proxy, request.headers(), client, path).is_ok();
                Ok(health(proxy, trusted).await)
            }
            Err(err) => Err(err),
        },
        "/keys" => {
            match readable.and_then(|()| authorize(proxy, request.headers(), client, path)) {
                Ok(()) => keys(proxy, request.uri().query()).await,
                Err(err) => Err(err),
            }
        }
        "/clear" => match allow(&request, &[Method::POST], "POST")
            .and_then(|()| authorize(proxy, request.headers(), client, path))
        {
            Ok(()) => clear(proxy).await,
            Err(err) => Err(err),
        },
        "/invalidate" => match allow(&request, &[Method::POST], "POST")
            .and_then(|()| authorize(proxy, request.headers(), client, path))
        {
            Ok(()) => invalidate(proxy, request.uri().query()).await,
            Err(err) => Err(err),
        },
        "/refresh" => match allow(&request, &[Method::POST], "POST")
            .and_then(|()| authorize(proxy, request.headers(), client, path))
        {
            Ok(()) => {
                let pattern = query_pattern(request.uri().query());
                refresher::accept(proxy, pattern.as_deref()).await
            }
            Err(err) => Err(err),
        },
        _ => Err(ProxyError::AdminNotFound {
            path: path.to_owned(),
        }),
    };
    let mut response = result.unwrap_or_else(|err| {
        warn!(path, client = %client.addr.ip(), error = %err.message(), "admin request refused");
        respond::error(&err)
    });
    // Live figures and listings: no browser or intermediary may keep them.
    response
        .headers_mut()
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    Served {
        response,
        cache: CacheStatus::Admin,
        route: Arc::from("admin"),
        trace: Trace::default(),
    }
}

fn allow(
    request: &Request<ClientBody>,
    methods: &[Method],
    allow: &'static str,
) -> Result<(), ProxyError> {
    if methods.contains(request.method()) {
        Ok(())
    } else {
        Err(ProxyError::MethodNotAllowed {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            allow,
        })
    }
}

fn authorize(
    proxy: &Proxy,
    headers: &HeaderMap,
    client: ClientInfo,
    path: &str,
) -> Result<(), ProxyError> {
    match &proxy.config().admin_token {
        None if client.addr.ip().to_canonical().is_loopback() => Ok(()),
        None => Err(ProxyError::AdminForbidden {
            path: path.to_owned(),
        }),
        Some(token) => {
            let presented = headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .unwrap_or_default();
            if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
                Ok(())
            } else {
                Err(ProxyError::AdminUnauthorized)
            }
        }
    }
}

/// The non-empty `pattern` query parameter, if any.
pub(super) fn query_pattern(query: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
    query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(name, _)| name == "pattern")
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::is_admin_path;

    #[test]
    fn admin_paths_are_recognised_exactly() {
        assert!(is_admin_path("/api/cache"));
        assert!(is_admin_path("/api/cache/stats"));
        assert!(!is_admin_path("/api/cached-reports"));
        assert!(!is_admin_path("/api/metrics"));
    }
}
