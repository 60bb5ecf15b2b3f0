//! The events channel: how every replica's L1 learns of a change made
//! through another, and how fill-lock waiters learn that a fill ended.
//!
//! Pub/sub rather than generation counters or keyspace tracking: an
//! invalidation must reach every replica within 100 ms while Redis is up,
//! and a pub/sub message arrives in about one round trip with no polling;
//! it also wakes lock waiters (`cache::lock`) without a poll loop. Pub/sub
//! is fire-and-forget, so two backstops cover a lost message: the listener
//! empties L1 whenever it (re)subscribes (anything may have been missed
//! while it was away), and every L1 copy of a shared entry lives at most
//! `redis.l1_ttl`. In a Cluster, `PUBLISH` reaches subscribers on every
//! node, so one subscription to any node hears all.
//!
//! A message is `REPLICA VERB [ARG]`; a replica skips its own.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::redis::{parse_key, RedisTier};
use crate::cache::{CacheKey, Store};

/// What happened on some replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new entry was stored under the key: drop older L1 copies, wake
    /// lock waiters.
    Stored(CacheKey),
    /// The key's entry was removed (a failed refresh).
    Removed(CacheKey),
    /// A fill ended without storing (uncacheable answer, error): waiters
    /// try the lock again.
    Released(CacheKey),
    /// `invalidate?pattern=`.
    Invalidated(String),
    Cleared,
}

impl Event {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Stored(_) => "stored",
            Self::Removed(_) => "removed",
            Self::Released(_) => "released",
            Self::Invalidated(_) => "invalidated",
            Self::Cleared => "cleared",
        }
    }

    /// The message `replica` publishes for this event.
    pub fn message(&self, replica: &str) -> String {
        match self {
            Self::Stored(key) | Self::Removed(key) | Self::Released(key) => {
                format!("{replica} {} {key}", self.as_str())
            }
            Self::Invalidated(pattern) => format!("{replica} {} {pattern}", self.as_str()),
            Self::Cleared => format!("{replica} {}", self.as_str()),
        }
    }

    /// The sender and the event of a message; `None` for anything else.
    pub fn parse(message: &str) -> Option<(&str, Event)> {
        let (replica, rest) = message.split_once(' ')?;
        let (verb, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        let key = || parse_key(arg);
        let event = match verb {
            "stored" => Event::Stored(key()?),
            "removed" => Event::Removed(key()?),
            "released" => Event::Released(key()?),
            "invalidated" if !arg.is_empty() => Event::Invalidated(arg.to_owned()),
            "cleared" => Event::Cleared,
            _ => return None,
        };
        Some((replica, event))
    }
}

/// Fill-lock waiters on this replica, by key. A std `Mutex`: held only to
/// add, find or drop one slot, never across an await, and only on misses
/// that found another replica's fill running.
#[derive(Default)]
pub struct Wakers {
    slots: Mutex<HashMap<CacheKey, Weak<Notify>>>,
}

impl Wakers {
    /// The notifier for `key`, shared by every waiter of this replica.
    pub fn register(&self, key: CacheKey) -> Arc<Notify> {
        let mut slots = self.slots.lock().expect("wakers poisoned");
        if let Some(notify) = slots.get(&key).and_then(Weak::upgrade) {
            return notify;
        }
        slots.retain(|_, slot| slot.strong_count() > 0);
        let notify = Arc::new(Notify::new());
        slots.insert(key, Arc::downgrade(&notify));
        notify
    }

    pub fn wake(&self, key: &CacheKey) {
        let notify = self
            .slots
            .lock()
            .expect("wakers poisoned")
            .get(key)
            .and_then(Weak::upgrade);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// Wakes every waiter (the channel was lost: they must look again).
    pub fn wake_all(&self) {
        let slots: Vec<_> = self
            .slots
            .lock()
            .expect("wakers poisoned")
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for notify in slots {
            notify.notify_waiters();
        }
    }
}

/// Applies one event from another replica to this one.
pub fn apply(tier: &RedisTier, l1: &Store, event: &Event) {
    match event {
        Event::Stored(key) | Event::Removed(key) => {
            l1.remove(key);
            tier.wakers.wake(key);
        }
        Event::Released(key) => tier.wakers.wake(key),
        Event::Invalidated(pattern) => {
            let removed = l1.invalidate(pattern);
            info!(pattern = %pattern, l1_removed = removed, "invalidation from another replica applied");
        }
        Event::Cleared => {
            let removed = l1.clear();
            info!(l1_removed = removed, "clear from another replica applied");
        }
    }
}

/// Subscribes to the events channel for as long as `tier` lives,
/// resubscribing with backoff; each (re)subscription empties L1.
pub fn spawn_listener(tier: &Arc<RedisTier>, l1: &Arc<Store>) {
    let weak_tier = Arc::downgrade(tier);
    let weak_l1 = Arc::downgrade(l1);
    let url = tier.config().urls[0].clone();
    let channel = tier.channel();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return;
            };
            let connected = tokio::time::timeout(Duration::from_secs(2), async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            let mut pubsub = match connected {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(err)) => {
                    debug!(error = %err, "events channel not subscribed; retrying");
                    if weak_tier.strong_count() == 0 {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(_) => {
                    if weak_tier.strong_count() == 0 {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            {
                let (Some(tier), Some(l1)) = (weak_tier.upgrade(), weak_l1.upgrade()) else {
                    return;
                };
                // Whatever was said while we were not listening is lost:
                // start L1 afresh, and let lock waiters look again.
                let dropped = l1.clear();
                tier.listening.store(true, Ordering::Relaxed);
                tier.wakers.wake_all();
                info!(channel = %channel, l1_dropped = dropped, "listening for invalidations from other replicas");
            }
            let mut messages = pubsub.on_message();
            loop {
                // Wake up now and then to notice that the proxy has gone.
                let next = tokio::time::timeout(Duration::from_secs(1), messages.next()).await;
                let (Some(tier), Some(l1)) = (weak_tier.upgrade(), weak_l1.upgrade()) else {
                    return;
                };
                let message = match next {
                    Err(_) => continue,
                    Ok(None) => break,
                    Ok(Some(message)) => message,
                };
                let Ok(text) = std::str::from_utf8(message.get_payload_bytes()) else {
                    continue;
                };
                match Event::parse(text) {
                    Some((replica, _)) if replica == tier.replica => {}
                    Some((_, event)) => {
                        tier.counters
                            .messages_received
                            .fetch_add(1, Ordering::Relaxed);
                        apply(&tier, &l1, &event);
                    }
                    None => debug!(message = text, "unknown message on the events channel"),
                }
            }
            if let Some(tier) = weak_tier.upgrade() {
                tier.listening.store(false, Ordering::Relaxed);
            }
            warn!(channel = %channel, "events channel lost; resubscribing");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_survives_its_message() {
        let key = CacheKey::from_bytes([7; 16]);
        for event in [
            Event::Stored(key),
            Event::Removed(key),
            Event::Released(key),
            Event::Invalidated("org\":\"Vale S.A.".into()),
            Event::Cleared,
        ] {
            let message = event.message("r1");
            assert_eq!(Event::parse(&message), Some(("r1", event)));
        }
    }

    #[test]
    fn malformed_messages_are_ignored() {
        assert_eq!(Event::parse("r1 stored nothex"), None);
        assert_eq!(Event::parse("r1 invalidated "), None);
        assert_eq!(Event::parse("r1 reboot"), None);
        assert_eq!(Event::parse(""), None);
    }

    #[tokio::test]
    async fn a_wake_reaches_every_waiter_of_the_key_only() {
        let wakers = Wakers::default();
        let a = wakers.register(CacheKey::from_bytes([1; 16]));
        let b = wakers.register(CacheKey::from_bytes([2; 16]));
        let waiting_a = a.notified();
        let waiting_b = b.notified();
        tokio::pin!(waiting_a, waiting_b);
        waiting_a.as_mut().enable();
        waiting_b.as_mut().enable();
        wakers.wake(&CacheKey::from_bytes([1; 16]));
        use futures_util::FutureExt;
        assert!(waiting_a.now_or_never().is_some());
        assert!(waiting_b.now_or_never().is_none());
    }
}
