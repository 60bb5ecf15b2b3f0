//! The Prometheus exposition behind `/api/cache/metrics`: at scrape time a
//! [`Collector`] over the counters of [`Metrics`] (and the figures the store
//! reports, [`StoreFigures`]) writes the OpenMetrics text, so Prometheus and
//! the stats answer read the same counters.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{Metrics, RouteMetrics, Snapshot};
use crate::respond::CacheStatus;

/// `Content-Type` of [`Metrics::prometheus`]'s answer.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Metrics {
    /// The OpenMetrics text for one scrape; `store` carries the figures the
    /// store keeps itself.
    pub fn prometheus(&self, store: StoreFigures) -> String {
        let mut routes: Vec<_> = self
            .routes
            .read()
            .expect("metrics lock")
            .iter()
            .map(|(name, route)| (name.clone(), route.clone()))
            .collect();
        // By name, like the counters from the snapshot: stable scrapes.
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut registry = Registry::with_prefix("dashcache");
        registry.register_collector(Box::new(Scrape {
            snapshot: self.snapshot(),
            routes,
            upstream_seconds: self.upstream_seconds.clone(),
            store,
        }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// What the store reports about itself at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreFigures {
    /// Fresh entries.
    pub entries: u64,
    /// Expired entries kept for their stale windows.
    pub stale_entries: u64,
    pub bytes: u64,
    pub max_entries: u64,
    pub max_bytes: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub inflight: u64,
}

/// One scrape's view: copied counters plus the live histograms.
#[derive(Debug)]
struct Scrape {
    snapshot: Snapshot,
    routes: Vec<(Arc<str>, Arc<RouteMetrics>)>,
    upstream_seconds: Histogram,
    store: StoreFigures,
}

impl Scrape {
    fn counter(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: u64,
    ) -> Result<(), std::fmt::Error> {
        let metric = ConstCounter::new(value);
        metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
    }

    fn gauge(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: i64,
    ) -> Result<(), std::fmt::Error> {
        let metric = ConstGauge::new(value);
        metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = &self.snapshot;
        let statuses = [
            CacheStatus::Hit,
            CacheStatus::Miss,
            CacheStatus::Bypass,
            CacheStatus::Stale,
        ];

        let mut family = encoder.encode_descriptor(
            "requests",
            "Proxied requests by route and cache status (HIT, MISS, BYPASS, STALE).",
            None,
            MetricType::Counter,
        )?;
        for (name, route) in &snap.routes {
            for status in statuses {
                let value = match status {
                    CacheStatus::Hit => route.hits,
                    CacheStatus::Miss => route.misses,
                    CacheStatus::Stale => route.stale,
                    _ => route.bypassed,
                };
                let labels = [("route", &**name), ("cache", status.as_str())];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "response_duration_seconds",
            "Time to answer a proxied request, by route and cache status.",
            None,
            MetricType::Histogram,
        )?;
        for (name, route) in &self.routes {
            for (status, histogram) in [
                (CacheStatus::Hit, &route.hit_seconds),
                (CacheStatus::Miss, &route.miss_seconds),
                (CacheStatus::Bypass, &route.bypass_seconds),
                (CacheStatus::Stale, &route.stale_seconds),
            ] {
                let labels = [("route", &**name), ("cache", status.as_str())];
                histogram.encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "upstream_seconds_saved",
            "Upstream time that hits avoided: per hit, the time the entry's original upstream request took.",
            None,
            MetricType::Counter,
        )?;
        for (name, route) in &snap.routes {
            let labels = [("route", &**name)];
            ConstCounter::new(route.upstream_seconds_saved())
                .encode(family.encode_family(&labels)?)?;
        }

        let e = &mut encoder;
        Scrape::counter(
            e,
            "upstream_requests",
            "Requests sent to the upstream (the backend query count).",
            snap.upstream_requests,
        )?;
        Scrape::counter(
            e,
            "upstream_errors",
            "Upstream requests that failed (unreachable, timed out, broken body).",
            snap.upstream_errors,
        )?;
        self.upstream_seconds.encode(e.encode_descriptor(
            "upstream_duration_seconds",
            "Time to the upstream's answer head, or to its failure.",
            None,
            MetricType::Histogram,
        )?)?;
        Scrape::counter(
            e,
            "coalesced_waiters",
            "Misses that waited for another request's upstream fill instead of asking the upstream.",
            snap.coalesced,
        )?;
        Scrape::counter(e, "stale_answers", "Answers served stale.", snap.stale)?;
        Scrape::counter(e, "stored", "Upstream answers stored.", snap.stored)?;
        Scrape::counter(
            e,
            "not_stored",
            "Upstream answers not stored (policy, size, or a clear during the fill).",
            snap.not_stored,
        )?;
        Scrape::counter(
            e,
            "client_body_timeouts",
            "Request bodies cut for arriving too slowly (body_read_timeout, body_min_rate).",
            snap.body_timeouts,
        )?;
        Scrape::counter(
            e,
            "client_send_timeouts",
            "Connections closed because the client left its answer unread (send_timeout).",
            snap.send_timeouts,
        )?;
        Scrape::counter(
            e,
            "evictions",
            "Entries evicted to stay within maxsize / max_bytes.",
            self.store.evictions,
        )?;
        Scrape::counter(
            e,
            "expirations",
            "Entries dropped because their TTL ran out.",
            self.store.expirations,
        )?;
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Scrape::gauge(
            e,
            "entries",
            "Fresh entries in the store.",
            gauge(self.store.entries),
        )?;
        Scrape::gauge(
            e,
            "stale_entries",
            "Expired entries kept for stale-if-error / stale-while-revalidate.",
            gauge(self.store.stale_entries),
        )?;
        Scrape::gauge(
            e,
            "bytes",
            "Bytes held by stored entries.",
            gauge(self.store.bytes),
        )?;
        Scrape::gauge(
            e,
            "max_entries",
            "Configured maxsize.",
            gauge(self.store.max_entries),
        )?;
        Scrape::gauge(
            e,
            "max_bytes",
            "Configured max_bytes.",
            gauge(self.store.max_bytes),
        )?;
        Scrape::gauge(
            e,
            "inflight_fills",
            "Upstream fills running now.",
            gauge(self.store.inflight),
        )?;
        Scrape::gauge(
            e,
            "uptime_seconds",
            "Seconds since the proxy started.",
            gauge(snap.uptime.as_secs()),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Metrics, StoreFigures};
    use crate::respond::CacheStatus;

    fn route(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn prometheus_text_carries_the_counters() {
        let metrics = Metrics::default();
        let r = route("get_metrics");
        metrics.record(
            &r,
            CacheStatus::Hit,
            Duration::from_micros(80),
            Some(Duration::from_secs(2)),
        );
        metrics.record(&r, CacheStatus::Miss, Duration::from_secs(2), None);
        let text = metrics.prometheus(StoreFigures {
            entries: 1,
            ..StoreFigures::default()
        });
        for line in [
            r#"dashcache_requests_total{route="get_metrics",cache="HIT"} 1"#,
            r#"dashcache_requests_total{route="get_metrics",cache="MISS"} 1"#,
            r#"dashcache_upstream_seconds_saved_total{route="get_metrics"} 2.0"#,
            r#"dashcache_response_duration_seconds_count{route="get_metrics",cache="HIT"} 1"#,
            "dashcache_entries 1",
            "dashcache_stale_answers_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
