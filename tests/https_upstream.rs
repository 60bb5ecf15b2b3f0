//! An https upstream: verified against `upstream_ca_file` (plus the usual
//! roots), cached like any other; an upstream whose certificate no trusted
//! CA signed is a 502 naming the certificate failure, never a silent
//! fallback to an unverified connection.

mod support;

use support::{spawn_proxy, Client, Origin, TestCa, DASHBOARD_ROUTES};

const FILTERS: &str = r#"{"org":"Vale","period":"2024-Q1"}"#;

fn with_ca(ca: &TestCa) -> String {
    format!(
        "upstream_ca_file = {:?}\n{DASHBOARD_ROUTES}",
        ca.cert_file.display().to_string()
    )
}

#[tokio::test]
async fn an_upstream_signed_by_the_configured_ca_is_proxied_and_cached() {
    let ca = TestCa::new("backend");
    let origin = Origin::start_tls(ca.server_config(&ca.issue("backend"))).await;
    let proxy = spawn_proxy(&origin.https_url(), &with_ca(&ca)).await;
    let client = Client::new();

    let first = client.post(&proxy.url("/api/metrics"), FILTERS).await;
    let second = client.post(&proxy.url("/api/metrics"), FILTERS).await;

    assert_eq!(
        (first.status.as_u16(), first.x_cache()),
        (200, "MISS"),
        "{}",
        first.text()
    );
    assert_eq!((second.status.as_u16(), second.x_cache()), (200, "HIT"));
    assert_eq!(first.body, second.body);
    assert_eq!(first.json()["request_body"], FILTERS);
    assert_eq!(origin.count("/api/metrics"), 1);
}

#[tokio::test]
async fn the_https_upstream_speaks_http2_when_it_offers_it() {
    let ca = TestCa::new("backend");
    let origin = Origin::start_tls(ca.server_config(&ca.issue("backend"))).await;
    let proxy = spawn_proxy(&origin.https_url(), &with_ca(&ca)).await;

    let reply = Client::new().get(&proxy.url("/api/filter-options")).await;
    assert_eq!(reply.status.as_u16(), 200);
    assert_eq!(
        origin.last().expect("the origin saw the request").version,
        http::Version::HTTP_2,
        "ALPN negotiated h2 with the upstream"
    );
}

#[tokio::test]
async fn an_upstream_with_an_unknown_ca_is_a_502_and_never_asked() {
    let ca = TestCa::new("backend");
    let origin = Origin::start_tls(ca.server_config(&ca.issue("backend"))).await;
    let proxy = spawn_proxy(&origin.https_url(), DASHBOARD_ROUTES).await;
    let client = Client::new();

    for _ in 0..2 {
        let reply = client.post(&proxy.url("/api/metrics"), FILTERS).await;
        assert_eq!(reply.status.as_u16(), 502, "{}", reply.text());
        // The certificate error goes to the access line, not to clients.
        assert_eq!(reply.error_message(), "upstream unreachable");
    }
    assert_eq!(
        origin.total(),
        0,
        "no request went over an unverified connection"
    );
}

#[tokio::test]
async fn trusting_another_ca_does_not_trust_the_upstream() {
    let ca = TestCa::new("backend");
    let stranger = TestCa::new("stranger");
    let origin = Origin::start_tls(ca.server_config(&ca.issue("backend"))).await;
    let proxy = spawn_proxy(&origin.https_url(), &with_ca(&stranger)).await;

    let reply = Client::new().get(&proxy.url("/api/filter-options")).await;
    assert_eq!(reply.status.as_u16(), 502);
    assert_eq!(reply.error_message(), "upstream unreachable");
    assert_eq!(origin.total(), 0);
}
