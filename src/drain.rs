//! Graceful shutdown of client connections: one signal every connection
//! watches, and a wait for all of them to end.
//!
//! The same shape as hyper-util's `GracefulShutdown`, but the signal is
//! handed to the connection's own loop rather than to a wrapped hyper
//! future: an HTTP/1 connection is driven with `poll_without_shutdown` and
//! may be parked without any hyper connection at all (`keep_alive.rs`),
//! which hyper-util's watcher cannot follow.
//!
//! A connection's loop polls its watch every time its task runs, that is
//! on every request, so that poll touches nothing another connection
//! writes: it reads one flag, written once, and leaves the task's waker in
//! the connection's own `AtomicWaker`. (tokio's `watch` and `Notify` lock
//! their list of waiters on every poll of a pending wait, a lock that every
//! connection of the process shares.) The list of those wakers is locked
//! only when a connection opens or closes, and by the drain.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

/// The server's side: signals, then waits for every [`DrainWatch`] to drop.
/// Dropping it signals too: the connections of a server that is gone stop.
pub struct Drain {
    shared: Arc<Shared>,
}

/// A connection's side, held for the connection's whole life.
pub struct DrainWatch {
    shared: Arc<Shared>,
    id: u64,
    waker: Arc<AtomicWaker>,
}

struct Shared {
    started: AtomicBool,
    watches: Mutex<Watches>,
    /// Told when the last watch drops.
    none_left: Notify,
}

#[derive(Default)]
struct Watches {
    next_id: u64,
    wakers: HashMap<u64, Arc<AtomicWaker>>,
}

impl Shared {
    fn watches(&self) -> MutexGuard<'_, Watches> {
        // The list stays consistent whatever panicked while holding it.
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drain {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                started: AtomicBool::new(false),
                watches: Mutex::default(),
                none_left: Notify::new(),
            }),
        }
    }

    /// A watch for a new connection. It sees the signal whenever it came,
    /// before or after the watch was made.
    pub fn watcher(&self) -> DrainWatch {
        let waker = Arc::new(AtomicWaker::new());
        let mut watches = self.shared.watches();
        let id = watches.next_id;
        watches.next_id += 1;
        watches.wakers.insert(id, waker.clone());
        drop(watches);
        DrainWatch {
            shared: self.shared.clone(),
            id,
            waker,
        }
    }

    /// Signals every connection, then resolves once all have ended.
    pub async fn drain(self) {
        self.signal();
        loop {
            let none_left = self.shared.none_left.notified();
            tokio::pin!(none_left);
            // Registered before the check, so a last drop in between is seen.
            none_left.as_mut().enable();
            if self.shared.watches().wakers.is_empty() {
                return;
            }
            none_left.await;
        }
    }

    fn signal(&self) {
        // Set before any waker is woken: a woken task that polls reads it.
        self.shared.started.store(true, Ordering::Release);
        let wakers: Vec<Arc<AtomicWaker>> =
            self.shared.watches().wakers.values().cloned().collect();
        for waker in wakers {
            waker.wake();
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.signal();
    }
}

impl DrainWatch {
    /// Whether the drain has started.
    pub fn has_started(&self) -> bool {
        self.shared.started.load(Ordering::Acquire)
    }

    /// Resolves once the drain has started (at once if it already has).
    pub fn started(&mut self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx| self.poll_started(cx))
    }

    /// [`DrainWatch::started`] as a poll.
    pub fn poll_started(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.started.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A signal between the first check and the registration woke
        // no one: look again.
        if self.shared.started.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for DrainWatch {
    fn drop(&mut self) {
        let mut watches = self.shared.watches();
        watches.wakers.remove(&self.id);
        let none_left = watches.wakers.is_empty();
        drop(watches);
        if none_left {
            self.shared.none_left.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Waits up to a second of (paused) time for `task` to end.
    async fn ends(task: tokio::task::JoinHandle<()>, what: &str) {
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect(what)
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_waits_for_every_watch_to_drop() {
        let drain = Drain::new();
        let mut watch = drain.watcher();
        let connection = tokio::spawn(async move {
            watch.started().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let started = tokio::time::Instant::now();
        drain.drain().await;
        assert!(started.elapsed() >= Duration::from_secs(5));
        connection.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_taken_before_the_signal_sees_it_later() {
        let drain = Drain::new();
        let mut watch = drain.watcher();
        let waiting = tokio::spawn(drain.drain());
        tokio::time::timeout(Duration::from_secs(1), watch.started())
            .await
            .expect("the watch sees the signal");
        drop(watch);
        waiting.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_watch_is_woken_by_the_signal() {
        let drain = Drain::new();
        let mut watches: Vec<DrainWatch> = (0..3).map(|_| drain.watcher()).collect();
        let mut waiting = tokio::spawn(async move {
            for watch in &mut watches {
                watch.started().await;
            }
        });
        // Not signalled yet: every watch stays pending.
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut waiting)
                .await
                .is_err(),
            "no watch resolves before the signal"
        );
        let drained = tokio::spawn(drain.drain());
        ends(waiting, "every watch woken").await;
        ends(drained, "the drain ends once the watches are gone").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_made_during_the_drain_sees_it_and_is_waited_for() {
        let drain = Drain::new();
        let mut late = drain.watcher();
        let first = drain.watcher();
        drop(first);
        drain.signal();
        let mut after = drain.watcher();
        tokio::time::timeout(Duration::from_secs(1), after.started())
            .await
            .expect("a watch made after the signal sees it at once");
        let drained = tokio::spawn(drain.drain());
        late.started().await;
        drop(late);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!drained.is_finished(), "one watch is still open");
        drop(after);
        ends(drained, "the drain ends with the last watch").await;
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_server_side_stops_every_connection() {
        let drain = Drain::new();
        let mut watch = drain.watcher();
        drop(drain);
        tokio::time::timeout(Duration::from_secs(1), watch.started())
            .await
            .expect("a server that is gone stops its connections");
    }
}
