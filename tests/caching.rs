//! Caching: what hits, what misses, and what always goes to the origin.

mod support;

use http::Method;
use support::{
    spawn_proxy, Behaviour, Client, Origin, RawOrigin, RawReply, Step, DASHBOARD_ROUTES,
};

#[tokio::test]
async fn the_same_post_twice_is_a_miss_then_an_identical_hit() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();
    let filters = r#"{"org":"Vale","period":"2024-Q1"}"#;

    let first = client.post(&proxy.url("/api/metrics"), filters).await;
    let second = client.post(&proxy.url("/api/metrics"), filters).await;

    assert_eq!(first.status, 200);
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(second.status, 200);
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(first.body, second.body, "a hit returns the stored body");
    assert_eq!(
        first.json()["request_body"],
        filters,
        "the origin answered this request"
    );
    assert_eq!(
        origin.count("/api/metrics"),
        1,
        "the hit never reached the origin"
    );
    assert_eq!(proxy.proxy.store.len(), 1);
}

#[tokio::test]
async fn answers_carry_age_and_an_rfc_9211_cache_status() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();

    let miss = client.post(&proxy.url("/api/metrics"), "{}").await;
    let hit = client.post(&proxy.url("/api/metrics"), "{}").await;

    let miss_status = miss.header("cache-status");
    assert!(miss_status.starts_with("dashcache"), "{miss_status}");
    assert!(miss_status.contains("fwd=miss"), "{miss_status}");
    assert!(miss_status.contains("stored"), "{miss_status}");

    let hit_status = hit.header("cache-status");
    assert!(hit_status.starts_with("dashcache; hit"), "{hit_status}");
    let ttl = hit
        .cache_status_ttl()
        .unwrap_or_else(|| panic!("a hit says its ttl: {hit_status}"));
    assert!(
        ttl > 14_000 && ttl <= 14_400,
        "ttl left is close to the 4 h default: {ttl}"
    );
    let age: u64 = hit
        .header("age")
        .parse()
        .expect("a hit carries a numeric Age");
    assert!(age <= 5, "a fresh entry is young: {age}");
}

#[tokio::test]
async fn json_key_order_and_whitespace_hit_the_same_entry() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();

    let first = client
        .post(
            &proxy.url("/api/metrics"),
            r#"{"org":"Vale","location":"Sao Paulo","kpis":["a","b"]}"#,
        )
        .await;
    let reordered = client
        .post(
            &proxy.url("/api/metrics"),
            "{\n  \"kpis\" : [ \"a\", \"b\" ],\n  \"location\": \"Sao Paulo\",\n  \"org\" : \"Vale\"\n}",
        )
        .await;

    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(reordered.x_cache(), "HIT");
    assert_eq!(first.body, reordered.body);
    assert_eq!(origin.count("/api/metrics"), 1);
}

#[tokio::test]
async fn query_parameter_order_hits_the_same_entry() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();

    let first = client
        .get(&proxy.url("/api/filter-options?org=Vale&year=2024"))
        .await;
    let reordered = client
        .get(&proxy.url("/api/filter-options?year=2024&org=Vale"))
        .await;
    let other = client
        .get(&proxy.url("/api/filter-options?year=2023&org=Vale"))
        .await;

    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(reordered.x_cache(), "HIT");
    assert_eq!(first.body, reordered.body);
    assert_eq!(
        other.x_cache(),
        "MISS",
        "a different value is a different entry"
    );
    assert_ne!(other.body, first.body);
    assert_eq!(origin.count("/api/filter-options"), 2);
}

#[tokio::test]
async fn different_filters_miss() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();

    let vale = client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    let acme = client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Acme"}"#)
        .await;
    let list = client
        .post(&proxy.url("/api/metrics"), r#"{"org":["Vale"]}"#)
        .await;
    let other_route = client
        .post(&proxy.url("/api/actions"), r#"{"org":"Vale"}"#)
        .await;

    for reply in [&vale, &acme, &list, &other_route] {
        assert_eq!(reply.x_cache(), "MISS", "{}", reply.text());
    }
    assert_ne!(vale.body, acme.body);
    assert_ne!(vale.body, other_route.body);
    assert_eq!(origin.total(), 4);
    assert_eq!(proxy.proxy.store.len(), 4);
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry_without_a_body() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();
    let url = proxy.url("/api/filter-options?org=Vale");

    let get = client.get(&url).await;
    let head = client.send(Method::HEAD, &url, &[], "").await;

    assert_eq!(get.x_cache(), "MISS");
    assert_eq!(head.status, 200);
    assert_eq!(head.x_cache(), "HIT", "HEAD reads the GET entry");
    assert!(head.body.is_empty(), "HEAD has no body");
    assert_eq!(head.header("content-length"), get.body.len().to_string());
    assert_eq!(origin.count("/api/filter-options"), 1);
}

#[tokio::test]
async fn a_head_miss_fills_the_get_entry() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();
    let url = proxy.url("/api/filter-options");

    let head = client.send(Method::HEAD, &url, &[], "").await;
    assert_eq!(head.x_cache(), "MISS");
    assert!(head.body.is_empty());
    assert_eq!(
        origin.last().unwrap().method,
        Method::GET,
        "the origin is asked with GET"
    );

    let get = client.get(&url).await;
    assert_eq!(get.x_cache(), "HIT");
    assert_eq!(get.json()["method"], "GET");
    assert_eq!(origin.count("/api/filter-options"), 1);
}

#[tokio::test]
async fn put_patch_and_delete_always_reach_the_origin() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();

    for method in [Method::PUT, Method::PATCH, Method::DELETE] {
        for _ in 0..2 {
            let reply = client
                .send(
                    method.clone(),
                    &proxy.url("/api/things/1"),
                    &[],
                    r#"{"a":1}"#,
                )
                .await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.x_cache(), "BYPASS", "{method}");
            assert_eq!(reply.json()["method"], method.as_str());
        }
    }
    assert_eq!(origin.count("/api/things/1"), 6);
    assert_eq!(proxy.proxy.store.len(), 0);
}

#[tokio::test]
async fn a_route_with_cache_false_bypasses() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();

    for _ in 0..3 {
        let reply = client.get(&proxy.url("/health")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.x_cache(), "BYPASS");
    }
    assert_eq!(origin.count("/health"), 3);
    assert_eq!(proxy.proxy.store.len(), 0);
}

#[tokio::test]
async fn a_disabled_cache_bypasses_everything() {
    let origin = Origin::start().await;
    let config = format!("[cache]\nenabled = false\n{DASHBOARD_ROUTES}");
    let proxy = spawn_proxy(&origin.url(), &config).await;
    let client = Client::new();

    for _ in 0..2 {
        let post = client
            .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
            .await;
        let get = client.get(&proxy.url("/api/filter-options")).await;
        assert_eq!(post.x_cache(), "BYPASS");
        assert_eq!(get.x_cache(), "BYPASS");
        assert_eq!(post.status, 200);
    }
    assert_eq!(origin.total(), 4, "the origin sees every request");
    assert_eq!(proxy.proxy.store.len(), 0);
    assert_eq!(proxy.stats().await["enabled"], false);
}

#[tokio::test]
async fn origin_bytes_and_custom_headers_pass_through_unchanged() {
    let origin = Origin::start().await;
    let payload: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    origin.on(
        "/api/export",
        Behaviour::new()
            .body(payload.clone())
            .header("content-type", "application/octet-stream")
            .header("x-request-cost", "42")
            .header("x-trace", "abc-123"),
    );
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();

    let miss = client.get(&proxy.url("/api/export")).await;
    let hit = client.get(&proxy.url("/api/export")).await;
    let bypass = client
        .send(Method::PUT, &proxy.url("/api/export"), &[], "")
        .await;

    assert_eq!(
        (miss.x_cache(), hit.x_cache(), bypass.x_cache()),
        ("MISS", "HIT", "BYPASS")
    );
    for reply in [&miss, &hit, &bypass] {
        assert_eq!(
            reply.body.as_ref(),
            payload.as_slice(),
            "{} body is byte-exact",
            reply.x_cache()
        );
        assert_eq!(reply.header("content-type"), "application/octet-stream");
        assert_eq!(reply.header("x-request-cost"), "42");
        assert_eq!(reply.header("x-trace"), "abc-123");
    }
    assert_eq!(origin.count("/api/export"), 2);
}

#[tokio::test]
async fn a_chunked_answer_is_stored_and_replayed_whole() {
    let origin = RawOrigin::start(vec![Step::Write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
          6\r\n{\"a\":1\r\n7\r\n,\"b\":2}\r\n0\r\n\r\n"
            .to_vec(),
    )])
    .await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();

    let miss = client.get(&proxy.url("/api/chunked")).await;
    let hit = client.get(&proxy.url("/api/chunked")).await;
    assert_eq!((miss.x_cache(), hit.x_cache()), ("MISS", "HIT"));
    for reply in [&miss, &hit] {
        assert_eq!(reply.text(), r#"{"a":1,"b":2}"#);
    }
    assert_eq!(origin.served(), 1);
}

/// `POST /api/metrics` with `filters` as its body in two chunks, on a
/// connection of its own.
async fn chunked_post(proxy: &support::ProxyHandle, filters: &str) -> RawReply {
    let (first, second) = filters.split_at(filters.len() / 2);
    let request = format!(
        "POST /api/metrics HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         {:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    support::raw_request(proxy.addr, request.as_bytes()).await
}

/// A POST's body is read before its hit is looked for (`proxy/at_once.rs`):
/// on a miss the pipeline gets that body as read, and the origin gets it
/// whole; chunked or not, the same filters are the same entry.
#[tokio::test]
async fn a_post_body_read_before_the_lookup_reaches_the_origin_whole_on_a_miss() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let filters = r#"{"org":"Vale","period":"2024-Q1","regions":["eu-west-1","us-east-1"]}"#;

    let miss = chunked_post(&proxy, filters).await;
    assert_eq!((miss.status, miss.get("x-cache")), (200, Some("MISS")));
    let seen = origin.last().expect("the miss reached the origin");
    assert_eq!(seen.method, Method::POST);
    assert_eq!(
        seen.body,
        filters.as_bytes(),
        "the body the proxy read, whole"
    );

    let hit = chunked_post(&proxy, filters).await;
    assert_eq!((hit.status, hit.get("x-cache")), (200, Some("HIT")));
    let with_length = Client::new()
        .post(&proxy.url("/api/metrics"), filters)
        .await;
    assert_eq!(
        with_length.x_cache(),
        "HIT",
        "Content-Length or chunks: one key"
    );
    assert_eq!(origin.count("/api/metrics"), 1);

    // Another body misses again, and the origin sees that one.
    let other = r#"{"org":"Vale","period":"2024-Q2"}"#;
    let miss = chunked_post(&proxy, other).await;
    assert_eq!(miss.get("x-cache"), Some("MISS"));
    assert_eq!(origin.last().unwrap().body, other.as_bytes());
    assert_eq!(origin.count("/api/metrics"), 2);
}

/// A client that asks for a fresh answer is not served from memory after
/// its body is read: the pipeline takes it to the origin.
#[tokio::test]
async fn a_post_that_wants_a_fresh_answer_skips_the_stored_one() {
    let origin = Origin::start().await;
    let toml = format!("[cache]\nhonor_client_no_cache = true\n{DASHBOARD_ROUTES}");
    let proxy = spawn_proxy(&origin.url(), &toml).await;
    let client = Client::new();
    let filters = r#"{"org":"Vale"}"#;
    assert_eq!(
        client
            .post(&proxy.url("/api/metrics"), filters)
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(
        client
            .post(&proxy.url("/api/metrics"), filters)
            .await
            .x_cache(),
        "HIT"
    );
    let fresh = client
        .send(
            Method::POST,
            &proxy.url("/api/metrics"),
            &[
                ("content-type", "application/json"),
                ("cache-control", "no-cache"),
            ],
            filters.to_owned(),
        )
        .await;
    assert_eq!(fresh.status, 200);
    assert_ne!(fresh.x_cache(), "HIT");
    assert_eq!(
        origin.count("/api/metrics"),
        2,
        "no-cache went to the origin"
    );
    assert_eq!(origin.last().unwrap().body, filters.as_bytes());
}

/// `POST /api/metrics` with `Expect: 100-continue`: the head alone first,
/// the body only after the proxy's `100 Continue`. The final answer's
/// `X-Cache`.
async fn post_after_continue(proxy: &support::ProxyHandle, filters: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "POST /api/metrics HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\n\
         expect: 100-continue\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        filters.len()
    );
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(support::PATIENCE, stream.read_exact(&mut interim))
        .await
        .expect("the proxy asks for the body")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(filters.as_bytes()).await.unwrap();
    let answer = RawReply::parse(&support::read_until_closed(&mut stream).await);
    assert_eq!(answer.status, 200);
    answer.get("x-cache").unwrap_or_default().to_owned()
}

/// A client that waits for `100 Continue` before sending its body gets it
/// when the proxy starts reading the body to look for a hit, on a miss and
/// on a hit alike.
#[tokio::test]
async fn a_post_that_expects_100_continue_is_asked_for_its_body_then_cached() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let filters = r#"{"org":"Vale","period":"2024-Q3"}"#;
    assert_eq!(post_after_continue(&proxy, filters).await, "MISS");
    assert_eq!(origin.last().unwrap().body, filters.as_bytes());
    assert_eq!(post_after_continue(&proxy, filters).await, "HIT");
    assert_eq!(origin.count("/api/metrics"), 1);
}
