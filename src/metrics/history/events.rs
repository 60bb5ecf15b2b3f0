//! Event markers for the history: what an operator did (clear, invalidate,
//! refresh, reload) and what happened to the things dashcache depends on
//! (the backend, Redis), each with a wall-clock time and a short detail,
//! drawn on the status page's time axis.
//!
//! Other modules call [`Events::record`] (or the `*_reachable` helpers,
//! which record only a change of state). None of this is on the hit path:
//! the list sits behind a mutex taken for admin calls and state changes,
//! and `backend_reachable` costs one relaxed load while nothing changes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::clock::Clock;
use crate::error::ProxyError;
use crate::reload::Reload;

/// How many events are kept (the oldest go first); enough for an hour of
/// any sane admin activity, small enough to never matter for memory.
const KEEP: usize = 512;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Clear,
    Invalidate,
    RefreshStart,
    RefreshEnd,
    ConfigReload,
    BackendDown,
    BackendUp,
    RedisDown,
    RedisUp,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clear => "clear",
            Self::Invalidate => "invalidate",
            Self::RefreshStart => "refresh_start",
            Self::RefreshEnd => "refresh_end",
            Self::ConfigReload => "config_reload",
            Self::BackendDown => "backend_down",
            Self::BackendUp => "backend_up",
            Self::RedisDown => "redis_down",
            Self::RedisUp => "redis_up",
        }
    }
}

/// One marker on the time axis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Unix time in milliseconds.
    pub t: u64,
    pub kind: EventKind,
    /// What it did, for the tooltip: `"12 keys deleted"`, `"pattern 'Vale'"`.
    pub detail: String,
}

#[derive(Debug)]
pub struct Events {
    clock: Clock,
    list: Mutex<VecDeque<Event>>,
    /// The last state seen, so that only changes are recorded.
    backend_down: AtomicBool,
    redis_down: AtomicBool,
}

impl Events {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            list: Mutex::default(),
            backend_down: AtomicBool::new(false),
            redis_down: AtomicBool::new(false),
        }
    }

    /// Adds a marker at the current time.
    pub fn record(&self, kind: EventKind, detail: impl Into<String>) {
        self.record_at(self.clock.now_ms(), kind, detail);
    }

    /// Adds a marker at `t` (unix ms), in time order among those kept: for
    /// markers restored with earlier intervals (`History::restore`).
    pub fn record_at(&self, t: u64, kind: EventKind, detail: impl Into<String>) {
        let event = Event {
            t,
            kind,
            detail: detail.into(),
        };
        let mut list = self.list.lock().expect("events lock");
        // Nearly always at the end; restored markers go in time order.
        let at = list.partition_point(|e| e.t <= t);
        list.insert(at, event);
        if list.len() > KEEP {
            list.pop_front();
        }
    }

    /// One backend query's outcome: an answer, or an error. Only an
    /// unreachable backend (refused, reset, no connection in time) counts
    /// as down; a slow or busy one is not.
    pub fn backend_answered(&self, error: Option<&ProxyError>) {
        match error {
            None => self.backend_reachable(true, || "answered again".to_owned()),
            Some(
                err @ (ProxyError::UpstreamUnreachable { .. }
                | ProxyError::UpstreamConnectTimeout { .. }),
            ) => self.backend_reachable(false, || err.message()),
            Some(_) => {}
        }
    }

    /// Whether the backend answered (`false`: it could not be reached).
    /// Records `backend_down` / `backend_up` when that changes.
    pub fn backend_reachable(&self, reachable: bool, detail: impl FnOnce() -> String) {
        Self::transition(
            self,
            &self.backend_down,
            reachable,
            (EventKind::BackendDown, EventKind::BackendUp),
            detail,
        );
    }

    /// Whether Redis answered. Records `redis_down` / `redis_up` when that changes.
    pub fn redis_reachable(&self, reachable: bool, detail: impl FnOnce() -> String) {
        Self::transition(
            self,
            &self.redis_down,
            reachable,
            (EventKind::RedisDown, EventKind::RedisUp),
            detail,
        );
    }

    fn transition(
        &self,
        down: &AtomicBool,
        reachable: bool,
        (went_down, came_back): (EventKind, EventKind),
        detail: impl FnOnce() -> String,
    ) {
        if down.load(Ordering::Relaxed) != reachable {
            return;
        }
        // Two threads may see the change at once: only the one that flips it records it.
        if down.swap(!reachable, Ordering::Relaxed) == reachable {
            let kind = if reachable { came_back } else { went_down };
            self.record(kind, detail());
        }
    }

    /// A configuration reload (SIGHUP): applied, or refused with the reason.
    pub fn record_reload(&self, reload: &Reload) {
        let detail = match reload {
            Reload::Applied {
                generation,
                needs_restart,
            } if needs_restart.is_empty() => format!("generation {generation} applied"),
            Reload::Applied {
                generation,
                needs_restart,
            } => format!(
                "generation {generation} applied; needs a restart: {}",
                needs_restart.join(", ")
            ),
            Reload::Invalid(_) => "invalid file; running configuration kept".to_owned(),
            Reload::NoFile => return,
        };
        self.record(EventKind::ConfigReload, detail);
    }

    /// The events at or after `since_ms`, oldest first.
    pub fn since(&self, since_ms: u64) -> Vec<Event> {
        let list = self.list.lock().expect("events lock");
        list.iter().filter(|e| e.t >= since_ms).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_change_of_backend_state_is_recorded() {
        let events = Events::new(Clock::fixed(1_000));
        events.backend_reachable(true, || "ok".into());
        events.backend_reachable(false, || "connection refused".into());
        events.backend_reachable(false, || "connection refused".into());
        events.backend_reachable(true, || "answered".into());
        let kinds: Vec<_> = events.since(0).into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::BackendDown, EventKind::BackendUp]);
    }

    #[test]
    fn old_events_make_room_for_new_ones() {
        let events = Events::new(Clock::fixed(5));
        for i in 0..KEEP + 3 {
            events.record(EventKind::Invalidate, format!("{i}"));
        }
        let kept = events.since(0);
        assert_eq!(kept.len(), KEEP);
        assert_eq!(kept[0].detail, "3");
        assert!(events.since(6).is_empty());
    }

    #[test]
    fn kinds_render_as_their_json_names() {
        let json = serde_json::to_string(&EventKind::RefreshEnd).unwrap();
        assert_eq!(json, format!("\"{}\"", EventKind::RefreshEnd.as_str()));
    }
}
