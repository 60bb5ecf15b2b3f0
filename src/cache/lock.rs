//! The cross-replica fill lock: one upstream request per key across every
//! replica sharing a Redis (in-process coalescing stays in `flight.rs`; only
//! a replica's own leader comes here).
//!
//! Shaped after pingora-cache's `CacheKeyLock`: the first replica takes a
//! *lease* (`SET PREFIX:lock:{KEY} TOKEN NX PX lease`) and renews it every
//! third of the lease while its fill runs; it releases it with a
//! compare-and-delete script, so a lease that expired and was taken over is
//! never deleted by its former holder. The others wait, and waiting ends
//! with a status, never with an entry: [`LockStatus`] says why the wait
//! ended, and the waiter looks storage up again (a hit ends its miss) or
//! tries the lock again. Waiters are woken by the events channel (`stored`
//! or `released`), not by polling; a holder that died (SIGKILL mid-fill)
//! sends nothing, so a waiter also wakes when the lease it saw would end,
//! and takes the lock over.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::storage::events::Event;
use super::storage::{L2Error, RedisTier};
use super::CacheKey;

/// Extends the lease only if the token still holds it.
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
/// Deletes the lock only if the token still holds it.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// Why a wait for another replica's fill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockStatus {
    /// The holder announced the end of its fill (stored, or released).
    Done,
    /// The lease ran out with no news: the holder is gone (or Redis lost the
    /// key); the lock is free to take over.
    LockLost,
    /// Waited as long as the caller allowed.
    TimedOut,
}

impl LockStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::LockLost => "lock-lost",
            Self::TimedOut => "timed-out",
        }
    }
}

/// What asking for a key's lock gave.
pub enum Acquire {
    /// This replica fills the key; release the lease after storing.
    Held(Lease),
    /// Redis cannot be asked: fill without a shared lock (as without Redis).
    Unavailable(L2Error),
    /// Another replica was filling; look the key up again, then retry.
    Waited(LockStatus),
}

/// Takes the fill lock of `key`, or waits (at most `wait`) for its holder.
pub async fn acquire(tier: &Arc<RedisTier>, key: CacheKey, wait: Duration) -> Acquire {
    // Listen before asking, so a `stored` sent in between is not missed.
    let notify = tier.wakers.register(key);
    let notified = notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();

    let token = super::storage::redis::random_hex::<16>();
    let lease = tier.config().lock_lease;
    let mut set = redis::cmd("SET");
    set.arg(tier.lock_key(&key))
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(lease.as_millis() as u64);
    match tier.call::<Option<String>>(&set, None).await {
        Ok(Some(_)) => {
            tier.counters.lock_acquired.fetch_add(1, Ordering::Relaxed);
            return Acquire::Held(Lease::start(tier.clone(), key, token));
        }
        Ok(None) => {}
        Err(err) => return Acquire::Unavailable(err),
    }
    tier.counters.lock_waits.fetch_add(1, Ordering::Relaxed);
    let mut pttl = redis::cmd("PTTL");
    pttl.arg(tier.lock_key(&key));
    let left = match tier.call::<i64>(&pttl, None).await {
        // Released between our two calls: look again at once.
        Ok(-2) => return Acquire::Waited(LockStatus::Done),
        Ok(ms) if ms > 0 => Duration::from_millis(ms as u64 + 5),
        Ok(_) => lease,
        Err(err) => return Acquire::Unavailable(err),
    };
    debug!(key = %key.short(), lease_left_ms = left.as_millis() as u64, "another replica is filling; waiting");
    tokio::select! {
        () = &mut notified => Acquire::Waited(LockStatus::Done),
        () = tokio::time::sleep(left.min(wait)) => Acquire::Waited(if left < wait {
            LockStatus::LockLost
        } else {
            LockStatus::TimedOut
        }),
    }
}

/// A held fill lock, renewed in the background until released or dropped.
pub struct Lease {
    tier: Arc<RedisTier>,
    key: CacheKey,
    token: String,
    renewer: JoinHandle<()>,
    released: bool,
}

impl Lease {
    fn start(tier: Arc<RedisTier>, key: CacheKey, token: String) -> Self {
        let renewer = tokio::spawn(renew(tier.clone(), key, token.clone()));
        Self {
            tier,
            key,
            token,
            renewer,
            released: false,
        }
    }

    /// Releases the lock; unless the fill stored an entry (whose `stored`
    /// message woke the waiters already), tells them to try again.
    pub async fn release(mut self, stored: bool) {
        self.released = true;
        self.renewer.abort();
        release(&self.tier, self.key, &self.token, stored).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            self.renewer.abort();
            let (tier, key, token) = (self.tier.clone(), self.key, self.token.clone());
            tokio::spawn(async move { release(&tier, key, &token, false).await });
        }
    }
}

async fn renew(tier: Arc<RedisTier>, key: CacheKey, token: String) {
    let lease = tier.config().lock_lease;
    loop {
        tokio::time::sleep(lease / 3).await;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RENEW)
            .arg(1)
            .arg(tier.lock_key(&key))
            .arg(&token)
            .arg(lease.as_millis() as u64);
        match tier.call::<i64>(&cmd, None).await {
            Ok(1) => {}
            Ok(_) => {
                warn!(key = %key.short(), "fill lock lost (lease ran out); another replica may fill the key too");
                return;
            }
            // Redis down: nobody else can take it either; keep trying.
            Err(_) => {}
        }
    }
}

async fn release(tier: &RedisTier, key: CacheKey, token: &str, stored: bool) {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(RELEASE).arg(1).arg(tier.lock_key(&key)).arg(token);
    if let Err(err) = tier.call::<i64>(&cmd, None).await {
        debug!(key = %key.short(), error = err.as_str(), "fill lock not released; its lease ends it");
    }
    if !stored {
        let _ = tier
            .publish(&Event::Released(key).message(&tier.replica), None)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::LockStatus;

    #[test]
    fn statuses_name_themselves_for_logs() {
        assert_eq!(LockStatus::Done.as_str(), "done");
        assert_eq!(LockStatus::LockLost.as_str(), "lock-lost");
        assert_eq!(LockStatus::TimedOut.as_str(), "timed-out");
    }
}
