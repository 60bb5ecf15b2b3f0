//! The fill: the one upstream request behind a miss, run detached from the
//! client that started it, whose outcome every caller of the flight gets.
//!
//! It reads the answer whole (up to the largest storable entry), decides
//! with `cache::policy` whether to store it, stores it under the right
//! `Vary` variant, and publishes the outcome. Two shortcuts keep memory and
//! latency down: an unstorable answer nobody else waits for is streamed to
//! the leader instead of buffered, and an answer too large to store is
//! streamed to the leader while waiters forward on their own.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_LENGTH, ETAG, LAST_MODIFIED};
use http::{HeaderMap, Request, Response, StatusCode};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::body::{collect_limited, Collected, ProxyBody, UpstreamBody, UpstreamStalled};
use crate::cache::flight::{BufferedAnswer, FillGuard, FillOutcome};
use crate::cache::lock::{self, Acquire, Lease, LockStatus};
use crate::cache::policy::{self, NotStorable, Storable, StoreRules};
use crate::cache::replay::Replay;
use crate::cache::stale::{StaleReason, StaleWindows};
use crate::cache::store::Refused;
use crate::cache::vary::{variant_key, vary_names};
use crate::cache::{CacheKey, Entry, Lookup};
use crate::config::CacheConfig;
use crate::error::ProxyError;
use crate::headers;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::respond::{self, Ask, CacheStatus, CacheStatusField};
use crate::upstream::UpstreamRequestBody;

/// What a fill needs to know once the client's request is gone.
pub(crate) struct FillPlan {
    pub route: Arc<str>,
    pub ttl: Duration,
    /// `route METHOD path?query body`, kept with the entry for `invalidate`.
    pub description: String,
    pub base: CacheKey,
    /// The leader's request headers, to pick the `Vary` variant.
    pub request_headers: HeaderMap,
    /// On a shared route, the credential this answer vouches for (or revokes).
    pub vouch_for: Option<[u8; 16]>,
    /// The route's stale windows (the answer's `Cache-Control` may override them).
    pub stale: StaleWindows,
    /// Whether a failure may be answered from a stale entry: not for a solo
    /// fill, whose caller's credential is not vouched for yet, nor for a
    /// refresh, which must see the upstream's real answer.
    pub serve_stale: bool,
    /// Kept with the entry for refreshes (`None` with credentials).
    pub replay: Option<Replay>,
    /// The stored entry whose validators the upstream request carries: a
    /// `304` freshens it instead of replacing it (RFC 9111 §4.3.4).
    pub revalidating: Option<Arc<Entry>>,
    /// A refresh: an entry stored before the fill started does not answer it.
    pub refresh: bool,
}

/// What the fill hands the leader.
pub(crate) enum LeaderAnswer {
    /// The outcome every caller shares, plus the fields only the leader
    /// may see (those the stored copy leaves out, such as `Set-Cookie`).
    Outcome(Arc<FillOutcome>, HeaderMap),
    /// Not stored and not shared: the answer as a stream.
    Stream(Box<StreamedAnswer>),
}

pub(crate) struct StreamedAnswer {
    parts: http::response::Parts,
    body: UpstreamBody,
    reason: NotStorable,
}

pub(crate) async fn run(
    proxy: Arc<Proxy>,
    mut guard: FillGuard,
    request: Request<UpstreamRequestBody>,
    plan: FillPlan,
    leader: oneshot::Sender<LeaderAnswer>,
) {
    let key = guard.key();
    let started = Instant::now();
    let lease = match shared_lock(&proxy, key, &plan, started).await {
        Ok(lease) => lease,
        Err(outcome) => {
            let _ = leader.send(LeaderAnswer::Outcome(
                guard.publish(outcome),
                HeaderMap::new(),
            ));
            return;
        }
    };
    let generation = proxy.store.generation();
    Metrics::bump(&proxy.metrics.upstream_requests);
    let sent = proxy.upstream.send(request).await;
    proxy.metrics.upstream_answered(started.elapsed());
    proxy
        .metrics
        .history()
        .events
        .backend_answered(sent.as_ref().err());
    let response = match sent {
        Ok(response) => response,
        Err(err) => {
            Metrics::bump(&proxy.metrics.upstream_errors);
            warn!(route = &*plan.route, key = %key.short(), error = %err.message(), "upstream request failed");
            let outcome =
                stale_instead(&proxy, &plan, key, StaleReason::UpstreamError(err.as_str()))
                    .await
                    .unwrap_or(FillOutcome::Failed(err));
            let _ = leader.send(LeaderAnswer::Outcome(
                guard.publish(outcome),
                HeaderMap::new(),
            ));
            return;
        }
    };
    if response.status().is_server_error() {
        let reason = StaleReason::UpstreamStatus(response.status());
        if let Some(outcome) = stale_instead(&proxy, &plan, key, reason).await {
            // The error's body is dropped unread: a stale answer replaces it.
            let _ = leader.send(LeaderAnswer::Outcome(
                guard.publish(outcome),
                HeaderMap::new(),
            ));
            return;
        }
    }
    let (mut parts, body) = response.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    if let Some(credential) = &plan.vouch_for {
        vouch(&proxy, &plan.route, credential, parts.status);
    }
    if parts.status == StatusCode::NOT_MODIFIED {
        if let Some(stored) = plan.revalidating.clone() {
            let (outcome, own) =
                freshen(&proxy, &stored, &parts.headers, plan, started, generation).await;
            let stored = matches!(outcome, FillOutcome::Stored(_));
            let _ = leader.send(LeaderAnswer::Outcome(guard.publish(outcome), own));
            if let Some(lease) = lease {
                lease.release(stored).await;
            }
            return;
        }
    }
    let verdict = {
        let config = proxy.config();
        policy::assess(
            parts.status,
            &parts.headers,
            &store_rules(&config.cache, plan.ttl),
            SystemTime::now(),
            policy::is_authorized(&plan.request_headers),
        )
    };
    let body = UpstreamBody::new(body, proxy.upstream_timeout());

    if let Err(reason) = verdict {
        // Nobody else to give it to, or not fit to give (a cookie, a
        // private answer): stream it to the leader; waiters ask for their own.
        let shareable = policy::shareable(reason, &parts.headers);
        if guard.end_if_alone() || !shareable {
            not_stored(&proxy, &plan.route, key, reason, parts.status);
            if !shareable {
                guard.publish(FillOutcome::Streamed);
            }
            let _ = leader.send(LeaderAnswer::Stream(Box::new(StreamedAnswer {
                parts,
                body,
                reason,
            })));
            return;
        }
    }

    let mut own = HeaderMap::new();
    let outcome = match collect_limited(body, proxy.store.max_entry_bytes()).await {
        Err(source) => {
            Metrics::bump(&proxy.metrics.upstream_errors);
            let upstream = proxy.upstream.name().to_owned();
            let err = if source.is::<UpstreamStalled>() {
                ProxyError::UpstreamTimeout {
                    upstream,
                    timeout: proxy.upstream_timeout(),
                }
            } else {
                ProxyError::UpstreamBody { upstream, source }
            };
            warn!(route = &*plan.route, key = %key.short(), error = %err.message(), "upstream body failed; nothing stored");
            stale_instead(&proxy, &plan, key, StaleReason::UpstreamError(err.as_str()))
                .await
                .unwrap_or(FillOutcome::Failed(err))
        }
        Ok(Collected::TooLarge(body)) => {
            not_stored(
                &proxy,
                &plan.route,
                key,
                NotStorable::TooLarge,
                parts.status,
            );
            guard.publish(FillOutcome::Streamed);
            let reason = NotStorable::TooLarge;
            let _ = leader.send(LeaderAnswer::Stream(Box::new(StreamedAnswer {
                parts,
                body,
                reason,
            })));
            return;
        }
        Ok(Collected::Complete(bytes)) => match verdict {
            Ok(storable) => {
                let mut parts = parts;
                own = leader_only(&mut parts.headers, &storable.strip);
                store(&proxy, parts, bytes, storable, plan, started, generation).await
            }
            Err(reason) => {
                not_stored(&proxy, &plan.route, key, reason, parts.status);
                FillOutcome::Uncacheable(BufferedAnswer {
                    status: parts.status,
                    headers: parts.headers,
                    body: bytes,
                    reason,
                })
            }
        },
    };
    let stored = matches!(outcome, FillOutcome::Stored(_));
    let _ = leader.send(LeaderAnswer::Outcome(guard.publish(outcome), own));
    if let Some(lease) = lease {
        lease.release(stored).await;
    }
}

/// With a shared tier, takes the key's cross-replica fill lock; while
/// another replica holds it, waits for its news and looks the key up again.
/// `Err` is the outcome that ends this fill without an upstream request: the
/// entry another replica stored, or (past `lock_timeout`) a stale entry or
/// `LockTimeout`. Redis unreachable: no lock, as without Redis.
async fn shared_lock(
    proxy: &Proxy,
    key: CacheKey,
    plan: &FillPlan,
    started: Instant,
) -> Result<Option<Lease>, FillOutcome> {
    let Some(tier) = proxy.store.shared() else {
        return Ok(None);
    };
    let timeout = proxy.config().cache.lock_timeout;
    loop {
        let wait = timeout.saturating_sub(started.elapsed());
        let status = match lock::acquire(tier, key, wait).await {
            Acquire::Held(lease) => {
                // Another replica may have stored the key and released the
                // lock between our lookup and our taking it: look once more.
                if let Lookup::Fresh(entry) = proxy.store.lookup(&key, Instant::now()).await {
                    if !plan.refresh || entry.stored_at >= started {
                        lease.release(true).await;
                        return Err(FillOutcome::Stored(entry));
                    }
                }
                return Ok(Some(lease));
            }
            Acquire::Unavailable(err) => {
                debug!(key = %key.short(), error = err.as_str(), "no shared fill lock; filling alone");
                return Ok(None);
            }
            Acquire::Waited(status) => status,
        };
        if let Lookup::Fresh(entry) = proxy.store.lookup(&key, Instant::now()).await {
            if !plan.refresh || entry.stored_at >= started {
                info!(route = &*plan.route, key = %key.short(), status = status.as_str(), "filled by another replica");
                return Err(FillOutcome::Stored(entry));
            }
        }
        if status == LockStatus::TimedOut {
            let err = ProxyError::LockTimeout { timeout };
            warn!(route = &*plan.route, key = %key.short(), error = %err.message(), "another replica's fill outlived lock_timeout");
            return Err(stale_instead(proxy, plan, key, StaleReason::LockTimeout)
                .await
                .unwrap_or(FillOutcome::Failed(err)));
        }
        debug!(key = %key.short(), status = status.as_str(), "fill lock free again; taking it");
    }
}

/// The stale entry that answers for a failed fill, if the key has one
/// inside its `stale-if-error` window.
async fn stale_instead(
    proxy: &Proxy,
    plan: &FillPlan,
    key: CacheKey,
    reason: StaleReason,
) -> Option<FillOutcome> {
    if !plan.serve_stale {
        return None;
    }
    let entry = proxy.store.stale_if_error(&key, Instant::now()).await?;
    if matches!(reason, StaleReason::UpstreamStatus(_)) && entry.status.is_server_error() {
        // A stored 5xx is no better than the new one (RFC 9111 §4.2.4).
        return None;
    }
    warn!(route = &*plan.route, key = %key.short(), reason = reason.as_str(), fwd_status = reason.upstream_status(), "upstream failed; serving the stale entry");
    Some(FillOutcome::Stale { entry, reason })
}

/// On a shared route, the upstream's verdict on the leader's credential.
fn vouch(proxy: &Proxy, route: &str, credential: &[u8; 16], status: StatusCode) {
    if status.is_success() {
        proxy.grants.grant(route, credential, Instant::now());
    } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        proxy.grants.revoke(route, credential);
        info!(
            route,
            status = status.as_u16(),
            "credential refused by the upstream; shared entries withheld from it"
        );
    }
}

fn not_stored(proxy: &Proxy, route: &str, key: CacheKey, reason: NotStorable, status: StatusCode) {
    Metrics::bump(&proxy.metrics.not_stored);
    info!(route, key = %key.short(), reason = reason.as_str(), status = status.as_u16(), "answer not stored");
}

/// The settings `policy::assess` applies for an entry whose default TTL is `ttl`.
pub(crate) fn store_rules(cache: &CacheConfig, ttl: Duration) -> StoreRules<'_> {
    StoreRules {
        mode: cache.mode,
        ttl,
        heuristic: cache.heuristic_freshness,
        cacheable_statuses: &cache.cacheable_statuses,
        targeted: &cache.targeted_cache_control,
    }
}

/// Takes the fields the stored copy must leave out out of `headers`, and
/// returns them for the leader's own answer.
fn leader_only(headers: &mut HeaderMap, strip: &[HeaderName]) -> HeaderMap {
    let mut own = HeaderMap::new();
    for name in strip {
        let values: Vec<_> = headers.get_all(name).iter().cloned().collect();
        headers.remove(name);
        for value in values {
            own.append(name.clone(), value);
        }
    }
    own
}

async fn store(
    proxy: &Proxy,
    parts: http::response::Parts,
    body: Bytes,
    storable: Storable,
    plan: FillPlan,
    started: Instant,
    generation: u64,
) -> FillOutcome {
    let now = Instant::now();
    let vary = vary_names(&parts.headers);
    let key = match &vary {
        Some(names) => variant_key(&plan.base, names, &plan.request_headers),
        None => plan.base,
    };
    let validated = parts.headers.contains_key(ETAG) || parts.headers.contains_key(LAST_MODIFIED);
    let stale = StaleWindows::for_answer(plan.stale, &storable.directives, validated);
    let entry = Arc::new(
        Entry {
            key,
            base: plan.base,
            vary: vary.clone(),
            status: parts.status,
            headers: parts.headers.into(),
            body,
            route: plan.route,
            description: plan.description,
            stored_at: now,
            expires_at: now + storable.ttl,
            stale,
            initial_age: storable.initial_age,
            upstream_time: now - started,
            hits: std::sync::atomic::AtomicU64::new(0),
            replay: plan.replay,
        }
        .compacted(),
    );
    insert(proxy, entry, generation, storable.ttl).await
}

/// A `304` answered the fill's conditional request: the stored entry's
/// headers are updated with the 304's (all but `Content-Length`, RFC 9111
/// §3.2 and §4.3.4), its freshness computed again, and its body kept.
async fn freshen(
    proxy: &Proxy,
    stored: &Arc<Entry>,
    update: &HeaderMap,
    plan: FillPlan,
    started: Instant,
    generation: u64,
) -> (FillOutcome, HeaderMap) {
    let mut headers = stored.headers.to_map();
    for name in update.keys() {
        if name == CONTENT_LENGTH {
            continue;
        }
        headers.remove(name);
        for value in update.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let verdict = {
        let config = proxy.config();
        policy::assess(
            stored.status,
            &headers,
            &store_rules(&config.cache, plan.ttl),
            SystemTime::now(),
            policy::is_authorized(&plan.request_headers),
        )
    };
    let storable = match verdict {
        Ok(storable) => storable,
        Err(reason) => {
            // The merged answer may no longer be kept (a new `no-store`,
            // `private`, `Set-Cookie`…): it goes to the leader like any
            // unstorable answer, and to waiters only if impersonal.
            proxy.store.remove_entry(stored).await;
            not_stored(proxy, &plan.route, stored.key, reason, stored.status);
            let answer = BufferedAnswer {
                status: stored.status,
                headers,
                body: stored.body.clone(),
                reason,
            };
            return (FillOutcome::Uncacheable(answer), HeaderMap::new());
        }
    };
    let own = leader_only(&mut headers, &storable.strip);
    let now = Instant::now();
    info!(route = &*plan.route, key = %stored.key.short(), "upstream answered 304; stored entry freshened");
    let entry = Arc::new(
        Entry {
            key: stored.key,
            base: stored.base,
            vary: stored.vary.clone(),
            status: stored.status,
            headers: headers.into(),
            body: stored.body.clone(),
            route: plan.route,
            description: plan.description,
            stored_at: now,
            expires_at: now + storable.ttl,
            stale: StaleWindows::for_answer(plan.stale, &storable.directives, true),
            initial_age: storable.initial_age,
            upstream_time: now - started,
            hits: std::sync::atomic::AtomicU64::new(0),
            replay: plan.replay,
        }
        .compacted(),
    );
    (insert(proxy, entry, generation, storable.ttl).await, own)
}

async fn insert(proxy: &Proxy, entry: Arc<Entry>, generation: u64, ttl: Duration) -> FillOutcome {
    let key = entry.key;
    match proxy.store.insert(entry.clone(), generation).await {
        Ok(()) => {
            proxy.vary.record(entry.base, entry.vary.clone());
            Metrics::bump(&proxy.metrics.stored);
            info!(route = &*entry.route, key = %key, ttl_s = ttl.as_secs(), bytes = entry.body.len(), "Cache SET: {}...", key.short());
            FillOutcome::Stored(entry)
        }
        Err(Refused::Outdated) => {
            Metrics::bump(&proxy.metrics.not_stored);
            info!(route = &*entry.route, key = %key.short(), "cache cleared or invalidated during the fill; answer served, not stored");
            FillOutcome::Discarded(entry)
        }
        Err(Refused::TooLarge) => {
            Metrics::bump(&proxy.metrics.not_stored);
            info!(route = &*entry.route, key = %key.short(), "answer heavier than one store entry may be; not stored");
            FillOutcome::Discarded(entry)
        }
    }
}

/// The leader's answer: from its own fill, whatever the outcome.
pub(crate) fn answer_leader(answer: LeaderAnswer, ask: &Ask) -> (Response<ProxyBody>, CacheStatus) {
    let (outcome, own) = match answer {
        LeaderAnswer::Stream(answer) => {
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
            let response = respond::streamed(parts, body, CacheStatus::Miss, field, ask.head);
            return (response, CacheStatus::Miss);
        }
        LeaderAnswer::Outcome(outcome, own) => (outcome, own),
    };
    if let FillOutcome::Stale { entry, reason } = &*outcome {
        let now = Instant::now();
        let field = CacheStatusField::stale(entry, *reason, now);
        let response = respond::from_entry(entry, CacheStatus::Stale, field, ask, now);
        return (response, CacheStatus::Stale);
    }
    let response = match &*outcome {
        FillOutcome::Stored(entry) => {
            let field = CacheStatusField {
                fwd_status: Some(entry.status.as_u16()),
                stored: true,
                ..CacheStatusField::forward("miss")
            };
            let mut response =
                respond::from_entry(entry, CacheStatus::Miss, field, ask, Instant::now());
            for (name, value) in &own {
                response.headers_mut().append(name, value.clone());
            }
            response
        }
        FillOutcome::Discarded(entry) => {
            let field = CacheStatusField {
                fwd_status: Some(entry.status.as_u16()),
                ..CacheStatusField::forward("miss")
            };
            respond::from_entry(entry, CacheStatus::Miss, field, ask, Instant::now())
        }
        FillOutcome::Uncacheable(answer) => {
            let field = CacheStatusField {
                fwd_status: Some(answer.status.as_u16()),
                ..CacheStatusField::forward("miss")
            };
            respond::from_buffered(answer, field, ask.head)
        }
        FillOutcome::Failed(err) => respond::error(err),
        FillOutcome::Streamed | FillOutcome::Abandoned | FillOutcome::Stale { .. } => {
            respond::error(&ProxyError::FillAbandoned)
        }
    };
    (response, CacheStatus::Miss)
}
