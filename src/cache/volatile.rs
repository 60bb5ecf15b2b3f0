//! Suspected volatile fields: for each route, a bounded sample of the
//! bodies and query strings as keyed, and the fields in them whose value
//! changes on most requests while the rest of the request repeats (a
//! request id, a timestamp, a multi-select sent in a new order, a `utm_*`
//! parameter), with the hit rate the route would have if they were left out
//! of the key.
//!
//! Cost: every keyed request bumps one counter of its thread's own; the
//! first [`WARMUP`] requests a thread serves for a route are sampled, then
//! one in a stride of at
//! least [`SAMPLE_EVERY`] that follows what samples cost: a sample that took
//! `t` ns sets the stride towards `t /` [`BUDGET_NS`], so the sampler's
//! average cost per request stays near [`BUDGET_NS`] whatever the bodies
//! look like and however loaded the machine is. A request whose sampler is
//! busy is simply not sampled, so no request ever waits. A sample re-reads
//! the keyed body once and adds one 64-bit hash per field to that field's
//! [`Distinct`] sketch.
//!
//! Memory per route is bounded whatever the traffic: at most [`MAX_FIELDS`]
//! fields, each with one sketch (plus a second for arrays of scalars), two
//! sketches for the whole request, and the last window's report; about
//! [`MAX_ROUTE_BYTES`] in the worst case. Windows of [`WINDOW`] samples keep
//! the figures current: a finished window's report is kept while the next
//! one fills.
//!
//! How a field is judged, per window:
//! - its distinct rate (distinct values / samples holding it) is at least
//!   [`VOLATILE_RATE`]: suggest `key_ignore_fields` (`key_ignore_query` for
//!   a query parameter);
//! - or it is an array of scalars that arrives as the same set in several
//!   orders (at least [`ORDERS_PER_SET`] orders per set on average):
//!   suggest `key_unordered`;
//! - and the rest of the request, without those fields (arrays sorted),
//!   repeats on at least [`REST_REPEATS`] of the samples, and holds at
//!   least one regular field unless only one is suspected. A route whose
//!   requests are all different anyway is reported as nothing.
//!
//! These are estimates from a sample: a filter with thousands of values
//! that each user picks once looks like a request id. The report says what
//! to check, the operator decides (docs/operations.md).

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::Instant;

use http::Method;
use jiter::{Jiter, Peek};
use serde::Serialize;
use tracing::warn;

use super::key::{KeyBody, RequestIdentity};
use super::key_rules::KeyRules;
use super::sketch::{hash_of, Distinct};
use crate::per_thread::{self, PerThread};

/// Every request of a route is sampled until the thread serving it has
/// seen this many.
pub const WARMUP: u64 = 256;
/// After the warm-up, one request in this many is sampled.
pub const SAMPLE_EVERY: u64 = 32;
/// Fields tracked per route (the first seen); further fields are not judged.
pub const MAX_FIELDS: usize = 64;
/// Samples per window.
pub const WINDOW: u32 = 4096;
/// Samples (with the rest measured) before a route is judged at all.
pub const MIN_SAMPLES: u32 = 24;
/// How often, in samples, the suspected set is reviewed (every 64 after
/// the first 256 samples).
const REVIEW_EVERY: u32 = 8;
/// A field with distinct values on at least this share of samples is volatile.
pub const VOLATILE_RATE: f64 = 0.6;
/// An array arriving in at least this many orders per set is unordered.
pub const ORDERS_PER_SET: f64 = 1.5;
/// The rest of the request must repeat on at least this share of samples.
pub const REST_REPEATS: f64 = 0.5;
/// What sampling may cost a request on average, in nanoseconds.
pub const BUDGET_NS: u64 = 50;
/// The longest stride: even costly bodies are sampled now and then.
const MAX_STRIDE: u64 = 1 << 16;

/// The stride after a sample that took `elapsed_ns`: a quarter of the way
/// from `stride` to what keeps the average within [`BUDGET_NS`].
fn next_stride(stride: u64, elapsed_ns: u64) -> u64 {
    let wanted = (elapsed_ns / BUDGET_NS).clamp(SAMPLE_EVERY, MAX_STRIDE);
    ((stride * 3 + wanted) / 4).clamp(SAMPLE_EVERY, MAX_STRIDE)
}
/// Bodies larger than this are not sampled (they are counted as seen).
const MAX_SAMPLED_BODY: usize = 64 * 1024;
/// Nesting followed when listing a body's fields.
const MAX_DEPTH: usize = 16;
/// The name of a body that is a JSON scalar or an array of scalars.
const WHOLE_BODY: &str = "(body)";
/// The worst-case memory of one route's sampler.
pub const MAX_ROUTE_BYTES: usize =
    MAX_FIELDS * (2 * Distinct::BYTES + 160) + 2 * Distinct::BYTES + MAX_FIELDS * 400;

/// The samplers of every route, by route name.
///
/// A route's sampler is created on its first keyed request and then only
/// read: the map is replaced whole when a route is added (`ArcSwap`), so a
/// request reads it without a lock or a shared reference count. Each
/// sampler counts requests per thread and has its own `Mutex`, taken with
/// `try_lock` by sampled requests only.
#[derive(Default)]
pub struct VolatileDetector {
    routes: ArcSwap<Samplers>,
}

/// Route name → its sampler. Read on every keyed request: foldhash, since
/// the names come from the configuration, not from clients.
type Samplers = HashMap<Arc<str>, Arc<RouteSampler>, foldhash::fast::RandomState>;

struct RouteSampler {
    /// Requests seen, per thread: each thread samples its own warm-up and
    /// one in a stride of its own requests.
    seen: PerThread<AtomicU64>,
    /// Requests per sample after the warm-up (see [`next_stride`]).
    stride: AtomicU64,
    state: Mutex<SamplerState>,
}

impl Default for RouteSampler {
    fn default() -> Self {
        Self {
            seen: PerThread::default(),
            stride: AtomicU64::new(SAMPLE_EVERY),
            state: Mutex::default(),
        }
    }
}

/// One suspected field, as stats, keys and the status page show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolatileField {
    /// The field's path in the body (`meta.sentAt`, `items[].id`), or the
    /// query parameter's name.
    pub field: String,
    /// `body` or `query`.
    #[serde(rename = "in")]
    pub location: &'static str,
    /// The route setting that would fix it.
    pub setting: &'static str,
    /// Share of the sampled requests holding the field whose value was new.
    pub distinct_rate: f64,
    /// Sampled requests that held the field.
    pub samples: u64,
    /// Share of samples whose rest (without the suspected fields, arrays
    /// sorted) had been seen before in the window.
    pub rest_repeats: f64,
    /// The route's estimated hit rate with its keys as they are…
    pub hit_rate_now: f64,
    /// …and with every suspected field fixed.
    pub hit_rate_if_ignored: f64,
    /// One line for people and logs.
    pub summary: String,
}

/// Where a field was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location {
    Body,
    Query,
}

impl Location {
    fn as_str(self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Query => "query",
        }
    }
}

/// What a field is suspected of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suspicion {
    /// Its value is new on most requests.
    Volatile,
    /// The same set of values arrives in several orders.
    Unordered,
}

impl Suspicion {
    fn setting(self, location: Location) -> &'static str {
        match (self, location) {
            (Self::Volatile, Location::Body) => "key_ignore_fields",
            (Self::Volatile, Location::Query) => "key_ignore_query",
            (Self::Unordered, _) => "key_unordered",
        }
    }
}

impl VolatileDetector {
    /// Counts one keyed request of `route`, sampling it now and then.
    pub fn observe(
        &self,
        route: &Arc<str>,
        rules: &KeyRules,
        method: &Method,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) {
        let Some(sampler) = self.due(route) else {
            return;
        };
        if body.len() > MAX_SAMPLED_BODY {
            return;
        }
        let Ok(mut state) = sampler.state.try_lock() else {
            return;
        };
        let started = Instant::now();
        let identity = RequestIdentity::with_rules(method, path, query, body, rules);
        let request = Sample::of(&identity);
        let found = state.add(rules.fingerprint(), &request);
        let elapsed = started.elapsed().as_nanos() as u64;
        let stride = sampler.stride.load(Ordering::Relaxed);
        sampler
            .stride
            .store(next_stride(stride, elapsed), Ordering::Relaxed);
        if let Some(found) = found {
            let fields: Vec<&str> = found.iter().map(|f| f.field.as_str()).collect();
            let summary: Vec<&str> = found.iter().map(|f| f.summary.as_str()).collect();
            warn!(
                route = &**route,
                fields = %fields.join(", "),
                hit_rate_now = found[0].hit_rate_now,
                hit_rate_if_ignored = found[0].hit_rate_if_ignored,
                summary = %summary.join("; "),
                "suspected volatile fields: most requests get a key of their own",
            );
        }
    }

    /// The suspected fields of `route` (empty when none, or too few samples).
    pub fn report(&self, route: &str) -> Vec<VolatileField> {
        let routes = self.routes.load();
        routes.get(route).map_or_else(Vec::new, |sampler| {
            sampler
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .report()
        })
    }

    /// Every route's suspected fields, routes without any left out.
    pub fn reports(&self) -> BTreeMap<String, Vec<VolatileField>> {
        let names: Vec<Arc<str>> = self.routes.load().keys().cloned().collect();
        names
            .into_iter()
            .map(|name| (name.to_string(), self.report(&name)))
            .filter(|(_, fields)| !fields.is_empty())
            .collect()
    }

    /// Counts a request of `route`; its sampler when this one is sampled.
    /// The common case reads the map and adds to the thread's own count.
    fn due(&self, route: &Arc<str>) -> Option<Arc<RouteSampler>> {
        let is_due = |sampler: &RouteSampler| {
            let own = sampler.seen.local();
            let seen = own.load(Ordering::Relaxed);
            per_thread::add(own, 1);
            seen < WARMUP || seen.is_multiple_of(sampler.stride.load(Ordering::Relaxed))
        };
        if let Some(sampler) = self.routes.load().get(route) {
            return is_due(sampler).then(|| sampler.clone());
        }
        let mut added = None;
        self.routes.rcu(|routes| {
            let mut routes = Samplers::clone(routes);
            added = Some(routes.entry(route.clone()).or_default().clone());
            routes
        });
        let sampler = added.expect("rcu ran at least once");
        is_due(&sampler).then_some(sampler)
    }
}

/// One sampled request as the sampler sees it: a hash of what is not a
/// field (method, path, a non-JSON body), and one entry per field.
#[derive(Debug, Default)]
struct Sample {
    base: u64,
    fields: Vec<Leaf>,
}

/// One field's value in a sample.
#[derive(Debug)]
struct Leaf {
    name: String,
    location: Location,
    /// Hash of the path and the value(s) as keyed.
    hash: u64,
    /// For an array of scalars: hash of the path and the sorted elements.
    set: Option<u64>,
}

impl Sample {
    fn of(identity: &RequestIdentity) -> Self {
        let mut sample = Sample {
            base: hash_of((identity.method.as_str(), identity.path)),
            fields: Vec::new(),
        };
        let mut query: BTreeMap<String, DefaultHasher> = BTreeMap::new();
        for (name, value) in form_urlencoded::parse(identity.query.as_bytes()) {
            let hasher = query.entry(name.into_owned()).or_default();
            hasher.write(value.as_bytes());
            hasher.write_u8(0xff);
        }
        for (name, hasher) in query {
            sample.fields.push(Leaf {
                hash: hash_of(("?", &name, hasher.finish())),
                name,
                location: Location::Query,
                set: None,
            });
        }
        match &identity.body {
            KeyBody::Empty => {}
            KeyBody::Raw(raw) => sample.base ^= hash_of(raw),
            KeyBody::Json(text) => {
                let mut leaves = Leaves::default();
                let mut jiter = Jiter::new(text.as_bytes());
                let listed = jiter
                    .peek()
                    .ok()
                    .and_then(|peek| leaves.value(&mut jiter, peek, "", 0).ok());
                if listed.is_none() {
                    sample.base ^= hash_of(text);
                }
                sample.fields.extend(leaves.finish());
            }
        }
        sample
    }

    /// The whole request's hash: its key, as far as the sampler is concerned.
    fn total(&self) -> u64 {
        self.fields
            .iter()
            .fold(self.base, |sum, leaf| sum.wrapping_add(leaf.hash))
    }
}

/// A body's fields as they are listed: one accumulator per path, so that
/// `items[].id` over three elements is one field with three values.
#[derive(Default)]
struct Leaves {
    order: Vec<String>,
    values: HashMap<String, (DefaultHasher, Option<Vec<u64>>)>,
}

impl Leaves {
    fn value(
        &mut self,
        jiter: &mut Jiter,
        peek: Peek,
        path: &str,
        depth: usize,
    ) -> Result<(), jiter::JiterError> {
        match peek {
            Peek::Object if depth < MAX_DEPTH => {
                let mut name = jiter.known_object()?.map(str::to_owned);
                while let Some(member) = name {
                    let child = if path.is_empty() {
                        member
                    } else {
                        format!("{path}.{member}")
                    };
                    let peek = jiter.peek()?;
                    self.value(jiter, peek, &child, depth + 1)?;
                    name = jiter.next_key()?.map(str::to_owned);
                }
            }
            Peek::Array if depth < MAX_DEPTH => {
                // An array of scalars is one value (and a set); the objects
                // and arrays inside an array are followed, under `path[]`.
                let child = format!("{path}[]");
                let mut scalars = Vec::new();
                let mut nested = false;
                let mut next = jiter.known_array()?;
                while let Some(peek) = next {
                    if matches!(peek, Peek::Object | Peek::Array) {
                        nested = true;
                        self.value(jiter, peek, &child, depth + 1)?;
                    } else {
                        let from = jiter.current_index();
                        jiter.known_skip(peek)?;
                        scalars.push(hash_of(jiter.slice_to_current(from)));
                    }
                    next = jiter.array_step()?;
                }
                if nested {
                    for hash in &scalars {
                        self.add(&child, &hash.to_le_bytes(), None);
                    }
                } else {
                    let ordered: Vec<u8> = scalars.iter().flat_map(|h| h.to_le_bytes()).collect();
                    self.add(path, &ordered, Some(scalars));
                }
            }
            _ => {
                let from = jiter.current_index();
                jiter.known_skip(peek)?;
                let text = jiter.slice_to_current(from).to_vec();
                self.add(path, &text, None);
            }
        }
        Ok(())
    }

    fn add(&mut self, path: &str, value: &[u8], set: Option<Vec<u64>>) {
        if !self.values.contains_key(path) {
            if self.order.len() >= MAX_FIELDS * 2 {
                return;
            }
            self.order.push(path.to_owned());
            self.values.insert(path.to_owned(), Default::default());
        }
        let Some((hasher, elements)) = self.values.get_mut(path) else {
            return;
        };
        hasher.write(value);
        hasher.write_u8(0xff);
        match (elements, set) {
            (Some(elements), Some(set)) => elements.extend(set),
            (slot @ None, Some(set)) => *slot = Some(set),
            _ => {}
        }
    }

    fn finish(mut self) -> Vec<Leaf> {
        self.order
            .into_iter()
            .filter_map(|name| {
                let (hasher, elements) = self.values.remove(&name)?;
                let set = elements.map(|mut elements| {
                    elements.sort_unstable();
                    hash_of((&name, elements))
                });
                Some(Leaf {
                    hash: hash_of((&name, hasher.finish())),
                    name: if name.is_empty() {
                        WHOLE_BODY.to_owned()
                    } else {
                        name
                    },
                    location: Location::Body,
                    set,
                })
            })
            .collect()
    }
}

/// One field's sketches in the current window.
#[derive(Debug)]
struct FieldSketch {
    name: String,
    location: Location,
    present: u32,
    values: Distinct,
    /// Samples where it was an array of scalars, and its distinct sets.
    arrays: u32,
    sets: Option<Distinct>,
}

/// A route's sampler: the current window, the last finished window's
/// report, and whether the current detection was logged.
#[derive(Debug, Default)]
struct SamplerState {
    /// The rules the samples were keyed under; new rules start afresh.
    fingerprint: [u8; 16],
    window: Window,
    last: Vec<VolatileField>,
    logged: bool,
}

#[derive(Debug, Default)]
struct Window {
    samples: u32,
    fields: Vec<FieldSketch>,
    index: HashMap<(String, bool), usize>,
    totals: Distinct,
    /// The suspected fields (indices into `fields`) the rest is measured
    /// without, and the rest's samples since they last changed.
    suspects: Vec<(usize, Suspicion)>,
    rest: Distinct,
    rest_samples: u32,
}

impl SamplerState {
    /// Adds one sample; returns the suspected fields when they are first
    /// found (to be logged once).
    fn add(&mut self, fingerprint: [u8; 16], sample: &Sample) -> Option<Vec<VolatileField>> {
        if fingerprint != self.fingerprint {
            *self = Self {
                fingerprint,
                ..Self::default()
            };
        }
        let window = &mut self.window;
        window.add(sample);
        // Often while the first samples come in, then every few dozen.
        let samples = window.samples;
        let due =
            samples.is_multiple_of(REVIEW_EVERY) && (samples <= 256 || samples.is_multiple_of(64));
        if !due {
            return None;
        }
        window.review();
        if window.samples >= WINDOW {
            self.last = window.report();
            self.window = Window::default();
            return None;
        }
        if self.logged {
            return None;
        }
        let found = self.window.report();
        if found.is_empty() {
            return None;
        }
        self.logged = true;
        Some(found)
    }

    fn report(&self) -> Vec<VolatileField> {
        if self.window.rest_samples >= MIN_SAMPLES {
            self.window.report()
        } else {
            self.last.clone()
        }
    }
}

impl Window {
    fn add(&mut self, sample: &Sample) {
        self.samples += 1;
        self.totals.add(sample.total());
        let mut rest = sample.base;
        for leaf in &sample.fields {
            let index = self.field(leaf);
            if let Some(index) = index {
                let field = &mut self.fields[index];
                field.present += 1;
                field.values.add(leaf.hash);
                if let Some(set) = leaf.set {
                    field.arrays += 1;
                    field.sets.get_or_insert_with(Distinct::default).add(set);
                }
            }
            let suspicion = index.and_then(|index| {
                self.suspects
                    .iter()
                    .find(|(suspect, _)| *suspect == index)
                    .map(|(_, s)| *s)
            });
            rest = rest.wrapping_add(match (suspicion, leaf.set) {
                (Some(Suspicion::Volatile), _) => 0,
                (Some(Suspicion::Unordered), Some(set)) => set,
                _ => leaf.hash,
            });
        }
        self.rest.add(rest);
        self.rest_samples += 1;
    }

    fn field(&mut self, leaf: &Leaf) -> Option<usize> {
        let key = (leaf.name.clone(), leaf.location == Location::Query);
        if let Some(&index) = self.index.get(&key) {
            return Some(index);
        }
        if self.fields.len() >= MAX_FIELDS {
            return None;
        }
        self.fields.push(FieldSketch {
            name: leaf.name.clone(),
            location: leaf.location,
            present: 0,
            values: Distinct::default(),
            arrays: 0,
            sets: None,
        });
        self.index.insert(key, self.fields.len() - 1);
        Some(self.fields.len() - 1)
    }

    /// Re-judges the fields; a changed set of suspects restarts the rest.
    fn review(&mut self) {
        let suspects: Vec<(usize, Suspicion)> = self
            .fields
            .iter()
            .enumerate()
            .filter_map(|(index, field)| Some((index, self.judge(field)?)))
            .collect();
        if suspects != self.suspects {
            self.suspects = suspects;
            self.rest = Distinct::default();
            self.rest_samples = 0;
        }
    }

    fn judge(&self, field: &FieldSketch) -> Option<Suspicion> {
        // No setting can name the body itself: it is part of the rest.
        if (field.location == Location::Body && field.name == WHOLE_BODY)
            || field.present < REVIEW_EVERY
            || field.present * 2 < self.samples
        {
            return None;
        }
        let values = field.values.estimate().min(field.present as f64);
        if values / field.present as f64 >= VOLATILE_RATE {
            return Some(Suspicion::Volatile);
        }
        let sets = field.sets.as_ref()?.estimate().max(1.0);
        (field.arrays * 2 >= field.present && values >= 2.0 && values / sets >= ORDERS_PER_SET)
            .then_some(Suspicion::Unordered)
    }

    fn report(&self) -> Vec<VolatileField> {
        if self.rest_samples < MIN_SAMPLES || self.suspects.is_empty() {
            return Vec::new();
        }
        let repeats = |sketch: &Distinct, samples: u32| {
            let distinct = sketch.estimate().min(samples as f64);
            round(1.0 - distinct / samples as f64)
        };
        let rest_repeats = repeats(&self.rest, self.rest_samples);
        let hit_rate_now = repeats(&self.totals, self.samples);
        if rest_repeats < REST_REPEATS || rest_repeats <= hit_rate_now {
            return Vec::new();
        }
        // With every regular field suspected, nothing of the request is
        // left to repeat: several distinct filters look just like ids.
        let regular = |field: &FieldSketch| field.present * 2 >= self.samples;
        let kept = self
            .fields
            .iter()
            .enumerate()
            .filter(|(index, field)| {
                regular(field) && !self.suspects.iter().any(|(s, _)| s == index)
            })
            .count();
        if kept == 0 && self.suspects.len() > 1 {
            return Vec::new();
        }
        self.suspects
            .iter()
            .map(|&(index, suspicion)| {
                let field = &self.fields[index];
                let distinct_rate = round(
                    field.values.estimate().min(field.present as f64) / field.present as f64,
                );
                let what = match suspicion {
                    Suspicion::Volatile => format!(
                        "distinct on {} of {} sampled requests",
                        percent(distinct_rate),
                        thousands(field.present as u64)
                    ),
                    Suspicion::Unordered => format!(
                        "the same values arrive in different orders ({} distinct orderings in {} sampled requests)",
                        thousands(field.values.estimate().round() as u64),
                        thousands(field.present as u64)
                    ),
                };
                let setting = suspicion.setting(field.location);
                VolatileField {
                    summary: format!(
                        "{}{}: {what}; the rest of the request repeats {}; estimated hit rate {} now, {} with {setting}",
                        if field.location == Location::Query { "?" } else { "" },
                        field.name,
                        percent(rest_repeats),
                        percent(hit_rate_now),
                        percent(rest_repeats),
                    ),
                    field: field.name.clone(),
                    location: field.location.as_str(),
                    setting,
                    distinct_rate,
                    samples: field.present as u64,
                    rest_repeats,
                    hit_rate_now,
                    hit_rate_if_ignored: rest_repeats,
                }
            })
            .collect()
    }
}

fn round(value: f64) -> f64 {
    ((value * 1000.0).round() / 1000.0).clamp(0.0, 1.0)
}

fn percent(value: f64) -> String {
    format!("{:.0} %", value * 100.0)
}

/// `2,000`, as the issue writes counts.
fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(ignore: &[&str], unordered: &[&str], query: &[&str]) -> KeyRules {
        let own = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        KeyRules::new(&own(ignore), &own(unordered), &own(query), &[]).unwrap()
    }

    /// Feeds `count` requests made by `body(i)` (and `query(i)`) to a fresh detector.
    fn observe(
        rules: &KeyRules,
        count: usize,
        query: impl Fn(usize) -> Option<String>,
        body: impl Fn(usize) -> String,
    ) -> Vec<VolatileField> {
        let detector = VolatileDetector::default();
        let route: Arc<str> = "get_metrics".into();
        for i in 0..count {
            detector.observe(
                &route,
                rules,
                &Method::POST,
                "/api/metrics",
                query(i).as_deref(),
                body(i).as_bytes(),
            );
        }
        detector.report("get_metrics")
    }

    fn dashboard(i: usize) -> String {
        let orgs = ["Vale", "Itau", "Ambev"][i % 3];
        format!(
            r#"{{"requestId":"req-{i}","sentAt":{},"org":"{orgs}","range":"30d"}}"#,
            1_700_000_000 + i * 7
        )
    }

    #[test]
    fn a_request_id_and_a_timestamp_are_suspected_with_the_hit_rate_if_ignored() {
        let found = observe(&KeyRules::default(), 200, |_| None, dashboard);
        let names: Vec<&str> = found.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(names, ["requestId", "sentAt"], "{found:#?}");
        for field in &found {
            assert_eq!(field.setting, "key_ignore_fields");
            assert!(field.distinct_rate > 0.9, "{field:?}");
            assert!(field.hit_rate_now < 0.05, "{field:?}");
            assert!(field.hit_rate_if_ignored > 0.9, "{field:?}");
            assert!(field
                .summary
                .starts_with(&format!("{}: distinct on", field.field)));
        }
    }

    #[test]
    fn ignored_fields_are_no_longer_suspected() {
        let found = observe(
            &rules(&["requestId", "sentAt"], &[], &[]),
            200,
            |_| None,
            dashboard,
        );
        assert_eq!(found, []);
    }

    #[test]
    fn filters_that_repeat_are_not_suspected() {
        let found = observe(
            &KeyRules::default(),
            300,
            |_| None,
            |i| format!(r#"{{"org":"{}","range":"{}d"}}"#, i % 7, i % 4),
        );
        assert_eq!(found, []);
    }

    #[test]
    fn requests_that_never_repeat_are_not_reported() {
        // Every request differs in two genuine filters: ignoring one would not help.
        let found = observe(
            &KeyRules::default(),
            200,
            |_| None,
            |i| format!(r#"{{"a":{i},"b":{}}}"#, i * 31),
        );
        assert_eq!(found, []);
    }

    #[test]
    fn a_shuffled_multi_select_is_suspected_as_unordered() {
        let orders = [
            r#"["Vale","Itau","Ambev"]"#,
            r#"["Itau","Ambev","Vale"]"#,
            r#"["Ambev","Vale","Itau"]"#,
            r#"["Itau","Vale","Ambev"]"#,
        ];
        let found = observe(
            &KeyRules::default(),
            200,
            |_| None,
            |i| {
                format!(
                    r#"{{"orgs":{},"range":"{}d"}}"#,
                    orders[i % 4],
                    30 * (i % 2 + 1)
                )
            },
        );
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].field, "orgs");
        assert_eq!(found[0].setting, "key_unordered");
        assert!(found[0].hit_rate_if_ignored > found[0].hit_rate_now);
        let fixed = observe(
            &rules(&[], &["orgs"], &[]),
            200,
            |_| None,
            |i| {
                format!(
                    r#"{{"orgs":{},"range":"{}d"}}"#,
                    orders[i % 4],
                    30 * (i % 2 + 1)
                )
            },
        );
        assert_eq!(fixed, []);
    }

    #[test]
    fn a_cache_buster_query_parameter_is_suspected() {
        let found = observe(
            &KeyRules::default(),
            100,
            |i| {
                Some(format!(
                    "org={}&_={}",
                    i % 3,
                    1_700_000_000_000u64 + i as u64
                ))
            },
            |_| String::new(),
        );
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!((found[0].field.as_str(), found[0].location), ("_", "query"));
        assert_eq!(found[0].setting, "key_ignore_query");
        assert!(found[0].summary.starts_with("?_: "));
    }

    #[test]
    fn fields_inside_arrays_of_objects_are_named_with_brackets() {
        let found = observe(
            &KeyRules::default(),
            200,
            |_| None,
            |i| {
                format!(
                    r#"{{"items":[{{"id":1,"ts":{i}}},{{"id":2,"ts":{}}}],"org":"{}"}}"#,
                    i + 1,
                    i % 2
                )
            },
        );
        let names: Vec<&str> = found.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(names, ["items[].ts"], "{found:#?}");
    }

    #[test]
    fn too_few_samples_report_nothing() {
        assert_eq!(observe(&KeyRules::default(), 10, |_| None, dashboard), []);
    }

    #[test]
    fn new_rules_start_the_sample_afresh() {
        let detector = VolatileDetector::default();
        let route: Arc<str> = "r".into();
        for i in 0..100 {
            let body = dashboard(i);
            detector.observe(
                &route,
                KeyRules::none(),
                &Method::POST,
                "/q",
                None,
                body.as_bytes(),
            );
        }
        assert!(!detector.report("r").is_empty());
        let ignoring = rules(&["requestId"], &[], &[]);
        detector.observe(
            &route,
            &ignoring,
            &Method::POST,
            "/q",
            None,
            dashboard(100).as_bytes(),
        );
        assert_eq!(detector.report("r"), []);
        assert_eq!(detector.reports().len(), 0);
    }

    #[test]
    fn memory_stays_within_the_documented_bound() {
        // Many distinct fields: only MAX_FIELDS are kept.
        let detector = VolatileDetector::default();
        let route: Arc<str> = "r".into();
        for i in 0..300 {
            let body = format!(r#"{{"f{i}":1,"g{}":2}}"#, i % 5);
            detector.observe(
                &route,
                KeyRules::none(),
                &Method::POST,
                "/q",
                None,
                body.as_bytes(),
            );
        }
        let routes = detector.routes.load();
        let state = routes["r"].state.lock().unwrap();
        assert!(state.window.fields.len() <= MAX_FIELDS);
        let bytes: usize = state
            .window
            .fields
            .iter()
            .map(|f| Distinct::BYTES * (1 + f.sets.is_some() as usize) + f.name.len() + 160)
            .sum();
        assert!(bytes <= MAX_ROUTE_BYTES, "{bytes}");
    }

    #[test]
    fn a_detection_is_announced_once_per_route_and_again_after_new_rules() {
        let mut state = SamplerState::default();
        let sample = |i: usize| {
            let body = dashboard(i);
            Sample::of(&RequestIdentity::new(
                &Method::POST,
                "/q",
                None,
                body.as_bytes(),
            ))
        };
        let announced = (0..500)
            .filter(|&i| state.add([0; 16], &sample(i)).is_some())
            .count();
        assert_eq!(announced, 1);
        let announced = (0..500)
            .filter(|&i| state.add([1; 16], &sample(i)).is_some())
            .count();
        assert_eq!(announced, 1, "new rules, new announcement");
    }

    #[test]
    fn a_body_that_is_one_changing_value_is_not_reported() {
        assert_eq!(
            observe(&KeyRules::default(), 100, |_| None, |i| i.to_string()),
            []
        );
    }

    #[test]
    fn costly_samples_lengthen_the_stride_and_cheap_ones_shorten_it() {
        assert_eq!(next_stride(SAMPLE_EVERY, 100), SAMPLE_EVERY);
        let mut stride = SAMPLE_EVERY;
        for _ in 0..50 {
            stride = next_stride(stride, 200_000);
        }
        assert!((3_900..=4_000).contains(&stride), "{stride}");
        assert_eq!(next_stride(MAX_STRIDE, u64::MAX), MAX_STRIDE);
        for _ in 0..50 {
            stride = next_stride(stride, 0);
        }
        assert_eq!(stride, SAMPLE_EVERY);
    }

    #[test]
    fn a_route_with_large_bodies_is_sampled_more_rarely() {
        let detector = VolatileDetector::default();
        let route: Arc<str> = "r".into();
        let body = format!(
            r#"{{"rows":[{}]}}"#,
            (0..1000)
                .map(|i| format!(r#"{{"id":{i}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        for _ in 0..WARMUP + 10 {
            detector.observe(
                &route,
                KeyRules::none(),
                &Method::POST,
                "/q",
                None,
                body.as_bytes(),
            );
        }
        let stride = detector.routes.load()["r"].stride.load(Ordering::Relaxed);
        assert!(stride > SAMPLE_EVERY * 4, "{stride}");
    }

    #[test]
    fn counts_are_written_with_thousands_separators() {
        assert_eq!(thousands(2000), "2,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
