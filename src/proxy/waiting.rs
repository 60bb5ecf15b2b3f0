//! Waiting for another caller's fill: the coalesced side of single-flight.
//!
//! A waiter sleeps on the key's flight until the leader's fill publishes
//! its outcome, for at most `lock_timeout`. It never sends its own request
//! for a key whose fill is running, so a slow or failing upstream sees one
//! request per key, not a stampede: past the bound the waiter answers the
//! key's stale entry if it has one, else 504. A waiter whose client hangs up
//! is simply dropped (its `watch` receiver with it); the fill and the other
//! waiters carry on.

use std::time::Instant;

use http::Response;
use tracing::warn;

use super::{serves, ClientInfo, Keyed, Proxy};
use crate::body::ProxyBody;
use crate::cache::flight::{FillOutcome, Waiter};
use crate::cache::stale::StaleReason;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::respond::{self, CacheStatus, CacheStatusField};

impl Proxy {
    /// Waits (bounded by `lock_timeout`) for the fill `waiter` joined, and
    /// answers from its outcome.
    pub(super) async fn wait_for_fill(
        &self,
        waiter: Waiter,
        request: Keyed,
        shared: bool,
        client: ClientInfo,
    ) -> (Response<ProxyBody>, CacheStatus) {
        Metrics::bump(&self.metrics.coalesced);
        let timeout = self.config().cache.lock_timeout;
        match tokio::time::timeout(timeout, waiter.outcome()).await {
            Ok(outcome) => self.answer_waiter(&outcome, request, shared, client).await,
            Err(_) => self.lock_timed_out(&request).await,
        }
    }

    /// The fill outlived `lock_timeout`: the stale entry, else 504. The
    /// fill itself goes on and stores its answer for later callers.
    async fn lock_timed_out(&self, request: &Keyed) -> (Response<ProxyBody>, CacheStatus) {
        let now = Instant::now();
        let timeout = self.config().cache.lock_timeout;
        if let Some(entry) = self
            .store
            .stale_if_error(&request.key, now)
            .await
            .filter(|entry| serves(entry, request))
        {
            warn!(key = %request.key.short(), timeout_ms = timeout.as_millis() as u64, "fill still running past lock_timeout; serving the stale entry");
            let field = CacheStatusField {
                collapsed: true,
                ..CacheStatusField::stale(&entry, StaleReason::LockTimeout, now)
            };
            let response =
                respond::from_entry(&entry, CacheStatus::Stale, field, &request.ask, now);
            return (response, CacheStatus::Stale);
        }
        let err = ProxyError::LockTimeout { timeout };
        warn!(key = %request.key.short(), error = %err.message(), "waiter gave up");
        (respond::error(&err), CacheStatus::Miss)
    }

    /// A waiter shares the leader's outcome when it is meant for it too;
    /// otherwise it forwards on its own, storing nothing.
    async fn answer_waiter(
        &self,
        outcome: &FillOutcome,
        request: Keyed,
        shared: bool,
        client: ClientInfo,
    ) -> (Response<ProxyBody>, CacheStatus) {
        let collapsed = CacheStatusField {
            collapsed: true,
            ..CacheStatusField::forward("miss")
        };
        let now = Instant::now();
        let response = match outcome {
            FillOutcome::Stored(entry) | FillOutcome::Discarded(entry)
                if serves(entry, &request) =>
            {
                respond::from_entry(entry, CacheStatus::Miss, collapsed, &request.ask, now)
            }
            FillOutcome::Stale { entry, reason } if serves(entry, &request) => {
                let field = CacheStatusField {
                    collapsed: true,
                    ..CacheStatusField::stale(entry, *reason, now)
                };
                let response =
                    respond::from_entry(entry, CacheStatus::Stale, field, &request.ask, now);
                return (response, CacheStatus::Stale);
            }
            // An unstored answer may belong to the leader's credential
            // (shared routes); policy says which others may be shared.
            FillOutcome::Uncacheable(answer) if !shared && answer.shareable() => {
                respond::from_buffered(answer, collapsed, request.ask.head)
            }
            FillOutcome::Failed(err) => respond::error(err),
            other => {
                let field = CacheStatusField {
                    detail: Some(other.as_str()),
                    ..CacheStatusField::forward("miss")
                };
                self.forward_uncached(request, client, CacheStatus::Miss, field)
                    .await
            }
        };
        (response, CacheStatus::Miss)
    }
}
