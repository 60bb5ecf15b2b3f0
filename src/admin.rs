//! The admin API under `/api/cache/`, answered by the proxy itself with the
//! seed's exact JSON shapes: `stats`, `clear`, `invalidate?pattern=`.
//!
//! `stats` is readable by anyone who can reach the proxy. The mutations
//! (`clear`, `invalidate`) require the bearer token when one is configured,
//! compared in constant time; with no token they answer loopback clients
//! only, so a proxy exposed by mistake cannot be emptied from outside.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::proxy::{ClientInfo, Proxy, Served};
use crate::respond::{self, CacheStatus};

const PREFIX: &str = "/api/cache";

pub fn is_admin_path(path: &str) -> bool {
    path == PREFIX
        || path
            .strip_prefix(PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
}

pub async fn handle(proxy: &Arc<Proxy>, request: Request<Incoming>, client: ClientInfo) -> Served {
    let path = request.uri().path().trim_end_matches('/');
    let endpoint = path.strip_prefix(PREFIX).unwrap_or_default();
    let result = match endpoint {
        "/stats" => {
            allow(&request, &[Method::GET, Method::HEAD], "GET, HEAD").map(|()| stats(proxy))
        }
        "/clear" => allow(&request, &[Method::POST], "POST")
            .and_then(|()| authorize(proxy, request.headers(), client, path))
            .map(|()| clear(proxy)),
        "/invalidate" => allow(&request, &[Method::POST], "POST")
            .and_then(|()| authorize(proxy, request.headers(), client, path))
            .and_then(|()| invalidate(proxy, request.uri().query())),
        _ => Err(ProxyError::AdminNotFound {
            path: path.to_owned(),
        }),
    };
    let response = result.unwrap_or_else(|err| {
        warn!(path, client = %client.addr.ip(), error = %err.message(), "admin request refused");
        respond::error(&err)
    });
    Served {
        response,
        cache: CacheStatus::Admin,
        route: Arc::from("admin"),
    }
}

fn allow(
    request: &Request<Incoming>,
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
    match &proxy.config.admin_token {
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

/// `GET /api/cache/stats`: the seed's shape, field for field, then ours.
#[derive(Serialize)]
struct StatsAnswer {
    status: &'static str,
    cache: CacheStats,
}

#[derive(Serialize)]
struct CacheStats {
    size: usize,
    maxsize: u64,
    ttl: u64,
    ttl_hours: f64,
    enabled: bool,
    hits: u64,
    misses: u64,
    hit_rate: f64,
    bypassed: u64,
    coalesced: u64,
    upstream_requests: u64,
    upstream_errors: u64,
    stored: u64,
    not_stored: u64,
    evictions: u64,
    expirations: u64,
    bytes: u64,
    max_bytes: u64,
    inflight: usize,
    avg_response_ms: f64,
    avg_hit_ms: f64,
    avg_miss_ms: f64,
    uptime_seconds: u64,
}

#[derive(Serialize)]
struct ClearAnswer {
    status: &'static str,
    message: &'static str,
    warning: &'static str,
}

#[derive(Serialize)]
struct InvalidateAnswer<'a> {
    status: &'static str,
    pattern: &'a str,
    keys_deleted: usize,
    message: String,
}

fn stats(proxy: &Proxy) -> Response<ProxyBody> {
    let config = &proxy.config.cache;
    let store = &proxy.store;
    let m = proxy.metrics.snapshot();
    let ttl = config.ttl.as_secs();
    let cache = CacheStats {
        size: store.len(),
        maxsize: store.maxsize(),
        ttl,
        ttl_hours: ttl as f64 / 3600.0,
        enabled: config.enabled,
        hits: m.hits,
        misses: m.misses,
        hit_rate: (m.hit_rate() * 10_000.0).round() / 10_000.0,
        bypassed: m.bypassed,
        coalesced: m.coalesced,
        upstream_requests: m.upstream_requests,
        upstream_errors: m.upstream_errors,
        stored: m.stored,
        not_stored: m.not_stored,
        evictions: store.evictions(),
        expirations: store.expirations(),
        bytes: store.bytes(),
        max_bytes: store.max_bytes(),
        inflight: proxy.flights.len(),
        avg_response_ms: m.avg_response_ms(),
        avg_hit_ms: m.avg_hit_ms(),
        avg_miss_ms: m.avg_miss_ms(),
        uptime_seconds: m.uptime.as_secs(),
    };
    respond::json(
        StatusCode::OK,
        &StatsAnswer {
            status: "ok",
            cache,
        },
    )
}

fn clear(proxy: &Proxy) -> Response<ProxyBody> {
    let removed = proxy.store.clear();
    proxy.vary.clear();
    info!(keys_deleted = removed, "Cache CLEARED");
    respond::json(
        StatusCode::OK,
        &ClearAnswer {
            status: "success",
            message: "Cache cleared successfully",
            warning: "Next requests will hit the database",
        },
    )
}

fn invalidate(proxy: &Proxy, query: Option<&str>) -> Result<Response<ProxyBody>, ProxyError> {
    let pattern = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(name, _)| name == "pattern")
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty());
    let Some(pattern) = pattern else {
        return Err(ProxyError::AdminParameter(
            "query parameter 'pattern' is required and must not be empty".into(),
        ));
    };
    let removed = proxy.store.invalidate(&pattern);
    info!(pattern = %pattern, keys_deleted = removed, "Cache INVALIDATED: {removed} keys matching '{pattern}'");
    Ok(respond::json(
        StatusCode::OK,
        &InvalidateAnswer {
            status: "success",
            pattern: &pattern,
            keys_deleted: removed,
            message: format!("Invalidated {removed} cache keys matching pattern '{pattern}'"),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_the_seeds_field_order() {
        let clear = serde_json::to_string(&ClearAnswer {
            status: "success",
            message: "Cache cleared successfully",
            warning: "Next requests will hit the database",
        })
        .unwrap();
        assert_eq!(
            clear,
            r#"{"status":"success","message":"Cache cleared successfully","warning":"Next requests will hit the database"}"#
        );
        let invalidate = serde_json::to_string(&InvalidateAnswer {
            status: "success",
            pattern: "get_metrics",
            keys_deleted: 12,
            message: "Invalidated 12 cache keys matching pattern 'get_metrics'".into(),
        })
        .unwrap();
        assert!(invalidate
            .starts_with(r#"{"status":"success","pattern":"get_metrics","keys_deleted":12,"#));
    }

    #[test]
    fn admin_paths_are_recognised_exactly() {
        assert!(is_admin_path("/api/cache"));
        assert!(is_admin_path("/api/cache/stats"));
        assert!(!is_admin_path("/api/cached-reports"));
        assert!(!is_admin_path("/api/metrics"));
    }
}
