//! The standard cache mode (`[cache] mode = "standard"`) and the RFC 9111 /
//! RFC 9213 rules that hold in both modes, one test per rule, against the
//! counting in-process origin. docs/caching-rules.md lists the same rules.
//!
//! Freshness is counted in whole seconds, so instead of sleeping past a
//! `max-age`, answers are made stale on arrival with `Age` (an answer as old
//! as its lifetime is stale at once and kept only to be revalidated).

mod support;

use std::time::Duration;

use http::Method;
use support::{spawn_proxy, Behaviour, Client, Origin};

const STANDARD: &str = "[cache]\nmode = \"standard\"\n";
const LAST_MODIFIED: &str = "Wed, 01 Jan 2020 00:00:00 GMT";

async fn get_with(client: &Client, url: &str, headers: &[(&str, &str)]) -> support::Reply {
    client.send(Method::GET, url, headers, "").await
}

#[tokio::test]
async fn a_header_less_answer_is_not_stored_in_the_standard_mode() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    client.get(&proxy.url("/plain")).await;
    let second = client.get(&proxy.url("/plain")).await;
    assert_eq!(second.x_cache(), "MISS");
    assert!(second
        .header("cache-status")
        .contains("detail=no-freshness"));
    assert_eq!(origin.count("/plain"), 2);
}

#[tokio::test]
async fn last_modified_gives_a_heuristic_lifetime_in_the_standard_mode() {
    let origin = Origin::start().await;
    origin.on(
        "/doc",
        Behaviour::new().header("last-modified", LAST_MODIFIED),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    client.get(&proxy.url("/doc")).await;
    let second = client.get(&proxy.url("/doc")).await;
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(origin.count("/doc"), 1);
}

#[tokio::test]
async fn expires_after_date_makes_an_answer_fresh_and_an_invalid_expires_makes_it_stale() {
    let origin = Origin::start().await;
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    origin.on(
        "/fresh",
        Behaviour::new()
            .header("date", &now)
            .header("expires", &later),
    );
    origin.on(
        "/invalid",
        Behaviour::new()
            .header("date", &now)
            .header("expires", "next tuesday"),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    for path in ["/fresh", "/invalid"] {
        client.get(&proxy.url(path)).await;
        client.get(&proxy.url(path)).await;
    }
    assert_eq!(origin.count("/fresh"), 1, "fresh for an hour");
    assert_eq!(
        origin.count("/invalid"),
        2,
        "an invalid Expires is the past"
    );
}

#[tokio::test]
async fn an_age_list_counts_its_first_member() {
    let origin = Origin::start().await;
    origin.on(
        "/aged",
        Behaviour::new()
            .header("cache-control", "max-age=3600")
            .header("age", "7200, 0"),
    );
    origin.on(
        "/young",
        Behaviour::new()
            .header("cache-control", "max-age=3600")
            .header("age", "1x"),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    for path in ["/aged", "/young"] {
        client.get(&proxy.url(path)).await;
        client.get(&proxy.url(path)).await;
    }
    assert_eq!(origin.count("/aged"), 2, "7200 s old: already stale");
    assert_eq!(origin.count("/young"), 1, "an invalid Age is ignored");
}

#[tokio::test]
async fn s_maxage_beats_max_age_for_this_shared_cache() {
    let origin = Origin::start().await;
    origin.on(
        "/shared",
        Behaviour::new().header("cache-control", "max-age=0, s-maxage=600"),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    client.get(&proxy.url("/shared")).await;
    let second = client.get(&proxy.url("/shared")).await;
    assert_eq!(second.x_cache(), "HIT");
    assert!(second.cache_status_ttl().unwrap() > 500);
}

#[tokio::test]
async fn cdn_cache_control_and_configured_targeted_fields_beat_cache_control() {
    let origin = Origin::start().await;
    origin.on(
        "/cdn",
        Behaviour::new()
            .header("cdn-cache-control", "max-age=600")
            .header("cache-control", "no-store"),
    );
    origin.on(
        "/ours",
        Behaviour::new()
            .header("dashcache-cache-control", "no-store")
            .header("cdn-cache-control", "max-age=600"),
    );
    origin.on(
        "/invalid",
        Behaviour::new()
            .header("cdn-cache-control", "max-age=\"600\"")
            .header("cache-control", "no-store"),
    );
    let toml = format!(
        "{STANDARD}targeted_cache_control = [\"dashcache-cache-control\", \"cdn-cache-control\"]\n"
    );
    let proxy = spawn_proxy(&origin.url(), &toml).await;
    let client = Client::new();
    for path in ["/cdn", "/ours", "/invalid"] {
        client.get(&proxy.url(path)).await;
        client.get(&proxy.url(path)).await;
    }
    assert_eq!(origin.count("/cdn"), 1, "CDN-Cache-Control allows it");
    assert_eq!(origin.count("/ours"), 2, "our own field comes first");
    assert_eq!(
        origin.count("/invalid"),
        2,
        "an invalid targeted field is ignored"
    );
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_and_a_304_answers_from_the_stored_body_with_merged_headers() {
    let origin = Origin::start().await;
    origin.on(
        "/report",
        Behaviour::new()
            .etag("\"v1\"")
            .header("cache-control", "max-age=60")
            .header("age", "60")
            .header("x-version", "one"),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    let first = client.get(&proxy.url("/report")).await;
    assert_eq!(first.status, 200);

    // The origin's 304 carries a new lifetime and a changed field.
    origin.on(
        "/report",
        Behaviour::new()
            .etag("\"v1\"")
            .header("cache-control", "max-age=600")
            .header("x-version", "two"),
    );
    let second = client.get(&proxy.url("/report")).await;
    assert_eq!(origin.last_headers()["if-none-match"], "\"v1\"");
    assert_eq!(second.status, 200);
    assert_eq!(second.body, first.body, "the stored body");
    assert_eq!(second.header("x-version"), "two", "the 304's fields win");
    assert_eq!(
        second.header("content-length"),
        first.body.len().to_string()
    );

    let third = client.get(&proxy.url("/report")).await;
    assert_eq!(third.x_cache(), "HIT", "freshened by the 304");
    assert_eq!(origin.count("/report"), 2);
}

#[tokio::test]
async fn the_dashboard_mode_revalidates_a_get_whose_backend_sends_an_etag_too() {
    let origin = Origin::start().await;
    origin.on("/api/filter-options", Behaviour::new().etag("\"m1\""));
    let proxy = spawn_proxy(&origin.url(), "[cache]\nttl = \"1s\"\n").await;
    let client = Client::new();
    let first = client.get(&proxy.url("/api/filter-options")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = client.get(&proxy.url("/api/filter-options")).await;
    assert_eq!(origin.last_headers()["if-none-match"], "\"m1\"");
    assert_eq!(second.body, first.body, "the stored answer");
    assert_eq!(origin.count("/api/filter-options"), 2);
    let third = client.get(&proxy.url("/api/filter-options")).await;
    assert_eq!(third.x_cache(), "HIT", "the 304 restarted the TTL");
}

#[tokio::test]
async fn a_post_read_is_fetched_whole_never_with_a_precondition() {
    let origin = Origin::start().await;
    origin.on("/api/metrics", Behaviour::new().etag("\"m1\""));
    let proxy = spawn_proxy(&origin.url(), "[cache]\nttl = \"1s\"\n").await;
    let client = Client::new();
    client.post(&proxy.url("/api/metrics"), "{}").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = client.post(&proxy.url("/api/metrics"), "{}").await;
    assert_eq!(second.status, 200);
    assert!(!origin.last_headers().contains_key("if-none-match"));
}

#[tokio::test]
async fn a_no_cache_answer_is_stored_but_revalidated_on_every_use() {
    let origin = Origin::start().await;
    origin.on(
        "/live",
        Behaviour::new()
            .etag("\"l1\"")
            .header("cache-control", "no-cache, max-age=600"),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    let first = client.get(&proxy.url("/live")).await;
    for _ in 0..2 {
        let again = client.get(&proxy.url("/live")).await;
        assert_eq!(again.body, first.body);
        assert_eq!(origin.last_headers()["if-none-match"], "\"l1\"");
    }
    assert_eq!(origin.count("/live"), 3, "asked every time");
}

#[tokio::test]
async fn a_client_conditional_on_a_fresh_entry_gets_a_304_from_the_cache() {
    let origin = Origin::start().await;
    origin.on(
        "/page",
        Behaviour::new()
            .etag("\"p1\"")
            .header("cache-control", "max-age=600"),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    client.get(&proxy.url("/page")).await;
    let conditional = get_with(&client, &proxy.url("/page"), &[("if-none-match", "\"p1\"")]).await;
    assert_eq!(conditional.status, 304);
    assert_eq!(conditional.x_cache(), "HIT");
    assert_eq!(conditional.header("etag"), "\"p1\"");
    assert_eq!(origin.count("/page"), 1);
}

#[tokio::test]
async fn must_revalidate_forbids_a_stale_answer_even_where_stale_if_error_allows_one() {
    let origin = Origin::start().await;
    origin.on(
        "/strict",
        Behaviour::new()
            .header("etag", "\"s1\"")
            .header(
                "cache-control",
                "max-age=60, stale-if-error=600, must-revalidate",
            )
            .header("age", "60"),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    client.get(&proxy.url("/strict")).await;
    origin.on("/strict", Behaviour::new().status(503));
    let failed = client.get(&proxy.url("/strict")).await;
    assert_eq!(failed.status, 503, "the origin's error, not the stale copy");
}

#[tokio::test]
async fn the_origins_stale_if_error_is_the_standard_modes_only_stale_window() {
    let origin = Origin::start().await;
    let stale_ok = Behaviour::new()
        .header("etag", "\"e1\"")
        .header("cache-control", "max-age=60, stale-if-error=600")
        .header("age", "60");
    origin.on("/allowed", stale_ok);
    origin.on(
        "/silent",
        Behaviour::new()
            .header("etag", "\"e2\"")
            .header("cache-control", "max-age=60")
            .header("age", "60"),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    for path in ["/allowed", "/silent"] {
        client.get(&proxy.url(path)).await;
        origin.on(path, Behaviour::new().status(500));
    }
    let allowed = client.get(&proxy.url("/allowed")).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.x_cache(), "STALE");
    let silent = client.get(&proxy.url("/silent")).await;
    assert_eq!(silent.status, 500, "no stale-if-error: the error passes");
}

#[tokio::test]
async fn a_new_5xx_is_not_replaced_by_a_stored_stale_5xx() {
    let origin = Origin::start().await;
    origin.on(
        "/flaky",
        Behaviour::new()
            .status(503)
            .header("etag", "\"f1\"")
            .header("cache-control", "max-age=60, stale-if-error=600")
            .header("age", "60")
            .body("stored 503"),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    client.get(&proxy.url("/flaky")).await;
    origin.on("/flaky", Behaviour::new().status(500).body("new 500"));
    let reply = client.get(&proxy.url("/flaky")).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.text(), "new 500");
}

#[tokio::test]
async fn an_unsafe_request_invalidates_its_target_and_same_origin_locations() {
    let origin = Origin::start().await;
    for path in ["/items", "/items/7", "/items/8", "/elsewhere"] {
        origin.on(
            path,
            Behaviour::new().header("cache-control", "max-age=600"),
        );
    }
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    for path in ["/items", "/items/7", "/items/8", "/elsewhere"] {
        client.get(&proxy.url(path)).await;
    }
    origin.on(
        "/items",
        Behaviour::new()
            .status(201)
            .header("location", "/items/7")
            .header("content-location", "http://other.example/elsewhere"),
    );
    let created = client
        .send(Method::POST, &proxy.url("/items"), &[], "{}")
        .await;
    assert_eq!(created.status, 201);
    origin.on(
        "/items",
        Behaviour::new().header("cache-control", "max-age=600"),
    );
    for path in ["/items", "/items/7", "/items/8", "/elsewhere"] {
        client.get(&proxy.url(path)).await;
    }
    assert_eq!(origin.count("/items"), 3, "GET, POST, GET again");
    assert_eq!(origin.count("/items/7"), 2, "named by Location");
    assert_eq!(origin.count("/items/8"), 1, "not named");
    assert_eq!(
        origin.count("/elsewhere"),
        1,
        "another origin never invalidates"
    );
}

#[tokio::test]
async fn an_unsafe_request_answered_with_an_error_invalidates_nothing() {
    let origin = Origin::start().await;
    origin.on(
        "/doc",
        Behaviour::new().header("cache-control", "max-age=600"),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    client.get(&proxy.url("/doc")).await;
    origin.on("/doc", Behaviour::new().status(500));
    client
        .send(Method::DELETE, &proxy.url("/doc"), &[], "")
        .await;
    let after = client.get(&proxy.url("/doc")).await;
    assert_eq!(after.x_cache(), "HIT");
}

#[tokio::test]
async fn in_the_dashboard_mode_posts_on_caching_routes_are_reads_and_puts_invalidate() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();
    client.get(&proxy.url("/api/actions")).await;
    client.post(&proxy.url("/api/actions"), "{}").await;
    assert_eq!(
        client.get(&proxy.url("/api/actions")).await.x_cache(),
        "HIT",
        "a POST on a caching route is a read"
    );
    client
        .send(Method::PUT, &proxy.url("/api/actions"), &[], "{}")
        .await;
    assert_eq!(
        client.get(&proxy.url("/api/actions")).await.x_cache(),
        "MISS",
        "a PUT invalidates"
    );
}

#[tokio::test]
async fn the_standard_mode_never_answers_a_post_from_the_cache() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    origin.on(
        "/search",
        Behaviour::new().header("cache-control", "max-age=600"),
    );
    client.post(&proxy.url("/search"), "{}").await;
    let second = client.post(&proxy.url("/search"), "{}").await;
    assert_eq!(second.x_cache(), "BYPASS");
    assert_eq!(origin.count("/search"), 2);
}

#[tokio::test]
async fn a_set_cookie_answer_is_stored_without_its_cookie_which_only_its_requester_gets() {
    let origin = Origin::start().await;
    origin.on(
        "/welcome",
        Behaviour::new()
            .header("cache-control", "max-age=600")
            .header("set-cookie", "session=alice"),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    let first = client.get(&proxy.url("/welcome")).await;
    assert_eq!(first.header("set-cookie"), "session=alice");
    let second = client.get(&proxy.url("/welcome")).await;
    assert_eq!(second.x_cache(), "HIT");
    assert!(!second.headers.contains_key("set-cookie"), "never replayed");
}

#[tokio::test]
async fn the_dashboard_mode_never_stores_a_set_cookie_answer() {
    let origin = Origin::start().await;
    origin.on(
        "/welcome",
        Behaviour::new()
            .header("cache-control", "max-age=600")
            .header("set-cookie", "session=alice"),
    );
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();
    client.get(&proxy.url("/welcome")).await;
    client.get(&proxy.url("/welcome")).await;
    assert_eq!(origin.count("/welcome"), 2);
}

#[tokio::test]
async fn fields_named_by_no_cache_and_private_are_left_out_of_the_stored_copy() {
    let origin = Origin::start().await;
    origin.on(
        "/mixed",
        Behaviour::new()
            .header(
                "cache-control",
                "max-age=600, no-cache=\"x-a\", private=\"x-b\"",
            )
            .header("x-a", "1")
            .header("x-b", "2")
            .header("x-c", "3"),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    let first = client.get(&proxy.url("/mixed")).await;
    assert_eq!(first.header("x-a"), "1", "the requester gets them");
    let second = client.get(&proxy.url("/mixed")).await;
    assert_eq!(second.x_cache(), "HIT");
    assert!(!second.headers.contains_key("x-a"));
    assert!(!second.headers.contains_key("x-b"));
    assert_eq!(second.header("x-c"), "3");
}

#[tokio::test]
async fn connection_listed_and_hop_by_hop_fields_are_never_stored() {
    let origin = Origin::start().await;
    origin.on(
        "/hop",
        Behaviour::new()
            .header("cache-control", "max-age=600")
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-end", "1"),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    client.get(&proxy.url("/hop")).await;
    let hit = client.get(&proxy.url("/hop")).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(!hit.headers.contains_key("x-hop"));
    assert!(!hit.headers.contains_key("keep-alive"));
    assert_eq!(hit.header("x-end"), "1");
}

#[tokio::test]
async fn any_status_with_explicit_freshness_is_stored_but_206_never() {
    let origin = Origin::start().await;
    origin.on(
        "/moved",
        Behaviour::new()
            .status(302)
            .header("location", "/elsewhere")
            .header("cache-control", "max-age=600"),
    );
    origin.on(
        "/part",
        Behaviour::new()
            .status(206)
            .header("content-range", "bytes 0-1/10")
            .header("cache-control", "max-age=600"),
    );
    origin.on(
        "/gone",
        Behaviour::new()
            .status(410)
            .header("last-modified", LAST_MODIFIED),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    for path in ["/moved", "/part", "/gone"] {
        client.get(&proxy.url(path)).await;
        client.get(&proxy.url(path)).await;
    }
    assert_eq!(origin.count("/moved"), 1, "a 302 with max-age");
    assert_eq!(origin.count("/part"), 2, "ranges are not stored");
    assert_eq!(origin.count("/gone"), 1, "410 is heuristically cacheable");
}

#[tokio::test]
async fn the_clients_cache_control_is_honoured_in_the_standard_mode() {
    let origin = Origin::start().await;
    origin.on(
        "/feed",
        Behaviour::new()
            .etag("\"f1\"")
            .header("cache-control", "max-age=600"),
    );
    let proxy = spawn_proxy(&origin.url(), STANDARD).await;
    let client = Client::new();
    client.get(&proxy.url("/feed")).await;
    let fresh_enough = get_with(
        &client,
        &proxy.url("/feed"),
        &[("cache-control", "max-age=60")],
    )
    .await;
    assert_eq!(fresh_enough.x_cache(), "HIT");
    let too_picky = get_with(
        &client,
        &proxy.url("/feed"),
        &[("cache-control", "min-fresh=3600")],
    )
    .await;
    assert_eq!(too_picky.status, 200);
    assert_eq!(
        origin.last_headers()["if-none-match"],
        "\"f1\"",
        "revalidated"
    );
    get_with(
        &client,
        &proxy.url("/feed"),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(origin.count("/feed"), 3);
}

#[tokio::test]
async fn the_dashboard_mode_ignores_the_clients_no_cache() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();
    client.get(&proxy.url("/api/metrics")).await;
    let refresh = get_with(
        &client,
        &proxy.url("/api/metrics"),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(refresh.x_cache(), "HIT");
}

#[tokio::test]
async fn a_304_that_forbids_storing_drops_the_entry_and_only_its_requester_sees_it() {
    let origin = Origin::start().await;
    origin.on(
        "/api/filter-options",
        Behaviour::new()
            .etag("\"o1\"")
            .header("cache-control", "max-age=60")
            .header("age", "60"),
    );
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();
    let first = client.get(&proxy.url("/api/filter-options")).await;
    origin.on(
        "/api/filter-options",
        Behaviour::new()
            .etag("\"o1\"")
            .header("set-cookie", "session=bob"),
    );
    let second = client.get(&proxy.url("/api/filter-options")).await;
    assert_eq!(origin.last_headers()["if-none-match"], "\"o1\"");
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("set-cookie"), "session=bob", "its requester");
    assert!(second.header("cache-status").contains("detail=set-cookie"));
    client.get(&proxy.url("/api/filter-options")).await;
    assert!(
        !origin.last_headers().contains_key("if-none-match"),
        "the entry is gone: a whole new request"
    );
}
