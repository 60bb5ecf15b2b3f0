//! Wall-clock milliseconds for the history, read from tokio's monotonic
//! clock: the history's intervals line up with the wall clock (a minute
//! point starts on a minute), and tests move time with tokio's
//! `pause`/`advance` instead of sleeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Unix milliseconds at `base`.
    wall_ms: u64,
    base: Option<Instant>,
}

impl Clock {
    /// The system clock, sampled once; afterwards it advances monotonically
    /// (a wall-clock step does not reorder the history).
    pub fn system() -> Self {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        Self::starting_at(wall_ms)
    }

    /// A clock that reads `wall_ms` now and advances with tokio's clock.
    pub fn starting_at(wall_ms: u64) -> Self {
        Self {
            wall_ms,
            base: Some(Instant::now()),
        }
    }

    /// A clock that always reads `wall_ms` (pure tests).
    pub fn fixed(wall_ms: u64) -> Self {
        Self {
            wall_ms,
            base: None,
        }
    }

    pub fn now_ms(&self) -> u64 {
        let elapsed = self
            .base
            .map_or(0, |base| base.elapsed().as_millis() as u64);
        self.wall_ms + elapsed
    }

    /// How long until the clock reads `wall_ms` (zero if it already has).
    pub fn until(&self, wall_ms: u64) -> Duration {
        Duration::from_millis(wall_ms.saturating_sub(self.now_ms()))
    }
}
