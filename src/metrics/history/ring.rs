//! The last hour, per 10 s interval: what the cache served (hits, misses,
//! stale, bypass, per route too), what it cost the backend (queries, their
//! latency), what it saved, how fast hits were, and how full the store was.
//!
//! Requests add nothing here: they already bump the monotonic counters of
//! [`Metrics`](crate::metrics::Metrics) and two `LiveSketch`es (one relaxed add
//! each). Every 10 s, on the wall clock's 10 s boundaries, the sampler task
//! reads those cumulative figures ([`Reading`]) and [`Ring::close`] keeps
//! the difference from the previous reading as one [`IntervalRecord`]. So
//! the hit path stays lock-free, no interval can lose or double-count a
//! request, and the intervals add up exactly to the totals in stats. The
//! ring holds 360 records (an hour; a few hundred KB at most) and starts
//! empty at each start: the history is not carried over a restart.
//!
//! A record is small JSON with short names and sums with another
//! (counters add, sketches merge), which is how six 10 s records become one
//! minute point and how replicas' records become the cluster's
//! (`cluster.rs`).
//!
//! This file is pure: it is given readings and times, and is tested with them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::sketch::Sketch;

/// The length of one interval.
pub const INTERVAL_MS: u64 = 10_000;
/// Intervals kept: one hour.
pub const KEEP: usize = 360;
/// Points in either window.
pub const POINTS: u64 = 60;

/// The windows `GET /api/cache/history?window=` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// 60 points of 10 s.
    TenMinutes,
    /// 60 points of one minute.
    Hour,
}

impl Window {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "10m" => Some(Self::TenMinutes),
            "1h" | "60m" => Some(Self::Hour),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TenMinutes => "10m",
            Self::Hour => "1h",
        }
    }

    /// One point's length.
    pub fn step_ms(self) -> u64 {
        match self {
            Self::TenMinutes => INTERVAL_MS,
            Self::Hour => 6 * INTERVAL_MS,
        }
    }

    /// The start of the first point shown at `now_ms`.
    pub fn start_ms(self, now_ms: u64) -> u64 {
        let step = self.step_ms();
        (now_ms / step + 1).saturating_sub(POINTS) * step
    }
}

/// Cumulative figures since start, read from the counters.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub bypass: u64,
    pub backend_queries: u64,
    pub saved_micros: u64,
    pub hit_latency: Vec<u64>,
    pub backend_latency: Vec<u64>,
    /// Per route name: hits and misses.
    pub routes: BTreeMap<Arc<str>, (u64, u64)>,
}

/// Figures the store reports at sampling time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub entries: u64,
    pub bytes: u64,
}

/// One interval's figures (or several merged). Short names, and no zero
/// fields, keep a replica's published record small.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IntervalRecord {
    /// Start, unix ms (a multiple of the interval).
    pub t: u64,
    /// How much of it the figures cover, in ms (less than the interval for
    /// the first one after start and for the one in progress).
    pub ms: u64,
    #[serde(rename = "h", default, skip_serializing_if = "is_zero")]
    pub hits: u64,
    #[serde(rename = "m", default, skip_serializing_if = "is_zero")]
    pub misses: u64,
    #[serde(rename = "s", default, skip_serializing_if = "is_zero")]
    pub stale: u64,
    #[serde(rename = "b", default, skip_serializing_if = "is_zero")]
    pub bypass: u64,
    #[serde(rename = "q", default, skip_serializing_if = "is_zero")]
    pub backend_queries: u64,
    #[serde(rename = "sv", default, skip_serializing_if = "is_zero")]
    pub saved_micros: u64,
    #[serde(rename = "e", default, skip_serializing_if = "is_zero")]
    pub entries: u64,
    #[serde(rename = "by", default, skip_serializing_if = "is_zero")]
    pub bytes: u64,
    #[serde(rename = "hl", default, skip_serializing_if = "is_empty")]
    pub hit_latency: Sketch,
    #[serde(rename = "bl", default, skip_serializing_if = "is_empty")]
    pub backend_latency: Sketch,
    /// Per route: `[hits, misses]`, only routes that had either.
    #[serde(rename = "r", default, skip_serializing_if = "is_empty")]
    pub routes: BTreeMap<String, [u64; 2]>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn is_empty<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl IntervalRecord {
    fn add_counts(&mut self, other: &IntervalRecord) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.stale += other.stale;
        self.bypass += other.bypass;
        self.backend_queries += other.backend_queries;
        self.saved_micros += other.saved_micros;
        self.hit_latency.merge(&other.hit_latency);
        self.backend_latency.merge(&other.backend_latency);
        for (route, [hits, misses]) in &other.routes {
            let sum = self.routes.entry(route.clone()).or_default();
            sum[0] += hits;
            sum[1] += misses;
        }
    }

    /// Appends a later interval of the same replica: time adds up, and the
    /// store's figures are the latest.
    pub fn extend(&mut self, later: &IntervalRecord) {
        self.add_counts(later);
        self.ms += later.ms;
        self.entries = later.entries;
        self.bytes = later.bytes;
    }

    /// Adds another replica's record for the same interval: the time is
    /// the same, the stores' figures add up.
    pub fn merge_replica(&mut self, other: &IntervalRecord) {
        self.add_counts(other);
        self.ms = self.ms.max(other.ms);
        self.entries += other.entries;
        self.bytes += other.bytes;
    }

    /// What one point of a window shows.
    pub fn point(&self, partial: bool) -> Point {
        let requests = self.hits + self.misses + self.stale + self.bypass;
        let lookups = self.hits + self.misses;
        let seconds = self.ms as f64 / 1000.0;
        Point {
            t: self.t,
            seconds,
            hits: self.hits,
            misses: self.misses,
            stale: self.stale,
            bypass: self.bypass,
            requests_per_second: if self.ms == 0 {
                0.0
            } else {
                round(requests as f64 / seconds, 1000.0)
            },
            hit_rate: (lookups > 0).then(|| round(self.hits as f64 / lookups as f64, 10_000.0)),
            backend_queries: self.backend_queries,
            backend_p50_ms: self.backend_latency.quantile_ms(0.5),
            backend_p99_ms: self.backend_latency.quantile_ms(0.99),
            hit_p99_ms: self.hit_latency.quantile_ms(0.99),
            saved_seconds: round(self.saved_micros as f64 / 1e6, 1000.0),
            entries: self.entries,
            bytes: self.bytes,
            partial,
        }
    }
}

fn round(value: f64, scale: f64) -> f64 {
    (value * scale).round() / scale
}

/// One point of a window, as the JSON answer and the page read it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Start, unix ms.
    pub t: u64,
    /// Seconds of traffic the point covers.
    pub seconds: f64,
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub bypass: u64,
    pub requests_per_second: f64,
    /// Hits over hits + misses; `null` without either.
    pub hit_rate: Option<f64>,
    pub backend_queries: u64,
    pub backend_p50_ms: Option<f64>,
    pub backend_p99_ms: Option<f64>,
    pub hit_p99_ms: Option<f64>,
    pub saved_seconds: f64,
    pub entries: u64,
    pub bytes: u64,
    /// The point still being counted.
    pub partial: bool,
}

/// The last hour of closed intervals, and the reading they end at.
#[derive(Debug)]
pub struct Ring {
    records: VecDeque<IntervalRecord>,
    last: Reading,
    /// Where the last closed interval ended (at first: the start time).
    last_end_ms: u64,
    gauges: Gauges,
}

impl Ring {
    pub fn new(started_ms: u64) -> Self {
        Self {
            records: VecDeque::with_capacity(KEEP),
            last: Reading::default(),
            last_end_ms: started_ms,
            gauges: Gauges::default(),
        }
    }

    /// Where the interval in progress ends.
    pub fn next_boundary(&self) -> u64 {
        (self.last_end_ms / INTERVAL_MS + 1) * INTERVAL_MS
    }

    /// Closes the interval ending at `end_ms` with what was counted since
    /// the last close. A sampler that was late by whole intervals puts
    /// their traffic in the last one (its `ms` says how long it covers).
    pub fn close(&mut self, end_ms: u64, reading: Reading, gauges: Gauges) -> &IntervalRecord {
        let mut record = self.since_last(end_ms, &reading, gauges);
        record.t = end_ms.saturating_sub(1) / INTERVAL_MS * INTERVAL_MS;
        if self.records.len() == KEEP {
            self.records.pop_front();
        }
        self.records.push_back(record);
        self.last = reading;
        self.last_end_ms = self.last_end_ms.max(end_ms);
        self.gauges = gauges;
        self.records.back().expect("just pushed")
    }

    /// The interval in progress at `now_ms`, from a fresh reading; the
    /// store's figures are those of the last close.
    pub fn current(&self, now_ms: u64, reading: &Reading) -> IntervalRecord {
        let mut record = self.since_last(now_ms, reading, self.gauges);
        record.t = self.last_end_ms / INTERVAL_MS * INTERVAL_MS;
        record
    }

    fn since_last(&self, end_ms: u64, reading: &Reading, gauges: Gauges) -> IntervalRecord {
        let last = &self.last;
        let routes = reading
            .routes
            .iter()
            .filter_map(|(name, &(hits, misses))| {
                let (h0, m0) = last.routes.get(name).copied().unwrap_or_default();
                let delta = [hits.saturating_sub(h0), misses.saturating_sub(m0)];
                (delta != [0, 0]).then(|| (name.to_string(), delta))
            })
            .collect();
        IntervalRecord {
            t: 0,
            ms: end_ms.saturating_sub(self.last_end_ms),
            hits: reading.hits.saturating_sub(last.hits),
            misses: reading.misses.saturating_sub(last.misses),
            stale: reading.stale.saturating_sub(last.stale),
            bypass: reading.bypass.saturating_sub(last.bypass),
            backend_queries: reading.backend_queries.saturating_sub(last.backend_queries),
            saved_micros: reading.saved_micros.saturating_sub(last.saved_micros),
            entries: gauges.entries,
            bytes: gauges.bytes,
            hit_latency: Sketch::between(&last.hit_latency, &reading.hit_latency),
            backend_latency: Sketch::between(&last.backend_latency, &reading.backend_latency),
            routes,
        }
    }

    /// Puts earlier records (oldest first) in front of those held, within
    /// the hour kept; see [`History::restore`](super::History::restore).
    pub fn restore(&mut self, records: Vec<IntervalRecord>) -> usize {
        let first = self
            .records
            .front()
            .map_or(self.last_end_ms, |r| r.t)
            .min(self.last_end_ms);
        let mut kept: Vec<IntervalRecord> = records
            .into_iter()
            .filter(|r| r.t + INTERVAL_MS <= first)
            .collect();
        kept.dedup_by_key(|r| r.t);
        let room = KEEP - self.records.len();
        let skip = kept.len().saturating_sub(room);
        let count = kept.len() - skip;
        for record in kept.into_iter().skip(skip).rev() {
            self.records.push_front(record);
        }
        count
    }

    /// The closed records that start at or after `since_ms`, oldest first.
    pub fn records_since(&self, since_ms: u64) -> impl Iterator<Item = &IntervalRecord> {
        self.records.iter().filter(move |r| r.t >= since_ms)
    }
}

/// Groups records (oldest first, possibly with the one in progress last)
/// into the window's points; steps with no record are left out.
pub fn points<'a>(
    window: Window,
    now_ms: u64,
    records: impl IntoIterator<Item = &'a IntervalRecord>,
) -> Vec<IntervalRecord> {
    let step = window.step_ms();
    let start = window.start_ms(now_ms);
    let mut grouped: Vec<IntervalRecord> = Vec::new();
    for record in records.into_iter().filter(|r| r.t >= start) {
        let t = record.t / step * step;
        match grouped.last_mut() {
            Some(last) if last.t == t => last.extend(record),
            _ => grouped.push(IntervalRecord {
                t,
                ..record.clone()
            }),
        }
    }
    grouped
}

/// The sparkline series per route: hits and misses per point, aligned
/// with `points`.
pub fn route_series(points: &[IntervalRecord]) -> BTreeMap<String, RouteSeries> {
    let mut series: BTreeMap<String, RouteSeries> = BTreeMap::new();
    for name in points.iter().flat_map(|p| p.routes.keys()) {
        series.entry(name.clone()).or_insert_with(|| RouteSeries {
            hits: vec![0; points.len()],
            misses: vec![0; points.len()],
        });
    }
    for (i, point) in points.iter().enumerate() {
        for (name, [hits, misses]) in &point.routes {
            let s = series.get_mut(name).expect("every route was added");
            s.hits[i] = *hits;
            s.misses[i] = *misses;
        }
    }
    series
}

/// One route's sparkline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteSeries {
    pub hits: Vec<u64>,
    pub misses: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn reading(hits: u64, misses: u64) -> Reading {
        Reading {
            hits,
            misses,
            routes: [(Arc::from("get_metrics"), (hits, misses))].into(),
            ..Reading::default()
        }
    }

    #[test]
    fn each_interval_keeps_what_was_counted_since_the_previous_one() {
        let mut ring = Ring::new(T0 + 4_000);
        assert_eq!(ring.next_boundary(), T0 + 10_000);
        let first = ring
            .close(T0 + 10_000, reading(0, 5), Gauges::default())
            .clone();
        assert_eq!((first.t, first.ms, first.misses), (T0, 6_000, 5));
        let second = ring.close(T0 + 20_000, reading(30, 5), Gauges::default());
        assert_eq!((second.t, second.ms), (T0 + 10_000, 10_000));
        assert_eq!((second.hits, second.misses), (30, 0));
        assert_eq!(second.routes["get_metrics"], [30, 0]);
    }

    #[test]
    fn the_interval_in_progress_counts_since_the_last_close() {
        let mut ring = Ring::new(T0);
        ring.close(T0 + 10_000, reading(1, 1), Gauges::default());
        let now = ring.current(T0 + 12_500, &reading(4, 1));
        assert_eq!(
            (now.t, now.ms, now.hits, now.misses),
            (T0 + 10_000, 2_500, 3, 0)
        );
        assert_eq!(now.point(true).requests_per_second, 1.2);
    }

    #[test]
    fn the_ring_forgets_what_is_older_than_an_hour() {
        let mut ring = Ring::new(T0);
        for i in 1..=KEEP as u64 + 5 {
            ring.close(T0 + i * INTERVAL_MS, reading(i, 0), Gauges::default());
        }
        assert_eq!(ring.records.len(), KEEP);
        assert_eq!(ring.records[0].t, T0 + 5 * INTERVAL_MS);
    }

    #[test]
    fn six_intervals_make_one_minute_point_and_totals_are_kept() {
        let mut ring = Ring::new(T0);
        let mut records = Vec::new();
        for i in 1..=12u64 {
            let gauges = Gauges {
                entries: i,
                bytes: i * 100,
            };
            records.push(
                ring.close(T0 + i * INTERVAL_MS, reading(i * 2, i), gauges)
                    .clone(),
            );
        }
        let now = T0 + 12 * INTERVAL_MS + 1;
        let minutes = points(Window::Hour, now, &records);
        assert_eq!(minutes.len(), 2);
        assert_eq!((minutes[0].hits, minutes[0].misses), (12, 6));
        assert_eq!((minutes[1].hits, minutes[1].misses), (12, 6));
        assert_eq!(minutes[0].ms, 60_000);
        assert_eq!((minutes[0].entries, minutes[1].bytes), (6, 1_200));
        let tens = points(Window::TenMinutes, now, &records);
        assert_eq!(tens.len(), 12);
        let series = route_series(&minutes);
        assert_eq!(series["get_metrics"].hits, [12, 12]);
    }

    #[test]
    fn restored_records_go_before_the_live_ones_and_within_the_hour() {
        let mut ring = Ring::new(T0 + 3_000);
        ring.close(T0 + 10_000, reading(1, 0), Gauges::default());
        let old = |i: u64| IntervalRecord {
            t: T0 - i * INTERVAL_MS,
            ms: INTERVAL_MS,
            misses: i,
            ..IntervalRecord::default()
        };
        let mut earlier: Vec<_> = (1..=KEEP as u64 + 10).rev().map(old).collect();
        earlier.push(IntervalRecord { t: T0, ..old(0) });
        assert_eq!(ring.restore(earlier), KEEP - 1);
        assert_eq!(ring.records.len(), KEEP);
        let starts: Vec<_> = ring.records.iter().map(|r| r.t).collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*starts.last().unwrap(), T0);
        assert_eq!(ring.records.back().unwrap().hits, 1, "the live one is kept");
    }

    #[test]
    fn a_window_shows_sixty_steps_back_from_now() {
        assert_eq!(Window::Hour.start_ms(T0 + 59_999), T0 - 59 * 60_000);
        assert_eq!(Window::TenMinutes.start_ms(T0), T0 - 590_000);
        assert_eq!(Window::parse("1h"), Some(Window::Hour));
        assert_eq!(Window::parse("2h"), None);
    }

    #[test]
    fn replicas_add_up_but_share_the_interval_s_time() {
        let a = IntervalRecord {
            t: T0,
            ms: 10_000,
            hits: 3,
            entries: 10,
            routes: [("r".to_owned(), [3, 0])].into(),
            ..IntervalRecord::default()
        };
        let mut sum = a.clone();
        sum.merge_replica(&IntervalRecord {
            misses: 2,
            routes: [("r".to_owned(), [0, 2])].into(),
            ..a.clone()
        });
        assert_eq!(
            (sum.hits, sum.misses, sum.ms, sum.entries),
            (6, 2, 10_000, 20)
        );
        assert_eq!(sum.routes["r"], [3, 2]);
    }

    #[test]
    fn a_record_round_trips_through_its_compact_json() {
        let record = IntervalRecord {
            t: T0,
            ms: 10_000,
            hits: 7,
            routes: [("get_metrics".to_owned(), [7, 0])].into(),
            ..IntervalRecord::default()
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            json,
            r#"{"t":1800000000000,"ms":10000,"h":7,"r":{"get_metrics":[7,0]}}"#
        );
        assert_eq!(
            serde_json::from_str::<IntervalRecord>(&json).unwrap(),
            record
        );
    }
}
