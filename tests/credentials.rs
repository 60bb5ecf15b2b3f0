//! Credential headers: by default `Authorization`, `Cookie`, `X-Api-Key`,
//! `X-Auth-Token` and `Proxy-Authorization` keep callers apart, so an
//! answer made for one key is never served to another key or to nobody.

mod support;

use http::Method;
use support::{spawn_proxy, Behaviour, Client, Origin, DASHBOARD_ROUTES};

/// Asks `/api/metrics` with the same filters as each caller in turn; the
/// origin echoes `name`, so each answer says whose it was.
async fn ask_as_each(name: &str, callers: &[&str]) -> (Origin, Vec<serde_json::Value>) {
    let origin = Origin::start().await;
    origin.on("/api/metrics", Behaviour::new().echo_header(name));
    let proxy = spawn_proxy(&origin.url(), DASHBOARD_ROUTES).await;
    let client = Client::new();
    let url = proxy.url("/api/metrics");
    let mut answers = Vec::new();
    for caller in callers {
        let headers: &[(&str, &str)] = if caller.is_empty() {
            &[]
        } else {
            &[(name, caller)]
        };
        let reply = client
            .send(Method::POST, &url, headers, r#"{"org":"Vale"}"#)
            .await;
        answers.push(reply.json());
    }
    (origin, answers)
}

#[tokio::test]
async fn an_x_api_key_answer_is_never_served_to_another_key() {
    let (origin, answers) = ask_as_each("x-api-key", &["key-a", "key-b", "", "key-a"]).await;
    assert_eq!(answers[0]["echo"], "key-a");
    assert_eq!(
        answers[1]["echo"], "key-b",
        "key-b must not get key-a's answer"
    );
    assert!(
        answers[2].get("echo").is_none(),
        "an anonymous caller must not get a keyed answer: {}",
        answers[2]
    );
    assert_eq!(answers[3]["echo"], "key-a");
    assert_eq!(
        origin.count("/api/metrics"),
        3,
        "key-a's second ask is a hit"
    );
}

#[tokio::test]
async fn x_auth_token_and_proxy_authorization_keep_callers_apart_too() {
    for name in ["x-auth-token", "proxy-authorization"] {
        let (origin, answers) = ask_as_each(name, &["one", "two"]).await;
        // Proxy-Authorization is hop-by-hop and never reaches the origin,
        // so its answers echo nothing; they must still be two entries.
        assert_eq!(origin.count("/api/metrics"), 2, "{name}");
        if name == "x-auth-token" {
            assert_eq!(answers[1]["echo"], "two");
        }
    }
}

#[test]
fn the_default_credential_headers_are_in_the_printed_config() {
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_dashcache"))
        .arg("--print-config")
        .env_clear()
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&printed.stdout);
    let config: toml::Value = toml::from_str(&text).unwrap();
    let names: Vec<&str> = config["cache"]["credential_headers"]
        .as_array()
        .unwrap_or_else(|| panic!("{text}"))
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "authorization",
            "cookie",
            "x-api-key",
            "x-auth-token",
            "proxy-authorization"
        ]
    );
}

#[tokio::test]
async fn long_session_cookies_that_differ_in_their_last_byte_keep_callers_apart() {
    // Their digests are remembered after the first ask: every later ask
    // must still find its own caller's entry.
    let session = "s".repeat(6_000);
    let (a, b) = (format!("session={session}a"), format!("session={session}b"));
    let (origin, answers) = ask_as_each("cookie", &[&a, &b, &a, &b, &a, "", &b]).await;
    let expected = [&a, &b, &a, &b, &a];
    for (i, (answer, caller)) in answers.iter().zip(expected).enumerate() {
        assert_eq!(answer["echo"], caller.as_str(), "ask {i}");
    }
    assert!(answers[5].get("echo").is_none(), "{}", answers[5]);
    assert_eq!(answers[6]["echo"], b.as_str());
    assert_eq!(origin.count("/api/metrics"), 3, "one miss per caller");
}
