//! Observability: `/api/cache/stats` per-route figures, the Prometheus text
//! at `/api/cache/metrics`, the `keys` listing and `health`, each checked
//! against the requests the test actually sent.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use support::{
    closed_port_url, eventually, spawn_proxy, Behaviour, Client, Gate, Origin, ProxyHandle,
    DASHBOARD_ROUTES,
};

/// The origin's pretend warehouse time for /api/metrics.
const QUERY_TIME: Duration = Duration::from_millis(40);

/// 3 misses (three filter sets) and 7 hits on get_metrics, 1 bypass on health.
async fn known_traffic(proxy: &ProxyHandle) {
    let client = Client::new();
    let url = proxy.url("/api/metrics");
    for org in ["Vale", "Acme", "Globex"] {
        let reply = client.post(&url, &format!(r#"{{"org":"{org}"}}"#)).await;
        assert_eq!(reply.x_cache(), "MISS");
    }
    for org in ["Vale", "Vale", "Vale", "Vale", "Acme", "Acme", "Globex"] {
        let reply = client.post(&url, &format!(r#"{{"org":"{org}"}}"#)).await;
        assert_eq!(reply.x_cache(), "HIT");
    }
    let reply = client.get(&proxy.url("/health")).await;
    assert_eq!(reply.x_cache(), "BYPASS");
}

/// OpenMetrics samples by `name{labels}` (labels as written by the encoder).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("sample has a value");
            let value = value.parse().unwrap_or_else(|_| panic!("number in {line}"));
            (name.to_owned(), value)
        })
        .collect()
}

async fn scrape(proxy: &ProxyHandle) -> HashMap<String, f64> {
    let reply = Client::new().get(&proxy.url("/api/cache/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .starts_with("application/openmetrics-text"),
        "{:?}",
        reply.headers
    );
    assert_eq!(reply.header("cache-control"), "no-store");
    let text = reply.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    samples(&text)
}

fn sample(samples: &HashMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing; have {:#?}", samples.keys()))
}

/// POSTs `body` to `path` twice at once, the origin holding `path` behind
/// `gate`: the second caller waits on the first one's fill. Opens the gate
/// once it does and returns both answers.
async fn leader_and_waiter(
    proxy: &ProxyHandle,
    origin: &Origin,
    gate: &Gate,
    path: &str,
    body: &str,
) -> (support::Reply, support::Reply) {
    let send = || {
        let (url, body) = (proxy.url(path), body.to_owned());
        tokio::spawn(async move { Client::new().post(&url, &body).await })
    };
    let coalesced = || {
        proxy
            .proxy
            .metrics
            .coalesced
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let (seen, waiting) = (origin.total(), coalesced());
    let leader = send();
    origin.wait_for_total(seen + 1).await;
    let waiter = send();
    eventually("the second caller to wait on the fill", || {
        coalesced() == waiting + 1
    })
    .await;
    gate.open();
    (leader.await.unwrap(), waiter.await.unwrap())
}

async fn dashboard_proxy(origin: &Origin, extra: &str) -> ProxyHandle {
    origin.on("/api/metrics", Behaviour::new().delay(QUERY_TIME));
    spawn_proxy(&origin.url(), &format!("{extra}\n{DASHBOARD_ROUTES}")).await
}

#[tokio::test]
async fn stats_report_hit_rate_saved_time_and_routes_for_the_traffic_sent() {
    let origin = Origin::start().await;
    let proxy = dashboard_proxy(&origin, "").await;
    known_traffic(&proxy).await;

    let cache = proxy.stats().await;
    assert_eq!(cache["size"], 3);
    assert_eq!(cache["hits"], 7);
    assert_eq!(cache["misses"], 3);
    assert_eq!(cache["bypassed"], 1);
    assert_eq!(cache["hit_rate"].as_f64(), Some(0.7));
    assert_eq!(cache["upstream_requests"], 4);
    assert_eq!(cache["databricks_queries"], 4);
    assert_eq!(origin.total(), 4);
    let saved = cache["upstream_seconds_saved"].as_f64().unwrap();
    assert!(
        saved >= 7.0 * QUERY_TIME.as_secs_f64(),
        "7 hits on answers that took >= 40 ms each: {saved}"
    );
    assert!(cache["avg_miss_ms"].as_f64().unwrap() >= 40.0, "{cache}");
    assert!(cache["avg_hit_ms"].as_f64().unwrap() > 0.0, "{cache}");

    let metrics = &cache["routes"]["get_metrics"];
    assert_eq!(metrics["hits"], 7, "{cache}");
    assert_eq!(metrics["misses"], 3);
    assert_eq!(metrics["bypassed"], 0);
    assert_eq!(metrics["hit_rate"].as_f64(), Some(0.7));
    assert_eq!(metrics["upstream_seconds_saved"].as_f64(), Some(saved));
    let health = &cache["routes"]["health"];
    assert_eq!(health["bypassed"], 1, "{cache}");
    assert_eq!(health["hits"], 0);
    assert!(
        cache["routes"].get("admin").is_none(),
        "admin calls are no route"
    );
}

#[tokio::test]
async fn stats_keep_the_seed_fields_first() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let reply = Client::new().get(&proxy.url("/api/cache/stats")).await;
    assert_eq!(reply.header("cache-control"), "no-store", "live figures");
    let text = reply.text();
    assert!(
        text.starts_with(
            r#"{"status":"ok","cache":{"size":0,"maxsize":1000,"ttl":14400,"ttl_hours":4.0,"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn prometheus_agrees_with_stats_and_the_traffic_sent() {
    let origin = Origin::start().await;
    let proxy = dashboard_proxy(&origin, "").await;
    known_traffic(&proxy).await;
    let cache = proxy.stats().await;
    let s = scrape(&proxy).await;

    let requests = |route: &str, cache: &str| {
        sample(
            &s,
            &format!(r#"dashcache_requests_total{{route="{route}",cache="{cache}"}}"#),
        )
    };
    assert_eq!(requests("get_metrics", "HIT"), 7.0);
    assert_eq!(requests("get_metrics", "MISS"), 3.0);
    assert_eq!(requests("get_metrics", "BYPASS"), 0.0);
    assert_eq!(requests("health", "BYPASS"), 1.0);
    assert_eq!(
        sample(
            &s,
            r#"dashcache_response_duration_seconds_count{route="get_metrics",cache="HIT"}"#
        ),
        7.0
    );
    let miss_sum = sample(
        &s,
        r#"dashcache_response_duration_seconds_sum{route="get_metrics",cache="MISS"}"#,
    );
    assert!(miss_sum >= 3.0 * QUERY_TIME.as_secs_f64(), "{miss_sum}");
    assert_eq!(sample(&s, "dashcache_upstream_requests_total"), 4.0);
    assert_eq!(sample(&s, "dashcache_upstream_errors_total"), 0.0);
    assert_eq!(sample(&s, "dashcache_upstream_duration_seconds_count"), 4.0);
    assert_eq!(sample(&s, "dashcache_coalesced_waiters_total"), 0.0);
    assert_eq!(sample(&s, "dashcache_stale_answers_total"), 0.0);
    assert_eq!(sample(&s, "dashcache_evictions_total"), 0.0);
    assert_eq!(sample(&s, "dashcache_expirations_total"), 0.0);
    assert_eq!(sample(&s, "dashcache_stored_total"), 3.0);
    assert_eq!(sample(&s, "dashcache_entries"), 3.0);
    assert_eq!(sample(&s, "dashcache_max_entries"), 1000.0);
    assert_eq!(
        sample(&s, "dashcache_bytes"),
        cache["bytes"].as_f64().unwrap()
    );
    let saved = sample(
        &s,
        r#"dashcache_upstream_seconds_saved_total{route="get_metrics"}"#,
    );
    let stats_saved = cache["upstream_seconds_saved"].as_f64().unwrap();
    assert!(
        (saved - stats_saved).abs() < 0.001,
        "prometheus {saved} vs stats {stats_saved}"
    );
}

#[tokio::test]
async fn prometheus_counts_coalesced_waiters_and_upstream_errors() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    leader_and_waiter(&proxy, &origin, &gate, "/api/metrics", r#"{"org":"Vale"}"#).await;
    let s = scrape(&proxy).await;
    assert_eq!(sample(&s, "dashcache_coalesced_waiters_total"), 1.0);
    assert_eq!(sample(&s, "dashcache_upstream_requests_total"), 1.0);

    let dead = spawn_proxy(&closed_port_url().await, DASHBOARD_ROUTES).await;
    let reply = Client::new()
        .post(&dead.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let s = scrape(&dead).await;
    assert_eq!(sample(&s, "dashcache_upstream_errors_total"), 1.0);
    assert_eq!(sample(&s, "dashcache_upstream_duration_seconds_count"), 1.0);
}

/// Stats and Prometheus count the same requests, route by route, exactly as
/// sent: hits, misses (a coalesced waiter and a not-stored answer among
/// them), bypasses, upstream requests and the time the hits saved.
#[tokio::test]
async fn stats_and_prometheus_agree_exactly_on_a_mixed_traffic() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().delay(QUERY_TIME));
    origin.on("/api/actions", Behaviour::new().gate(&gate));
    origin.on("/api/filter-options", Behaviour::new().status(404));
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();

    // get_metrics: 2 misses, 3 hits.
    for (org, expected) in [
        ("Vale", "MISS"),
        ("Acme", "MISS"),
        ("Vale", "HIT"),
        ("Vale", "HIT"),
        ("Acme", "HIT"),
    ] {
        let reply = client
            .post(&proxy.url("/api/metrics"), &format!(r#"{{"org":"{org}"}}"#))
            .await;
        assert_eq!(reply.x_cache(), expected, "{org}");
    }
    // get_actions: a leader and one coalesced waiter, one upstream request.
    let (leader, waiter) = leader_and_waiter(&proxy, &origin, &gate, "/api/actions", "{}").await;
    assert_eq!((leader.x_cache(), waiter.x_cache()), ("MISS", "MISS"));
    // get_filter_options: a 404 is not stored, so both requests miss.
    for _ in 0..2 {
        let reply = client.get(&proxy.url("/api/filter-options")).await;
        assert_eq!((reply.status.as_u16(), reply.x_cache()), (404, "MISS"));
    }
    // health: 2 bypasses.
    for _ in 0..2 {
        assert_eq!(client.get(&proxy.url("/health")).await.x_cache(), "BYPASS");
    }
    assert_eq!(origin.total(), 7, "2 + 1 + 2 + 2 upstream requests");

    let cache = proxy.stats().await;
    let s = scrape(&proxy).await;
    let expected = [
        // route, hits, misses, bypassed
        ("get_metrics", 3, 2, 0),
        ("get_actions", 0, 2, 0),
        ("get_filter_options", 0, 2, 0),
        ("health", 0, 0, 2),
    ];
    assert_eq!(
        cache["routes"].as_object().unwrap().len(),
        expected.len(),
        "{cache}"
    );
    for (route, hits, misses, bypassed) in expected {
        let stats = &cache["routes"][route];
        assert_eq!(
            (&stats["hits"], &stats["misses"], &stats["bypassed"]),
            (&hits.into(), &misses.into(), &bypassed.into()),
            "stats for {route}: {cache}"
        );
        for (status, count) in [("HIT", hits), ("MISS", misses), ("BYPASS", bypassed)] {
            let labels = format!(r#"{{route="{route}",cache="{status}"}}"#);
            assert_eq!(
                sample(&s, &format!("dashcache_requests_total{labels}")),
                f64::from(count),
                "{route} {status}"
            );
            assert_eq!(
                sample(
                    &s,
                    &format!("dashcache_response_duration_seconds_count{labels}")
                ),
                f64::from(count),
                "{route} {status} histogram"
            );
        }
        // Saved time: stats in ms precision, Prometheus in µs.
        let prometheus_saved = sample(
            &s,
            &format!(r#"dashcache_upstream_seconds_saved_total{{route="{route}"}}"#),
        );
        let stats_saved = stats["upstream_seconds_saved"].as_f64().unwrap();
        assert_eq!(
            (prometheus_saved * 1000.0).round() / 1000.0,
            stats_saved,
            "{route}"
        );
    }

    assert_eq!(cache["hits"], 3);
    assert_eq!(cache["misses"], 6);
    assert_eq!(cache["bypassed"], 2);
    assert_eq!(cache["hit_rate"].as_f64(), Some(0.3333));
    assert_eq!(cache["coalesced"], 1);
    assert_eq!(sample(&s, "dashcache_coalesced_waiters_total"), 1.0);
    assert_eq!(cache["upstream_requests"], 7);
    assert_eq!(cache["databricks_queries"], 7);
    assert_eq!(sample(&s, "dashcache_upstream_requests_total"), 7.0);
    assert_eq!(sample(&s, "dashcache_upstream_duration_seconds_count"), 7.0);
    assert_eq!(cache["stored"], 3);
    assert_eq!(sample(&s, "dashcache_stored_total"), 3.0);
    assert_eq!(cache["not_stored"], 2);
    assert_eq!(sample(&s, "dashcache_not_stored_total"), 2.0);
    assert_eq!(cache["size"], 3);
    assert_eq!(sample(&s, "dashcache_entries"), 3.0);

    // Each hit saved what its entry's upstream request took.
    let saved = cache["upstream_seconds_saved"].as_f64().unwrap();
    assert!(saved >= 3.0 * QUERY_TIME.as_secs_f64(), "{cache}");
    // Averages: stats' per-kind mean is the histogram's sum over count.
    let mean = |route: &str, status: &str| {
        let labels = format!(r#"{{route="{route}",cache="{status}"}}"#);
        sample(
            &s,
            &format!("dashcache_response_duration_seconds_sum{labels}"),
        ) / sample(
            &s,
            &format!("dashcache_response_duration_seconds_count{labels}"),
        ) * 1000.0
    };
    let avg_hit = cache["routes"]["get_metrics"]["avg_hit_ms"]
        .as_f64()
        .unwrap();
    assert!(
        (mean("get_metrics", "HIT") - avg_hit).abs() < 0.002,
        "{avg_hit}"
    );
    let avg_miss = cache["routes"]["get_metrics"]["avg_miss_ms"]
        .as_f64()
        .unwrap();
    assert!(avg_miss >= QUERY_TIME.as_secs_f64() * 1000.0);
    assert!(
        (mean("get_metrics", "MISS") - avg_miss).abs() < 0.002,
        "{avg_miss}"
    );
    assert!(cache["uptime_seconds"].as_u64().is_some());
}

// ---------------------------------------------------------------- keys

const TOKEN: &str = "admin_token = \"s3cret\"";
const BEARER: (&str, &str) = ("authorization", "Bearer s3cret");

async fn keys(proxy: &ProxyHandle, query: &str, headers: &[(&str, &str)]) -> support::Reply {
    Client::new()
        .send(
            Method::GET,
            &proxy.url(&format!("/api/cache/keys{query}")),
            headers,
            "",
        )
        .await
}

fn orgs(answer: &Value) -> Vec<String> {
    answer["keys"]
        .as_array()
        .expect("keys is an array")
        .iter()
        .map(|k| {
            let description = k["description"].as_str().unwrap();
            description
                .rsplit_once("\"org\":\"")
                .and_then(|(_, rest)| rest.split('"').next())
                .unwrap_or(description)
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn keys_lists_entries_newest_or_hottest_first() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), &format!("{TOKEN}\n{DASHBOARD_ROUTES}")).await;
    let client = Client::new();
    let url = proxy.url("/api/metrics");
    // Stored in the order Vale, Acme, Globex; then Acme hit 3 times, Globex once.
    for org in ["Vale", "Acme", "Globex", "Acme", "Acme", "Acme", "Globex"] {
        client.post(&url, &format!(r#"{{"org":"{org}"}}"#)).await;
    }
    client.get(&proxy.url("/api/filter-options")).await;

    let newest = keys(&proxy, "?pattern=get_metrics", &[BEARER]).await;
    assert_eq!(newest.status, StatusCode::OK, "{}", newest.text());
    assert_eq!(newest.header("cache-control"), "no-store");
    let newest = newest.json();
    assert_eq!(newest["status"], "ok");
    assert_eq!(newest["sort"], "newest");
    assert_eq!(newest["matched"], 3);
    assert_eq!(orgs(&newest), ["Globex", "Acme", "Vale"]);
    let first = &newest["keys"][0];
    let key = first["key"].as_str().unwrap();
    assert_eq!(key.len(), 32, "{first}");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(first["route"], "get_metrics");
    assert_eq!(
        first["description"],
        r#"get_metrics POST /api/metrics {"org":"Globex"}"#
    );
    assert_eq!(first["hits"], 1);
    assert!(first["age_s"].as_u64().unwrap() <= 1, "{first}");
    let ttl_left = first["ttl_left_s"].as_u64().unwrap();
    assert!((14_390..=14_400).contains(&ttl_left), "{first}");
    assert!(first["bytes"].as_u64().unwrap() > 0);

    let hottest = keys(&proxy, "?sort=hottest", &[BEARER]).await.json();
    assert_eq!(hottest["matched"], 4, "the filter-options entry too");
    let hits: Vec<u64> = hottest["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["hits"].as_u64().unwrap())
        .collect();
    assert_eq!(hits, [3, 1, 0, 0]);
    assert_eq!(&orgs(&hottest)[..2], ["Acme", "Globex"]);

    let limited = keys(&proxy, "?sort=hottest&limit=1&pattern=Globex", &[BEARER])
        .await
        .json();
    assert_eq!(limited["matched"], 1);
    assert_eq!(limited["count"], 1);
    assert_eq!(orgs(&limited), ["Globex"]);
    let none = keys(&proxy, "?pattern=Initech", &[BEARER]).await.json();
    assert_eq!(none["count"], 0);
    assert_eq!(none["keys"], Value::Array(vec![]));
}

#[tokio::test]
async fn keys_is_protected_like_clear_and_checks_its_parameters() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), &format!("{TOKEN}\n{DASHBOARD_ROUTES}")).await;
    Client::new()
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;

    let missing = keys(&proxy, "", &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    missing.error_message();
    let wrong = keys(&proxy, "", &[("authorization", "Bearer nope")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        !wrong.text().contains("Vale"),
        "no entry leaks: {}",
        wrong.text()
    );

    for query in ["?sort=oldest", "?limit=0", "?limit=lots", "?limit=100000"] {
        let reply = keys(&proxy, query, &[BEARER]).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        let message = reply.error_message();
        assert!(
            message.contains("sort") || message.contains("limit"),
            "{message}"
        );
    }
    let post = Client::new()
        .send(Method::POST, &proxy.url("/api/cache/keys"), &[BEARER], "")
        .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(origin.total(), 1, "admin calls never reach the origin");
}

#[tokio::test]
async fn keys_default_limit_is_100() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();
    for i in 0..105 {
        client
            .post(&proxy.url("/api/metrics"), &format!(r#"{{"page":{i}}}"#))
            .await;
    }
    // No token configured: loopback clients may list.
    let answer = keys(&proxy, "", &[]).await.json();
    assert_eq!(answer["matched"], 105);
    assert_eq!(answer["count"], 100);
}

#[tokio::test]
async fn keys_without_a_pattern_lists_the_newest_and_the_hottest_from_counts() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();
    let url = proxy.url("/api/metrics");
    for i in 0..300 {
        client.post(&url, &format!(r#"{{"page":{i}}}"#)).await;
    }
    let pages = |answer: &Value| -> Vec<String> {
        answer["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                let d = k["description"].as_str().unwrap();
                d.rsplit_once("\"page\":")
                    .unwrap()
                    .1
                    .trim_end_matches('}')
                    .to_owned()
            })
            .collect()
    };
    let newest = keys(&proxy, "?limit=10", &[]).await.json();
    assert_eq!(newest["matched"], 300);
    assert_eq!(newest["count"], 10);
    assert_eq!(
        pages(&newest),
        ["299", "298", "297", "296", "295", "294", "293", "292", "291", "290"]
    );
    // Known hit counts: page 5 three times, page 250 twice, page 7 once.
    for (page, times) in [(5, 3), (250, 2), (7, 1)] {
        for _ in 0..times {
            client.post(&url, &format!(r#"{{"page":{page}}}"#)).await;
        }
    }
    let hottest = keys(&proxy, "?sort=hottest&limit=3", &[]).await.json();
    assert_eq!(hottest["matched"], 300);
    assert_eq!(pages(&hottest), ["5", "250", "7"], "{hottest}");
    // Asked again inside the list's age: the counts are read as they are now.
    for _ in 0..5 {
        client.post(&url, r#"{"page":7}"#).await;
    }
    let again = keys(&proxy, "?sort=hottest&limit=3", &[]).await.json();
    assert_eq!(pages(&again), ["7", "5", "250"], "{again}");
    assert_eq!(again["keys"][0]["hits"], 6);
    assert_eq!(origin.total(), 300, "hits only after the fill");
}

// ---------------------------------------------------------------- health

#[tokio::test]
async fn health_reports_a_reachable_upstream() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let reply = Client::new().get(&proxy.url("/api/cache/health")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let json = reply.json();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["upstream"]["reachable"], true, "{json}");
    assert_eq!(json["upstream"]["url"], origin.url());
    let probe_ms = json["upstream"]["probe_ms"].as_f64().unwrap();
    assert!(probe_ms > 0.0, "the connect's time, in ms: {json}");
    assert!(json["upstream"].get("error").is_none());
    assert_eq!(json["cache"]["enabled"], true);
    assert_eq!(origin.total(), 0, "a TCP probe, not a request");
}

#[tokio::test]
async fn health_answers_200_when_the_upstream_is_down_and_hits_still_work() {
    // Fill the cache, then take the origin away.
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();
    client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    drop(origin);
    let dead = spawn_proxy(&closed_port_url().await, "").await;

    for proxy in [&proxy, &dead] {
        let reply = client.get(&proxy.url("/api/cache/health")).await;
        assert_eq!(reply.status, StatusCode::OK);
        let json = reply.json();
        assert_eq!(json["status"], "ok");
        if std::ptr::eq(proxy, &dead) {
            assert_eq!(json["upstream"]["reachable"], false, "{json}");
            assert_eq!(json["upstream"]["error"], "refused", "{json}");
            // A loopback caller is trusted with the probe's detail.
            let detail = json["upstream"]["detail"].as_str().unwrap();
            assert!(detail.contains("127.0.0.1"), "{detail}");
        }
    }
    let hit = client
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    assert_eq!(hit.x_cache(), "HIT");
}

/// `dashcache --healthcheck --listen ADDR`, as Docker's HEALTHCHECK runs it.
async fn healthcheck(addr: &str) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_dashcache"))
        .args(["--healthcheck", "--listen", addr])
        .env_clear()
        .output()
        .await
        .expect("the dashcache binary runs")
}

#[tokio::test]
async fn the_healthcheck_flag_asks_the_running_proxy() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let healthy = healthcheck(&proxy.addr.to_string()).await;
    let stdout = String::from_utf8_lossy(&healthy.stdout);
    assert!(healthy.status.success(), "{healthy:?}");
    assert!(
        stdout.contains("healthy") && stdout.contains(&format!("{} reachable", origin.url())),
        "{stdout}"
    );
    // An unspecified address is asked on loopback.
    let wildcard = healthcheck(&format!("0.0.0.0:{}", proxy.addr.port())).await;
    assert!(wildcard.status.success(), "{wildcard:?}");

    // The upstream down: still healthy (hits answer), and said so.
    let dead = spawn_proxy(&closed_port_url().await, "").await;
    let degraded = healthcheck(&dead.addr.to_string()).await;
    assert!(degraded.status.success(), "{degraded:?}");
    assert!(String::from_utf8_lossy(&degraded.stdout).contains("unreachable"));

    // No proxy there: unhealthy, naming the address.
    let nobody = closed_port_url().await;
    let nobody = nobody.trim_start_matches("http://");
    let down = healthcheck(nobody).await;
    assert_eq!(down.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(
        stderr.contains("unhealthy") && stderr.contains(nobody),
        "{stderr}"
    );
    assert_eq!(origin.total(), 0, "the health check asks no upstream");
}

// ---------------------------------------------------------------- page

#[tokio::test]
async fn the_status_page_is_served_at_the_admin_root() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    for path in ["/api/cache", "/api/cache/"] {
        let reply = Client::new().get(&proxy.url(path)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.header("content-type"), "text/html; charset=utf-8");
        let page = reply.text();
        assert!(page.contains("<title>dashcache status</title>"));
        assert!(page.contains("/stats") && page.contains("/keys"));
    }
    let post = Client::new()
        .send(Method::POST, &proxy.url("/api/cache/"), &[], "")
        .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(origin.total(), 0);
}
