//! Storage policy: which answers are never stored, which statuses are, and
//! how a client's own `Cache-Control: no-cache` is treated.

mod support;

use http::Method;
use support::{spawn_proxy, Behaviour, Client, Origin, ProxyHandle};

/// Asks `path` twice; both must reach the origin and nothing is stored.
async fn assert_never_stored(origin: &Origin, proxy: &ProxyHandle, path: &str, detail: &str) {
    let client = Client::new();
    for round in 1..=2 {
        let reply = client.get(&proxy.url(path)).await;
        assert_eq!(reply.x_cache(), "MISS", "{path} round {round}");
        let cache_status = reply.header("cache-status");
        assert!(!cache_status.contains("stored"), "{path}: {cache_status}");
        assert!(
            cache_status.contains(&format!("detail={detail}")),
            "{path}: {cache_status}"
        );
        assert_eq!(
            origin.count(path),
            round,
            "{path} is asked upstream every time"
        );
    }
}

#[tokio::test]
async fn answers_that_forbid_a_shared_cache_are_never_stored() {
    let origin = Origin::start().await;
    origin.on(
        "/set-cookie",
        Behaviour::new().header("set-cookie", "session=abc; HttpOnly"),
    );
    origin.on(
        "/no-store",
        Behaviour::new().header("cache-control", "no-store"),
    );
    origin.on(
        "/private",
        Behaviour::new().header("cache-control", "private, max-age=600"),
    );
    origin.on("/vary-star", Behaviour::new().header("vary", "*"));
    origin.on(
        "/no-cache",
        Behaviour::new().header("cache-control", "no-cache"),
    );
    origin.on(
        "/max-age-0",
        Behaviour::new().header("cache-control", "max-age=0"),
    );
    origin.on(
        "/too-old",
        Behaviour::new()
            .header("cache-control", "max-age=60")
            .header("age", "60"),
    );
    let proxy = spawn_proxy(&origin.url(), "").await;

    assert_never_stored(&origin, &proxy, "/set-cookie", "set-cookie").await;
    assert_never_stored(&origin, &proxy, "/no-store", "no-store").await;
    assert_never_stored(&origin, &proxy, "/private", "private").await;
    assert_never_stored(&origin, &proxy, "/vary-star", "vary-star").await;
    assert_never_stored(&origin, &proxy, "/no-cache", "no-cache").await;
    assert_never_stored(&origin, &proxy, "/max-age-0", "expired").await;
    assert_never_stored(&origin, &proxy, "/too-old", "expired").await;
    assert_eq!(proxy.proxy.store.len(), 0);
}

#[tokio::test]
async fn a_set_cookie_answer_reaches_its_own_client_with_the_cookie() {
    let origin = Origin::start().await;
    origin.on(
        "/login-ish",
        Behaviour::new().header("set-cookie", "session=abc"),
    );
    let proxy = spawn_proxy(&origin.url(), "").await;

    let reply = Client::new().post(&proxy.url("/login-ish"), "{}").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("set-cookie"), "session=abc");
    assert_eq!(proxy.proxy.store.len(), 0);
}

#[tokio::test]
async fn error_statuses_are_not_stored_by_default() {
    let origin = Origin::start().await;
    origin.on("/broken", Behaviour::new().status(500));
    origin.on("/missing", Behaviour::new().status(404));
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();

    for round in 1..=2 {
        let broken = client.get(&proxy.url("/broken")).await;
        let missing = client.get(&proxy.url("/missing")).await;
        assert_eq!(broken.status, 500);
        assert_eq!(missing.status, 404);
        assert_eq!(broken.x_cache(), "MISS");
        assert_eq!(missing.x_cache(), "MISS");
        assert_eq!(origin.count("/broken"), round);
        assert_eq!(origin.count("/missing"), round);
    }
    assert_eq!(proxy.proxy.store.len(), 0);
}

#[tokio::test]
async fn a_404_is_stored_when_listed_in_cacheable_statuses() {
    let origin = Origin::start().await;
    origin.on("/missing", Behaviour::new().status(404));
    origin.on("/broken", Behaviour::new().status(500));
    let proxy = spawn_proxy(&origin.url(), "[cache]\ncacheable_statuses = [200, 404]\n").await;
    let client = Client::new();

    let first = client.get(&proxy.url("/missing")).await;
    let second = client.get(&proxy.url("/missing")).await;
    assert_eq!((first.status.as_u16(), first.x_cache()), (404, "MISS"));
    assert_eq!((second.status.as_u16(), second.x_cache()), (404, "HIT"));
    assert_eq!(first.body, second.body);
    assert_eq!(origin.count("/missing"), 1);

    client.get(&proxy.url("/broken")).await;
    assert_eq!(
        client.get(&proxy.url("/broken")).await.x_cache(),
        "MISS",
        "500 is still not listed"
    );
    assert_eq!(origin.count("/broken"), 2);
}

#[tokio::test]
async fn a_client_no_cache_is_ignored_by_default() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();
    let url = proxy.url("/api/metrics");

    client.post(&url, r#"{"org":"Vale"}"#).await;
    for header in ["no-cache", "max-age=0"] {
        let refresh = client
            .send(
                Method::POST,
                &url,
                &[("cache-control", header)],
                r#"{"org":"Vale"}"#,
            )
            .await;
        assert_eq!(
            refresh.x_cache(),
            "HIT",
            "a browser refresh ({header}) must not reach the warehouse"
        );
    }
    assert_eq!(origin.count("/api/metrics"), 1);
}

#[tokio::test]
async fn a_client_no_cache_is_honoured_when_configured() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "[cache]\nhonor_client_no_cache = true\n").await;
    let client = Client::new();
    let url = proxy.url("/api/metrics");

    client.post(&url, r#"{"org":"Vale"}"#).await;
    let refresh = client
        .send(
            Method::POST,
            &url,
            &[("cache-control", "no-cache")],
            r#"{"org":"Vale"}"#,
        )
        .await;
    assert_eq!(refresh.x_cache(), "MISS");
    assert_eq!(
        origin.count("/api/metrics"),
        2,
        "no-cache went to the origin"
    );

    let plain = client.post(&url, r#"{"org":"Vale"}"#).await;
    assert_eq!(
        plain.x_cache(),
        "HIT",
        "the refreshed answer replaced the entry"
    );
    assert_eq!(origin.count("/api/metrics"), 2);
}

#[tokio::test]
async fn an_answer_is_not_served_to_a_request_its_vary_header_excludes() {
    let origin = Origin::start().await;
    origin.on(
        "/api/labels",
        Behaviour::new()
            .header("vary", "Accept-Language")
            .echo_header("accept-language"),
    );
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();
    let url = proxy.url("/api/labels");

    let pt = client
        .send(Method::GET, &url, &[("accept-language", "pt-BR")], "")
        .await;
    let en = client
        .send(Method::GET, &url, &[("accept-language", "en")], "")
        .await;
    assert_eq!(pt.json()["echo"], "pt-BR");
    assert_eq!(
        en.json()["echo"],
        "en",
        "the pt-BR answer must not be served to an en client"
    );
}

#[tokio::test]
async fn an_entry_made_for_one_credential_is_never_served_to_another() {
    let origin = Origin::start().await;
    origin.on(
        "/api/metrics",
        Behaviour::new().echo_header("authorization"),
    );
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();
    let url = proxy.url("/api/metrics");

    let alice = client
        .send(
            Method::POST,
            &url,
            &[("authorization", "Bearer alice")],
            r#"{"org":"Vale"}"#,
        )
        .await;
    let bob = client
        .send(
            Method::POST,
            &url,
            &[("authorization", "Bearer bob")],
            r#"{"org":"Vale"}"#,
        )
        .await;
    let anonymous = client.post(&url, r#"{"org":"Vale"}"#).await;
    assert_eq!(alice.json()["echo"], "Bearer alice");
    assert_eq!(
        bob.json()["echo"],
        "Bearer bob",
        "bob must not see the answer made for alice"
    );
    assert!(
        anonymous.json().get("echo").is_none(),
        "an anonymous client must not see alice's answer"
    );
}
