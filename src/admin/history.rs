//! `GET /api/cache/history?window=1h|10m`: the last hour per minute (or the
//! last ten minutes per 10 s) of what the cache served and saved, per route
//! too, with event markers; with a cluster source joined, the cluster's
//! merged series and each replica's own. Readable like `stats`.
//!
//! Also the sampler task that closes an interval on every 10 s boundary of
//! the wall clock, reads the store's figures off the request workers, and
//! publishes the closed interval to the cluster source.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use serde::Serialize;
use tracing::{debug, warn};

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::metrics::history::{
    merge_replicas, points, Gauges, HistoryView, IntervalRecord, Point, ReplicaRecords, Window,
};
use crate::proxy::Proxy;
use crate::respond;

/// How long the answer waits for the cluster's figures before showing
/// this replica's alone; also the budget of one publish.
const CLUSTER_BUDGET: Duration = Duration::from_millis(500);

#[derive(Serialize)]
struct HistoryAnswer {
    status: &'static str,
    #[serde(flatten)]
    local: HistoryView,
    /// Present once this replica publishes to a cluster source.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterView>,
}

#[derive(Serialize)]
struct ClusterView {
    /// This replica's name among them.
    replica: String,
    /// Set when the cluster's figures could not be read; only `points`
    /// above (this replica) are shown then.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    /// Every replica merged, closed intervals only.
    points: Vec<Point>,
    replicas: Vec<ReplicaView>,
}

#[derive(Serialize)]
struct ReplicaView {
    replica: String,
    points: Vec<Point>,
}

/// The `window` parameter: `1h` (the default) or `10m`.
fn window(query: Option<&str>) -> Result<Window, ProxyError> {
    let asked = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(name, _)| name == "window")
        .map(|(_, value)| value);
    match asked {
        None => Ok(Window::Hour),
        Some(text) => Window::parse(&text).ok_or_else(|| {
            ProxyError::AdminParameter(format!(
                "query parameter 'window' must be '1h' or '10m', not '{}'",
                text.chars().take(32).collect::<String>()
            ))
        }),
    }
}

pub(super) async fn history(
    proxy: &Proxy,
    query: Option<&str>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let window = window(query)?;
    let local = proxy.metrics.history_view(window);
    let cluster = match proxy.metrics.history().cluster() {
        None => None,
        Some((source, replica)) => {
            let collected = tokio::time::timeout(CLUSTER_BUDGET, source.collect(local.start)).await;
            let replicas = match collected {
                Ok(Ok(replicas)) => Ok(replicas),
                Ok(Err(err)) => {
                    warn!(replica, error = %crate::tls::error_chain(&err), "history shown without the cluster's figures");
                    Err("cluster figures unavailable")
                }
                Err(_) => {
                    warn!(
                        replica,
                        budget_ms = CLUSTER_BUDGET.as_millis() as u64,
                        "history shown without the cluster's figures: no answer in time"
                    );
                    Err("cluster figures unavailable: no answer in time")
                }
            };
            Some(cluster_view(window, local.now, replica, replicas))
        }
    };
    Ok(respond::json(
        StatusCode::OK,
        &HistoryAnswer {
            status: "ok",
            local,
            cluster,
        },
    ))
}

fn cluster_view(
    window: Window,
    now: u64,
    replica: &str,
    collected: Result<Vec<ReplicaRecords>, &'static str>,
) -> ClusterView {
    let as_points = |records: &[IntervalRecord]| -> Vec<Point> {
        points(window, now, records)
            .iter()
            .map(|r| r.point(false))
            .collect()
    };
    match collected {
        Ok(replicas) => ClusterView {
            replica: replica.to_owned(),
            error: None,
            points: as_points(&merge_replicas(&replicas)),
            replicas: replicas
                .iter()
                .map(|r| ReplicaView {
                    replica: r.replica.clone(),
                    points: as_points(&r.records),
                })
                .collect(),
        },
        Err(error) => ClusterView {
            replica: replica.to_owned(),
            error: Some(error),
            points: Vec::new(),
            replicas: Vec::new(),
        },
    }
}

/// With the shared tier configured: publishes this replica's intervals to
/// Redis as `host:port` and shows the cluster in the history; records
/// `redis_down` / `redis_up` markers as the tier's state changes (read
/// every 250 ms). Returns the watcher task, to abort at shutdown.
pub fn join_shared_tier(proxy: &Arc<Proxy>, port: u16) -> Option<tokio::task::JoinHandle<()>> {
    let tier = proxy.store.shared()?.clone();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".to_owned());
    let replica = format!("{host}:{port}");
    let source = Arc::new(super::history_redis::RedisHistory::new(tier.clone()));
    proxy.metrics.history().join_cluster(source, replica);
    let proxy = proxy.clone();
    Some(tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut seen_up = false;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let up = tier.is_up();
            seen_up |= up;
            // The first connection takes a moment: not an outage.
            if !seen_up && started.elapsed() < Duration::from_secs(5) {
                continue;
            }
            let events = &proxy.metrics.history().events;
            events.redis_reachable(up, || {
                if up {
                    "redis answering again".to_owned()
                } else {
                    format!("redis unreachable ({})", tier.config().redacted_urls())
                }
            });
        }
    }))
}

/// Closes one interval on every 10 s boundary until the task is aborted.
pub async fn sample(proxy: Arc<Proxy>) {
    loop {
        let history = proxy.metrics.history();
        let end = history.next_boundary();
        tokio::time::sleep(history.clock().until(end)).await;
        // The store's tally: O(1), no walk.
        let census = proxy.store.census(Instant::now());
        let gauges = Gauges {
            entries: census.fresh as u64,
            bytes: census.bytes,
        };
        let record = proxy.metrics.close_interval(end, gauges);
        debug!(
            t = record.t,
            hits = record.hits,
            misses = record.misses,
            "history interval closed"
        );
        if let Some((source, replica)) = proxy.metrics.history().cluster() {
            match tokio::time::timeout(CLUSTER_BUDGET, source.publish(replica, &record)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    debug!(replica, error = %crate::tls::error_chain(&err), "history interval not published")
                }
                Err(_) => debug!(replica, "history interval not published in time"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_defaults_to_an_hour_and_refuses_others() {
        assert_eq!(window(None).unwrap(), Window::Hour);
        assert_eq!(window(Some("window=10m")).unwrap(), Window::TenMinutes);
        let err = window(Some("window=2d")).unwrap_err();
        assert!(err.message().contains("'2d'"), "{}", err.message());
    }
}
