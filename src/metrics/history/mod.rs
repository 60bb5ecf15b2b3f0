//! The history behind `GET /api/cache/history` and the status page's
//! plots: the last hour of per-interval figures ([`ring`]), the latency
//! sketches requests record into ([`sketch`]), event markers ([`events`]),
//! and the cluster seam that lets replicas see each other's figures
//! ([`cluster`]).
//!
//! Requests touch only relaxed atomics here (a latency sketch bucket on a
//! hit and on each backend query). The ring sits behind a mutex that only
//! the sampler (once per 10 s) and history readers take: a reader holds it
//! for one copy of at most an hour of records, never a request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;

mod clock;
mod cluster;
mod events;
mod ring;
mod sketch;

pub use clock::Clock;
pub use cluster::{
    merge_replicas, BoxFuture, ClusterError, ClusterFigures, MemoryCluster, ReplicaRecords,
};
pub use events::{Event, EventKind, Events};
pub use ring::{
    points, route_series, Gauges, IntervalRecord, Point, Reading, Ring, RouteSeries, Window,
    INTERVAL_MS, KEEP, POINTS,
};
pub use sketch::{LiveSketch, Sketch};

use super::Metrics;

/// The history's live state, owned by [`Metrics`].
#[derive(Debug)]
pub struct History {
    clock: Clock,
    /// Every hit's time to answer.
    pub(super) hit_latency: LiveSketch,
    /// Every backend query's time to its answer head (or failure).
    pub(super) backend_latency: LiveSketch,
    /// Closed intervals; the sampler and history readers take it, requests never.
    ring: Mutex<Ring>,
    pub events: Events,
    /// Set once when a shared tier is configured.
    cluster: OnceLock<ClusterLink>,
}

#[derive(Debug)]
struct ClusterLink {
    source: Arc<dyn ClusterFigures>,
    replica: String,
}

impl History {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            hit_latency: LiveSketch::default(),
            backend_latency: LiveSketch::default(),
            ring: Mutex::new(Ring::new(clock.now_ms())),
            events: Events::new(clock),
            cluster: OnceLock::new(),
        }
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Where the interval in progress ends (unix ms).
    pub fn next_boundary(&self) -> u64 {
        self.ring.lock().expect("history lock").next_boundary()
    }

    /// Publishes this replica's intervals to `source` as `replica` and shows
    /// the cluster in the history from now on. Only the first call counts.
    pub fn join_cluster(&self, source: Arc<dyn ClusterFigures>, replica: String) -> bool {
        self.cluster.set(ClusterLink { source, replica }).is_ok()
    }

    /// Adds intervals from before this process started (oldest first), as
    /// if they had been sampled here: for a demo or a screenshot of an
    /// hour-long day without waiting an hour. Records that do not start
    /// before the ones already held are ignored. Returns how many were kept.
    pub fn restore(&self, records: Vec<IntervalRecord>) -> usize {
        self.ring.lock().expect("history lock").restore(records)
    }

    /// The cluster source and this replica's name in it, once joined.
    pub fn cluster(&self) -> Option<(&Arc<dyn ClusterFigures>, &str)> {
        self.cluster
            .get()
            .map(|link| (&link.source, link.replica.as_str()))
    }
}

/// One window of this process's history, as the JSON answer shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryView {
    pub window: &'static str,
    /// One point's length.
    pub step_seconds: u64,
    /// Unix ms when the view was taken.
    pub now: u64,
    /// Unix ms where the window starts.
    pub start: u64,
    /// Oldest first; steps without figures (before start) are left out.
    pub points: Vec<Point>,
    /// Per route: hits and misses per point, aligned with `points`.
    pub routes: BTreeMap<String, RouteSeries>,
    pub events: Vec<Event>,
}

impl Metrics {
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The cumulative figures the history takes differences of.
    fn reading(&self) -> Reading {
        let snap = self.snapshot();
        Reading {
            hits: snap.total.hits,
            misses: snap.total.misses,
            stale: snap.total.stale,
            bypass: snap.total.bypassed,
            backend_queries: snap.upstream_requests,
            saved_micros: snap.total.saved_micros,
            hit_latency: self.history.hit_latency.read(),
            backend_latency: self.history.backend_latency.read(),
            routes: snap
                .routes
                .iter()
                .map(|(name, r)| (name.clone(), (r.hits, r.misses)))
                .collect(),
        }
    }

    /// Closes the interval ending at `end_ms` (the sampler's call).
    pub fn close_interval(&self, end_ms: u64, gauges: Gauges) -> IntervalRecord {
        let reading = self.reading();
        let mut ring = self.history.ring.lock().expect("history lock");
        ring.close(end_ms, reading, gauges).clone()
    }

    /// This process's figures for `window`, the interval in progress last.
    pub fn history_view(&self, window: Window) -> HistoryView {
        let now = self.history.clock.now_ms();
        let start = window.start_ms(now);
        let reading = self.reading();
        let (mut records, current): (Vec<IntervalRecord>, IntervalRecord) = {
            let ring = self.history.ring.lock().expect("history lock");
            let records = ring.records_since(start).cloned().collect();
            (records, ring.current(now, &reading))
        };
        records.push(current);
        let grouped = points(window, now, &records);
        let last = grouped.len().saturating_sub(1);
        HistoryView {
            window: window.as_str(),
            step_seconds: window.step_ms() / 1000,
            now,
            start,
            points: grouped
                .iter()
                .enumerate()
                .map(|(i, r)| r.point(i == last))
                .collect(),
            routes: route_series(&grouped),
            events: self.history.events.since(start),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::respond::CacheStatus;

    /// A minute boundary (1.8e12 ms is a whole number of minutes), so both windows' steps line up with it.
    const T0: u64 = 1_800_000_000_000;

    #[tokio::test(start_paused = true)]
    async fn intervals_follow_the_clock_and_the_last_point_is_in_progress() {
        let metrics = Metrics::with_clock(Clock::starting_at(T0));
        let route: Arc<str> = Arc::from("get_metrics");
        let hit = Duration::from_micros(90);
        for _ in 0..4 {
            metrics.record(&route, CacheStatus::Miss, Duration::from_secs(2), None);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(metrics.history().next_boundary(), T0 + 10_000);
        metrics.close_interval(
            T0 + 10_000,
            Gauges {
                entries: 4,
                bytes: 4_000,
            },
        );
        for _ in 0..6 {
            metrics.record(&route, CacheStatus::Hit, hit, Some(Duration::from_secs(2)));
        }
        tokio::time::advance(Duration::from_secs(5)).await;

        let view = metrics.history_view(Window::TenMinutes);
        let shape: Vec<_> = view
            .points
            .iter()
            .map(|p| (p.t, p.hits, p.misses, p.partial))
            .collect();
        assert_eq!(shape, [(T0, 0, 4, false), (T0 + 10_000, 6, 0, true)]);
        let now = &view.points[1];
        assert_eq!((now.seconds, now.requests_per_second), (5.0, 1.2));
        assert_eq!((now.saved_seconds, now.entries), (12.0, 4));
        let p99 = now.hit_p99_ms.unwrap();
        assert!((p99 - 0.09).abs() < 0.006, "{p99}");
        assert_eq!(view.routes["get_metrics"].misses, [4, 0]);

        let hour = metrics.history_view(Window::Hour);
        assert_eq!(hour.points.len(), 1);
        assert_eq!((hour.points[0].hits, hour.points[0].misses), (6, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn events_carry_the_time_they_happened() {
        let metrics = Metrics::with_clock(Clock::starting_at(T0));
        tokio::time::advance(Duration::from_millis(1_500)).await;
        metrics
            .history()
            .events
            .record(EventKind::Clear, "3 keys deleted");
        let view = metrics.history_view(Window::TenMinutes);
        assert_eq!(view.events.len(), 1);
        assert_eq!(view.events[0].t, T0 + 1_500);
    }
}
