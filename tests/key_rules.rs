//! Key rules (`key_ignore_fields`, `key_unordered`, `key_ignore_query`,
//! `key_headers`) and volatile-field detection, against a counting origin:
//! the frontend habits that make every request a miss (a fresh request id
//! and timestamp, shuffled multi-selects, `utm_*` and `_=<timestamp>`
//! parameters) cost one backend query per distinct answer once the route
//! says so, stats name the fields before it does, and answers made for one
//! caller or tenant never reach another.

mod support;

use std::collections::BTreeSet;

use http::{Method, StatusCode};
use serde_json::Value;
use support::{spawn_proxy, Behaviour, Client, Origin, ProxyHandle};

const RULES: &str = r#"
[[route]]
name = "get_metrics"
path = "/api/metrics"
methods = ["POST"]
key_ignore_fields = ["requestId", "meta.sentAt"]
key_unordered = ["orgs"]
key_ignore_query = ["utm_*", "_"]
key_headers = ["X-Tenant"]
"#;

const NO_RULES: &str = r#"
[[route]]
name = "get_metrics"
path = "/api/metrics"
methods = ["POST"]
"#;

const SETS: [[&str; 3]; 3] = [
    ["Vale", "Itau", "Ambev"],
    ["Petrobras", "Vale", "Gerdau"],
    ["Itau", "Bradesco", "Santander"],
];
const TENANTS: [&str; 2] = ["acme", "globex"];
const SOURCES: [&str; 3] = ["mail", "ads", "direct"];

/// Request `i` as a React dashboard sends it: the filters of set `i % 3` in
/// one of six orders, a fresh id and timestamp, tracking parameters and a
/// cache buster, for tenant `i / 3 % 2`.
struct DashboardRequest {
    set: usize,
    tenant: &'static str,
    target: String,
    body: String,
}

fn dashboard_request(i: usize) -> DashboardRequest {
    let set = i % 3;
    let tenant = TENANTS[i / 3 % 2];
    let mut orgs = SETS[set].to_vec();
    orgs.rotate_left(i / 6 % 3);
    if i / 18 % 2 == 1 {
        orgs.reverse();
    }
    let orgs: Vec<String> = orgs.iter().map(|o| format!("\"{o}\"")).collect();
    let body = format!(
        r#"{{"requestId":"9f1c-{i:04}","orgs":[{}],"range":"30d","meta":{{"sentAt":{},"app":"dash"}}}}"#,
        orgs.join(","),
        1_765_000_000_000u64 + i as u64 * 37
    );
    let target = format!(
        "/api/metrics?utm_source={}&utm_campaign=c{}&_={}",
        SOURCES[i % 3],
        i % 2,
        1_765_000_000_000u64 + i as u64
    );
    DashboardRequest {
        set,
        tenant,
        target,
        body,
    }
}

async fn send(proxy: &ProxyHandle, client: &Client, request: &DashboardRequest) -> Value {
    let reply = client
        .send(
            Method::POST,
            &proxy.url(&request.target),
            &[
                ("content-type", "application/json"),
                ("x-tenant", request.tenant),
            ],
            request.body.clone(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

/// The filter set and tenant an origin answer was made for.
fn answered_for(answer: &Value) -> (BTreeSet<String>, String) {
    let sent: Value = serde_json::from_str(answer["request_body"].as_str().unwrap()).unwrap();
    let orgs = sent["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap().to_owned())
        .collect();
    (orgs, answer["echo"].as_str().unwrap_or("").to_owned())
}

async fn origin() -> Origin {
    let origin = Origin::start().await;
    origin.on("/api/metrics", Behaviour::new().echo_header("x-tenant"));
    origin
}

#[tokio::test]
async fn dashboard_habits_cost_one_backend_query_per_distinct_answer() {
    let origin = origin().await;
    let proxy = spawn_proxy(&origin.url(), RULES).await;
    let client = Client::new();
    const N: usize = 120;
    for i in 0..N {
        let request = dashboard_request(i);
        let answer = send(&proxy, &client, &request).await;
        let (orgs, tenant) = answered_for(&answer);
        let expected: BTreeSet<String> = SETS[request.set].iter().map(|o| o.to_string()).collect();
        assert_eq!(orgs, expected, "request {i} got another filter's answer");
        assert_eq!(
            tenant, request.tenant,
            "request {i} got another tenant's answer"
        );
    }
    let distinct = SETS.len() * TENANTS.len();
    assert_eq!(
        origin.count("/api/metrics"),
        distinct,
        "backend queries equal the distinct answers"
    );
    let stats = proxy.stats().await;
    let route = &stats["routes"]["get_metrics"];
    assert_eq!(route["misses"], distinct as u64);
    assert_eq!(route["hits"], (N - distinct) as u64);
    assert_eq!(route["volatile_fields"], Value::Array(vec![]), "{route}");
}

#[tokio::test]
async fn without_the_settings_every_request_is_a_miss_and_stats_name_the_fields() {
    let origin = origin().await;
    let proxy = spawn_proxy(&origin.url(), NO_RULES).await;
    let client = Client::new();
    const N: usize = 120;
    for i in 0..N {
        send(&proxy, &client, &dashboard_request(i)).await;
    }
    assert_eq!(origin.count("/api/metrics"), N);
    let stats = proxy.stats().await;
    let fields = stats["routes"]["get_metrics"]["volatile_fields"]
        .as_array()
        .unwrap()
        .clone();
    let found: BTreeSet<(String, String)> = fields
        .iter()
        .map(|f| {
            (
                f["field"].as_str().unwrap().to_owned(),
                f["setting"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("requestId", "key_ignore_fields"),
        ("meta.sentAt", "key_ignore_fields"),
        ("orgs", "key_unordered"),
        ("_", "key_ignore_query"),
    ]
    .into_iter()
    .map(|(f, s)| (f.to_owned(), s.to_owned()))
    .collect();
    assert_eq!(found, expected, "{fields:#?}");
    for field in &fields {
        assert!(field["hit_rate_now"].as_f64().unwrap() < 0.05, "{field}");
        assert!(
            field["hit_rate_if_ignored"].as_f64().unwrap() > 0.5,
            "{field}"
        );
        assert!(field["summary"]
            .as_str()
            .unwrap()
            .contains("sampled requests"));
    }
    let request_id = fields.iter().find(|f| f["field"] == "requestId").unwrap();
    assert_eq!(request_id["in"], "body");
    assert!(request_id["distinct_rate"].as_f64().unwrap() > 0.9);

    // The keys listing shows them too.
    let keys = client
        .get(&proxy.url("/api/cache/keys?limit=1"))
        .await
        .json();
    assert_eq!(
        keys["volatile_fields"]["get_metrics"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn ignoring_fields_never_lets_two_callers_answers_meet() {
    let origin = Origin::start().await;
    origin.on(
        "/api/metrics",
        Behaviour::new().echo_header("authorization"),
    );
    let proxy = spawn_proxy(&origin.url(), RULES).await;
    let client = Client::new();
    let mut seen = Vec::new();
    for (i, user) in ["Bearer alice", "Bearer bob", "Bearer alice", "Bearer bob"]
        .into_iter()
        .enumerate()
    {
        let body = format!(r#"{{"requestId":"{i}","orgs":["Vale"],"range":"30d"}}"#);
        let reply = client
            .send(
                Method::POST,
                &proxy.url("/api/metrics"),
                &[
                    ("content-type", "application/json"),
                    ("authorization", user),
                ],
                body,
            )
            .await;
        assert_eq!(reply.json()["echo"], user, "{user} got its own answer");
        seen.push(reply.x_cache().to_owned());
    }
    assert_eq!(seen, ["MISS", "MISS", "HIT", "HIT"]);
    assert_eq!(origin.count("/api/metrics"), 2);
}

#[tokio::test]
async fn descriptions_and_invalidate_see_the_body_as_keyed() {
    let origin = origin().await;
    let proxy = spawn_proxy(&origin.url(), RULES).await;
    let client = Client::new();
    for i in 0..6 {
        send(&proxy, &client, &dashboard_request(i)).await;
    }
    let keys = client.get(&proxy.url("/api/cache/keys")).await.json();
    let descriptions: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["description"].as_str().unwrap())
        .collect();
    assert_eq!(descriptions.len(), 6);
    assert!(descriptions.contains(
        &r#"get_metrics POST /api/metrics {"meta":{"app":"dash"},"orgs":["Ambev","Itau","Vale"],"range":"30d"} x-tenant=acme"#
    ), "{descriptions:#?}");
    for description in &descriptions {
        assert!(!description.contains("requestId"), "{description}");
        assert!(!description.contains("utm_"), "{description}");
    }
    let invalidate = |pattern: &str| {
        let url = proxy.url(&format!("/api/cache/invalidate?pattern={pattern}"));
        let client = client.clone();
        async move { client.send(Method::POST, &url, &[], "").await.json() }
    };
    assert_eq!(invalidate("requestId").await["keys_deleted"], 0);
    assert_eq!(invalidate("x-tenant=globex").await["keys_deleted"], 3);
    assert_eq!(invalidate("Itau").await["keys_deleted"], 2);
}

#[tokio::test]
async fn vary_still_selects_variants_under_key_rules() {
    let origin = Origin::start().await;
    origin.on(
        "/api/metrics",
        Behaviour::new()
            .header("vary", "accept-language")
            .echo_header("accept-language"),
    );
    let proxy = spawn_proxy(&origin.url(), RULES).await;
    let client = Client::new();
    for (i, language) in ["pt", "en", "pt", "en"].into_iter().enumerate() {
        let body = format!(r#"{{"requestId":"{i}","orgs":["Vale"]}}"#);
        let reply = client
            .send(
                Method::POST,
                &proxy.url("/api/metrics"),
                &[
                    ("content-type", "application/json"),
                    ("accept-language", language),
                ],
                body,
            )
            .await;
        assert_eq!(reply.json()["echo"], language);
    }
    assert_eq!(origin.count("/api/metrics"), 2);
}

#[tokio::test]
async fn a_reload_applies_new_rules_and_keeps_the_old_entries_until_they_expire() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, NO_RULES).unwrap();
    let cli = dashcache::Cli {
        config: Some(path.clone()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        upstream: Some(origin.url()),
        ..Default::default()
    };
    let proxy = support::start(dashcache::Config::load(&cli).unwrap()).await;
    let client = Client::new();
    let post = |body: &'static str| {
        let url = proxy.url("/api/metrics");
        let client = client.clone();
        async move { client.post(&url, body).await.x_cache().to_owned() }
    };
    assert_eq!(post(r#"{"requestId":"a","org":"Vale"}"#).await, "MISS");
    assert_eq!(post(r#"{"requestId":"b","org":"Vale"}"#).await, "MISS");

    std::fs::write(&path, RULES.replace("key_headers = [\"X-Tenant\"]", "")).unwrap();
    assert!(matches!(
        proxy.proxy.reload_config(),
        dashcache::reload::Reload::Applied { .. }
    ));
    // New rules: the next request is keyed without its id (one more miss),
    // and every id after it is a hit.
    assert_eq!(post(r#"{"requestId":"c","org":"Vale"}"#).await, "MISS");
    assert_eq!(post(r#"{"requestId":"d","org":"Vale"}"#).await, "HIT");
    assert_eq!(post(r#"{"requestId":"a","org":"Vale"}"#).await, "HIT");
    assert_eq!(origin.count("/api/metrics"), 3);
    // The entries made under the old rules are still listed (until they expire).
    let keys = client.get(&proxy.url("/api/cache/keys")).await.json();
    assert_eq!(keys["matched"], 3, "{keys}");
}

/// Runs the real binary with `args` and a clean environment.
fn dashcache(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dashcache"))
        .args(args)
        .env_clear()
        .output()
        .expect("the dashcache binary runs")
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn check_names_the_route_and_the_setting_of_an_invalid_rule() {
    for (setting, bad) in [
        ("key_ignore_fields", r#"["meta..sentAt"]"#),
        ("key_ignore_fields", r#"["tags[]"]"#),
        ("key_unordered", r#"["org*"]"#),
        ("key_ignore_query", r#"["u*m"]"#),
        ("key_headers", r#"["X Tenant"]"#),
    ] {
        let file = config_file(&format!(
            "[[route]]\nname = \"get_metrics\"\npath = \"/api/metrics\"\n{setting} = {bad}\n"
        ));
        let output = dashcache(&["--check", "--config", file.path().to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{setting} = {bad} accepted");
        assert!(stderr.contains("get_metrics"), "{stderr}");
        assert!(stderr.contains(setting), "{stderr}");
    }
}

#[test]
fn print_config_shows_the_rules_and_check_accepts_them() {
    let file = config_file(RULES);
    let path = file.path().to_str().unwrap();
    assert!(dashcache(&["--check", "--config", path]).status.success());
    let output = dashcache(&["--print-config", "--config", path]);
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let config = dashcache::config::FileConfig::parse(&printed, std::path::Path::new("p.toml"))
        .expect("printed config parses");
    let route = &config.routes[0];
    assert_eq!(
        route.key_ignore_fields.as_deref(),
        Some(&["requestId".to_owned(), "meta.sentAt".to_owned()][..])
    );
    assert_eq!(
        route.key_unordered.as_deref(),
        Some(&["orgs".to_owned()][..])
    );
    assert_eq!(
        route.key_ignore_query.as_deref(),
        Some(&["utm_*".to_owned(), "_".to_owned()][..])
    );
    assert_eq!(
        route.key_headers.as_deref(),
        Some(&["x-tenant".to_owned()][..])
    );
}
