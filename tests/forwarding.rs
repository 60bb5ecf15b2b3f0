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
async fn many_answers_at_once_on_one_http2_connection_each_arrive_whole() {
    // Answers finished in the same poll of the connection leave in one
    // write (`write_batch.rs`); each must still reach its own stream intact.
    let origin = Origin::start().await;
    let body_of = |i: usize| -> Vec<u8> {
        (0..20_000 + i * 97)
            .map(|n| b'a' + ((n * 7 + i) % 26) as u8)
            .collect()
    };
    for i in 0..48 {
        origin.on(
            &format!("/api/report-{i}"),
            Behaviour::new().body(body_of(i)),
        );
    }
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::http2();
    for round in ["MISS", "HIT"] {
        let urls: Vec<String> = (0..48)
            .map(|i| proxy.url(&format!("/api/report-{i}")))
            .collect();
        let replies = futures_util::future::join_all(urls.iter().map(|url| client.get(url))).await;
        for (i, reply) in replies.iter().enumerate() {
            assert_eq!(reply.x_cache(), round, "report {i}");
            assert!(
                reply.body == body_of(i),
                "report {i}: body of {} bytes differs",
                reply.body.len()
            );
        }
    }
    assert_eq!(origin.total(), 48);
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

// ------------------------------------------------------------ request ids

#[tokio::test]
async fn every_answer_carries_its_own_request_id_which_the_origin_sees_too() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();

    let miss = client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    let seen = origin.last_headers();
    let hit = client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    let bypass = client
        .send(Method::PUT, &proxy.url("/api/things/1"), &[], "{}")
        .await;
    let stats = client.get(&proxy.url("/api/cache/stats")).await;
    let not_found = client.get(&proxy.url("/api/cache/nothing")).await;

    assert_eq!((miss.x_cache(), hit.x_cache()), ("MISS", "HIT"));
    assert_eq!(not_found.status, http::StatusCode::NOT_FOUND);
    let ids: Vec<&str> = [&miss, &hit, &bypass, &stats, &not_found]
        .iter()
        .map(|reply| reply.header("x-request-id"))
        .collect();
    for id in &ids {
        assert_eq!(id.len(), 24, "{ids:?}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{ids:?}");
    }
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "one id per request: {ids:?}");
    assert_eq!(
        header(&seen, "x-request-id"),
        ids[0],
        "the upstream gets the miss's id"
    );
}

#[tokio::test]
async fn a_client_cannot_choose_its_request_id_unless_trusted() {
    let origin = Origin::start().await;
    let client = Client::new();
    let forged = [("x-request-id", "chosen-by-client")];

    let untrusting = spawn_proxy(&origin.url(), "").await;
    let reply = client
        .send(Method::GET, &untrusting.url("/api/x"), &forged, "")
        .await;
    assert_ne!(reply.header("x-request-id"), "chosen-by-client");
    assert_ne!(
        header(&origin.last_headers(), "x-request-id"),
        "chosen-by-client"
    );

    let other_peer = spawn_proxy(&origin.url(), "trusted_proxies = [\"10.0.0.0/8\"]\n").await;
    let reply = client
        .send(Method::GET, &other_peer.url("/api/x"), &forged, "")
        .await;
    assert_ne!(reply.header("x-request-id"), "chosen-by-client");

    let trusting = spawn_proxy(&origin.url(), "trusted_proxies = [\"127.0.0.1\"]\n").await;
    let reply = client
        .send(Method::GET, &trusting.url("/api/y"), &forged, "")
        .await;
    assert_eq!(reply.header("x-request-id"), "chosen-by-client");
    assert_eq!(
        header(&origin.last_headers(), "x-request-id"),
        "chosen-by-client"
    );

    let reply = client
        .send(
            Method::GET,
            &trusting.url("/api/z"),
            &[("x-request-id", "bad id; with=spaces")],
            "",
        )
        .await;
    assert_eq!(
        reply.header("x-request-id").len(),
        24,
        "an invalid id is replaced even from a trusted peer"
    );
}

#[tokio::test]
async fn a_stored_answer_never_replays_an_old_request_id() {
    let origin = Origin::start().await;
    // A backend that echoes the request id in its answer, as many do.
    origin.on(
        "/api/metrics",
        Behaviour::new().header("x-request-id", "from-the-backend"),
    );
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();
    for expected in ["MISS", "HIT"] {
        let reply = client.post(&proxy.url("/api/metrics"), "{}").await;
        assert_eq!(reply.x_cache(), expected);
        assert_eq!(reply.headers.get_all("x-request-id").iter().count(), 1);
        assert_ne!(reply.header("x-request-id"), "from-the-backend");
    }
}

// ------------------------------------------------------------ what the upstream's identity reveals

#[tokio::test]
async fn health_names_the_upstream_only_to_a_trusted_caller() {
    let url = support::closed_port_url().await;
    let port = url.rsplit(':').next().unwrap().to_owned();
    let with_userinfo = url.replace("http://", "http://svc:hunter2@");
    let proxy = support::spawn_server(&with_userinfo, "admin_token = \"s3cret\"\n").await;
    let client = Client::new();

    let anonymous = client.get(&proxy.url("/api/cache/health")).await;
    assert_eq!(anonymous.status, http::StatusCode::OK);
    let text = anonymous.text();
    for secret in [port.as_str(), "127.0.0.1", "svc", "hunter2"] {
        assert!(!text.contains(secret), "{secret} shown to anyone: {text}");
    }
    let json = anonymous.json();
    assert_eq!(json["upstream"]["reachable"], false);
    assert_eq!(json["upstream"]["error"], "refused");

    let admin = client
        .send(
            Method::GET,
            &proxy.url("/api/cache/health"),
            &[("authorization", "Bearer s3cret")],
            "",
        )
        .await;
    let json = admin.json();
    let shown = json["upstream"]["url"].as_str().unwrap();
    assert!(shown.contains(&port), "{json}");
    assert!(
        !shown.contains("hunter2"),
        "the password is redacted even for the admin: {shown}"
    );
    assert!(json["upstream"]["detail"].as_str().unwrap().contains(&port));
}

#[tokio::test]
async fn error_answers_do_not_reveal_the_upstream() {
    let url = support::closed_port_url().await;
    let port = url.rsplit(':').next().unwrap().to_owned();
    let proxy = spawn_proxy(&url, DASHBOARD_ROUTES).await;
    let client = Client::new();
    for reply in [
        client.post(&proxy.url("/api/metrics"), "{}").await,
        client.get(&proxy.url("/api/things/1")).await,
        client
            .send(Method::PATCH, &proxy.url("/api/things/1"), &[], "{}")
            .await,
    ] {
        assert_eq!(reply.status, http::StatusCode::BAD_GATEWAY);
        let text = reply.text();
        assert_eq!(
            text,
            r#"{"status":"error","message":"upstream unreachable"}"#
        );
        assert!(!text.contains(&port));
    }
}
