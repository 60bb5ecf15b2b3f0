//! Hot reload: SIGHUP re-reads proxy.toml and applies TTLs, routes and
//! windows without dropping the cache or open connections; an invalid file
//! keeps the running configuration; stats show the generation.

mod support;

use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::{eventually, Client, Origin, ProxyHandle};
use tokio::net::TcpStream;

const BODY: &str = r#"{"org":"Vale"}"#;

/// A proxy started from a real file (so a reload has something to re-read).
async fn proxy_with_file(origin: &Origin, text: &str) -> (ProxyHandle, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let cli = dashcache::Cli {
        config: Some(path.clone()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        upstream: Some(origin.url()),
        ..Default::default()
    };
    let config = dashcache::Config::load(&cli).expect("valid config");
    let handle = support::start(config).await;
    (handle, dir, path)
}

fn sighup() {
    // SAFETY: sending a signal to this very process.
    let sent = unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    assert_eq!(sent, 0, "SIGHUP sent");
}

async fn stats_generation(proxy: &ProxyHandle) -> u64 {
    proxy.stats().await["config_generation"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_ttl_without_dropping_the_cache_or_connections() {
    let origin = Origin::start().await;
    let (proxy, _dir, path) = proxy_with_file(&origin, "[cache]\nttl = \"1h\"\n").await;

    // One keep-alive connection, used before and after the reload.
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let post = |sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>| {
        let request = Request::post("/api/metrics")
            .header("host", "dash.example")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
            .unwrap();
        sender.send_request(request)
    };
    let first = post(&mut sender).await.unwrap();
    assert_eq!(first.headers()["x-cache"], "MISS");
    first.into_body().collect().await.unwrap();

    let stats = proxy.stats().await;
    assert_eq!(stats["ttl"], 3600);
    assert_eq!(stats["config_generation"], 1);
    let loaded_at = stats["config_loaded_at"].as_str().unwrap().to_owned();
    assert!(loaded_at.ends_with('Z'), "{loaded_at}");

    std::fs::write(
        &path,
        "[cache]\nttl = \"2h\"\n\n[[route]]\nname = \"get_metrics\"\npath = \"/api/metrics\"\nttl = 60\n",
    )
    .unwrap();
    sighup();
    let mut generation = 1;
    for _ in 0..200 {
        generation = stats_generation(&proxy).await;
        if generation == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(generation, 2, "the reload shows in stats");
    let stats = proxy.stats().await;
    assert_eq!(stats["ttl"], 7200, "{stats}");
    assert_eq!(stats["size"], 1, "the cache survived: {stats}");

    let again = post(&mut sender)
        .await
        .expect("the open connection still works");
    assert_eq!(again.headers()["x-cache"], "HIT");
    again.into_body().collect().await.unwrap();

    // The new route's TTL applies to new entries.
    let fresh = Client::new()
        .post(&proxy.url("/api/metrics"), r#"{"org":"Acme"}"#)
        .await;
    assert_eq!(fresh.x_cache(), "MISS");
    let hit = Client::new()
        .post(&proxy.url("/api/metrics"), r#"{"org":"Acme"}"#)
        .await;
    let ttl = hit.cache_status_ttl().unwrap();
    assert!(ttl <= 60, "the route's new 60 s TTL: {ttl}");
    assert_eq!(origin.total(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_running_configuration() {
    let origin = Origin::start().await;
    let (proxy, _dir, path) = proxy_with_file(&origin, "[cache]\nttl = \"1h\"\n").await;
    Client::new().post(&proxy.url("/api/metrics"), BODY).await;

    std::fs::write(&path, "[cache]\nttl = \"soon\"\n").unwrap();
    // (Another test's SIGHUP may have reloaded the valid file before.)
    let before = stats_generation(&proxy).await;
    let outcome = proxy.proxy.reload_config();
    let dashcache::reload::Reload::Invalid(err) = outcome else {
        panic!("an invalid file is refused: {outcome:?}")
    };
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("ttl"), "the error names the field: {chain}");

    let stats = proxy.stats().await;
    assert_eq!(stats["config_generation"], before, "{stats}");
    assert_eq!(stats["ttl"], 3600, "{stats}");
    let hit = Client::new().post(&proxy.url("/api/metrics"), BODY).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.x_cache(), "HIT");

    std::fs::write(&path, "[cache]\nttl = \"3h\"\n").unwrap();
    proxy.proxy.reload_config();
    eventually("the fixed file to apply", || {
        proxy.proxy.config().cache.ttl.as_secs() == 10_800
    })
    .await;
    // (A SIGHUP sent by another test of this binary may have reloaded too.)
    assert!(stats_generation(&proxy).await > before);
}
