//! The request pipeline: route → key → lookup → (coalesce →) forward →
//! store → respond, as named steps on [`Proxy`], the state every connection
//! shares.
//!
//! Cacheable requests (GET, HEAD, POST on a caching route, cache enabled)
//! are read whole (bounded by `max_body_bytes`), keyed, and answered from
//! the store when fresh. A miss joins the key's flight: the first caller
//! spawns a detached fill task (so its client hanging up cannot cancel the
//! upstream request others wait for), the rest wait for its outcome. All
//! other requests stream through untouched (`X-Cache: BYPASS`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderValue, Method, Request, Response, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::admin;
use crate::body::{collect_limited, Collected, ProxyBody, UpstreamBody, UpstreamStalled};
use crate::cache::flight::{BufferedAnswer, FillGuard, FillOutcome, Flights, Join};
use crate::cache::policy::{self, NotStorable};
use crate::cache::{Entry, KeyMemo, Lookup, RequestIdentity, Store};
use crate::config::Config;
use crate::error::ProxyError;
use crate::headers;
use crate::metrics::Metrics;
use crate::respond::{self, CacheStatus, CacheStatusField};
use crate::routes::{Route, DEFAULT_ROUTE};
use crate::upstream::{Upstream, UpstreamRequestBody, UpstreamSetupError};

/// Where a request came from, as the listener saw it.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    pub scheme: &'static str,
}

/// State shared by every connection: configuration, store, flights,
/// upstream client and counters. Held in an `Arc`; every field is itself
/// safe to use concurrently, so no lock wraps the whole.
pub struct Proxy {
    pub config: Config,
    pub store: Store,
    pub flights: Arc<Flights>,
    pub upstream: Upstream,
    pub metrics: Metrics,
    key_memo: KeyMemo,
    default_route: Arc<str>,
}

/// What one request became, for the access log and the counters.
pub struct Served {
    pub response: Response<ProxyBody>,
    pub cache: CacheStatus,
    pub route: Arc<str>,
}

/// What the fill task hands the leader.
enum LeaderAnswer {
    Outcome(Arc<FillOutcome>),
    /// Nothing to store and nobody else waiting: the answer as a stream.
    Stream(Box<StreamedAnswer>),
}

struct StreamedAnswer {
    parts: http::response::Parts,
    body: UpstreamBody,
    reason: NotStorable,
}

/// The route's decisions that a fill needs after the request is gone.
struct FillPlan {
    route: Arc<str>,
    ttl: std::time::Duration,
    description: String,
}

impl Proxy {
    pub fn new(config: Config) -> Result<Self, UpstreamSetupError> {
        let upstream = Upstream::new(&config.upstream)?;
        let config_maxsize = config.cache.maxsize;
        let store = Store::new(
            config.cache.maxsize,
            config.cache.max_bytes,
            config.cache.max_object_bytes,
        );
        Ok(Self {
            config,
            store,
            flights: Arc::default(),
            upstream,
            metrics: Metrics::default(),
            key_memo: KeyMemo::new((config_maxsize * 4).min(1 << 20) as usize),
            default_route: DEFAULT_ROUTE.into(),
        })
    }

    /// Answers one request and writes its access line.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        client: ClientInfo,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = request.method().clone();
        let uri = request.uri().clone();
        let served = if admin::is_admin_path(uri.path()) {
            admin::handle(&self, request, client).await
        } else {
            self.proxy(request, client).await
        };
        let elapsed = started.elapsed();
        self.metrics.record(served.cache, elapsed);
        info!(
            target: "dashcache::access",
            client = %client.addr.ip(),
            method = %method,
            path = uri.path(),
            status = served.response.status().as_u16(),
            cache = served.cache.as_str(),
            route = &*served.route,
            duration_ms = %format_args!("{:.3}", elapsed.as_secs_f64() * 1000.0),
        );
        served.response
    }

    async fn proxy(self: &Arc<Self>, request: Request<Incoming>, client: ClientInfo) -> Served {
        let route = self
            .config
            .routes
            .lookup(request.method(), request.uri().path());
        let route_name = route.map_or_else(|| self.default_route.clone(), |r| r.name.clone());
        let cacheable = self.config.cache.enabled
            && policy::is_cacheable_method(request.method())
            && route.is_none_or(|r| r.cache);
        let (response, cache) = if cacheable {
            let ttl = route.and_then(|r| r.ttl).unwrap_or(self.config.cache.ttl);
            self.cached(request, route, &route_name, ttl, client).await
        } else {
            (
                self.pass_through(request, client).await,
                CacheStatus::Bypass,
            )
        };
        Served {
            response,
            cache,
            route: route_name,
        }
    }

    /// Streams the request upstream and the answer back, storing nothing.
    async fn pass_through(
        &self,
        request: Request<Incoming>,
        client: ClientInfo,
    ) -> Response<ProxyBody> {
        if let Err(err) = self.check_declared_length(request.headers()) {
            return respond::error(&err);
        }
        let (parts, body) = request.into_parts();
        let limited = Limited::new(body, self.config.max_body_bytes as usize);
        let upstream_request = self.upstream_request(parts, None, Either::Right(limited), client);
        Metrics::bump(&self.metrics.upstream_requests);
        match self.upstream.send(upstream_request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                headers::remove_hop_by_hop(&mut parts.headers);
                let body = UpstreamBody::new(body, self.upstream.timeout());
                respond::streamed(
                    parts,
                    body,
                    CacheStatus::Bypass,
                    CacheStatusField::forward("bypass"),
                    false,
                )
            }
            // A chunked body that outgrows the limit fails the upstream
            // request mid-way: that is the client's fault, not the upstream's.
            Err(err) if err.caused_by::<http_body_util::LengthLimitError>() => {
                let err = ProxyError::BodyTooLarge {
                    limit: self.config.max_body_bytes as usize,
                };
                warn!(error = %err.message(), "request body rejected");
                respond::error(&err)
            }
            Err(err) => {
                Metrics::bump(&self.metrics.upstream_errors);
                warn!(error = %err.message(), "upstream request failed");
                respond::error(&err)
            }
        }
    }

    async fn cached(
        self: &Arc<Self>,
        request: Request<Incoming>,
        route: Option<&Route>,
        route_name: &Arc<str>,
        ttl: std::time::Duration,
        client: ClientInfo,
    ) -> (Response<ProxyBody>, CacheStatus) {
        let (parts, body) = request.into_parts();
        let body = match self.read_body(&parts.headers, body).await {
            Ok(body) => body,
            Err(err) => {
                warn!(route = &**route_name, error = %err.message(), "request body rejected");
                return (respond::error(&err), CacheStatus::Miss);
            }
        };
        // HEAD is answered from (and fills) the GET entry, as nginx does.
        let head = parts.method == Method::HEAD;
        let method = if head {
            Method::GET
        } else {
            parts.method.clone()
        };
        let key = self
            .key_memo
            .key(&method, parts.uri.path(), parts.uri.query(), &body);

        let wants_fresh =
            self.config.cache.honor_client_no_cache && policy::client_wants_fresh(&parts.headers);
        if !wants_fresh {
            if let Some(response) = self.lookup(&key, route_name, head) {
                return (response, CacheStatus::Hit);
            }
        }
        info!(route = &**route_name, key = %key.short(), "Cache MISS for {route_name} - forwarding upstream");

        let guard = match self.flights.join(key) {
            Join::Leader(guard) => guard,
            Join::Waiter(waiter) => {
                Metrics::bump(&self.metrics.coalesced);
                let outcome = waiter.outcome().await;
                return (
                    self.answer_waiter(&outcome, parts, body, client, head)
                        .await,
                    CacheStatus::Miss,
                );
            }
        };
        // A fill may have stored the key between our lookup and our join.
        if !wants_fresh {
            if let Lookup::Fresh(entry) = self.store.get(&key, Instant::now()) {
                guard.publish(FillOutcome::Stored(entry.clone()));
                let field = CacheStatusField::hit(entry.ttl_left(Instant::now()).as_secs());
                return (
                    respond::from_entry(&entry, CacheStatus::Hit, field, head, Instant::now()),
                    CacheStatus::Hit,
                );
            }
        }
        let plan = FillPlan {
            route: route.map_or_else(|| route_name.clone(), |r| r.name.clone()),
            ttl,
            description: RequestIdentity::new(&method, parts.uri.path(), parts.uri.query(), &body)
                .description(route_name),
        };
        let upstream_request =
            self.upstream_request(parts, Some(method), Either::Left(Full::new(body)), client);
        let (answer_tx, answer_rx) = oneshot::channel();
        tokio::spawn(self.clone().fill(guard, upstream_request, plan, answer_tx));
        let response = match answer_rx.await {
            Ok(LeaderAnswer::Outcome(outcome)) => self.answer_leader(&outcome, head),
            Ok(LeaderAnswer::Stream(answer)) => {
                let StreamedAnswer {
                    parts,
                    body,
                    reason,
                } = *answer;
                let field = CacheStatusField {
                    fwd_status: Some(parts.status.as_u16()),
                    ..CacheStatusField::forward("miss")
                }
                .not_stored(reason);
                respond::streamed(parts, body, CacheStatus::Miss, field, head)
            }
            Err(_) => respond::error(&ProxyError::FillAbandoned),
        };
        (response, CacheStatus::Miss)
    }

    /// A fresh entry for `key`, rendered as a hit.
    fn lookup(
        &self,
        key: &crate::cache::CacheKey,
        route_name: &str,
        head: bool,
    ) -> Option<Response<ProxyBody>> {
        let now = Instant::now();
        match self.store.get(key, now) {
            Lookup::Fresh(entry) => {
                info!(route = route_name, key = %key.short(), "Cache HIT for {route_name}");
                let field = CacheStatusField::hit(entry.ttl_left(now).as_secs());
                Some(respond::from_entry(
                    &entry,
                    CacheStatus::Hit,
                    field,
                    head,
                    now,
                ))
            }
            Lookup::Miss => None,
        }
    }

    /// The detached fill: one upstream request whose outcome every caller of
    /// the flight receives.
    async fn fill(
        self: Arc<Self>,
        mut guard: FillGuard,
        request: Request<UpstreamRequestBody>,
        plan: FillPlan,
        leader: oneshot::Sender<LeaderAnswer>,
    ) {
        let key = guard.key();
        let started = Instant::now();
        Metrics::bump(&self.metrics.upstream_requests);
        let response = match self.upstream.send(request).await {
            Ok(response) => response,
            Err(err) => {
                Metrics::bump(&self.metrics.upstream_errors);
                warn!(route = &*plan.route, key = %key.short(), error = %err.message(), "upstream request failed");
                let _ = leader.send(LeaderAnswer::Outcome(
                    guard.publish(FillOutcome::Failed(err)),
                ));
                return;
            }
        };
        let (mut parts, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        let verdict = policy::storable_ttl(
            parts.status,
            &parts.headers,
            plan.ttl,
            &self.config.cache.cacheable_statuses,
        );
        let body = UpstreamBody::new(body, self.upstream.timeout());

        if let Err(reason) = verdict {
            if guard.end_if_alone() {
                Metrics::bump(&self.metrics.not_stored);
                info!(route = &*plan.route, key = %key.short(), reason = reason.as_str(), status = parts.status.as_u16(), "answer not stored");
                let _ = leader.send(LeaderAnswer::Stream(Box::new(StreamedAnswer {
                    parts,
                    body,
                    reason,
                })));
                return;
            }
        }

        let outcome = match collect_limited(body, self.store.max_entry_bytes()).await {
            Err(source) => {
                Metrics::bump(&self.metrics.upstream_errors);
                let err = if source.is::<UpstreamStalled>() {
                    ProxyError::UpstreamTimeout {
                        upstream: self.upstream.name().to_owned(),
                        timeout: self.upstream.timeout(),
                    }
                } else {
                    ProxyError::UpstreamBody {
                        upstream: self.upstream.name().to_owned(),
                        source,
                    }
                };
                warn!(route = &*plan.route, key = %key.short(), error = %err.message(), "upstream body failed; nothing stored");
                FillOutcome::Failed(err)
            }
            Ok(Collected::TooLarge(body)) => {
                Metrics::bump(&self.metrics.not_stored);
                info!(route = &*plan.route, key = %key.short(), "answer larger than max_object_bytes; streamed, not stored");
                let outcome = guard.publish(FillOutcome::Streamed);
                drop(outcome);
                let _ = leader.send(LeaderAnswer::Stream(Box::new(StreamedAnswer {
                    parts,
                    body,
                    reason: NotStorable::TooLarge,
                })));
                return;
            }
            Ok(Collected::Complete(bytes)) => match verdict {
                Ok(ttl) => self.store_answer(key, parts, bytes, ttl, plan, started),
                Err(reason) => {
                    Metrics::bump(&self.metrics.not_stored);
                    info!(route = &*plan.route, key = %key.short(), reason = reason.as_str(), status = parts.status.as_u16(), "answer not stored");
                    FillOutcome::Uncacheable(BufferedAnswer {
                        status: parts.status,
                        headers: parts.headers,
                        body: bytes,
                        reason,
                    })
                }
            },
        };
        let _ = leader.send(LeaderAnswer::Outcome(guard.publish(outcome)));
    }

    fn store_answer(
        &self,
        key: crate::cache::CacheKey,
        parts: http::response::Parts,
        body: Bytes,
        ttl: std::time::Duration,
        plan: FillPlan,
        started: Instant,
    ) -> FillOutcome {
        let now = Instant::now();
        let initial_age = parts
            .headers
            .get(http::header::AGE)
            .and_then(|v| v.to_str().ok()?.trim().parse().ok())
            .unwrap_or(0);
        let entry = Arc::new(Entry {
            status: parts.status,
            headers: parts.headers,
            body,
            route: plan.route,
            description: plan.description,
            stored_at: now,
            expires_at: now + ttl,
            initial_age,
            upstream_time: now - started,
        });
        if self.store.insert(key, entry.clone()) {
            Metrics::bump(&self.metrics.stored);
            info!(route = &*entry.route, key = %key, ttl_s = ttl.as_secs(), bytes = entry.body.len(), "Cache SET: {}", key.short());
            FillOutcome::Stored(entry)
        } else {
            Metrics::bump(&self.metrics.not_stored);
            info!(route = &*entry.route, key = %key.short(), "answer heavier than one store entry may be; not stored");
            FillOutcome::Uncacheable(BufferedAnswer {
                status: entry.status,
                headers: entry.headers.clone(),
                body: entry.body.clone(),
                reason: NotStorable::TooLarge,
            })
        }
    }

    fn answer_leader(&self, outcome: &FillOutcome, head: bool) -> Response<ProxyBody> {
        match outcome {
            FillOutcome::Stored(entry) => {
                let field = CacheStatusField {
                    fwd_status: Some(entry.status.as_u16()),
                    stored: true,
                    ..CacheStatusField::forward("miss")
                };
                respond::from_entry(entry, CacheStatus::Miss, field, head, Instant::now())
            }
            FillOutcome::Uncacheable(answer) => {
                let field = CacheStatusField {
                    fwd_status: Some(answer.status.as_u16()),
                    ..CacheStatusField::forward("miss")
                };
                respond::from_buffered(answer, field, head)
            }
            FillOutcome::Failed(err) => respond::error(err),
            FillOutcome::Streamed | FillOutcome::Abandoned => {
                respond::error(&ProxyError::FillAbandoned)
            }
        }
    }

    /// A waiter shares the leader's outcome; when the answer could not be
    /// shared (streamed to the leader, or the fill vanished) it forwards on
    /// its own, storing nothing.
    async fn answer_waiter(
        &self,
        outcome: &FillOutcome,
        parts: http::request::Parts,
        body: Bytes,
        client: ClientInfo,
        head: bool,
    ) -> Response<ProxyBody> {
        let collapsed = CacheStatusField {
            collapsed: true,
            ..CacheStatusField::forward("miss")
        };
        match outcome {
            FillOutcome::Stored(entry) => {
                respond::from_entry(entry, CacheStatus::Miss, collapsed, head, Instant::now())
            }
            FillOutcome::Uncacheable(answer) => respond::from_buffered(answer, collapsed, head),
            FillOutcome::Failed(err) => respond::error(err),
            FillOutcome::Streamed | FillOutcome::Abandoned => {
                let method = if head {
                    Method::GET
                } else {
                    parts.method.clone()
                };
                let request = self.upstream_request(
                    parts,
                    Some(method),
                    Either::Left(Full::new(body)),
                    client,
                );
                Metrics::bump(&self.metrics.upstream_requests);
                match self.upstream.send(request).await {
                    Ok(response) => {
                        let (mut parts, body) = response.into_parts();
                        headers::remove_hop_by_hop(&mut parts.headers);
                        let field = CacheStatusField {
                            fwd_status: Some(parts.status.as_u16()),
                            detail: Some(outcome.as_str()),
                            ..CacheStatusField::forward("miss")
                        };
                        let body = UpstreamBody::new(body, self.upstream.timeout());
                        respond::streamed(parts, body, CacheStatus::Miss, field, head)
                    }
                    Err(err) => {
                        Metrics::bump(&self.metrics.upstream_errors);
                        respond::error(&err)
                    }
                }
            }
        }
    }

    /// Reads a cacheable request's body whole, within `max_body_bytes`.
    async fn read_body(
        &self,
        headers: &http::HeaderMap,
        body: Incoming,
    ) -> Result<Bytes, ProxyError> {
        self.check_declared_length(headers)?;
        let limit = self.config.max_body_bytes as usize;
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(source) if source.is::<http_body_util::LengthLimitError>() => {
                Err(ProxyError::BodyTooLarge { limit })
            }
            Err(source) => Err(ProxyError::ClientBody { source }),
        }
    }

    fn check_declared_length(&self, headers: &http::HeaderMap) -> Result<(), ProxyError> {
        let limit = self.config.max_body_bytes;
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

    /// The client's request rewritten for the upstream (`method` overrides
    /// the client's, for HEAD answered by GET).
    fn upstream_request(
        &self,
        parts: http::request::Parts,
        method: Option<Method>,
        body: UpstreamRequestBody,
        client: ClientInfo,
    ) -> Request<UpstreamRequestBody> {
        let http::request::Parts {
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
}
