//! The separate admin listener (`admin_listen`): `/api/cache/*` is answered
//! there only, the main port answers those paths 404 without asking the
//! upstream, and the admin port serves nothing else.

mod support;

use support::{spawn_server, Client, Origin, DASHBOARD_ROUTES};

const FILTERS: &str = r#"{"org":"Vale"}"#;

#[tokio::test]
async fn the_admin_api_moves_to_the_admin_listener() {
    let origin = Origin::start().await;
    let proxy = spawn_server(
        &origin.url(),
        &format!("admin_listen = \"127.0.0.1:0\"\n{DASHBOARD_ROUTES}"),
    )
    .await;
    let client = Client::new();

    let miss = client.post(&proxy.url("/api/metrics"), FILTERS).await;
    let hit = client.post(&proxy.url("/api/metrics"), FILTERS).await;
    assert_eq!(
        (miss.x_cache(), hit.x_cache()),
        ("MISS", "HIT"),
        "the main port still proxies"
    );

    let stats = client.get(&proxy.admin_url("/api/cache/stats")).await;
    assert_eq!(stats.status.as_u16(), 200, "{}", stats.text());
    assert_eq!(stats.json()["cache"]["size"], 1);
    let cleared = client.post(&proxy.admin_url("/api/cache/clear"), "").await;
    assert_eq!(cleared.status.as_u16(), 200, "{}", cleared.text());
    assert_eq!(cleared.json()["status"], "success");

    assert_eq!(origin.count("/api/metrics"), 1);
}

#[tokio::test]
async fn the_main_port_answers_the_admin_paths_404_without_the_upstream() {
    let origin = Origin::start().await;
    let proxy = spawn_server(
        &origin.url(),
        &format!("admin_listen = \"127.0.0.1:0\"\n{DASHBOARD_ROUTES}"),
    )
    .await;
    let client = Client::new();
    client.post(&proxy.url("/api/metrics"), FILTERS).await;

    for (method, path) in [
        ("GET", "/api/cache/stats"),
        ("POST", "/api/cache/clear"),
        ("POST", "/api/cache/invalidate?pattern=Vale"),
        ("GET", "/api/cache"),
    ] {
        let reply = client
            .send(method.parse().unwrap(), &proxy.url(path), &[], "")
            .await;
        assert_eq!(reply.status.as_u16(), 404, "{method} {path}");
        reply.error_message();
    }
    let h2 = Client::http2().get(&proxy.url("/api/cache/stats")).await;
    assert_eq!(h2.status.as_u16(), 404);

    assert_eq!(origin.total(), 1, "admin paths never reach the upstream");
    let still_cached = client.post(&proxy.url("/api/metrics"), FILTERS).await;
    assert_eq!(
        still_cached.x_cache(),
        "HIT",
        "the refused clear did nothing"
    );
}

#[tokio::test]
async fn the_admin_port_serves_only_the_admin_api() {
    let origin = Origin::start().await;
    let proxy = spawn_server(
        &origin.url(),
        &format!("admin_listen = \"127.0.0.1:0\"\n{DASHBOARD_ROUTES}"),
    )
    .await;

    let reply = Client::new()
        .post(&proxy.admin_url("/api/metrics"), FILTERS)
        .await;
    assert_eq!(reply.status.as_u16(), 404);
    reply.error_message();
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn the_admin_token_still_guards_the_admin_listener() {
    let origin = Origin::start().await;
    let proxy = spawn_server(
        &origin.url(),
        &format!("admin_listen = \"127.0.0.1:0\"\nadmin_token = \"s3cret\"\n{DASHBOARD_ROUTES}"),
    )
    .await;
    let client = Client::new();

    let refused = client.post(&proxy.admin_url("/api/cache/clear"), "").await;
    assert_eq!(refused.status.as_u16(), 401);
    let allowed = client
        .send(
            http::Method::POST,
            &proxy.admin_url("/api/cache/clear"),
            &[("authorization", "Bearer s3cret")],
            "",
        )
        .await;
    assert_eq!(allowed.status.as_u16(), 200, "{}", allowed.text());
}

#[tokio::test]
async fn without_admin_listen_the_main_port_keeps_the_admin_api() {
    let origin = Origin::start().await;
    let proxy = spawn_server(&origin.url(), DASHBOARD_ROUTES).await;
    assert!(proxy.admin_addr.is_none());
    let stats = Client::new().get(&proxy.url("/api/cache/stats")).await;
    assert_eq!(stats.status.as_u16(), 200);
}
