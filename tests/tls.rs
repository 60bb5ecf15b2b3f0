//! TLS termination: HTTPS over HTTP/1.1 and HTTP/2 (ALPN), the scheme the
//! backend is told, certificate reload (direct and by SIGHUP) without
//! dropping open connections, bad PEM at startup and on reload, and the
//! handshake deadline.

mod support;

use http::Method;
use support::{
    eventually, read_until_closed, spawn_server, tls_connect, Origin, ServerHandle, TestCa,
    DASHBOARD_ROUTES, PATIENCE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FILTERS: &str = r#"{"org":"Vale","period":"2024-Q1"}"#;

fn tls_toml(cert: &std::path::Path, key: &std::path::Path, extra: &str) -> String {
    format!(
        "tls_cert = {:?}\ntls_key = {:?}\n{extra}\n{DASHBOARD_ROUTES}",
        cert.display().to_string(),
        key.display().to_string()
    )
}

async fn tls_proxy(origin: &Origin, ca: &TestCa, extra: &str) -> ServerHandle {
    let issued = ca.issue("proxy");
    spawn_server(
        &origin.url(),
        &tls_toml(&issued.cert_file, &issued.key_file, extra),
    )
    .await
}

#[tokio::test]
async fn https_over_http1_caches_and_tells_the_backend_https() {
    let origin = Origin::start().await;
    let ca = TestCa::new("dashcache");
    let proxy = tls_proxy(&origin, &ca, "").await;

    let mut connection = tls_connect(proxy.addr, ca.client_config(&[b"http/1.1"]))
        .await
        .expect("TLS handshake with the proxy");
    assert_eq!(connection.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let first = connection.post("/api/metrics", FILTERS).await;
    let second = connection.post("/api/metrics", FILTERS).await;

    assert_eq!((first.status.as_u16(), first.x_cache()), (200, "MISS"));
    assert_eq!((second.status.as_u16(), second.x_cache()), (200, "HIT"));
    assert_eq!(first.body, second.body);
    assert_eq!(origin.count("/api/metrics"), 1);
    assert_eq!(origin.last_headers()["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn https_over_http2_is_chosen_by_alpn_and_caches() {
    let origin = Origin::start().await;
    let ca = TestCa::new("dashcache");
    let proxy = tls_proxy(&origin, &ca, "").await;

    let mut connection = tls_connect(proxy.addr, ca.client_config(&[b"h2", b"http/1.1"]))
        .await
        .expect("TLS handshake with the proxy");
    assert_eq!(
        connection.alpn.as_deref(),
        Some(&b"h2"[..]),
        "ALPN picks h2"
    );
    let first = connection.post("/api/metrics", FILTERS).await;
    let second = connection.post("/api/metrics", FILTERS).await;
    let options = connection
        .send(Method::GET, "/api/filter-options", &[], "")
        .await;

    assert_eq!((first.status.as_u16(), first.x_cache()), (200, "MISS"));
    assert_eq!((second.status.as_u16(), second.x_cache()), (200, "HIT"));
    assert_eq!(first.body, second.body);
    assert_eq!(options.status.as_u16(), 200);
    assert_eq!(origin.count("/api/metrics"), 1);
    assert_eq!(origin.last_headers()["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_no_http_answer() {
    let origin = Origin::start().await;
    let ca = TestCa::new("dashcache");
    let proxy = tls_proxy(&origin, &ca, "").await;

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /api/filter-options HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let received = read_until_closed(&mut stream).await;
    assert!(
        !received.starts_with(b"HTTP/"),
        "a TLS port answers TLS only: {}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn a_reload_presents_the_new_certificate_and_keeps_open_connections() {
    let origin = Origin::start().await;
    let ca = TestCa::new("dashcache");
    let old = ca.issue("proxy");
    let proxy = spawn_server(&origin.url(), &tls_toml(&old.cert_file, &old.key_file, "")).await;
    let config = ca.client_config(&[b"h2", b"http/1.1"]);

    let mut before = tls_connect(proxy.addr, config.clone()).await.unwrap();
    assert_eq!(before.peer_certificate, old.der);

    // Renewal as certbot does it: new files written over the old paths.
    let renewed = ca.issue("renewed");
    std::fs::copy(&renewed.cert_file, &old.cert_file).unwrap();
    std::fs::copy(&renewed.key_file, &old.key_file).unwrap();
    proxy
        .tls
        .as_ref()
        .expect("TLS is configured")
        .reload()
        .expect("the renewed pair loads");

    let mut after = tls_connect(proxy.addr, config).await.unwrap();
    assert_eq!(
        after.peer_certificate, renewed.der,
        "new handshakes get the new certificate"
    );
    let on_old = before.post("/api/metrics", FILTERS).await;
    let on_new = after.post("/api/metrics", FILTERS).await;
    assert_eq!(
        on_old.status.as_u16(),
        200,
        "the connection opened before the reload still works"
    );
    assert_eq!(on_new.status.as_u16(), 200);
}

#[tokio::test]
async fn a_bad_reload_keeps_the_current_certificate() {
    let origin = Origin::start().await;
    let ca = TestCa::new("dashcache");
    let issued = ca.issue("proxy");
    let proxy = spawn_server(
        &origin.url(),
        &tls_toml(&issued.cert_file, &issued.key_file, ""),
    )
    .await;
    let tls = proxy.tls.clone().expect("TLS is configured");

    std::fs::write(
        &issued.key_file,
        "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = tls.reload().expect_err("a broken key is refused");
    let message = format!("{err}");
    assert!(
        message.contains("proxy.key"),
        "the error names the file: {message}"
    );

    let other = ca.issue("other");
    std::fs::copy(&other.key_file, &issued.key_file).unwrap();
    let err = tls
        .reload()
        .expect_err("a key of another certificate is refused");
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains("proxy.pem") && chain.contains("proxy.key"),
        "{chain}"
    );

    let mut connection = tls_connect(proxy.addr, ca.client_config(&[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(
        connection.peer_certificate, issued.der,
        "the old pair still serves"
    );
    assert_eq!(
        connection
            .post("/api/metrics", FILTERS)
            .await
            .status
            .as_u16(),
        200
    );
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let origin = Origin::start().await;
    let ca = TestCa::new("dashcache");
    let old = ca.issue("proxy");
    // The SIGHUP handler is installed by bind, before this test signals.
    let proxy = spawn_server(&origin.url(), &tls_toml(&old.cert_file, &old.key_file, "")).await;
    let renewed = ca.issue("renewed");
    std::fs::copy(&renewed.cert_file, &old.cert_file).unwrap();
    std::fs::copy(&renewed.key_file, &old.key_file).unwrap();

    // SAFETY: kill(2) on our own pid with a signal tokio now handles.
    let sent = unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    assert_eq!(sent, 0, "SIGHUP sent");

    let tls = proxy.tls.clone().unwrap();
    eventually("the SIGHUP reload", || {
        tls.current_certificate() == renewed.der
    })
    .await;
    let connection = tls_connect(proxy.addr, ca.client_config(&[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(connection.peer_certificate, renewed.der);
}

#[tokio::test]
async fn a_silent_client_cannot_hold_a_tls_slot() {
    let origin = Origin::start().await;
    let ca = TestCa::new("dashcache");
    let proxy = tls_proxy(&origin, &ca, "header_read_timeout = \"300ms\"").await;

    // No ClientHello at all.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    read_until_closed(&mut silent).await;

    // A finished handshake, then no request.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(ca.client_config(&[b"http/1.1"]))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake with the proxy");
    let mut buf = [0u8; 64];
    match tokio::time::timeout(PATIENCE, tls.read(&mut buf)).await {
        Err(_) => panic!("the proxy kept an idle TLS connection open"),
        Ok(Ok(n)) => assert_eq!(n, 0, "nothing but the close arrives"),
        Ok(Err(_)) => {}
    }
}

#[tokio::test]
async fn bad_pem_stops_the_start_with_the_file_named() {
    let ca = TestCa::new("dashcache");
    let issued = ca.issue("proxy");
    let garbage = ca.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is no certificate\n").unwrap();
    for (cert, key, named) in [
        (&garbage, &issued.key_file, "garbage.pem"),
        (&issued.cert_file, &garbage, "garbage.pem"),
    ] {
        let file = dashcache::config::FileConfig::parse(
            &tls_toml(cert, key, ""),
            std::path::Path::new("test.toml"),
        )
        .unwrap();
        let cli = dashcache::Cli {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        };
        let config = dashcache::Config::resolve(&cli, file, None).unwrap();
        let err = match dashcache::Server::bind(config).await {
            Ok(_) => panic!("a server started with {} as its TLS pair", named),
            Err(err) => err,
        };
        let mut chain = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            chain.push_str(": ");
            chain.push_str(&cause.to_string());
            source = cause.source();
        }
        assert!(chain.contains(named), "{chain}");
    }
}

#[test]
fn check_reads_the_tls_files() {
    let ca = TestCa::new("dashcache");
    let issued = ca.issue("proxy");
    let garbage = ca.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is no certificate\n").unwrap();
    let run = |cert: &std::path::Path, key: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dashcache"))
            .arg("--check")
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env_clear()
            .output()
            .expect("run dashcache")
    };

    let good = run(&issued.cert_file, &issued.key_file);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let bad = run(&garbage, &issued.key_file);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("garbage.pem"), "{stderr}");

    let lonely = std::process::Command::new(env!("CARGO_BIN_EXE_dashcache"))
        .arg("--check")
        .arg("--tls-cert")
        .arg(&issued.cert_file)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(lonely.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&lonely.stderr);
    assert!(stderr.contains("tls_key"), "{stderr}");
}

#[tokio::test]
async fn the_admin_listener_stays_plain_http_next_to_tls() {
    let origin = Origin::start().await;
    let ca = TestCa::new("dashcache");
    let proxy = tls_proxy(&origin, &ca, "admin_listen = \"127.0.0.1:0\"").await;

    let stats = support::Client::new()
        .get(&proxy.admin_url("/api/cache/stats"))
        .await;
    assert_eq!(stats.status.as_u16(), 200, "{}", stats.text());

    let mut connection = tls_connect(proxy.addr, ca.client_config(&[b"h2"]))
        .await
        .unwrap();
    let hidden = connection
        .send(Method::GET, "/api/cache/stats", &[], "")
        .await;
    assert_eq!(hidden.status.as_u16(), 404);
    hidden.error_message();
    assert_eq!(origin.total(), 0);
}
