//! The pipeline's side of RFC 9111 §4.4 (`cache::invalidation`): after a
//! non-error answer to an unsafe request that went upstream, the GET entries
//! of its target URI and of the same-origin `Location` / `Content-Location`
//! it names are invalidated; and every lookup skips invalidated entries.
//!
//! Which requests get here is the pipeline's choice: in the dashboard mode
//! a POST on a caching route is a read (keyed and cached), so only PUT,
//! PATCH, DELETE, unknown methods and POSTs on routes with `cache = false`
//! invalidate; in the standard mode every method but GET, HEAD, OPTIONS and
//! TRACE does.

use std::time::Instant;

use http::header::{CONTENT_LOCATION, HOST, LOCATION};
use http::{HeaderMap, Method, Request, Response};
use tracing::info;

use super::Proxy;
use crate::body::ProxyBody;
use crate::cache::invalidation::same_origin_target;
use crate::cache::{policy, CacheKey, Entry, Lookup};
use crate::config::Config;

/// What invalidation needs of an unsafe request once it has been sent.
pub(super) struct UnsafeRequest {
    method: Method,
    path: String,
    query: Option<String>,
    host: Option<String>,
    headers: HeaderMap,
}

impl UnsafeRequest {
    /// `None` for a safe method, which never invalidates.
    pub(super) fn of<B>(request: &Request<B>) -> Option<Self> {
        if policy::is_safe_method(request.method()) {
            return None;
        }
        let uri = request.uri();
        Some(Self {
            method: request.method().clone(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            host: request
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .or_else(|| uri.authority().map(|a| a.as_str().to_owned())),
            headers: request.headers().clone(),
        })
    }
}

impl Proxy {
    /// Invalidates what `request`'s answer makes outdated: nothing for an
    /// error answer (RFC 9111 §4.4 names only non-error status codes).
    pub(super) fn invalidate_after(
        &self,
        request: &UnsafeRequest,
        response: &Response<ProxyBody>,
        config: &Config,
    ) {
        let status = response.status();
        if !(status.is_success() || status.is_redirection()) {
            return;
        }
        let now = Instant::now();
        let mut targets = vec![(request.path.clone(), request.query.clone())];
        let upstream = &config.upstream;
        let authority = upstream.origin.authority().map_or("", |a| a.as_str());
        for name in [LOCATION, CONTENT_LOCATION] {
            let Some(value) = response.headers().get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            if let Some(target) = same_origin_target(
                value,
                &request.path,
                request.host.as_deref(),
                authority,
                &upstream.base_path,
            ) {
                targets.push(target);
            }
        }
        for (path, query) in &targets {
            let base = self.get_key(config, &request.headers, path, query.as_deref());
            self.invalidations.record(base, now);
            info!(method = %request.method, path = %path, key = %base.short(), "entries invalidated by an unsafe request");
        }
    }

    /// The base key a GET of `path?query` with `headers`' credentials has.
    fn get_key(
        &self,
        config: &Config,
        headers: &HeaderMap,
        path: &str,
        query: Option<&str>,
    ) -> CacheKey {
        let base = self.key_memo.key(&Method::GET, path, query, b"");
        let shared = config
            .routes
            .lookup(&Method::GET, path)
            .is_some_and(|r| r.shared);
        match self.credential(headers, config) {
            Some(credential) if !shared => base.derive(b"credential", &[&credential[..]]),
            _ => base,
        }
    }

    /// The store's lookup, with entries invalidated since they were stored
    /// dropped and reported as a miss.
    pub(crate) async fn lookup(&self, key: &CacheKey, now: Instant) -> Lookup {
        let found = self.store.lookup(key, now).await;
        match &found {
            Lookup::Fresh(entry) | Lookup::Stale(entry) if self.invalidated(entry) => {
                Box::pin(self.store.remove_entry(entry)).await;
                Lookup::Miss
            }
            _ => found,
        }
    }

    /// [`Proxy::lookup`] in this process's memory only (the L1 tier): for
    /// the entry a fill about to start may revalidate, which the caller's
    /// own lookup has just brought into memory when Redis had it.
    pub(crate) fn lookup_local(&self, key: &CacheKey, now: Instant) -> Lookup {
        let memory = self.store.memory();
        let found = memory.get(key, now);
        match &found {
            Lookup::Fresh(entry) | Lookup::Stale(entry) if self.invalidated(entry) => {
                memory.remove_entry(entry);
                Lookup::Miss
            }
            _ => found,
        }
    }

    /// True when an unsafe request invalidated `entry` after it was stored.
    pub(crate) fn invalidated(&self, entry: &Entry) -> bool {
        self.invalidations.covers(entry)
    }
}
