//! Zero-miss refresh: `POST /api/cache/refresh` asks the upstream again for
//! stored entries, in the background, while the old answers keep being
//! served until each new one is stored.
//!
//! This is what the data pipeline calls after its daily refresh instead of
//! `clear`: dashboards never meet a miss, and the warehouse sees at most
//! `refresh_concurrency` refresh queries at once. Each refresh is an
//! ordinary fill joined through the key's flight, so a concurrent miss on
//! the same key shares it rather than asking a second time. An entry whose
//! refresh fails (error, 5xx, an answer that may not be stored) is dropped,
//! so the next request is a miss: it is never served as if it were fresh.
//! Entries fetched with credentials are never replayed (`cache::replay`);
//! a refresh drops them instead.
//!
//! Memory stays bounded at any store size: accepting a refresh walks the
//! store once on a blocking thread and keeps only the matching *keys* (16
//! bytes each) in a queue; `refresh_concurrency` workers pull keys from it
//! and look each entry up when its turn comes. A `clear` cancels what is
//! still queued, and the counters say so (`cancelled`), as they do for an
//! entry evicted or invalidated before its turn.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use serde::Serialize;
use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, info, warn};

use crate::body::ProxyBody;
use crate::cache::flight::{FillOutcome, Join};
use crate::cache::storage::KeysError;
use crate::cache::{CacheKey, Entry, Lookup};
use crate::error::ProxyError;
use crate::fill::{self, FillPlan, LeaderAnswer};
use crate::metrics::EventKind;
use crate::proxy::{ClientInfo, Proxy};
use crate::respond;
use crate::server::Surface;

/// What a refresh request looks like to the upstream: from the proxy itself.
const REFRESH_CLIENT: ClientInfo = ClientInfo {
    addr: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0),
    scheme: "http",
    surface: Surface::Combined,
};

/// Refreshes in progress and their counters (shown in stats).
pub struct Refresher {
    /// One permit per refresh talking to the upstream: `refresh_concurrency`.
    permits: Arc<Semaphore>,
    /// Workers started per accepted refresh: `refresh_concurrency`.
    workers: usize,
    /// Counters are independent relaxed atomics, read only by stats.
    scheduled: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    /// Entries that could not be replayed (fetched with credentials), dropped.
    dropped: AtomicU64,
    /// Entries not refreshed because a clear, an invalidate or an eviction
    /// removed them before their turn (or during it).
    cancelled: AtomicU64,
    running: AtomicU64,
    /// `scheduled` when the last `refresh_end` event was recorded.
    ended_at: AtomicU64,
}

/// The refresh counters, as stats shows them.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RefreshFigures {
    pub scheduled: u64,
    pub done: u64,
    pub failed: u64,
    pub dropped: u64,
    /// Removed by a clear, invalidate or eviction before being refreshed.
    pub cancelled: u64,
    pub running: u64,
    /// Scheduled, not yet started.
    pub queued: u64,
}

/// How one entry's refresh ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refill {
    /// The new answer is stored (by this refresh or a fill it joined).
    Stored,
    /// Fetched with credentials: not replayed.
    Unreplayable,
    /// The upstream failed or its answer may not be stored.
    Failed(&'static str),
    /// The entry was removed or replaced (clear, invalidate, eviction, a
    /// newer fill) before or while it was refreshed.
    Cancelled,
}

impl Refresher {
    pub fn new(concurrency: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            workers: concurrency.max(1),
            scheduled: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            running: AtomicU64::new(0),
            ended_at: AtomicU64::new(0),
        }
    }

    /// Marks the end of the refreshes on the history once every scheduled
    /// one has finished (once per batch: the caller whose swap moves the
    /// mark records it).
    fn note_if_finished(&self, proxy: &Proxy) {
        let f = self.figures();
        let finished = f.done + f.failed + f.dropped + f.cancelled;
        if f.running != 0 || finished != f.scheduled {
            return;
        }
        let before = self.ended_at.swap(finished, Ordering::Relaxed);
        if before < finished {
            proxy.metrics.history().events.record(
                EventKind::RefreshEnd,
                format!(
                    "{} keys finished; since start {} done, {} failed, {} dropped",
                    finished - before,
                    f.done,
                    f.failed,
                    f.dropped
                ),
            );
        }
    }

    pub fn figures(&self) -> RefreshFigures {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let scheduled = load(&self.scheduled);
        let (done, failed, dropped) = (load(&self.done), load(&self.failed), load(&self.dropped));
        let (cancelled, running) = (load(&self.cancelled), load(&self.running));
        RefreshFigures {
            scheduled,
            done,
            failed,
            dropped,
            cancelled,
            running,
            queued: scheduled.saturating_sub(done + failed + dropped + cancelled + running),
        }
    }
}

/// `POST /api/cache/refresh`'s answer, in the admin API's seed-like shape.
#[derive(Serialize)]
struct RefreshAnswer<'a> {
    status: &'static str,
    keys_scheduled: usize,
    /// `null` when every entry is refreshed.
    pattern: Option<&'a str>,
    message: String,
}

/// `POST /api/cache/refresh[?pattern=]` (authorised by the admin API):
/// schedules the matching entries (all of them without a pattern) and
/// answers 202 as soon as their keys are queued.
pub async fn accept(
    proxy: &Arc<Proxy>,
    pattern: Option<&str>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let scheduled = schedule(proxy, pattern.unwrap_or("")).await?;
    let message = match pattern {
        Some(p) => {
            format!("Refreshing {scheduled} cache keys matching pattern '{p}' in the background")
        }
        None => format!("Refreshing all {scheduled} cache keys in the background"),
    };
    info!(
        pattern,
        keys_scheduled = scheduled,
        "Cache REFRESH: {message}"
    );
    proxy
        .metrics
        .history()
        .events
        .record(EventKind::RefreshStart, message.clone());
    Ok(respond::json(
        StatusCode::ACCEPTED,
        &RefreshAnswer {
            status: "accepted",
            keys_scheduled: scheduled,
            pattern,
            message,
        },
    ))
}

/// The keys one accepted refresh still has to go through.
struct Queue {
    keys: Vec<CacheKey>,
    next: AtomicUsize,
    /// The store's clear epoch when the refresh was accepted: a clear
    /// since then cancels what is left.
    epoch: u64,
}

impl Queue {
    /// The next key, or `None` once every key is taken.
    fn pop(&self) -> Option<CacheKey> {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        self.keys.get(index).copied()
    }

    /// Takes every key still queued; returns how many there were.
    fn cancel_rest(&self) -> usize {
        let taken = self.next.swap(self.keys.len(), Ordering::Relaxed);
        self.keys.len().saturating_sub(taken)
    }
}

/// Schedules a refresh of every stored entry whose description contains
/// `pattern` (every entry for ""), shared ones too; returns how many. The
/// walk that finds them runs off the request workers (a blocking thread, or
/// Redis's index of descriptions).
pub async fn schedule(proxy: &Arc<Proxy>, pattern: &str) -> Result<usize, ProxyError> {
    let epoch = proxy.store.memory().clear_epoch();
    let mut keys = proxy
        .store
        .matching_keys(pattern)
        .await
        .map_err(|err| match err {
            KeysError::Shared(err) => {
                warn!(
                    error = err.as_str(),
                    "shared cache tier unreachable; refresh not scheduled"
                );
                ProxyError::SharedTierUnavailable
            }
            KeysError::Walk(source) => ProxyError::AdminTask {
                task: "refresh scheduling",
                source,
            },
        })?;
    keys.shrink_to_fit();
    let queue = Queue {
        keys,
        next: AtomicUsize::new(0),
        epoch,
    };
    let count = queue.keys.len();
    proxy
        .refresher
        .scheduled
        .fetch_add(count as u64, Ordering::Relaxed);
    let queue = Arc::new(queue);
    for _ in 0..proxy.refresher.workers.min(count) {
        tokio::spawn(work(proxy.clone(), queue.clone()));
    }
    Ok(count)
}

/// One refresh worker: pulls keys until the queue is empty or a clear
/// cancels the rest.
async fn work(proxy: Arc<Proxy>, queue: Arc<Queue>) {
    let refresher = &proxy.refresher;
    loop {
        let Ok(_permit) = refresher.permits.clone().acquire_owned().await else {
            return;
        };
        if proxy.store.memory().clear_epoch() != queue.epoch {
            let cancelled = queue.cancel_rest();
            refresher
                .cancelled
                .fetch_add(cancelled as u64, Ordering::Relaxed);
            return;
        }
        let Some(key) = queue.pop() else {
            return;
        };
        // Through the storage, so a shared entry another replica stored
        // is refreshed too (L2 brings it into memory).
        let entry = match proxy.store.lookup(&key, Instant::now()).await {
            Lookup::Fresh(entry) | Lookup::Stale(entry) => entry,
            Lookup::Miss => {
                refresher.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        refresher.running.fetch_add(1, Ordering::Relaxed);
        let mut result = refill(&proxy, &entry).await;
        if matches!(result, Refill::Failed(_)) && proxy.store.memory().clear_epoch() != queue.epoch
        {
            result = Refill::Cancelled;
        }
        count(&proxy, &entry, result).await;
        refresher.running.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn count(proxy: &Proxy, entry: &Arc<Entry>, result: Refill) {
    let refresher = &proxy.refresher;
    let key = entry.key.short();
    match result {
        Refill::Stored => {
            refresher.done.fetch_add(1, Ordering::Relaxed);
            debug!(key = %key, outcome = ?result, "entry refreshed");
        }
        Refill::Cancelled => {
            refresher.cancelled.fetch_add(1, Ordering::Relaxed);
            debug!(key = %key, "entry removed before its refresh completed");
        }
        Refill::Unreplayable => {
            refresher.dropped.fetch_add(1, Ordering::Relaxed);
            proxy.store.remove_entry(entry).await;
            info!(route = &*entry.route, key = %key, "entry fetched with credentials is not replayed; dropped instead of refreshed");
        }
        Refill::Failed(reason) => {
            refresher.failed.fetch_add(1, Ordering::Relaxed);
            proxy.store.remove_entry(entry).await;
            warn!(route = &*entry.route, key = %key, reason, "refresh failed; entry dropped");
        }
    }
    refresher.note_if_finished(proxy);
}

/// Asks the upstream for `entry` again, through the key's flight.
async fn refill(proxy: &Arc<Proxy>, entry: &Arc<Entry>) -> Refill {
    if !proxy.store.holds(entry) {
        return Refill::Cancelled;
    }
    let Some(replay) = &entry.replay else {
        return Refill::Unreplayable;
    };
    let guard = match proxy.flights.join(entry.key) {
        Join::Leader(guard) => guard,
        // A miss or another refresh is already asking: its outcome is ours.
        Join::Waiter(waiter) => return judge(&*waiter.outcome().await),
    };
    let uri = replay
        .path_and_query
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    let mut request = Request::new(());
    *request.method_mut() = replay.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = replay.headers.clone();
    let (parts, ()) = request.into_parts();
    let config = proxy.config();
    let route = config.routes.lookup(&replay.method, parts.uri.path());
    let (ttl, stale) = proxy.entry_policy(route);
    let plan = FillPlan {
        route: entry.route.clone(),
        ttl,
        description: entry.description.clone(),
        base: entry.base,
        request_headers: replay.headers.clone(),
        vouch_for: None,
        stale,
        serve_stale: false,
        replay: Some(replay.clone()),
        // A refresh fetches the whole answer again, unconditionally.
        revalidating: None,
        refresh: true,
    };
    let body = Either::Left(Full::new(replay.body.clone()));
    let upstream_request = proxy.upstream_request(parts, None, body, REFRESH_CLIENT);
    let (answer_tx, answer_rx) = oneshot::channel();
    tokio::spawn(fill::run(
        proxy.clone(),
        guard,
        upstream_request,
        plan,
        answer_tx,
    ));
    match answer_rx.await {
        Ok(LeaderAnswer::Outcome(outcome, _)) => judge(&outcome),
        Ok(LeaderAnswer::Stream(_)) => Refill::Failed("not-stored"),
        Err(_) => Refill::Failed("abandoned"),
    }
}

fn judge(outcome: &FillOutcome) -> Refill {
    match outcome {
        FillOutcome::Stored(_) => Refill::Stored,
        other => Refill::Failed(other.as_str()),
    }
}
