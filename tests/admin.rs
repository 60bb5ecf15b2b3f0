//! The admin API under /api/cache/: the seed's exact JSON shapes for stats,
//! clear and invalidate, its errors, and bearer-token protection.

mod support;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::{spawn_proxy, Client, Origin, ProxyHandle, DASHBOARD_ROUTES};

/// Two get_metrics, two get_actions and one get_filter_options entries.
async fn fill_dashboard(proxy: &ProxyHandle) {
    let client = Client::new();
    for org in ["Vale", "Acme"] {
        let body = format!(r#"{{"org":"{org}","location":"Sao Paulo"}}"#);
        client.post(&proxy.url("/api/metrics"), &body).await;
        client.post(&proxy.url("/api/actions"), &body).await;
    }
    client.get(&proxy.url("/api/filter-options")).await;
    assert_eq!(proxy.proxy.store.len(), 5);
}

async fn admin(
    proxy: &ProxyHandle,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> support::Reply {
    Client::new()
        .send(method, &proxy.url(path), headers, "")
        .await
}

#[tokio::test]
async fn stats_has_the_seed_shape_and_counts_what_happened() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();
    client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Acme"}"#)
        .await;

    let reply = admin(&proxy, Method::GET, "/api/cache/stats", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "application/json");
    let json = reply.json();
    assert_eq!(json["status"], "ok");
    let cache = &json["cache"];
    assert_eq!(cache["size"], 2);
    assert_eq!(cache["maxsize"], 1000);
    assert_eq!(cache["ttl"], 14400);
    assert_eq!(cache["ttl_hours"].as_f64(), Some(4.0));
    assert_eq!(cache["hits"], 1);
    assert_eq!(cache["misses"], 2);
    let hit_rate = cache["hit_rate"].as_f64().expect("hit_rate is a number");
    assert!((hit_rate - 1.0 / 3.0).abs() < 0.001, "{hit_rate}");
    assert_eq!(cache["upstream_requests"], 2);
    assert_eq!(cache["coalesced"], 0);
    assert_eq!(cache["evictions"], 0);
    assert!(cache["bytes"].as_u64().unwrap() > 0, "{cache}");
    assert_eq!(cache["max_bytes"], 256 * 1024 * 1024);
}

#[tokio::test]
async fn stats_answers_head_and_refuses_post() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;

    let head = admin(&proxy, Method::HEAD, "/api/cache/stats", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let post = admin(&proxy, Method::POST, "/api/cache/stats", &[]).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(post.header("allow").contains("GET"), "{:?}", post.headers);
    post.error_message();
    assert_eq!(origin.total(), 0, "the admin API is answered by the proxy");
}

#[tokio::test]
async fn clear_answers_the_seed_json_and_empties_the_store() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    fill_dashboard(&proxy).await;

    let reply = admin(&proxy, Method::POST, "/api/cache/clear", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        json!({
            "status": "success",
            "message": "Cache cleared successfully",
            "warning": "Next requests will hit the database",
        })
    );
    assert_eq!(proxy.proxy.store.len(), 0);
    assert_eq!(proxy.stats().await["size"], 0);

    let next = Client::new()
        .post(
            &proxy.url("/api/metrics"),
            r#"{"org":"Vale","location":"Sao Paulo"}"#,
        )
        .await;
    assert_eq!(next.x_cache(), "MISS", "next requests hit the database");
    assert_eq!(origin.count("/api/metrics"), 3);
}

fn invalidated(pattern: &str, n: u64) -> Value {
    json!({
        "status": "success",
        "pattern": pattern,
        "keys_deleted": n,
        "message": format!("Invalidated {n} cache keys matching pattern '{pattern}'"),
    })
}

#[tokio::test]
async fn invalidate_by_route_name_deletes_only_that_route() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    fill_dashboard(&proxy).await;
    let client = Client::new();

    let reply = admin(
        &proxy,
        Method::POST,
        "/api/cache/invalidate?pattern=get_metrics",
        &[],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), invalidated("get_metrics", 2));
    assert_eq!(proxy.proxy.store.len(), 3);

    let vale = r#"{"org":"Vale","location":"Sao Paulo"}"#;
    assert_eq!(
        client
            .post(&proxy.url("/api/actions"), vale)
            .await
            .x_cache(),
        "HIT"
    );
    assert_eq!(
        client
            .get(&proxy.url("/api/filter-options"))
            .await
            .x_cache(),
        "HIT"
    );
    assert_eq!(
        client
            .post(&proxy.url("/api/metrics"), vale)
            .await
            .x_cache(),
        "MISS"
    );

    let none = admin(
        &proxy,
        Method::POST,
        "/api/cache/invalidate?pattern=get_nothing",
        &[],
    )
    .await;
    assert_eq!(none.json(), invalidated("get_nothing", 0));
}

#[tokio::test]
async fn invalidate_by_filter_value_deletes_across_routes() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    fill_dashboard(&proxy).await;
    let client = Client::new();

    let reply = admin(
        &proxy,
        Method::POST,
        "/api/cache/invalidate?pattern=Vale",
        &[],
    )
    .await;
    assert_eq!(reply.json(), invalidated("Vale", 2));
    assert_eq!(proxy.proxy.store.len(), 3);

    let acme = r#"{"org":"Acme","location":"Sao Paulo"}"#;
    assert_eq!(
        client
            .post(&proxy.url("/api/metrics"), acme)
            .await
            .x_cache(),
        "HIT"
    );
    assert_eq!(
        client
            .post(&proxy.url("/api/actions"), acme)
            .await
            .x_cache(),
        "HIT"
    );
    let vale = r#"{"org":"Vale","location":"Sao Paulo"}"#;
    assert_eq!(
        client
            .post(&proxy.url("/api/metrics"), vale)
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(
        client
            .post(&proxy.url("/api/actions"), vale)
            .await
            .x_cache(),
        "MISS"
    );
}

#[tokio::test]
async fn invalidate_decodes_the_pattern() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    fill_dashboard(&proxy).await;

    let reply = admin(
        &proxy,
        Method::POST,
        "/api/cache/invalidate?pattern=Sao%20Paulo",
        &[],
    )
    .await;
    assert_eq!(reply.json(), invalidated("Sao Paulo", 4));
    assert_eq!(proxy.proxy.store.len(), 1);
}

#[tokio::test]
async fn invalidate_without_a_pattern_is_a_422() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    fill_dashboard(&proxy).await;

    for path in [
        "/api/cache/invalidate",
        "/api/cache/invalidate?pattern=",
        "/api/cache/invalidate?other=get_metrics",
    ] {
        let reply = admin(&proxy, Method::POST, path, &[]).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        let message = reply.error_message();
        assert!(message.contains("pattern"), "{path}: {message}");
    }
    assert_eq!(proxy.proxy.store.len(), 5, "nothing was deleted");
}

#[tokio::test]
async fn a_get_on_clear_is_a_405_with_allow() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    fill_dashboard(&proxy).await;

    for path in ["/api/cache/clear", "/api/cache/invalidate?pattern=Vale"] {
        let reply = admin(&proxy, Method::GET, path, &[]).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(reply.header("allow"), "POST", "{path}");
        reply.error_message();
    }
    assert_eq!(proxy.proxy.store.len(), 5, "nothing was deleted");
}

#[tokio::test]
async fn an_unknown_admin_endpoint_is_a_404_json_and_never_proxied() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;

    // (`/api/cache` itself is the status page.)
    for path in ["/api/cache/nope", "/api/cache/stats/extra"] {
        let reply = admin(&proxy, Method::GET, path, &[]).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        reply.error_message();
    }
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn with_a_token_mutations_require_the_bearer_token() {
    let origin = Origin::start().await;
    let config = format!("admin_token = \"s3cret\"\n{DASHBOARD_ROUTES}");
    let proxy = spawn_proxy(&origin.url(), &config).await;
    fill_dashboard(&proxy).await;

    for path in ["/api/cache/clear", "/api/cache/invalidate?pattern=Vale"] {
        let missing = admin(&proxy, Method::POST, path, &[]).await;
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            missing.header("www-authenticate").starts_with("Bearer"),
            "{path}"
        );
        missing.error_message();

        for wrong in [
            "Bearer s3cre",
            "Bearer s3cretX",
            "Basic s3cret",
            "s3cret",
            "Bearer",
        ] {
            let reply = admin(&proxy, Method::POST, path, &[("authorization", wrong)]).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{path} with {wrong:?}"
            );
        }
    }
    assert_eq!(proxy.proxy.store.len(), 5, "refused calls deleted nothing");

    let stats = admin(&proxy, Method::GET, "/api/cache/stats", &[]).await;
    assert_eq!(stats.status, 200, "stats stays readable without a token");

    let auth = [("authorization", "Bearer s3cret")];
    let invalidate = admin(
        &proxy,
        Method::POST,
        "/api/cache/invalidate?pattern=Vale",
        &auth,
    )
    .await;
    assert_eq!(invalidate.status, 200);
    assert_eq!(invalidate.json(), invalidated("Vale", 2));
    let clear = admin(&proxy, Method::POST, "/api/cache/clear", &auth).await;
    assert_eq!(clear.status, 200);
    assert_eq!(proxy.proxy.store.len(), 0);
}

#[tokio::test]
async fn without_a_token_loopback_clients_may_mutate() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    fill_dashboard(&proxy).await;

    let reply = admin(&proxy, Method::POST, "/api/cache/clear", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(proxy.proxy.store.len(), 0);
}

#[tokio::test]
async fn clear_also_covers_a_fill_in_flight() {
    let origin = Origin::start().await;
    let gate = support::Gate::new();
    origin.on("/api/metrics", support::Behaviour::new().gate(&gate));
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let url = proxy.url("/api/metrics");

    // A dashboard query started before the 6 AM refresh job clears the cache...
    let before = {
        let url = url.clone();
        tokio::spawn(async move { Client::new().post(&url, r#"{"org":"Vale"}"#).await })
    };
    origin.wait_for_total(1).await;
    let clear = admin(&proxy, Method::POST, "/api/cache/clear", &[]).await;
    assert_eq!(clear.status, 200);
    gate.open();
    assert_eq!(before.await.unwrap().status, 200);

    // ...must not leave its pre-refresh answer behind for the next 4 hours.
    let next = Client::new().post(&url, r#"{"org":"Vale"}"#).await;
    assert_eq!(next.x_cache(), "MISS", "next requests hit the database");
    assert_eq!(origin.count("/api/metrics"), 2);
}

/// The figures stats reports are counters kept as entries come and go; a
/// walk of the store must agree with them after every kind of removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_figures_agree_with_a_walk_after_evictions_invalidate_and_clear() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "[cache]\nmaxsize = 64\n").await;
    let client = Client::new();
    let agree = |what: &str, stats: &serde_json::Value| {
        let walked = proxy
            .proxy
            .store
            .memory()
            .walk_census(std::time::Instant::now());
        assert_eq!(stats["size"], walked.fresh as u64, "{what}: {stats}");
        assert_eq!(
            stats["stale_entries"], walked.stale as u64,
            "{what}: {stats}"
        );
        assert_eq!(stats["bytes"], walked.bytes, "{what}: {stats}");
    };
    for i in 0..200 {
        let org = if i % 4 == 0 { "Vale" } else { "Acme" };
        client
            .get(&proxy.url(&format!("/api/report?page={i}&org={org}")))
            .await;
    }
    let stats = proxy.stats().await;
    assert!(stats["evictions"].as_u64().unwrap() > 0, "{stats}");
    agree("after evictions", &stats);

    let invalidated = client
        .send(
            Method::POST,
            &proxy.url("/api/cache/invalidate?pattern=org=Vale"),
            &[],
            "",
        )
        .await;
    assert_eq!(invalidated.status, StatusCode::OK);
    assert!(invalidated.json()["keys_deleted"].as_u64().unwrap() > 0);
    agree("after invalidate", &proxy.stats().await);

    client
        .send(Method::POST, &proxy.url("/api/cache/clear"), &[], "")
        .await;
    let stats = proxy.stats().await;
    assert_eq!(stats["size"], 0, "{stats}");
    agree("after clear", &stats);
    client.get(&proxy.url("/api/report?page=1")).await;
    agree("after a store following the clear", &proxy.stats().await);
}
