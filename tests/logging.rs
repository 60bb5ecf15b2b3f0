//! Logs through the real binary: `--log-format json` writes one JSON object
//! per line; each request writes one access line, in the seed's wording,
//! carrying key prefix, route, cache status, upstream and total time and
//! the request id in both formats; an error answer's line has the chain.

mod support;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::binary::Binary;
use support::{Behaviour, Client, Origin};

/// The origin's pretend warehouse time for /api/metrics.
const QUERY_TIME: Duration = Duration::from_millis(30);

/// One miss and one hit on the same filters; their request ids.
async fn miss_then_hit(binary: &Binary) -> Vec<String> {
    let client = Client::new();
    let mut ids = Vec::new();
    for expected in ["MISS", "HIT"] {
        let reply = client
            .post(&binary.url("/api/metrics"), r#"{"org":"Vale"}"#)
            .await;
        assert_eq!(reply.x_cache(), expected);
        ids.push(reply.header("x-request-id").to_owned());
    }
    ids
}

fn number(line: &Value, field: &str) -> f64 {
    line[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is a number: {line}"))
}

#[tokio::test]
async fn json_access_lines_carry_key_route_status_and_times() {
    let origin = Origin::start().await;
    origin.on("/api/metrics", Behaviour::new().delay(QUERY_TIME));
    let binary = Binary::start(&origin.url(), "", &["--log-format", "json"]);
    let ids = miss_then_hit(&binary).await;
    let lines = binary.stop();

    let events: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    for event in &events {
        assert!(event["timestamp"].is_string(), "{event}");
        assert!(event["level"].is_string(), "{event}");
    }
    let access: Vec<&Value> = events
        .iter()
        .filter(|e| e["target"] == "dashcache::access")
        .collect();
    assert_eq!(access.len(), 2, "one access line per request: {lines:#?}");
    let (miss, hit) = (access[0], access[1]);

    for ((line, cache), id) in [(miss, "MISS"), (hit, "HIT")].into_iter().zip(&ids) {
        assert_eq!(line["request_id"], id.as_str(), "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["cache"], cache, "{line}");
        assert_eq!(line["route"], "get_metrics", "{line}");
        assert_eq!(line["method"], "POST");
        assert_eq!(line["path"], "/api/metrics");
        assert_eq!(line["status"], 200);
        assert_eq!(line["client"], "127.0.0.1");
        let key = line["key"].as_str().expect("key prefix");
        assert_eq!(key.len(), 16, "{line}");
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
    }
    assert_eq!(miss["key"], hit["key"], "same filters, same key");

    let query_ms = QUERY_TIME.as_secs_f64() * 1000.0;
    let upstream = number(miss, "upstream_ms");
    assert!(upstream >= query_ms, "{miss}");
    assert!(number(miss, "duration_ms") >= upstream, "{miss}");
    assert_eq!(number(hit, "upstream_ms"), 0.0, "a hit asks no upstream");
    assert!(number(hit, "saved_ms") >= query_ms, "{hit}");
    assert!(number(hit, "duration_ms") > 0.0, "{hit}");

    // The seed's wording is the access lines' message.
    assert_eq!(hit["message"], "Cache HIT for get_metrics", "{hit}");
    assert_eq!(
        miss["message"], "Cache MISS for get_metrics - forwarding upstream",
        "{miss}"
    );
    let messages: Vec<&str> = events
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        messages.iter().any(|m| m.starts_with("Cache SET: ")),
        "{messages:?}"
    );
    // A hit writes one line: nothing between the miss's line and its own.
    let miss_at = events.iter().position(|e| std::ptr::eq(e, miss)).unwrap();
    let hit_at = events.iter().position(|e| std::ptr::eq(e, hit)).unwrap();
    assert_eq!(hit_at, miss_at + 1, "one line per hit: {lines:#?}");
    assert_eq!(origin.total(), 1);
}

#[tokio::test]
async fn an_error_answer_logs_its_chain_and_request_id_at_warn() {
    let upstream = support::closed_port_url().await;
    let port = upstream.rsplit(':').next().unwrap().to_owned();
    let binary = Binary::start(&upstream, "", &["--log-format", "json"]);
    let reply = Client::new()
        .post(&binary.url("/api/metrics"), r#"{"org":"Vale"}"#)
        .await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.error_message(), "upstream unreachable");
    let id = reply.header("x-request-id").to_owned();
    let lines = binary.stop();

    let access: Vec<Value> = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["target"] == "dashcache::access")
        .collect();
    assert_eq!(access.len(), 1, "{lines:#?}");
    let line = &access[0];
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["request_id"], id.as_str(), "{line}");
    assert_eq!(line["status"], 502);
    let error = line["error"].as_str().expect("the error chain");
    assert!(error.contains(&port), "the log names the upstream: {error}");
    assert!(error.contains("refused"), "and the OS error: {error}");
}

#[tokio::test]
async fn the_startup_line_names_the_credential_headers_in_force() {
    let origin = Origin::start().await;
    let binary = Binary::start(&origin.url(), "", &[]);
    let listening = binary
        .early
        .iter()
        .find(|l| l.contains("dashcache listening"))
        .unwrap()
        .clone();
    drop(binary);
    assert!(
        listening.contains(
            "credential_headers=authorization,cookie,x-api-key,x-auth-token,proxy-authorization"
        ),
        "{listening}"
    );
}

#[tokio::test]
async fn text_access_lines_carry_the_same_fields() {
    let origin = Origin::start().await;
    origin.on("/api/metrics", Behaviour::new().delay(QUERY_TIME));
    let binary = Binary::start(&origin.url(), "", &[]);
    let ids = miss_then_hit(&binary).await;
    let lines = binary.stop();

    let access: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("dashcache::access"))
        .collect();
    assert_eq!(access.len(), 2, "{lines:#?}");
    for ((line, cache), id) in access.iter().zip(["MISS", "HIT"]).zip(&ids) {
        assert!(!line.starts_with('{'), "text, not JSON: {line}");
        assert!(
            line.contains(&format!("Cache {cache} for get_metrics")),
            "{line}"
        );
        for field in [
            &format!("request_id=\"{id}\""),
            &format!("cache=\"{cache}\""),
            "route=\"get_metrics\"",
            "key=",
            "upstream_ms=",
            "duration_ms=",
            "status=200",
        ] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
    }
}

#[test]
fn an_unknown_log_format_is_refused_and_a_known_one_is_printed() {
    let flag = Command::new(env!("CARGO_BIN_EXE_dashcache"))
        .args(["--check", "--log-format", "xml"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(flag.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&flag.stderr);
    assert!(
        stderr.contains("--log-format") && stderr.contains("json"),
        "{stderr}"
    );

    let env = Command::new(env!("CARGO_BIN_EXE_dashcache"))
        .arg("--check")
        .env_clear()
        .env("DASHCACHE_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert_eq!(env.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&env.stderr).contains("log-format"));

    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(b"log_format = \"xml\"\n").unwrap();
    let config = Command::new(env!("CARGO_BIN_EXE_dashcache"))
        .arg("--check")
        .arg("--config")
        .arg(file.path())
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(config.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&config.stderr);
    assert!(
        stderr.contains("log_format") && stderr.contains("json"),
        "{stderr}"
    );

    std::fs::write(file.path(), "log_format = \"json\"\n").unwrap();
    let printed = Command::new(env!("CARGO_BIN_EXE_dashcache"))
        .arg("--print-config")
        .arg("--config")
        .arg(file.path())
        .env_clear()
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&printed.stdout).contains("log_format = \"json\""));
}
