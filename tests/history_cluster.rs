//! The history's cluster view on a real redis-server: two replicas sharing
//! one Redis publish their 10 s intervals there, and each one's history
//! answer shows the merged series and both replicas' own lines, skipping
//! hostile values planted in Redis; Redis going down and coming back
//! leaves markers.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::redis::{spawn_replica, RedisServer};
use support::{Client, Origin, ProxyHandle, DASHBOARD_ROUTES};

async fn replica(origin: &Origin, redis_url: &str) -> ProxyHandle {
    let toml = format!("{DASHBOARD_ROUTES}\n[redis]\nurl = \"{redis_url}\"\ntimeout = \"250ms\"\n");
    spawn_replica(&origin.url(), &toml).await
}

async fn history(proxy: &ProxyHandle) -> Value {
    let reply = Client::new()
        .get(&proxy.url("/api/cache/history?window=10m"))
        .await;
    assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
    reply.json()
}

fn total(points: &Value, field: &str) -> u64 {
    points
        .as_array()
        .map(|p| p.iter().map(|p| p[field].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

async fn post(proxy: &ProxyHandle, org: &str, expected: &str) {
    let reply = Client::new()
        .post(&proxy.url("/api/metrics"), &format!(r#"{{"org":"{org}"}}"#))
        .await;
    assert_eq!(reply.x_cache(), expected, "{org}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_redis_see_the_cluster_and_each_other() {
    let mut redis = RedisServer::start();
    let origin = Origin::start().await;
    let a = replica(&origin, &redis.url()).await;
    let b = replica(&origin, &redis.url()).await;
    // A fetches three answers; B gets them from Redis, then once more each
    // and one more time the first.
    for org in ["Vale", "Acme", "Globex"] {
        post(&a, org, "MISS").await;
    }
    for org in ["Vale", "Acme", "Globex", "Vale", "Acme", "Globex", "Vale"] {
        post(&b, org, "HIT").await;
    }
    assert_eq!(origin.count("/api/metrics"), 3);
    // Hostile fields beside the replicas' own, in every interval around now:
    // not JSON, and a record far over the size read back. Neither may show.
    let mut conn = redis.connection().await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let current = now_ms / 10_000 * 10_000;
    let huge = format!(r#"{{"t":0,"pad":"{}"}}"#, "x".repeat(100 << 10));
    for k in 0..12u64 {
        let key = format!(
            "dashcache:history:{{dashcache}}:{}",
            current + 30_000 - k * 10_000
        );
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg("evil:1")
            .arg("not json")
            .arg("huge:1")
            .arg(&huge)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    // The sampler publishes on the wall clock's 10 s boundaries.
    let mut json = Value::Null;
    for _ in 0..250 {
        json = history(&a).await;
        let cluster = &json["cluster"];
        let seen = total(&cluster["points"], "hits") + total(&cluster["points"], "misses");
        if cluster["replicas"].as_array().map(Vec::len) == Some(2) && seen == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cluster = &json["cluster"];
    assert!(cluster.get("error").is_none(), "{cluster}");
    assert_eq!(
        cluster["replicas"].as_array().unwrap().len(),
        2,
        "{cluster}"
    );
    assert_eq!(total(&cluster["points"], "hits"), 7, "{cluster}");
    assert_eq!(total(&cluster["points"], "misses"), 3, "{cluster}");
    let me = cluster["replica"].as_str().unwrap().to_owned();
    assert!(me.ends_with(&format!(":{}", a.addr.port())), "{me}");
    let line = |port: u16| {
        let replica = cluster["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| {
                r["replica"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!(":{port}"))
            })
            .unwrap_or_else(|| panic!("replica on port {port} in {cluster}"));
        (
            total(&replica["points"], "hits"),
            total(&replica["points"], "misses"),
        )
    };
    assert_eq!(line(a.addr.port()), (0, 3));
    assert_eq!(line(b.addr.port()), (7, 0));
    // B's answer shows the same cluster.
    let theirs = history(&b).await;
    assert_eq!(total(&theirs["cluster"]["points"], "hits"), 7);

    // Redis down, then back: markers on both sides of the outage.
    redis.kill();
    let kinds = |json: &Value| -> Vec<String> {
        json["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = kinds(&history(&a).await);
        if seen.contains(&"redis_down".to_owned()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, ["redis_down"], "no marker before the outage");
    // The page still answers, with this replica's own figures.
    let during = history(&a).await;
    assert_eq!(total(&during["points"], "misses"), 3);
    redis.restart();
    for _ in 0..150 {
        seen = kinds(&history(&a).await);
        if seen.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, ["redis_down", "redis_up"]);
}
