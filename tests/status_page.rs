//! The status page at `/api/cache/` in a real browser: headless Chromium
//! (Debian's `chromium` package) loads it from a running proxy after known
//! traffic, and the figures it shows must agree with the requests sent; its
//! clear, invalidate and refresh buttons must work with the admin token
//! typed in.
//!
//! Chromium prints the DOM once the page's scripts have run
//! (`--dump-dom` after `--virtual-time-budget`). To read figures and click
//! buttons, it loads a small harness page that the origin serves *through
//! the proxy* (route `harness`, not cached): same origin as the status page,
//! so the harness can reach into the page's frame, press its buttons, and
//! write what the page shows into its own DOM as JSON.
//!
//! Without `/usr/bin/chromium` (or `DASHCACHE_CHROMIUM`) these tests fail,
//! unless `DASHCACHE_SKIP_BROWSER=1` says to skip them.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::{Behaviour, Client, Origin, ProxyHandle, DASHBOARD_ROUTES};

/// The origin's pretend warehouse time, so hits save measurable time.
const QUERY_TIME: Duration = Duration::from_millis(20);

/// How long one Chromium run may take in real time.
const BROWSER_PATIENCE: Duration = Duration::from_secs(60);

const HARNESS_ROUTE: &str = r#"
[[route]]
name = "harness"
path = "/harness.html"
cache = false
"#;

/// Frames the status page, reads what it shows and (with `?actions` or
/// `?refresh`) drives its token field and buttons; writes JSON into `#result`.
const HARNESS: &str = include_str!("status_page_harness.html");

/// Chromium's path, `None` when it is missing and the browser tests are
/// to be skipped; panics when it is missing and they are not.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("DASHCACHE_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("DASHCACHE_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!(
            "skipped: {} not found and DASHCACHE_SKIP_BROWSER=1",
            path.display()
        );
        return None;
    }
    panic!(
        "{} not found: the status page is tested in headless Chromium. Install it \
         (apt-get install chromium), point DASHCACHE_CHROMIUM at it, or set \
         DASHCACHE_SKIP_BROWSER=1 to skip the browser tests",
        path.display()
    );
}

/// Loads `url` in headless Chromium and returns the DOM once the page's
/// scripts have had `budget_ms` of (virtual) time.
async fn dump_dom(chromium: &PathBuf, url: &str, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BROWSER_PATIENCE, run)
        .await
        .expect("chromium finishes in time")
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && dom.contains("</html>"),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    dom
}

/// The harness's JSON result from a dumped DOM.
fn harness_result(dom: &str) -> Value {
    let start = dom
        .find(r#"<pre id="result">"#)
        .expect("the harness's <pre>")
        + 17;
    let end = start + dom[start..].find("</pre>").expect("</pre>");
    let json = dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&");
    let result: Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("the harness finished ({e}); DOM:\n{dom}"));
    assert!(result.get("error").is_none(), "harness: {result}");
    result
}

async fn proxy_with_harness(origin: &Origin, extra: &str) -> ProxyHandle {
    origin.on("/api/metrics", Behaviour::new().delay(QUERY_TIME));
    origin.on("/api/filter-options", Behaviour::new().delay(QUERY_TIME));
    origin.on(
        "/harness.html",
        Behaviour::new()
            .header("content-type", "text/html; charset=utf-8")
            .body(HARNESS),
    );
    support::spawn_proxy(
        &origin.url(),
        &format!("{extra}\n{HARNESS_ROUTE}\n{DASHBOARD_ROUTES}"),
    )
    .await
}

async fn post_metrics(proxy: &ProxyHandle, org: &str, expected: &str) {
    let reply = Client::new()
        .post(&proxy.url("/api/metrics"), &format!(r#"{{"org":"{org}"}}"#))
        .await;
    assert_eq!(reply.x_cache(), expected, "{org}");
}

/// The cells of the routes row named `route`.
fn route_row<'a>(routes: &'a Value, route: &str) -> Vec<&'a str> {
    routes
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect::<Vec<_>>()
        })
        .find(|row| row[0] == route)
        .unwrap_or_else(|| panic!("no row for {route} in {routes}"))
}

/// Asserts that `text`, seconds as the page shows them under 10 s ("0.17 s",
/// "0 s": at most two decimals), is `seconds` rounded.
fn assert_shows_seconds(text: &str, seconds: f64) {
    let shown: f64 = text
        .strip_suffix(" s")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text:?} is not seconds"));
    assert!(
        (shown - seconds).abs() <= 0.005 + 1e-9,
        "{text:?} shows {seconds}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_figures_of_the_traffic_sent() {
    let Some(chromium) = chromium() else { return };
    let origin = Origin::start().await;
    let proxy = proxy_with_harness(&origin, "").await;

    // get_metrics: 3 misses on distinct filters, then 5 hits (Vale 4, Acme 1).
    for org in ["Vale", "Acme", "Globex"] {
        post_metrics(&proxy, org, "MISS").await;
    }
    for org in ["Vale", "Vale", "Vale", "Vale", "Acme"] {
        post_metrics(&proxy, org, "HIT").await;
    }
    // get_filter_options: 1 miss, 3 hits; health: 1 bypass.
    let client = Client::new();
    for expected in ["MISS", "HIT", "HIT", "HIT"] {
        let reply = client.get(&proxy.url("/api/filter-options")).await;
        assert_eq!(reply.x_cache(), expected);
    }
    assert_eq!(client.get(&proxy.url("/health")).await.x_cache(), "BYPASS");

    // The page on its own: the hit rate is there once its script has run.
    let dom = dump_dom(&chromium, &proxy.url("/api/cache/"), 5_000).await;
    assert!(
        dom.contains(r#"<div class="value" id="hit-rate">66.7%</div>"#),
        "8 hits / 4 misses: {dom}"
    );
    assert!(dom.contains(r#"<tr data-route="get_metrics">"#), "{dom}");

    // Through the harness (one more BYPASS request, on route "harness").
    let dom = dump_dom(&chromium, &proxy.url("/harness.html?traffic"), 20_000).await;
    let result = harness_result(&dom);
    // The stats the page showed, read by the harness right after the page.
    let stats = &result["stats"];
    assert_eq!(stats["hits"], 8, "{stats}");
    assert_eq!(stats["bypassed"], 2, "health and the harness");

    let shown = &result["figures"];
    assert_eq!(shown["hit-rate"], "66.7%", "{result}");
    assert_eq!(shown["hits"], "8");
    assert_eq!(shown["misses"], "4");
    assert_eq!(shown["requests"], "14", "8 hits + 4 misses + 2 bypassed");
    assert_eq!(
        shown["upstream-requests"], "6",
        "4 misses + 2 bypassed: {result}"
    );
    assert_eq!(shown["upstream-errors"], "0");
    assert_eq!(shown["coalesced"], "0");
    assert_eq!(shown["size"], "4");
    assert_eq!(shown["maxsize"], "1000");
    assert_eq!(shown["ttl"], "4 h");
    assert_eq!(shown["upstream-state"], "reachable");
    assert_eq!(shown["enabled"], "on");
    let saved = stats["upstream_seconds_saved"].as_f64().unwrap();
    assert!(saved >= 8.0 * QUERY_TIME.as_secs_f64(), "{stats}");
    assert_shows_seconds(shown["saved"].as_str().unwrap(), saved);

    // Route table: name, hits, misses, bypassed, hit rate, avg hit, avg miss, saved.
    let routes = &result["routes"];
    assert_eq!(routes.as_array().unwrap().len(), 4, "{routes}");
    assert_eq!(
        route_row(routes, "get_metrics")[..5],
        ["get_metrics", "5", "3", "0", "62.5%"]
    );
    assert_eq!(
        route_row(routes, "get_filter_options")[..5],
        ["get_filter_options", "3", "1", "0", "75%"]
    );
    assert_eq!(
        route_row(routes, "health")[..7],
        ["health", "0", "0", "1", "–", "–", "–"]
    );
    assert_eq!(
        route_row(routes, "harness")[..4],
        ["harness", "0", "0", "1"]
    );
    assert_shows_seconds(
        route_row(routes, "get_metrics")[7],
        stats["routes"]["get_metrics"]["upstream_seconds_saved"]
            .as_f64()
            .unwrap(),
    );

    // Hottest keys: Vale (4 hits), filter options (3), Acme (1), Globex (0),
    // with the keys listing's own key prefixes.
    let listing = Client::new()
        .get(&proxy.url("/api/cache/keys?sort=hottest"))
        .await
        .json();
    let keys = result["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 4, "{result}");
    assert_eq!(result["figures"]["keys-matched"], "(4 of 4 entries)");
    let expected = [
        ("get_metrics", "4", r#"{"org":"Vale"}"#),
        ("get_filter_options", "3", "GET /api/filter-options"),
        ("get_metrics", "1", r#"{"org":"Acme"}"#),
        ("get_metrics", "0", r#"{"org":"Globex"}"#),
    ];
    assert_eq!(
        listing["keys"][0]["hits"],
        4 + 3,
        "the harness's hits came after"
    );
    for (i, (row, (route, hits, described))) in keys.iter().zip(expected).enumerate() {
        let key = listing["keys"][i]["key"].as_str().unwrap();
        assert_eq!(row[0], key[..16], "row {i}: {row}");
        assert_eq!(row[1], route, "row {i}: {row}");
        assert_eq!(row[2], hits, "row {i}: {row}");
        assert!(
            row[6].as_str().unwrap().contains(described),
            "row {i}: {row}"
        );
    }
    // The harness's three hits, shown by the page's own refresh.
    assert_eq!(result["sent"], "HIT");
    let refreshed = &result["refreshed"];
    assert_eq!(refreshed["requests"], "17", "{refreshed}");
    assert_eq!(refreshed["hits"], "11");
    assert_eq!(refreshed["hit-rate"], "73.3%", "11 of 15");
    let rps: f64 = refreshed["rps"].as_str().unwrap().parse().expect("a rate");
    assert!(rps >= 0.0);
    let now = proxy.stats().await;
    assert_eq!((&now["hits"], &now["misses"]), (&11.into(), &4.into()));
    assert_eq!(
        origin.total(),
        6,
        "4 misses and 2 bypasses reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buttons_clear_and_invalidate_with_the_admin_token() {
    let Some(chromium) = chromium() else { return };
    let origin = Origin::start().await;
    let proxy = proxy_with_harness(&origin, "admin_token = \"s3cret\"").await;
    for org in ["Vale", "Acme", "Globex"] {
        post_metrics(&proxy, org, "MISS").await;
    }

    let dom = dump_dom(&chromium, &proxy.url("/harness.html?actions"), 30_000).await;
    let result = harness_result(&dom);

    assert_eq!(
        result["keys_note"], "enter the admin token to list keys",
        "{result}"
    );
    assert_eq!(
        result["wrong_token"]["text"], "admin endpoint requires a valid bearer token",
        "{result}"
    );
    assert_eq!(result["wrong_token"]["class"], "bad");
    assert_eq!(result["keys_with_token"], 3, "{result}");
    assert_eq!(
        result["invalidate"]["text"], "Invalidated 1 cache keys matching pattern 'Acme'",
        "{result}"
    );
    assert_eq!(result["invalidate"]["class"], "ok");
    let left: Vec<&str> = result["keys_after_invalidate"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|d| !d.contains("Acme")), "{left:?}");
    assert!(
        result["confirm"]
            .as_str()
            .is_some_and(|q| q.starts_with("Clear the whole cache?")),
        "the clear button asks first: {result}"
    );
    assert_eq!(result["clear"]["text"], "Cache cleared successfully");
    assert_eq!(result["after_clear"]["size"], "0");

    // What the buttons did, seen from the proxy.
    assert_eq!(proxy.proxy.store.len(), 0, "the cache is empty");
    let hit_after_clear = Client::new()
        .post(&proxy.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    assert_eq!(hit_after_clear.x_cache(), "MISS");
    assert_eq!(
        origin.count("/api/metrics"),
        4,
        "the page's admin calls never reach the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_button_refreshes_the_matching_entries_with_the_admin_token() {
    let Some(chromium) = chromium() else { return };
    let origin = Origin::start().await;
    let proxy = proxy_with_harness(&origin, "admin_token = \"s3cret\"").await;
    for org in ["Vale", "Acme", "Globex"] {
        post_metrics(&proxy, org, "MISS").await;
    }
    let reply = Client::new().get(&proxy.url("/api/filter-options")).await;
    assert_eq!(reply.x_cache(), "MISS");

    let dom = dump_dom(&chromium, &proxy.url("/harness.html?refresh"), 30_000).await;
    let result = harness_result(&dom);

    assert_eq!(
        result["progress_hidden_before"], true,
        "no progress line before anything was scheduled: {result}"
    );
    assert_eq!(
        result["refresh"]["text"],
        "Refreshing 3 cache keys matching pattern 'org' in the background",
        "{result}"
    );
    assert_eq!(result["refresh"]["class"], "ok");
    let progress = &result["progress"];
    assert_eq!(progress["scheduled"], "3", "{result}");
    assert_eq!(progress["done"], "3", "{result}");
    assert_eq!(progress["failed"], "0", "{result}");
    assert_eq!(progress["dropped"], "0", "{result}");

    // What the button did, seen from the proxy and the origin: one new
    // upstream query per refreshed entry, the unmatched one left alone.
    let refresh = &proxy.stats().await["refresh"];
    assert_eq!(refresh["scheduled"], 3, "{refresh}");
    assert_eq!(refresh["done"], refresh["scheduled"], "{refresh}");
    assert_eq!(origin.count("/api/metrics"), 3 + 3, "3 misses, 3 refreshes");
    assert_eq!(origin.count("/api/filter-options"), 1, "not matched");
    // Zero-miss: the refreshed entries are still served from the cache.
    post_metrics(&proxy, "Vale", "HIT").await;
    assert_eq!(proxy.proxy.store.len(), 4);
}

/// The start (unix ms) of the history interval in progress.
async fn current_interval(proxy: &ProxyHandle) -> u64 {
    let json = Client::new()
        .get(&proxy.url("/api/cache/history?window=10m"))
        .await
        .json();
    let last = json["points"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["partial"], true);
    last["t"].as_u64().unwrap()
}

/// Values of one plotted series.
fn plotted(chart: &Value, series: &str) -> Vec<Option<f64>> {
    chart["series"][series]
        .as_array()
        .unwrap_or_else(|| panic!("no {series} in {chart}"))
        .iter()
        .map(Value::as_f64)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_plots_show_the_shape_of_the_traffic_sent() {
    let Some(chromium) = chromium() else { return };
    let origin = Origin::start().await;
    let proxy = proxy_with_harness(&origin, "").await;

    // A burst of 12 misses inside one 10 s interval (wait for a fresh one
    // if fewer than 3 s are left in this one)…
    let mut burst = current_interval(&proxy).await;
    let boundary = |t: u64| std::time::UNIX_EPOCH + Duration::from_millis(t + 10_000);
    if boundary(burst)
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        < Duration::from_secs(3)
    {
        while current_interval(&proxy).await == burst {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        burst = current_interval(&proxy).await;
    }
    for i in 0..12 {
        post_metrics(&proxy, &format!("org-{i}"), "MISS").await;
    }
    assert_eq!(
        current_interval(&proxy).await,
        burst,
        "the burst fit in one interval"
    );
    // …then, in a later interval, 30 hits on the same filters, and a clear.
    while current_interval(&proxy).await == burst {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hits_at = current_interval(&proxy).await;
    for i in 0..30 {
        post_metrics(&proxy, &format!("org-{}", i % 12), "HIT").await;
    }
    let reply = Client::new().post(&proxy.url("/api/cache/clear"), "").await;
    assert_eq!(reply.status, http::StatusCode::OK);

    let dom = dump_dom(&chromium, &proxy.url("/harness.html?history"), 20_000).await;
    let result = harness_result(&dom);
    let charts = &result["charts"];
    let times: Vec<u64> = charts["chart-requests"]["times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    let at = |t: u64| {
        times
            .iter()
            .position(|&x| x == t)
            .unwrap_or_else(|| panic!("no point at {t} in {times:?}"))
    };
    let (b, h) = (at(burst), at(hits_at));
    assert!(b < h, "{times:?}");
    // Every plotted point, in the page's own units, against the traffic:
    // requests per second over the seconds each point covers…
    let seconds = &charts["chart-requests"]["seconds"];
    let counted = |series: &str, i: usize| {
        let rate = plotted(&charts["chart-requests"], series)[i].unwrap();
        (rate * seconds[i].as_f64().unwrap()).round() as u64
    };
    assert_eq!((counted("misses", b), counted("hits", b)), (12, 0));
    assert_eq!((counted("misses", h), counted("hits", h)), (0, 30));
    let misses: u64 = (0..times.len()).map(|i| counted("misses", i)).sum();
    let hits: u64 = (0..times.len()).map(|i| counted("hits", i)).sum();
    assert_eq!((misses, hits), (12, 30), "nothing else was plotted");
    // …the hit rate, the backend queries (the misses; the harness's own
    // page is a bypass that reached the origin after the hits)…
    let rate = plotted(&charts["chart-hit-rate"], "hit_rate");
    assert_eq!((rate[b], rate[h]), (Some(0.0), Some(1.0)));
    let queries = plotted(&charts["chart-backend"], "backend_queries");
    assert_eq!(queries[b], Some(12.0));
    let all: f64 = queries.iter().flatten().sum();
    assert_eq!(all, 13.0, "12 misses and the harness page: {queries:?}");
    // …the backend latency (each query waited QUERY_TIME), and the time
    // the 30 hits saved.
    let p50 = plotted(&charts["chart-backend-latency"], "backend_p50_ms")[b].unwrap();
    assert!(p50 >= QUERY_TIME.as_millis() as f64 * 0.9, "{p50}");
    let saved = plotted(&charts["chart-saved"], "saved_seconds")[h].unwrap();
    assert!(saved >= 30.0 * QUERY_TIME.as_secs_f64() * 0.99, "{saved}");
    // The route's sparkline, and the clear as a marker.
    let spark = &result["sparks"]["get_metrics"];
    let sum = |s: &Value| {
        s.as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        (sum(&spark["hits"]), sum(&spark["misses"])),
        (30, 12),
        "{spark}"
    );
    assert_eq!(result["events"], serde_json::json!(["clear"]));
    assert_eq!(result["event_marks"], 1);
    // Hovering shows the latest point's figures.
    assert_eq!(result["tip"]["hidden"], false, "{result}");
    assert!(
        result["tip"]["text"].as_str().unwrap().contains("hits:"),
        "{result}"
    );
    // A phone-wide page scrolls nothing sideways.
    let phone = &result["phone"];
    assert!(
        phone["scroll"].as_u64() <= phone["client"].as_u64(),
        "{phone}"
    );
    assert!(phone["chart"].as_u64().unwrap() <= 390, "{phone}");
}

/// Takes docs/status-page.png (light) and docs/status-page-dark.png: the
/// page after an hour-like day. The hour before the proxy started is fed
/// to the history directly (`History::restore`: a quiet start, the 6 AM
/// refresh, the morning burst, an invalidate, a slow backend, a reload),
/// and the interval in progress is real traffic. Run it on purpose:
/// `cargo test --test status_page -- --ignored screenshot`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/status-page*.png; run on purpose"]
async fn screenshot_of_an_hour_for_the_docs() {
    use dashcache::metrics::history::{IntervalRecord, LiveSketch, Sketch, INTERVAL_MS};
    use dashcache::metrics::EventKind;

    let Some(chromium) = chromium() else { return };
    let origin = Origin::start().await;
    origin.on("/api/actions", Behaviour::new().delay(QUERY_TIME));
    let proxy = proxy_with_harness(&origin, "").await;
    for (org, expected) in [
        ("Vale", "MISS"),
        ("Acme", "MISS"),
        ("Vale", "HIT"),
        ("Vale", "HIT"),
        ("Acme", "HIT"),
    ] {
        post_metrics(&proxy, org, expected).await;
    }
    let client = Client::new();
    for _ in 0..4 {
        client.get(&proxy.url("/api/filter-options")).await;
        client
            .post(&proxy.url("/api/actions"), r#"{"org":"Vale"}"#)
            .await;
    }

    let history = proxy.proxy.metrics.history();
    let now = history.clock().now_ms();
    let first = now / INTERVAL_MS * INTERVAL_MS - 354 * INTERVAL_MS;
    let mut seed = 7u64;
    let mut noise = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) % 1000) as f64 / 1000.0
    };
    let sketch = |values: &[Duration]| {
        let live = LiveSketch::default();
        for v in values {
            live.record(*v);
        }
        Sketch::between(&[], &live.read())
    };
    let mut entries = 620.0f64;
    let mut records = Vec::new();
    for k in 0..354u64 {
        let minute = k as f64 / 6.0;
        let (rps, hit_rate, slow) = match minute as u64 {
            0..=7 => (0.3, 0.9, 1.0),
            8..=13 => (1.5, 0.97, 1.0),
            14..=35 => (8.0 + 30.0 * ((minute - 14.0) / 6.0).min(1.0), 0.95, 1.0),
            36..=40 => (34.0, if minute < 37.5 { 0.72 } else { 0.93 }, 1.0),
            41..=47 => (30.0, 0.94, 2.6),
            _ => (22.0, 0.96, 1.0),
        };
        let requests = (rps * 10.0 * (0.85 + 0.3 * noise())).round() as u64;
        let misses = (requests as f64 * (1.0 - hit_rate)).round() as u64;
        let hits = requests - misses;
        let refreshing = (8.0..10.5).contains(&minute);
        let queries = misses + if refreshing { 40 } else { 0 };
        let backend: Vec<Duration> = (0..queries)
            .map(|_| Duration::from_millis(((1800.0 + 2600.0 * noise()) * slow) as u64))
            .collect();
        let hit_times: Vec<Duration> = (0..hits)
            .map(|_| Duration::from_micros(45 + (120.0 * noise() * noise()) as u64))
            .collect();
        entries = if (36.0..36.2).contains(&minute) {
            entries - 37.0
        } else {
            (entries + misses as f64 * 0.8).min(1000.0)
        };
        let split = |n: u64| [n * 6 / 10, n / 4, n - n * 6 / 10 - n / 4];
        let (h, m) = (split(hits), split(misses));
        records.push(IntervalRecord {
            t: first + k * INTERVAL_MS,
            ms: INTERVAL_MS,
            hits,
            misses,
            stale: u64::from(minute as u64 == 44) * 3,
            bypass: (requests as f64 * 0.02).round() as u64,
            backend_queries: queries,
            saved_micros: backend.iter().map(|d| d.as_micros() as u64).sum::<u64>() * hits
                / queries.max(1),
            entries: entries as u64,
            bytes: entries as u64 * 14_300,
            hit_latency: sketch(&hit_times),
            backend_latency: sketch(&backend),
            routes: [
                ("get_metrics".to_owned(), [h[0], m[0]]),
                ("get_actions".to_owned(), [h[1], m[1]]),
                ("get_filter_options".to_owned(), [h[2], m[2]]),
            ]
            .into(),
        });
    }
    assert!(history.restore(records) > 340);
    let at = |minute: f64| first + (minute * 60_000.0) as u64;
    let events = &history.events;
    events.record_at(
        at(8.0),
        EventKind::RefreshStart,
        "Refreshing all 412 cache keys in the background",
    );
    events.record_at(
        at(10.4),
        EventKind::RefreshEnd,
        "412 keys finished; since start 412 done, 0 failed, 0 dropped",
    );
    events.record_at(
        at(36.0),
        EventKind::Invalidate,
        "pattern 'Vale': 37 keys deleted",
    );
    events.record_at(at(52.3), EventKind::ConfigReload, "generation 2 applied");

    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
    for (file, dark) in [("status-page.png", false), ("status-page-dark.png", true)] {
        let profile = tempfile::tempdir().unwrap();
        let mut command = tokio::process::Command::new(&chromium);
        command.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--window-size=1280,1450",
            "--virtual-time-budget=6000",
        ]);
        if dark {
            command
                .arg("--force-dark-mode")
                .arg("--blink-settings=preferredColorScheme=0");
        }
        let output = command
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--screenshot={}", docs.join(file).display()))
            .arg(proxy.url("/api/cache/"))
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(BROWSER_PATIENCE, output)
            .await
            .expect("chromium finishes in time")
            .expect("chromium runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
