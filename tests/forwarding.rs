//! Forwarding: what the origin receives (X-Forwarded-*, Via, no hop-by-hop
//! fields, the upstream path prefix) and what the client receives back, over
//! HTTP/1.1 and HTTP/2.

mod support;

use http::Method;
use support::{raw_request, spawn_proxy, Behaviour, Client, Origin, DASHBOARD_ROUTES};

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_origin_learns_the_client_scheme_host_and_the_proxy() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();

    for (method, path) in [
        (Method::POST, "/api/metrics"),
        (Method::PUT, "/api/things/1"),
    ] {
        client
            .send(
                method.clone(),
                &proxy.url(path),
                &[("host", "dash.example:8080")],
                "{}",
            )
            .await;
        let seen = origin.last_headers();
        assert_eq!(header(&seen, "x-forwarded-for"), "127.0.0.1", "{method}");
        assert_eq!(header(&seen, "x-forwarded-proto"), "http", "{method}");
        assert_eq!(
            header(&seen, "x-forwarded-host"),
            "dash.example:8080",
            "{method}"
        );
        assert!(
            header(&seen, "via").contains("dashcache"),
            "{method}: {seen:?}"
        );
        assert_eq!(
            header(&seen, "host"),
            origin.addr.to_string(),
            "{method}: the origin is addressed by its own authority"
        );
    }
}

#[tokio::test]
async fn forwarding_headers_extend_an_existing_chain() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;

    Client::new()
        .send(
            Method::GET,
            &proxy.url("/api/filter-options"),
            &[("x-forwarded-for", "10.0.0.1"), ("via", "1.1 edge")],
            "",
        )
        .await;
    let seen = origin.last_headers();
    assert_eq!(header(&seen, "x-forwarded-for"), "10.0.0.1, 127.0.0.1");
    assert_eq!(header(&seen, "via"), "1.1 edge, 1.1 dashcache");
}

#[tokio::test]
async fn hop_by_hop_request_headers_do_not_reach_the_origin() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;

    for method in ["POST", "PUT"] {
        let request = format!(
            "{method} /api/metrics HTTP/1.1\r\n\
             Host: dash.example\r\n\
             Connection: x-secret, close\r\n\
             X-Secret: do-not-forward\r\n\
             Keep-Alive: timeout=5\r\n\
             TE: trailers\r\n\
             Upgrade: websocket\r\n\
             Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
             X-Kept: yes\r\n\
             Content-Type: application/json\r\n\
             Content-Length: 2\r\n\r\n{{}}"
        );
        let reply = raw_request(proxy.addr, request.as_bytes()).await;
        assert_eq!(reply.status, 200, "{method}");

        let seen = origin.last().expect("the origin saw the request");
        assert_eq!(seen.method.as_str(), method);
        for name in [
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
        ] {
            assert!(
                !seen.headers.contains_key(name),
                "{method}: {name} reached the origin"
            );
        }
        let connection = header(&seen.headers, "connection");
        assert!(
            !connection.contains("x-secret"),
            "{method}: connection: {connection}"
        );
        assert_eq!(
            header(&seen.headers, "x-kept"),
            "yes",
            "{method}: end-to-end headers pass"
        );
    }
}

#[tokio::test]
async fn hop_by_hop_answer_headers_do_not_reach_the_client() {
    let origin = Origin::start().await;
    let hop = Behaviour::new()
        .header("connection", "x-origin-secret")
        .header("x-origin-secret", "internal")
        .header("keep-alive", "timeout=5, max=100")
        .header("proxy-authenticate", "Basic realm=\"origin\"")
        .header("x-kept", "yes");
    origin.on("/api/metrics", hop.clone());
    origin.on("/api/things/1", hop);
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();

    let miss = client.post(&proxy.url("/api/metrics"), "{}").await;
    let hit = client.post(&proxy.url("/api/metrics"), "{}").await;
    let bypass = client
        .send(Method::PUT, &proxy.url("/api/things/1"), &[], "{}")
        .await;

    for reply in [&miss, &hit, &bypass] {
        let label = reply.x_cache();
        assert_eq!(reply.status, 200, "{label}");
        for name in ["x-origin-secret", "keep-alive", "proxy-authenticate"] {
            assert!(
                !reply.headers.contains_key(name),
                "{label}: {name} reached the client"
            );
        }
        assert!(
            !reply.header("connection").contains("x-origin-secret"),
            "{label}"
        );
        assert_eq!(
            reply.header("x-kept"),
            "yes",
            "{label}: end-to-end headers pass"
        );
    }
    assert_eq!(
        (miss.x_cache(), hit.x_cache(), bypass.x_cache()),
        ("MISS", "HIT", "BYPASS")
    );
}

#[tokio::test]
async fn an_upstream_path_prefix_is_joined_before_the_request_path() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&format!("{}/backend", origin.url()), DASHBOARD_ROUTES).await;
    let client = Client::new();

    let reply = client.post(&proxy.url("/api/metrics?org=Vale"), "{}").await;
    assert_eq!(reply.status, 200);
    assert_eq!(origin.last().unwrap().uri, "/backend/api/metrics?org=Vale");

    client
        .send(Method::PUT, &proxy.url("/api/things/1"), &[], "")
        .await;
    assert_eq!(origin.last().unwrap().uri, "/backend/api/things/1");
    assert_eq!(origin.total(), 2);
}

#[tokio::test]
async fn an_http2_prior_knowledge_client_gets_hits_too() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::http2();

    let miss = client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    let hit = client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;

    assert_eq!(miss.x_cache(), "MISS");
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(miss.body, hit.body);
    assert_eq!(origin.count("/api/metrics"), 1);
    let seen = origin.last().unwrap();
    assert_eq!(
        seen.version,
        http::Version::HTTP_11,
        "the upstream leg stays HTTP/1.1"
    );
    assert!(
        header(&seen.headers, "via").starts_with("2 dashcache"),
        "{:?}",
        seen.headers
    );

    let bypass = client
        .send(Method::DELETE, &proxy.url("/api/things/1"), &[], "")
        .await;
    assert_eq!((bypass.status.as_u16(), bypass.x_cache()), (200, "BYPASS"));
}
