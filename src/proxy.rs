//! The request pipeline: route → key → lookup → coalesce → fill → respond,
//! as named steps on [`Proxy`], the state every connection shares.
//!
//! Cacheable requests (GET, HEAD, POST on a caching route, cache enabled)
//! are read whole (bounded by `max_body_bytes`), keyed, and answered from
//! the store when fresh. A miss joins the key's flight: the first caller
//! starts a detached fill (`fill.rs`, started in `proxy/filling.rs`), the
//! rest wait for its outcome, for at most `lock_timeout`
//! (`proxy/waiting.rs`). An expired entry still inside its stale windows
//! (`cache::stale`) answers with `X-Cache: STALE` inside
//! `stale-while-revalidate` (while one background fill refreshes it), or
//! when the upstream fails. All other requests stream through untouched
//! (`X-Cache: BYPASS`).
//!
//! Keys keep callers apart: a request's credential headers join its key
//! unless its route is `shared`, and an answer's `Vary` selects a variant
//! (`cache::credentials`, `cache::vary`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST};
use http::{request, HeaderMap, HeaderValue, Method, Request, Response, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tracing::info;

use crate::access;
use crate::admin;
use crate::admission;
use crate::body::{ProxyBody, UpstreamBody};
use crate::body_deadline::{BodyRules, DeadlineBody};
use crate::cache::credentials::{CredentialDigests, Grants};
use crate::cache::flight::{FillOutcome, Flights, Join};
use crate::cache::invalidation::Invalidations;
use crate::cache::key::key_with_headers;
use crate::cache::key_rules::KeyRules;
use crate::cache::policy::{self, Directives};
use crate::cache::storage::RedisTier;
use crate::cache::vary::{variant_key, VaryIndex};
use crate::cache::volatile::VolatileDetector;
use crate::cache::{CacheKey, Entry, KeyMemo, Lookup, Storage, Store};
use crate::client_io::OnStall;
use crate::config::Config;
use crate::error::ProxyError;
use crate::headers::{self, Validators};
use crate::metrics::Metrics;
use crate::refresh::Refresher;
use crate::reload::{LiveConfig, Reload, Settings};
use crate::request_body::{ClientBody, RequestBody};
use crate::request_id;
use crate::respond::{self, Ask, CacheStatus, CacheStatusField};
use crate::routes::{Route, DEFAULT_ROUTE};
use crate::server::Surface;
use crate::upstream::{Upstream, UpstreamRequestBody, UpstreamSetupError};

mod at_once;
mod filling;
mod invalidating;
mod waiting;

use at_once::AfterBody;

/// Where a request came from, as the listener saw it.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    pub scheme: &'static str,
    /// Which paths the accepting listener answers (see `admin_listen`).
    pub surface: Surface,
}

/// State shared by every connection. Held in an `Arc`; every field is
/// itself safe to use concurrently, so no lock wraps the whole.
pub struct Proxy {
    /// The running configuration; swapped whole by a reload (`reload.rs`).
    live: LiveConfig,
    /// Entries: memory alone, or memory in front of the shared Redis tier.
    pub store: Storage,
    pub flights: Arc<Flights>,
    pub upstream: Upstream,
    pub metrics: Metrics,
    /// Which base keys vary on which request headers.
    pub vary: VaryIndex,
    /// Credentials the upstream accepted on shared routes.
    pub grants: Grants,
    /// `POST /api/cache/refresh`'s background work and its counters.
    pub refresher: Refresher,
    key_memo: KeyMemo,
    /// Digests of the credentials requests carry, remembered.
    credentials: CredentialDigests,
    /// Each route's sample of its keyed requests: suspected volatile fields.
    pub volatile: VolatileDetector,
    default_route: Arc<str>,
    /// Base keys invalidated by unsafe requests (RFC 9111 §4.4).
    pub invalidations: Invalidations,
}

/// A request's answer: ready at once, or still to come.
pub enum Answer {
    /// A fresh hit in memory, answered without suspending.
    Now(Response<ProxyBody>),
    /// Everything else: the pipeline's future (boxed, as it is KiBs).
    Later(Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>),
}

/// A request as [`Proxy::begin`] saw it, for [`Proxy::finish`].
struct Begun {
    started: Instant,
    method: Method,
    uri: http::Uri,
    request_id: HeaderValue,
}

/// What one request became, for the access log and the counters.
pub struct Served {
    pub response: Response<ProxyBody>,
    pub cache: CacheStatus,
    pub route: Arc<str>,
    /// Key and times, for a proxied request (default for the rest).
    pub trace: Trace,
}

/// What the counters and the access line learn of an answered request.
struct Outcome<'a> {
    status: http::StatusCode,
    cache: CacheStatus,
    route: &'a Arc<str>,
    trace: Trace,
    request_id: &'a HeaderValue,
}

/// What the access line and the counters learn about a proxied request
/// beyond its cache status.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trace {
    /// The request's cache key, when it got one.
    pub key: Option<CacheKey>,
    /// Time spent on the upstream for this request (its own request, or
    /// the fill it waited for).
    pub upstream_time: Option<Duration>,
    /// On a hit: the upstream time the entry's original request took.
    pub saved: Option<Duration>,
}

impl Served {
    /// A request refused before any lookup (its body too large or too
    /// slow): neither a hit nor a miss.
    fn rejected(err: &ProxyError, route: Arc<str>) -> Self {
        Self::traced(
            respond::error(err),
            CacheStatus::Bypass,
            route,
            Trace::default(),
        )
    }

    fn traced(
        response: Response<ProxyBody>,
        cache: CacheStatus,
        route: Arc<str>,
        trace: Trace,
    ) -> Self {
        Self {
            response,
            cache,
            route,
            trace,
        }
    }
}

/// A cacheable request, read whole and keyed.
pub(crate) struct Keyed {
    pub parts: request::Parts,
    pub body: Bytes,
    /// The method sent upstream: GET for a HEAD request.
    pub method: Method,
    pub ask: Ask,
    /// Method, target and body (and credentials, unless the route is shared).
    pub base: CacheKey,
    /// Where the answer lives: `base`, or its `Vary` variant.
    pub key: CacheKey,
    pub credential: Option<[u8; 16]>,
}

/// The client's own Cache-Control, when the configuration honours it
/// (RFC 9111 §5.2.1): no-cache, no-store and max-age=0 skip stored
/// answers; max-age and min-fresh narrow which fresh ones will do.
struct ClientFreshness {
    directives: Option<Directives>,
    /// Only a fresh answer from the upstream will do.
    wants_fresh: bool,
}

impl ClientFreshness {
    fn of(config: &Config, headers: &HeaderMap) -> Self {
        let directives = config
            .cache
            .honor_client_no_cache
            .then(|| Directives::cache_control(headers));
        let wants_fresh = directives.is_some() && policy::client_wants_fresh(headers);
        Self {
            directives,
            wants_fresh,
        }
    }

    /// Whether the client takes `entry`, fresh as of `now`.
    fn accepts(&self, entry: &Entry, now: Instant) -> bool {
        self.directives
            .as_ref()
            .is_none_or(|d| policy::client_accepts_fresh(d, entry.age(now), entry.ttl_left(now)))
    }
}

/// What [`Proxy::keys`] computes for a request.
struct Keys {
    method: Method,
    ask: Ask,
    base: CacheKey,
    key: CacheKey,
    credential: Option<[u8; 16]>,
}

impl Proxy {
    pub fn new(config: Config) -> Result<Self, UpstreamSetupError> {
        let upstream = Upstream::new(&config.upstream)?;
        let cache = &config.cache;
        let memory = Store::new(cache.maxsize, cache.max_bytes, cache.max_object_bytes);
        let store = match &config.redis {
            None => Storage::Memory(Arc::new(memory)),
            Some(redis) => match RedisTier::new(redis.clone(), memory.max_entry_bytes()) {
                Ok(tier) => Storage::tiered(memory, tier),
                Err(err) => {
                    // Checked when the config was resolved; keep serving anyway.
                    tracing::error!(error = %err, "redis tier not started; caching in memory only");
                    Storage::Memory(Arc::new(memory))
                }
            },
        };
        let side_capacity = (cache.maxsize * 4).min(1 << 20) as usize;
        Ok(Self {
            store,
            flights: Arc::default(),
            upstream,
            metrics: Metrics::default(),
            vary: VaryIndex::new(side_capacity),
            grants: Grants::new(side_capacity, cache.auth_ttl),
            refresher: Refresher::new(cache.refresh_concurrency),
            key_memo: KeyMemo::new(side_capacity),
            credentials: CredentialDigests::new(side_capacity),
            volatile: VolatileDetector::default(),
            default_route: DEFAULT_ROUTE.into(),
            invalidations: Invalidations::new(side_capacity),
            live: LiveConfig::new(config),
        })
    }

    /// The running configuration (lock-free; hold it for a whole request).
    pub fn config(&self) -> Arc<Settings> {
        self.live.load()
    }

    /// Re-reads proxy.toml (SIGHUP), logging what changed or why not.
    pub fn reload_config(&self) -> Reload {
        let reload = self.live.reload_and_log();
        self.metrics.history().events.record_reload(&reload);
        reload
    }

    /// Answers one request, gives it its `X-Request-Id` (sent upstream and
    /// back to the client) and writes its access line: at once for a fresh
    /// hit in memory (`proxy/at_once.rs`), otherwise through [`Proxy::later`].
    pub fn answer(self: Arc<Self>, request: Request<Incoming>, client: ClientInfo) -> Answer {
        match self.at_once(request, client) {
            Ok(response) => Answer::Now(response),
            Err((begun, request)) => Answer::Later(Box::pin(self.later(begun, request, client))),
        }
    }

    /// [`Proxy::answer`] for a fresh hit in memory only, written straight
    /// into `out` as its HTTP/1.1 head (the express lane, `express.rs`):
    /// built from the stored entry without the answer's map
    /// (`respond::write_from_entry`), counted and logged as
    /// [`Proxy::finish`] does. `read_body` is the request's body, read
    /// already (its own body is empty). Returns the body to send after the
    /// head; the request back, untouched, for anything else.
    #[allow(clippy::result_large_err)]
    pub(crate) fn write_at_once<B: http_body::Body>(
        &self,
        request: Request<B>,
        read_body: &[u8],
        client: ClientInfo,
        out: &mut Vec<u8>,
    ) -> Result<Bytes, Request<B>> {
        let begun = self.begin(&request, client);
        let found = self.find_at_once(request, read_body, client)?;
        let (field, trace) = counted_hit(&found.entry, found.now);
        let (status, send_body) = respond::write_from_entry(
            &found.entry,
            CacheStatus::Hit,
            field,
            &found.ask,
            found.now,
            &begun.request_id,
            out,
        );
        let outcome = Outcome {
            status,
            cache: CacheStatus::Hit,
            route: &found.route,
            trace,
            request_id: &begun.request_id,
        };
        self.record(&begun, &outcome, None, client);
        Ok(if send_body {
            found.entry.body.clone()
        } else {
            Bytes::new()
        })
    }

    /// The answer to a fresh hit in memory, or the request back with what
    /// the access line needs of it.
    #[allow(clippy::result_large_err)]
    fn at_once<B: http_body::Body>(
        &self,
        request: Request<B>,
        client: ClientInfo,
    ) -> Result<Response<ProxyBody>, (Begun, Request<B>)> {
        let begun = self.begin(&request, client);
        match self.hit_at_once(request, client) {
            Ok(served) => Ok(self.finish(begun, served, None, client)),
            Err(request) => Err((begun, request)),
        }
    }

    /// A request not answered at once: a fresh hit in memory once its body
    /// is read (`proxy/at_once.rs`), otherwise the pipeline's answer. The
    /// pipeline's future is KiBs and goes in a box of its own, so that a
    /// hit on a request with a body (every POST) neither builds nor copies
    /// it.
    async fn later(
        self: Arc<Self>,
        begun: Begun,
        request: Request<Incoming>,
        client: ClientInfo,
    ) -> Response<ProxyBody> {
        let request = match self.hit_after_body(request, client).await {
            AfterBody::Answered(served, failure) => {
                return self.finish(begun, served, failure, client)
            }
            AfterBody::Pipeline(request) => request,
        };
        Box::pin(self.through_pipeline(begun, request, client)).await
    }

    /// The pipeline's answer to `request`, noting the error it stands for.
    async fn through_pipeline(
        self: Arc<Self>,
        begun: Begun,
        mut request: Request<ClientBody>,
        client: ClientInfo,
    ) -> Response<ProxyBody> {
        // What goes upstream carries the id; a hit in memory had no use for it.
        request
            .headers_mut()
            .insert(&request_id::X_REQUEST_ID, begun.request_id.clone());
        let (served, failure) = {
            let dispatched = access::noting_errors(self.dispatch(request, client, &begun.uri));
            tokio::pin!(dispatched);
            let served = dispatched.as_mut().await;
            (served, access::failure(dispatched))
        };
        self.finish(begun, served, failure, client)
    }

    /// What the access line needs from the request, and its id.
    fn begin<B>(&self, request: &Request<B>, client: ClientInfo) -> Begun {
        let started = Instant::now();
        let request_id = request_id::for_request(
            request.headers(),
            client.addr.ip(),
            &self.live.peek().trusted_proxies,
        );
        Begun {
            started,
            method: request.method().clone(),
            uri: request.uri().clone(),
            request_id,
        }
    }

    /// Marks the answer, counts it and writes its access line.
    fn finish(
        &self,
        mut begun: Begun,
        mut served: Served,
        failure: Option<String>,
        client: ClientInfo,
    ) -> Response<ProxyBody> {
        let headers = served.response.headers_mut();
        if served.cache != CacheStatus::Admin && !headers.contains_key(&respond::X_CACHE) {
            // dashcache's own error answers (502, 504, 413…) say so too.
            respond::mark_error(headers, served.cache);
        }
        // Replaces any id a stored answer or the upstream carried. Marked
        // sensitive for HPACK only: an HTTP/2 answer then sends it as a
        // never-indexed literal, since a value no other answer repeats
        // would just push the repeated fields out of the dynamic table.
        // Moved, not cloned: a clone of a generated id's bytes allocates.
        let mut answered_id =
            std::mem::replace(&mut begun.request_id, HeaderValue::from_static(""));
        answered_id.set_sensitive(true);
        headers.insert(&request_id::X_REQUEST_ID, answered_id);
        // Only when the answer is that error (not a fallback after it).
        let error = failure
            .as_deref()
            .filter(|_| served.response.status().as_u16() >= 400);
        let outcome = Outcome {
            status: served.response.status(),
            cache: served.cache,
            route: &served.route,
            trace: served.trace,
            request_id: &served.response.headers()[&request_id::X_REQUEST_ID],
        };
        self.record(&begun, &outcome, error, client);
        served.response
    }

    /// Counts an answered request and writes its access line.
    fn record(
        &self,
        begun: &Begun,
        outcome: &Outcome<'_>,
        error: Option<&str>,
        client: ClientInfo,
    ) {
        let elapsed = begun.started.elapsed();
        let trace = outcome.trace;
        self.metrics
            .record(outcome.route, outcome.cache, elapsed, trace.saved);
        access::AccessLine {
            client: client.addr.ip(),
            method: &begun.method,
            path: begun.uri.path(),
            status: outcome.status,
            cache: outcome.cache,
            route: outcome.route,
            key: trace.key,
            upstream_time: trace.upstream_time,
            saved: trace.saved,
            elapsed,
            request_id: outcome.request_id,
            error,
        }
        .write();
    }

    /// Sends a request to the step that answers it: a refusal, the admin
    /// API, or the proxy pipeline.
    async fn dispatch(
        self: &Arc<Self>,
        request: Request<ClientBody>,
        client: ClientInfo,
        uri: &http::Uri,
    ) -> Served {
        if let Some(err) = admission::refusal(&request) {
            Served::traced(
                respond::error(&err),
                CacheStatus::Bypass,
                self.default_route.clone(),
                Trace::default(),
            )
        } else if !client.surface.answers(uri.path()) {
            client.surface.refuse(uri.path())
        } else if admin::is_admin_path(uri.path()) {
            Box::pin(admin::handle(self, request, client)).await
        } else {
            self.proxy(request, client).await
        }
    }

    async fn proxy(self: &Arc<Self>, request: Request<ClientBody>, client: ClientInfo) -> Served {
        // One snapshot for the whole request: a reload does not change it midway.
        let config = self.config();
        let request = self.with_body_deadline(request, &config, client);
        let route = config.routes.lookup(request.method(), request.uri().path());
        let route_name = self.route_name(route);
        if is_cached(&config, request.method(), route) {
            return self
                .cached(request, &config, route, route_name, client)
                .await;
        }
        let started = Instant::now();
        let unsafe_request = invalidating::UnsafeRequest::of(&request);
        let response = Box::pin(self.pass_through(request, &config, client)).await;
        if let Some(unsafe_request) = &unsafe_request {
            self.invalidate_after(unsafe_request, &response, &config);
        }
        let trace = Trace {
            upstream_time: Some(started.elapsed()),
            ..Trace::default()
        };
        Served::traced(response, CacheStatus::Bypass, route_name, trace)
    }

    /// Holds an HTTP/2 request body to `body_read_timeout` and
    /// `body_min_rate` frame by frame (`body_deadline.rs`). An HTTP/1 body
    /// is left as it is: its connection's bytes already carry that deadline
    /// (`client_io.rs`), which counts and logs the stall itself.
    fn with_body_deadline(
        self: &Arc<Self>,
        request: Request<ClientBody>,
        config: &Config,
        client: ClientInfo,
    ) -> Request<RequestBody> {
        let (parts, body) = request.into_parts();
        let body = self.body_deadline(&parts, body, config, client);
        Request::from_parts(parts, body)
    }

    /// [`Proxy::with_body_deadline`] for a request taken apart.
    fn body_deadline(
        self: &Arc<Self>,
        head: &request::Parts,
        body: ClientBody,
        config: &Config,
        client: ClientInfo,
    ) -> RequestBody {
        // A request whose HEADERS frame ended its stream (every GET) has
        // no body to time.
        if head.version != Version::HTTP_2 || http_body::Body::is_end_stream(&body) {
            return DeadlineBody::untimed(body);
        }
        let rules = BodyRules {
            body_read_timeout: config.limits.body_read_timeout,
            body_min_rate: config.limits.body_min_rate,
        };
        let proxy = self.clone();
        let path = head.uri.path().to_owned();
        let on_stall: OnStall = Arc::new(move |stall| {
            Metrics::bump(&proxy.metrics.body_timeouts);
            info!(
                client = %client.addr.ip(),
                stall = stall.as_str(),
                path = %path,
                "http/2 request body too slow (body_read_timeout, body_min_rate); answering 408 and resetting the stream"
            );
        });
        DeadlineBody::timed(body, rules, on_stall)
    }

    /// Sends the request upstream and streams the answer back, storing
    /// nothing. An idempotent request's body is read first (within
    /// `max_body_bytes`), so that it can be sent again if a pooled upstream
    /// connection dies under it; any other body streams through.
    async fn pass_through(
        &self,
        request: Request<RequestBody>,
        config: &Config,
        client: ClientInfo,
    ) -> Response<ProxyBody> {
        if let Err(err) = check_declared_length(request.headers(), config.max_body_bytes) {
            return respond::error(&err);
        }
        let (parts, body) = request.into_parts();
        let body = if parts.method.is_idempotent() {
            match read_body(&parts.headers, body, config.max_body_bytes).await {
                Ok(bytes) => Either::Left(Full::new(bytes)),
                Err(err) => return respond::error(&err),
            }
        } else {
            Either::Right(Limited::new(body, config.max_body_bytes as usize))
        };
        let upstream_request = self.upstream_request(parts, None, body, client);
        Metrics::bump(&self.metrics.upstream_requests);
        let started = Instant::now();
        let sent = self.upstream.send(upstream_request).await;
        self.metrics.upstream_answered(started.elapsed());
        match sent {
            Ok(response) => self.stream_back(
                response,
                CacheStatus::Bypass,
                CacheStatusField::forward("bypass"),
                false,
            ),
            // A chunked body that outgrows the limit fails the upstream
            // request mid-way: that is the client's fault, not the upstream's.
            Err(err) if err.caused_by::<http_body_util::LengthLimitError>() => {
                respond::error(&ProxyError::BodyTooLarge {
                    limit: config.max_body_bytes as usize,
                })
            }
            // So does a client too slow to send it (body_read_timeout).
            Err(err) if crate::client_io::is_body_timeout(&err) => {
                respond::error(&ProxyError::client_body(Box::new(err)))
            }
            Err(err) => self.upstream_failed(&err),
        }
    }

    async fn cached(
        self: &Arc<Self>,
        request: Request<RequestBody>,
        config: &Config,
        route: Option<&Route>,
        route_name: Arc<str>,
        client: ClientInfo,
    ) -> Served {
        let shared = route.is_some_and(|r| r.shared);
        let request = match self
            .key_request(request, config, shared, route, &route_name)
            .await
        {
            Ok(request) => request,
            Err(err) => return Served::rejected(&err, route_name),
        };
        let key = request.key;
        let started = Instant::now();
        let upstream = |response, cache, route| {
            let trace = Trace {
                key: Some(key),
                upstream_time: Some(started.elapsed()),
                saved: None,
            };
            Served::traced(response, cache, route, trace)
        };

        if shared {
            match request.credential {
                None => {
                    let field = CacheStatusField {
                        detail: Some("no-credentials"),
                        ..CacheStatusField::forward("bypass")
                    };
                    let response = Box::pin(self.forward_uncached(
                        request,
                        client,
                        CacheStatus::Bypass,
                        field,
                    ))
                    .await;
                    return upstream(response, CacheStatus::Bypass, route_name);
                }
                Some(credential)
                    if !self
                        .grants
                        .is_granted(&route_name, &credential, Instant::now()) =>
                {
                    info!(route = &*route_name, key = %request.key.short(), "credential not vouched for on shared route; asking the upstream");
                    let guard = self.flights.solo(request.key);
                    let (response, status) =
                        Box::pin(self.lead(guard, request, route, &route_name, client, false))
                            .await;
                    return upstream(response, status, route_name);
                }
                Some(_) => {}
            }
        }

        let freshness = ClientFreshness::of(config, &request.parts.headers);
        let wants_fresh = freshness.wants_fresh;
        let acceptable = |entry: &Entry, now: Instant| freshness.accepts(entry, now);
        if !wants_fresh {
            let now = Instant::now();
            match self.lookup(&request.key, now).await {
                Lookup::Fresh(entry) if acceptable(&entry, now) => {
                    return hit(&entry, &request.ask, route_name, now);
                }
                Lookup::Stale(entry) if entry.serves_while_revalidating(now) => {
                    return self.revalidate(&entry, request, route, route_name, client);
                }
                // Kept for stale-if-error or for revalidation: the fill
                // falls back on it if the upstream fails, or asks the
                // upstream whether it changed.
                Lookup::Fresh(_) | Lookup::Stale(_) | Lookup::Miss => {}
            }
        }
        match self.flights.join(request.key) {
            Join::Waiter(waiter) => {
                let (response, status) =
                    Box::pin(self.wait_for_fill(waiter, request, shared, client)).await;
                upstream(response, status, route_name)
            }
            Join::Leader(guard) => {
                // A fill may have stored the key between our lookup and our join.
                if !wants_fresh {
                    let now = Instant::now();
                    if let Lookup::Fresh(entry) = self.lookup(&request.key, now).await {
                        if acceptable(&entry, now) {
                            guard.publish(FillOutcome::Stored(entry.clone()));
                            return hit(&entry, &request.ask, route_name, now);
                        }
                    }
                }
                let (response, status) =
                    Box::pin(self.lead(guard, request, route, &route_name, client, true)).await;
                upstream(response, status, route_name)
            }
        }
    }

    /// Reads the body and computes the request's keys ([`Proxy::keys`]),
    /// and lets the volatile-field sampler see it.
    async fn key_request(
        &self,
        request: Request<RequestBody>,
        config: &Config,
        shared: bool,
        route: Option<&Route>,
        route_name: &Arc<str>,
    ) -> Result<Keyed, ProxyError> {
        let (parts, body) = request.into_parts();
        let body = read_body(&parts.headers, body, config.max_body_bytes).await?;
        let keys = self.keys(&parts, &body, config, shared, route);
        self.observe(route_name, route, &keys.method, &parts.uri, &body);
        Ok(Keyed {
            parts,
            body,
            method: keys.method,
            ask: keys.ask,
            base: keys.base,
            key: keys.key,
            credential: keys.credential,
        })
    }

    /// A request's keys, from its head and whole body: under the route's
    /// key rules, then its `key_headers`, then credentials, then `Vary`.
    fn keys(
        &self,
        parts: &request::Parts,
        body: &[u8],
        config: &Config,
        shared: bool,
        route: Option<&Route>,
    ) -> Keys {
        // HEAD is answered from (and fills) the GET entry, as nginx does.
        let head = parts.method == Method::HEAD;
        let method = if head {
            Method::GET
        } else {
            parts.method.clone()
        };
        let credential = self.credential(&parts.headers, config);
        let rules = route.map_or(KeyRules::none(), |r| &*r.key_rules);
        let (path, query) = (parts.uri.path(), parts.uri.query());
        let keyed = self.key_memo.keyed(&method, path, query, body, rules);
        let mut base = key_with_headers(keyed, rules, &parts.headers);
        if let (false, Some(credential)) = (shared, &credential) {
            base = base.derive(b"credential", &[credential]);
        }
        let key = self.vary.storage_key(&base, &parts.headers);
        let ask = Ask {
            head,
            validators: Validators::from_request(&parts.method, &parts.headers),
        };
        Keys {
            method,
            ask,
            base,
            key,
            credential,
        }
    }

    /// The credential part of a request's key: the digest of its credential
    /// headers, scoped as the storage keys it; `None` without any.
    fn credential(&self, headers: &http::HeaderMap, config: &Config) -> Option<[u8; 16]> {
        self.credentials
            .digest(headers, &config.cache.credential_headers)
            .map(|digest| self.store.scope_credential(digest))
    }

    /// Shows one keyed request to the route's volatile-field sampler.
    fn observe(
        &self,
        route_name: &Arc<str>,
        route: Option<&Route>,
        method: &Method,
        uri: &http::Uri,
        body: &[u8],
    ) {
        let rules = route.map_or(KeyRules::none(), |r| &*r.key_rules);
        self.volatile
            .observe(route_name, rules, method, uri.path(), uri.query(), body);
    }

    /// Sends a read request upstream on its own and streams the answer back.
    async fn forward_uncached(
        &self,
        request: Keyed,
        client: ClientInfo,
        status: CacheStatus,
        field: CacheStatusField,
    ) -> Response<ProxyBody> {
        let head = request.ask.head;
        let upstream_request = self.upstream_request(
            request.parts,
            Some(request.method),
            Either::Left(Full::new(request.body)),
            client,
        );
        Metrics::bump(&self.metrics.upstream_requests);
        let started = Instant::now();
        let sent = self.upstream.send(upstream_request).await;
        self.metrics.upstream_answered(started.elapsed());
        match sent {
            Ok(response) => self.stream_back(response, status, field, head),
            Err(err) => self.upstream_failed(&err),
        }
    }

    fn stream_back(
        &self,
        response: Response<Incoming>,
        status: CacheStatus,
        field: CacheStatusField,
        head: bool,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        let field = CacheStatusField {
            fwd_status: Some(parts.status.as_u16()),
            ..field
        };
        let body = UpstreamBody::new(body, self.upstream.timeout());
        respond::streamed(parts, body, status, field, head)
    }

    /// The error answer for a failed upstream request (its access line
    /// carries the chain).
    fn upstream_failed(&self, err: &ProxyError) -> Response<ProxyBody> {
        Metrics::bump(&self.metrics.upstream_errors);
        respond::error(err)
    }

    /// The client's request rewritten for the upstream (`method` overrides
    /// the client's, for HEAD answered by GET).
    pub(crate) fn upstream_request(
        &self,
        parts: request::Parts,
        method: Option<Method>,
        body: UpstreamRequestBody,
        client: ClientInfo,
    ) -> Request<UpstreamRequestBody> {
        let request::Parts {
            method: client_method,
            uri,
            version,
            mut headers,
            ..
        } = parts;
        let host = headers.get(HOST).cloned().or_else(|| {
            uri.authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::prepare_upstream_request(
            &mut headers,
            client.addr.ip(),
            client.scheme,
            host,
            version,
        );
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut request = Request::new(body);
        *request.method_mut() = method.unwrap_or(client_method);
        *request.uri_mut() = self.upstream.uri_for(path_and_query);
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        request
    }

    /// How long the upstream may stay silent before a fill gives up.
    pub(crate) fn upstream_timeout(&self) -> Duration {
        self.upstream.timeout()
    }
}

/// Reads a cacheable request's body whole, within `limit` bytes
/// (`max_body_bytes`), declared or as they arrive. A body that comes as
/// one frame (a dashboard's filters, a body already read) is handed on as
/// it came, with no list of buffers to allocate and no copy; a body in
/// several frames is joined as it arrives. Trailers are not part of it.
async fn read_body(
    headers: &HeaderMap,
    body: RequestBody,
    limit: u64,
) -> Result<Bytes, ProxyError> {
    check_declared_length(headers, limit)?;
    read_declared_body(body, limit).await
}

/// [`read_body`] for a body whose declared length was already checked.
async fn read_declared_body(body: RequestBody, limit: u64) -> Result<Bytes, ProxyError> {
    let limit = limit as usize;
    let mut body = std::pin::pin!(body);
    let (mut first, mut joined) = (Bytes::new(), None::<BytesMut>);
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(ProxyError::client_body)?.into_data() else {
            continue;
        };
        read += data.len();
        if read > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut both = BytesMut::with_capacity(read);
                both.extend_from_slice(&first);
                both.extend_from_slice(&data);
                joined = Some(both);
            }
        }
    }
    Ok(joined.map_or(first, BytesMut::freeze))
}

fn check_declared_length(headers: &HeaderMap, limit: u64) -> Result<(), ProxyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => Err(ProxyError::BodyTooLarge {
            limit: limit as usize,
        }),
        _ => Ok(()),
    }
}

/// Whether a request with this method, on this route, goes through the
/// cache (the rest pass through).
fn is_cached(config: &Config, method: &Method, route: Option<&Route>) -> bool {
    config.cache.enabled
        && policy::is_cacheable_method(method, config.cache.mode)
        && route.is_none_or(|r| r.cache)
}

/// A hit's answer, as of `now` (the instant its freshness was judged at).
fn hit(entry: &Entry, ask: &Ask, route: Arc<str>, now: Instant) -> Served {
    let (field, trace) = counted_hit(entry, now);
    Served::traced(
        respond::from_entry(entry, CacheStatus::Hit, field, ask, now),
        CacheStatus::Hit,
        route,
        trace,
    )
}

/// Counts a hit on `entry`; its `Cache-Status` member and trace.
fn counted_hit(entry: &Entry, now: Instant) -> (CacheStatusField, Trace) {
    entry.hits.fetch_add(1, Ordering::Relaxed);
    let field = CacheStatusField::hit(entry.ttl_left(now).as_secs());
    let trace = Trace {
        key: Some(entry.key),
        upstream_time: None,
        saved: Some(entry.upstream_time),
    };
    (field, trace)
}

/// True when `entry` is the variant `request` would be stored under.
fn serves(entry: &Entry, request: &Keyed) -> bool {
    let expected = match &entry.vary {
        Some(names) => variant_key(&request.base, names, &request.parts.headers),
        None => request.base,
    };
    expected == entry.key
}
