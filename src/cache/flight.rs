//! Single-flight: one upstream request per key, however many callers miss it
//! at once.
//!
//! The first caller to miss a key becomes the *leader* and gets a
//! [`FillGuard`]; callers that miss the same key while the fill runs become
//! *waiters* and sleep on a `watch` channel until the guard publishes a
//! [`FillOutcome`] (no polling). The guard removes the flight from the table
//! when it publishes, so later callers go back to the store. A guard dropped
//! without an outcome (the fill task panicked) publishes
//! [`FillOutcome::Abandoned`], so no waiter sleeps forever.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

use super::key::CacheKey;
use super::policy::NotStorable;
use super::stale::StaleReason;
use super::store::Entry;
use crate::error::ProxyError;

/// A complete answer that was not stored, handed to every current waiter.
#[derive(Debug)]
pub struct BufferedAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub reason: NotStorable,
}

impl BufferedAnswer {
    /// Whether coalesced waiters may be handed this answer too.
    pub fn shareable(&self) -> bool {
        super::policy::shareable(self.reason, &self.headers)
    }
}

/// How a fill ended, as seen by every caller of the flight.
#[derive(Debug)]
pub enum FillOutcome {
    /// Stored: answer from the entry.
    Stored(Arc<Entry>),
    /// Storable, but refused by the store (a clear ran during the fill, or
    /// too heavy): answer from the entry, which is not kept.
    Discarded(Arc<Entry>),
    /// Complete but not storable: the same answer for everyone.
    Uncacheable(BufferedAnswer),
    /// The upstream failed: the same error for everyone.
    Failed(ProxyError),
    /// The upstream failed or answered 5xx, and an expired entry inside
    /// its `stale-if-error` window answers instead (nothing was stored).
    Stale {
        entry: Arc<Entry>,
        reason: StaleReason,
    },
    /// Not for sharing (too large to buffer, or personal): the leader got it
    /// as a stream, waiters must forward on their own.
    Streamed,
    /// The fill ended without an outcome.
    Abandoned,
}

impl FillOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Stored(_) => "stored",
            Self::Discarded(_) => "discarded",
            Self::Uncacheable(_) => "uncacheable",
            Self::Failed(_) => "failed",
            Self::Stale { .. } => "stale",
            Self::Streamed => "streamed",
            Self::Abandoned => "abandoned",
        }
    }
}

type Slot = watch::Sender<Option<Arc<FillOutcome>>>;

/// The fills in progress, by key.
///
/// A std `Mutex` because it is held only to look up, insert or remove one
/// map entry (never across an await) and only on misses; hits never touch it.
#[derive(Default)]
pub struct Flights {
    inflight: Mutex<HashMap<CacheKey, Slot>>,
}

pub enum Join {
    Leader(FillGuard),
    Waiter(Waiter),
}

impl Flights {
    pub fn join(self: &Arc<Self>, key: CacheKey) -> Join {
        let mut inflight = self.inflight.lock().expect("flight table poisoned");
        if let Some(slot) = inflight.get(&key) {
            return Join::Waiter(Waiter(slot.subscribe()));
        }
        let (slot, _) = watch::channel(None);
        inflight.insert(key, slot.clone());
        Join::Leader(FillGuard {
            flights: self.clone(),
            key,
            slot,
            published: false,
        })
    }

    /// A fill no one else can join: for a request whose answer must not be
    /// shared (a credential the upstream has not vouched for yet).
    pub fn solo(self: &Arc<Self>, key: CacheKey) -> FillGuard {
        let (slot, _) = watch::channel(None);
        FillGuard {
            flights: self.clone(),
            key,
            slot,
            published: false,
        }
    }

    /// Fills in progress (for stats).
    pub fn len(&self) -> usize {
        self.inflight.lock().expect("flight table poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Callers waiting on fills now (a waiter whose client hung up no
    /// longer counts).
    pub fn waiting(&self) -> usize {
        let inflight = self.inflight.lock().expect("flight table poisoned");
        inflight.values().map(|slot| slot.receiver_count()).sum()
    }

    fn remove(&self, key: &CacheKey, slot: &Slot) {
        let mut inflight = self.inflight.lock().expect("flight table poisoned");
        if inflight.get(key).is_some_and(|s| s.same_channel(slot)) {
            inflight.remove(key);
        }
    }
}

/// The leader's right and duty to publish one outcome for its key.
pub struct FillGuard {
    flights: Arc<Flights>,
    key: CacheKey,
    slot: Slot,
    published: bool,
}

impl FillGuard {
    pub fn key(&self) -> CacheKey {
        self.key
    }

    /// Ends the flight if no one is waiting on it, so the leader may take the
    /// answer as a stream; later callers start a flight of their own.
    pub fn end_if_alone(&mut self) -> bool {
        let mut inflight = self.flights.inflight.lock().expect("flight table poisoned");
        if self.slot.receiver_count() > 0 {
            return false;
        }
        if inflight
            .get(&self.key)
            .is_some_and(|s| s.same_channel(&self.slot))
        {
            inflight.remove(&self.key);
        }
        drop(inflight);
        self.published = true;
        true
    }

    /// Publishes `outcome` to every waiter and ends the flight.
    pub fn publish(mut self, outcome: FillOutcome) -> Arc<FillOutcome> {
        self.published = true;
        let outcome = Arc::new(outcome);
        self.flights.remove(&self.key, &self.slot);
        self.slot.send_replace(Some(outcome.clone()));
        outcome
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if !self.published {
            self.flights.remove(&self.key, &self.slot);
            self.slot
                .send_replace(Some(Arc::new(FillOutcome::Abandoned)));
        }
    }
}

/// A caller waiting for another caller's fill.
pub struct Waiter(watch::Receiver<Option<Arc<FillOutcome>>>);

impl Waiter {
    pub async fn outcome(mut self) -> Arc<FillOutcome> {
        match self.0.wait_for(Option::is_some).await {
            Ok(outcome) => outcome
                .clone()
                .expect("wait_for returned a published outcome"),
            Err(_) => Arc::new(FillOutcome::Abandoned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> CacheKey {
        CacheKey::from_bytes([n; 16])
    }

    #[tokio::test]
    async fn the_first_caller_leads_and_the_rest_wait() {
        let flights = Arc::new(Flights::default());
        let Join::Leader(guard) = flights.join(key(1)) else {
            panic!("first caller must lead")
        };
        let waiters: Vec<_> = (0..10)
            .map(|_| match flights.join(key(1)) {
                Join::Waiter(w) => tokio::spawn(w.outcome()),
                Join::Leader(_) => panic!("second caller must wait"),
            })
            .collect();
        guard.publish(FillOutcome::Streamed);
        for w in waiters {
            assert!(matches!(*w.await.unwrap(), FillOutcome::Streamed));
        }
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_that_leaves_stops_counting() {
        let flights = Arc::new(Flights::default());
        let Join::Leader(_guard) = flights.join(key(7)) else {
            panic!()
        };
        let Join::Waiter(first) = flights.join(key(7)) else {
            panic!()
        };
        let Join::Waiter(_second) = flights.join(key(7)) else {
            panic!()
        };
        assert_eq!(flights.waiting(), 2);
        drop(first);
        assert_eq!(flights.waiting(), 1);
    }

    #[tokio::test]
    async fn a_dropped_guard_wakes_waiters_with_abandoned() {
        let flights = Arc::new(Flights::default());
        let Join::Leader(guard) = flights.join(key(2)) else {
            panic!()
        };
        let Join::Waiter(waiter) = flights.join(key(2)) else {
            panic!()
        };
        drop(guard);
        assert!(matches!(*waiter.outcome().await, FillOutcome::Abandoned));
        assert!(matches!(flights.join(key(2)), Join::Leader(_)));
    }

    #[tokio::test]
    async fn end_if_alone_only_succeeds_without_waiters() {
        let flights = Arc::new(Flights::default());
        let Join::Leader(mut guard) = flights.join(key(3)) else {
            panic!()
        };
        let Join::Waiter(waiter) = flights.join(key(3)) else {
            panic!()
        };
        assert!(!guard.end_if_alone());
        drop(waiter);
        assert!(guard.end_if_alone());
        assert!(matches!(flights.join(key(3)), Join::Leader(_)));
    }

    #[tokio::test]
    async fn a_solo_fill_cannot_be_joined() {
        let flights = Arc::new(Flights::default());
        let solo = flights.solo(key(6));
        assert!(matches!(flights.join(key(6)), Join::Leader(_)));
        solo.publish(FillOutcome::Streamed);
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn different_keys_fly_separately() {
        let flights = Arc::new(Flights::default());
        assert!(matches!(flights.join(key(4)), Join::Leader(_)));
        assert!(matches!(flights.join(key(5)), Join::Leader(_)));
    }
}
