//! `GET /api/cache/history`: the per-interval series read back against
//! the requests the test actually sent, the event markers that admin calls
//! and an unreachable backend leave, and the cluster view of two replicas
//! that publish to one source.

mod support;

use std::sync::Arc;
use std::time::Duration;

use dashcache::metrics::history::MemoryCluster;
use http::StatusCode;
use serde_json::Value;
use support::{
    closed_port_url, spawn_proxy, Behaviour, Client, Origin, ProxyHandle, DASHBOARD_ROUTES,
};

/// The origin's pretend warehouse time.
const QUERY_TIME: Duration = Duration::from_millis(30);

async fn history(proxy: &ProxyHandle, window: &str) -> Value {
    let reply = Client::new()
        .get(&proxy.url(&format!("/api/cache/history?window={window}")))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("cache-control"), "no-store");
    let json = reply.json();
    assert_eq!(json["status"], "ok");
    json
}

/// The sum of one figure over a series' points.
fn total(points: &Value, field: &str) -> u64 {
    points
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p[field].as_u64().unwrap_or(0))
        .sum()
}

/// `misses` distinct filter sets (one miss each), then `hits` hits on them.
async fn traffic(proxy: &ProxyHandle, misses: usize, hits: usize) {
    let client = Client::new();
    let url = proxy.url("/api/metrics");
    for i in 0..misses {
        let reply = client.post(&url, &format!(r#"{{"org":"org-{i}"}}"#)).await;
        assert_eq!(reply.x_cache(), "MISS");
    }
    for i in 0..hits {
        let reply = client
            .post(&url, &format!(r#"{{"org":"org-{}"}}"#, i % misses))
            .await;
        assert_eq!(reply.x_cache(), "HIT");
    }
}

#[tokio::test]
async fn the_series_add_up_to_the_traffic_sent() {
    let origin = Origin::start().await;
    origin.on("/api/metrics", Behaviour::new().delay(QUERY_TIME));
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    traffic(&proxy, 3, 7).await;
    let reply = Client::new().get(&proxy.url("/health")).await;
    assert_eq!(reply.x_cache(), "BYPASS");

    for window in ["10m", "1h"] {
        let json = history(&proxy, window).await;
        assert_eq!(json["window"], window);
        let points = &json["points"];
        assert_eq!(total(points, "hits"), 7, "{json}");
        assert_eq!(total(points, "misses"), 3, "{json}");
        assert_eq!(total(points, "bypass"), 1, "{json}");
        assert_eq!(total(points, "backend_queries"), 4, "{json}");
        let last = points.as_array().unwrap().last().unwrap();
        assert_eq!(last["partial"], true);
        // Each miss waited QUERY_TIME on the backend; the sketch reads
        // within its ~6 % resolution.
        let p50 = last["backend_p50_ms"].as_f64().unwrap();
        assert!(p50 >= QUERY_TIME.as_millis() as f64 * 0.9, "{p50}");
        assert!(last["hit_p99_ms"].as_f64().unwrap() < p50, "{last}");
        let saved: f64 = points
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["saved_seconds"].as_f64().unwrap())
            .sum();
        assert!(saved >= 7.0 * QUERY_TIME.as_secs_f64() * 0.99, "{saved}");
        let route = &json["routes"]["get_metrics"];
        let sum = |s: &Value| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .sum::<u64>()
        };
        assert_eq!((sum(&route["hits"]), sum(&route["misses"])), (7, 3));
        assert!(json.get("cluster").is_none(), "no cluster without a source");
    }
    // The same totals as stats.
    let stats = proxy.stats().await;
    assert_eq!(
        (stats["hits"].as_u64(), stats["misses"].as_u64()),
        (Some(7), Some(3))
    );
}

#[tokio::test]
async fn a_bad_window_or_method_is_refused_with_json() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let reply = Client::new()
        .get(&proxy.url("/api/cache/history?window=1d"))
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.error_message().contains("'1d'"), "{}", reply.text());
    let reply = Client::new()
        .post(&proxy.url("/api/cache/history"), "")
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow"), "GET, HEAD");
    // No window: the hour.
    let reply = Client::new().get(&proxy.url("/api/cache/history")).await;
    assert_eq!(reply.json()["window"], "1h");
    assert_eq!(reply.json()["step_seconds"], 60);
}

#[tokio::test]
async fn admin_calls_and_an_unreachable_backend_leave_markers() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    traffic(&proxy, 2, 0).await;
    let client = Client::new();
    let reply = client
        .post(&proxy.url("/api/cache/invalidate?pattern=org-1"), "")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = client.post(&proxy.url("/api/cache/clear"), "").await;
    assert_eq!(reply.status, StatusCode::OK);

    let down = spawn_proxy(&closed_port_url().await, DASHBOARD_ROUTES).await;
    let reply = client.post(&down.url("/api/metrics"), "{}").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);

    let events = history(&proxy, "10m").await["events"].clone();
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["invalidate", "clear"], "{events}");
    assert_eq!(events[0]["detail"], "pattern 'org-1': 1 keys deleted");
    assert_eq!(events[1]["detail"], "1 keys deleted");
    assert!(events[0]["t"].as_u64().unwrap() <= events[1]["t"].as_u64().unwrap());

    let events = history(&down, "10m").await["events"].clone();
    assert_eq!(events[0]["kind"], "backend_down", "{events}");
    assert!(events.as_array().unwrap().len() == 1, "{events}");
}

/// Waits (real time: the sampler closes intervals on the wall clock's
/// 10 s boundaries) until `proxy`'s cluster view shows `replicas` replicas
/// whose closed intervals hold `requests` requests in all.
async fn cluster_view(proxy: &ProxyHandle, replicas: usize, requests: u64) -> Value {
    for _ in 0..250 {
        let json = history(proxy, "10m").await;
        let cluster = &json["cluster"];
        let seen = total(&cluster["points"], "hits") + total(&cluster["points"], "misses");
        if cluster["replicas"].as_array().map(Vec::len) == Some(replicas) && seen == requests {
            return json;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the cluster view never showed {replicas} replicas with {requests} requests");
}

#[tokio::test]
async fn two_replicas_publish_and_the_cluster_view_merges_them() {
    let origin = Origin::start().await;
    origin.on("/api/metrics", Behaviour::new().delay(QUERY_TIME));
    let a = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let b = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let cluster = Arc::new(MemoryCluster::default());
    assert!(a
        .proxy
        .metrics
        .history()
        .join_cluster(cluster.clone(), "a".into()));
    assert!(b
        .proxy
        .metrics
        .history()
        .join_cluster(cluster.clone(), "b".into()));
    // A only misses, B mostly hits (its own store: no shared tier here).
    traffic(&a, 4, 0).await;
    traffic(&b, 1, 9).await;

    let json = cluster_view(&a, 2, 14).await;
    let cluster = &json["cluster"];
    assert_eq!(cluster["replica"], "a");
    assert_eq!(total(&cluster["points"], "hits"), 9);
    assert_eq!(total(&cluster["points"], "misses"), 5);
    let line = |name: &str| {
        let replica = cluster["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["replica"] == name)
            .unwrap_or_else(|| panic!("replica {name} in {cluster}"));
        (
            total(&replica["points"], "hits"),
            total(&replica["points"], "misses"),
        )
    };
    assert_eq!(line("a"), (0, 4));
    assert_eq!(line("b"), (9, 1));
}
