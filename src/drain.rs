//! Graceful shutdown of client connections: one signal every connection
//! watches, and a wait for all of them to end.
//!
//! The same shape as hyper-util's `GracefulShutdown` (a watch channel whose
//! receivers are the open connections), but the signal is handed to the
//! connection's own loop rather than to a wrapped hyper future: an HTTP/1
//! connection is driven with `poll_without_shutdown` and may be parked
//! without any hyper connection at all (`keep_alive.rs`), which hyper-util's
//! watcher cannot follow.

use tokio::sync::watch;

/// The server's side: signals, then waits for every [`DrainWatch`] to drop.
pub struct Drain {
    tx: watch::Sender<()>,
}

/// A connection's side, held for the connection's whole life.
pub struct DrainWatch {
    rx: watch::Receiver<()>,
}

impl Drain {
    pub fn new() -> Self {
        Self {
            tx: watch::channel(()).0,
        }
    }

    /// A watch for a new connection. Created before the signal, it always
    /// sees it.
    pub fn watcher(&self) -> DrainWatch {
        DrainWatch {
            rx: self.tx.subscribe(),
        }
    }

    /// Signals every connection, then resolves once all have ended.
    pub async fn drain(self) {
        let _ = self.tx.send(());
        self.tx.closed().await;
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl DrainWatch {
    /// Resolves once the drain has started (at once if it already has).
    pub async fn started(&mut self) {
        // An error means the server is gone: stop as well.
        let _ = self.rx.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
