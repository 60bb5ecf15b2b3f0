//! The shared tier on a real `redis-server` (started by the test on a free
//! port, stopped by PID): two replicas share entries, invalidations and
//! fills; Redis dying, coming back, and replicas restarting.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::redis::{spawn_replica, DashcacheProcess, RedisCluster, RedisServer};
use support::{eventually, Behaviour, Client, Gate, Origin, ProxyHandle};

const VALE: &str = r#"{"org":"Vale"}"#;
const ACME: &str = r#"{"org":"Acme"}"#;

fn toml(redis_url: &str, extra: &str) -> String {
    format!(
        "{}\n[redis]\nurl = \"{redis_url}\"\ntimeout = \"250ms\"\nlock_lease = \"1s\"\n{extra}\n",
        support::DASHBOARD_ROUTES
    )
}

/// A replica in this process sharing `redis_url`.
async fn replica(origin: &Origin, redis_url: &str, extra: &str) -> ProxyHandle {
    spawn_replica(&origin.url(), &toml(redis_url, extra)).await
}

/// A Redis, an origin, and two replicas `a` and `b` sharing that Redis.
struct TwoReplicas {
    redis: RedisServer,
    origin: Origin,
    a: ProxyHandle,
    b: ProxyHandle,
    client: Client,
}

impl TwoReplicas {
    async fn start() -> Self {
        let redis = RedisServer::start();
        let origin = Origin::start().await;
        let a = replica(&origin, &redis.url(), "").await;
        let b = replica(&origin, &redis.url(), "").await;
        Self {
            redis,
            origin,
            a,
            b,
            client: Client::new(),
        }
    }
}

async fn metrics(client: &Client, replica: &ProxyHandle, body: &str) -> support::Reply {
    client.post(&replica.url("/api/metrics"), body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_fetched_through_one_replica_is_a_hit_on_the_other() {
    let TwoReplicas {
        redis: _redis,
        origin,
        a,
        b,
        client,
    } = TwoReplicas::start().await;

    let first = metrics(&client, &a, VALE).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.x_cache(), "MISS");
    let second = metrics(&client, &b, VALE).await;
    assert_eq!(second.x_cache(), "HIT", "{:?}", second.headers);
    assert_eq!(second.body, first.body, "the same bytes on both replicas");
    assert_eq!(origin.count("/api/metrics"), 1, "one backend request");
    let stats = b.stats().await;
    assert_eq!(stats["redis"]["state"], "up");
    assert_eq!(stats["redis"]["l2_hits"], 1);
    let scrape = client.get(&b.url("/api/cache/metrics")).await.text();
    assert!(scrape.contains("dashcache_redis_up 1"), "{scrape}");
    assert!(scrape.ends_with("# EOF\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_and_clear_on_one_replica_reach_the_others_memory() {
    let TwoReplicas {
        redis,
        origin,
        a,
        b,
        client,
    } = TwoReplicas::start().await;
    for body in [VALE, ACME] {
        metrics(&client, &a, body).await;
        assert_eq!(metrics(&client, &a, body).await.x_cache(), "HIT");
    }
    assert_eq!(a.proxy.store.len(), 2, "both in A's memory");

    let answer = client
        .post(&b.url("/api/cache/invalidate?pattern=Vale"), "")
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["keys_deleted"], 1, "{}", answer.text());
    eventually("A's memory to drop the Vale entry", || {
        a.proxy.store.len() == 1
    })
    .await;
    assert_eq!(metrics(&client, &a, VALE).await.x_cache(), "MISS");
    assert_eq!(metrics(&client, &a, ACME).await.x_cache(), "HIT");
    assert_eq!(origin.count("/api/metrics"), 3);

    let cleared = client.post(&b.url("/api/cache/clear"), "").await;
    assert_eq!(cleared.status, StatusCode::OK);
    assert_eq!(cleared.json()["message"], "Cache cleared successfully");
    eventually("A's memory to empty", || a.proxy.store.is_empty()).await;
    assert_eq!(metrics(&client, &a, ACME).await.x_cache(), "MISS");
    assert_eq!(origin.count("/api/metrics"), 4);
    let mut conn = redis.connection().await;
    let index: u64 = redis::cmd("HLEN")
        .arg("dashcache:index:{dashcache}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(index, 1, "only the entry stored after the clear is indexed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cold_requests_over_two_replicas_make_one_backend_request() {
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    let a = replica(&origin, &redis.url(), "").await;
    let b = replica(&origin, &redis.url(), "").await;
    let client = Client::new();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let url = if i % 2 == 0 {
                a.url("/api/metrics")
            } else {
                b.url("/api/metrics")
            };
            let client = client.clone();
            tokio::spawn(async move { client.post(&url, VALE).await })
        })
        .collect();
    origin.wait_for_total(1).await;
    let (ta, tb) = (
        a.proxy.store.shared().unwrap().clone(),
        b.proxy.store.shared().unwrap().clone(),
    );
    eventually("both replicas to coalesce every request", || {
        let waits = ta
            .counters
            .lock_waits
            .load(std::sync::atomic::Ordering::Relaxed)
            + tb.counters
                .lock_waits
                .load(std::sync::atomic::Ordering::Relaxed);
        waits >= 1 && a.proxy.flights.waiting() + b.proxy.flights.waiting() == 198
    })
    .await;
    gate.open();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(origin.total(), 1, "one backend request for 200 callers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_holder_killed_mid_fill_is_taken_over_by_the_other_replica() {
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    let mut a = DashcacheProcess::start(&origin.url(), &toml(&redis.url(), ""));
    let b = replica(&origin, &redis.url(), "").await;
    let client = Client::new();
    let url_a = a.url("/api/metrics");
    let doomed = {
        let client = client.clone();
        tokio::spawn(async move { client.try_send(http::Method::POST, &url_a, &[], VALE).await })
    };
    origin.wait_for_total(1).await;
    let url_b = b.url("/api/metrics");
    let survivor = {
        let client = client.clone();
        tokio::spawn(async move { client.post(&url_b, VALE).await })
    };
    let tier = b.proxy.store.shared().unwrap().clone();
    eventually("B to wait for A's lock", || {
        tier.counters
            .lock_waits
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    })
    .await;
    a.kill();
    gate.open();
    let reply = survivor.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.x_cache(), "MISS");
    assert!(doomed.await.unwrap().is_err(), "A died with its client");
    assert_eq!(origin.total(), 2, "at most one extra backend request");
    assert_eq!(metrics(&client, &b, VALE).await.x_cache(), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_mid_traffic_causes_no_error_and_sharing_resumes_when_it_returns() {
    let TwoReplicas {
        mut redis,
        origin,
        a,
        b,
        client,
    } = TwoReplicas::start().await;
    metrics(&client, &a, VALE).await;
    let mut slowest = Duration::ZERO;
    for i in 0..120 {
        if i == 40 {
            redis.kill();
        }
        let replica = if i % 2 == 0 { &a } else { &b };
        // Hits from memory, and new keys that must ask Redis first.
        let body = if i % 3 == 0 {
            VALE.to_owned()
        } else {
            format!(r#"{{"org":"org-{i}"}}"#)
        };
        let started = Instant::now();
        let reply = metrics(&client, replica, &body).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {i}: {}",
            reply.text()
        );
    }
    // The budget is 250 ms and the origin answers at once: nothing hangs.
    assert!(slowest < Duration::from_secs(2), "slowest {slowest:?}");
    let stats = a.stats().await;
    assert_eq!(stats["redis"]["state"], "down");
    // An admin call that cannot reach the shared tier says so.
    let cleared = client.post(&a.url("/api/cache/clear"), "").await;
    assert_eq!(cleared.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(cleared.error_message().contains("shared cache tier"));

    redis.restart();
    let (ta, tb) = (
        a.proxy.store.shared().unwrap().clone(),
        b.proxy.store.shared().unwrap().clone(),
    );
    eventually("both replicas to reconnect and resubscribe", || {
        ta.is_up() && tb.is_up() && ta.is_listening() && tb.is_listening()
    })
    .await;
    let before = origin.total();
    let body = r#"{"org":"after-restart"}"#;
    assert_eq!(metrics(&client, &a, body).await.x_cache(), "MISS");
    assert_eq!(metrics(&client, &b, body).await.x_cache(), "HIT");
    assert_eq!(origin.total(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_survive_a_restart_of_every_replica() {
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let client = Client::new();
    {
        let mut a = replica(&origin, &redis.url(), "").await;
        let mut b = replica(&origin, &redis.url(), "").await;
        metrics(&client, &a, VALE).await;
        metrics(&client, &b, ACME).await;
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
    let a = replica(&origin, &redis.url(), "").await;
    let b = replica(&origin, &redis.url(), "").await;
    assert_eq!(metrics(&client, &a, ACME).await.x_cache(), "HIT");
    let vale = metrics(&client, &b, VALE).await;
    assert_eq!(vale.x_cache(), "HIT");
    assert!(
        vale.cache_status_ttl().is_some_and(|ttl| ttl > 14_000),
        "TTL carried over"
    );
    assert_eq!(origin.total(), 2, "no backend request after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_in_redis_are_misses() {
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let a = replica(&origin, &redis.url(), "").await;
    let client = Client::new();
    metrics(&client, &a, VALE).await;
    metrics(&client, &a, ACME).await;
    let mut conn = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("dashcache:entry:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2);
    let _: () = redis::cmd("SET")
        .arg(&keys[0])
        .arg(b"\x01\xff\xff\xff\xff\xff\xff\x0fgarbage".as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&keys[1])
        .arg(vec![1u8; 40 << 20])
        .query_async(&mut conn)
        .await
        .unwrap();
    // A fresh replica has nothing in memory: both lookups go to Redis.
    let b = replica(&origin, &redis.url(), "").await;
    for body in [VALE, ACME] {
        let reply = metrics(&client, &b, body).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.x_cache(), "MISS");
    }
    assert_eq!(origin.total(), 4);
    // Each miss looks Redis up twice (before and after joining the flight).
    let rejected = b.stats().await["redis"]["l2_rejected"].as_u64().unwrap();
    assert!(rejected >= 2, "{rejected} rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_in_the_url_is_used() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret-pass"]);
    let origin = Origin::start().await;
    let url = format!("redis://:s3cret-pass@127.0.0.1:{}", redis.port);
    let a = replica(&origin, &url, "").await;
    let b = replica(&origin, &url, "").await;
    let client = Client::new();
    metrics(&client, &a, VALE).await;
    assert_eq!(metrics(&client, &b, VALE).await.x_cache(), "HIT");
    let stats = a.stats().await;
    let shown = stats["redis"]["url"].as_str().unwrap();
    assert!(!shown.contains("s3cret"), "password redacted: {shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_shares_entries_and_invalidations_without_crossslot_errors() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("dashcache=debug,redis=debug")
        .try_init();
    let cluster = RedisCluster::start();
    let origin = Origin::start().await;
    let a = replica(&origin, &cluster.urls(), "cluster = true").await;
    let b = replica(&origin, &cluster.urls(), "cluster = true").await;
    let client = Client::new();
    let bodies: Vec<String> = (0..12).map(|i| format!(r#"{{"org":"c{i}"}}"#)).collect();
    for body in &bodies {
        assert_eq!(metrics(&client, &a, body).await.x_cache(), "MISS");
    }
    for body in &bodies {
        assert_eq!(metrics(&client, &b, body).await.x_cache(), "HIT");
    }
    let answer = client
        .post(&b.url("/api/cache/invalidate?pattern=c1"), "")
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["keys_deleted"], 3, "c1, c10, c11");
    eventually("A's memory to drop them", || a.proxy.store.len() == 9).await;
    assert_eq!(metrics(&client, &a, &bodies[1]).await.x_cache(), "MISS");
    let errors = b.stats().await["redis"]["l2_errors"].as_u64().unwrap();
    assert_eq!(errors, 0, "no CROSSSLOT or other error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentialed_entries_are_shared_under_a_secret_kept_in_redis() {
    let TwoReplicas {
        redis,
        origin,
        a,
        b,
        client,
    } = TwoReplicas::start().await;
    let mut conn = redis.connection().await;
    let secret: Option<String> = redis::cmd("GET")
        .arg("dashcache:secret:{dashcache}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        secret.is_some_and(|s| s.len() >= 32),
        "generated once, kept in redis"
    );
    let alice = [
        ("authorization", "Bearer alice"),
        ("content-type", "application/json"),
    ];
    let bob = [
        ("authorization", "Bearer bob"),
        ("content-type", "application/json"),
    ];
    let url_a = a.url("/api/metrics");
    let url_b = b.url("/api/metrics");
    let post = http::Method::POST;
    let miss = client.send(post.clone(), &url_a, &alice, VALE).await;
    assert_eq!(miss.x_cache(), "MISS");
    let hit = client.send(post.clone(), &url_b, &alice, VALE).await;
    assert_eq!(hit.x_cache(), "HIT", "same credential, other replica");
    let other = client.send(post, &url_b, &bob, VALE).await;
    assert_eq!(other.x_cache(), "MISS", "never another user's entry");
    assert_eq!(origin.total(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_invalidation_heals_within_the_l1_lifetime() {
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let a = replica(&origin, &redis.url(), "l1_ttl = \"300ms\"").await;
    let client = Client::new();
    metrics(&client, &a, VALE).await;
    assert_eq!(metrics(&client, &a, VALE).await.x_cache(), "HIT");
    // Removed behind the replicas' backs: no message on the events channel.
    let mut conn = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("dashcache:entry:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: u64 = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = Instant::now() + support::PATIENCE;
    loop {
        if metrics(&client, &a, VALE).await.x_cache() == "MISS" {
            break;
        }
        assert!(Instant::now() < deadline, "the memory copy outlived l1_ttl");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(origin.count("/api/metrics"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_on_one_replica_updates_what_the_other_serves() {
    let TwoReplicas {
        redis: _redis,
        origin,
        a,
        b,
        client,
    } = TwoReplicas::start().await;
    let first = metrics(&client, &a, VALE).await;
    assert_eq!(metrics(&client, &a, VALE).await.x_cache(), "HIT");
    let answer = client
        .post(&b.url("/api/cache/refresh?pattern=Vale"), "")
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());
    assert_eq!(
        answer.json()["keys_scheduled"],
        1,
        "B refreshes the entry A stored"
    );
    origin.wait_for_total(2).await;
    let deadline = Instant::now() + support::PATIENCE;
    loop {
        let reply = metrics(&client, &a, VALE).await;
        assert_eq!(reply.x_cache(), "HIT", "never a miss during a refresh");
        if reply.header("x-origin-serial") != first.header("x-origin-serial") {
            break;
        }
        assert!(Instant::now() < deadline, "A kept serving the old answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(origin.total(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_speak_tls() {
    let ca = support::TestCa::new("redis");
    let issued = ca.issue("redis");
    let redis = RedisServer::start_tls(&issued.cert_file, &issued.key_file, &ca.cert_file);
    let origin = Origin::start().await;
    let url = format!("rediss://localhost:{}", redis.port);
    // The replicas trust the test CA the way an operator's system would.
    let trust = [("SSL_CERT_FILE", ca.cert_file.to_str().unwrap())];
    let a = DashcacheProcess::start_with_env(&origin.url(), &toml(&url, ""), &trust);
    let b = DashcacheProcess::start_with_env(&origin.url(), &toml(&url, ""), &trust);
    let client = Client::new();
    let deadline = Instant::now() + support::PATIENCE;
    for replica in [&a, &b] {
        loop {
            let stats = client.get(&replica.url("/api/cache/stats")).await.json();
            if stats["cache"]["redis"]["state"] == "up"
                && stats["cache"]["redis"]["listening"] == true
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no TLS session with redis: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let first = client.post(&a.url("/api/metrics"), VALE).await;
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(
        client.post(&b.url("/api/metrics"), VALE).await.x_cache(),
        "HIT"
    );
    assert_eq!(origin.total(), 1);
}
