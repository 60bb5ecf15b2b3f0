//! The scale probe: fills a release `dashcache` with many small entries
//! over real sockets and measures what docs/performance.md reports: RSS per
//! entry against the `bytes` stats counts, the latency of stats, metrics,
//! health and `keys?limit=10`, how long `invalidate` (1 % of the entries),
//! `refresh` and `clear` take, how long a hit on another key waits while
//! they run, and the RSS given back after `clear`.
//!
//! ```text
//! cargo build --release && cargo run --release --example scale             # 100,000 entries
//! SCALE_ENTRIES=1000000 cargo run --release --example scale
//! ```
//!
//! Environment: `SCALE_ENTRIES` (100000), `SCALE_MAX_BYTES` (`max_bytes`,
//! default 4GiB so nothing is evicted), `SCALE_BIN` (target/release/dashcache),
//! `SCALE_CONCURRENCY` (32 fill connections). The origin runs in this
//! process and answers a ~100-byte JSON body per URL; the proxy is a child
//! process, so its RSS is its own.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn origin() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    let body = format!(
                        r#"{{"query":"{}","value":42,"rows":[1,2,3],"source":"scale-probe"}}"#,
                        request.uri().query().unwrap_or_default()
                    );
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn call(client: &HttpClient, method: Method, url: &str) -> (u16, Bytes) {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.expect("proxy answers");
    let status = response.status().as_u16();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// Milliseconds one call takes, best and worst of `rounds`.
async fn timed(client: &HttpClient, method: Method, url: &str, rounds: u32) -> (f64, f64, Value) {
    let (mut best, mut worst, mut last) = (f64::MAX, 0f64, Value::Null);
    for _ in 0..rounds {
        let started = Instant::now();
        let (_, body) = call(client, method.clone(), url).await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        best = best.min(ms);
        worst = worst.max(ms);
        last = serde_json::from_slice(&body).unwrap_or(Value::Null);
    }
    (best, worst, last)
}

/// Hits one hot key in a loop until `stop`; the slowest hit, in ms.
async fn hit_loop(client: HttpClient, url: String, stop: Arc<AtomicBool>) -> (f64, u64) {
    let (mut worst, mut count) = (0f64, 0);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        call(&client, Method::GET, &url).await;
        worst = worst.max(started.elapsed().as_secs_f64() * 1000.0);
        count += 1;
    }
    (worst, count)
}

/// Runs `operation` while a hit loop on another key runs; returns the
/// operation's time, its answer, and the slowest hit meanwhile.
async fn with_hits(client: &HttpClient, hot: &str, method: Method, url: &str) -> (f64, Value, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let hits = tokio::spawn(hit_loop(client.clone(), hot.to_owned(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (_, body) = call(client, method, url).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (worst, _) = hits.await.unwrap();
    (
        ms,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        worst,
    )
}

fn url(base: &str, i: usize) -> String {
    format!("{base}/api/s?n={i}&g={:03}x", i % 100)
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    let entries = env("SCALE_ENTRIES", 100_000) as usize;
    let max_bytes = env("SCALE_MAX_BYTES", 4 << 30);
    let concurrency = env("SCALE_CONCURRENCY", 32) as usize;
    let bin = std::env::var("SCALE_BIN").unwrap_or_else(|_| "target/release/dashcache".into());
    let origin = origin().await;
    let port = free_port();
    let child = Command::new(&bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &format!("http://{origin}")])
        .args(["--maxsize", &(entries + 1000).to_string()])
        .args(["--max-bytes", &max_bytes.to_string()])
        .args(["--max-object-bytes", "1MiB"])
        .args(["--ttl", "4h", "--log-level", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (cargo build --release first)"));
    let proxy = Proxy(child);
    let pid = proxy.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency + 4)
        .build(connector);
    let health = format!("{base}/api/cache/health");
    for _ in 0..200 {
        let request = Request::get(&health).body(Full::new(Bytes::new())).unwrap();
        if client.request(request).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hot = format!("{base}/api/hot");
    call(&client, Method::GET, &hot).await;
    let idle_rss = rss_kib(pid);

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let misses = Arc::new(AtomicU64::new(0));
    let mut fillers = Vec::new();
    for _ in 0..concurrency {
        let (client, base, next, misses) =
            (client.clone(), base.clone(), next.clone(), misses.clone());
        fillers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= entries {
                    return;
                }
                let (status, _) = call(&client, Method::GET, &url(&base, i)).await;
                assert_eq!(status, 200);
                misses.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for filler in fillers {
        filler.await.unwrap();
    }
    let fill_s = started.elapsed().as_secs_f64();
    let full_rss = rss_kib(pid);
    let stats_url = format!("{base}/api/cache/stats");
    let (stats_best, stats_worst, stats) = timed(&client, Method::GET, &stats_url, 20).await;
    let cache = &stats["cache"];
    let bytes = cache["bytes"].as_u64().unwrap_or(0);
    let size = cache["size"].as_u64().unwrap_or(0);
    println!("entries filled: {entries} in {fill_s:.1} s ({concurrency} connections)");
    println!(
        "stats: size {size}, bytes {bytes} ({:.0} B/entry)",
        bytes as f64 / size.max(1) as f64
    );
    println!(
        "RSS: idle {} MiB, full {} MiB; {:.0} B/entry of RSS growth; RSS / (bytes + 30 MiB) = {:.2}",
        idle_rss / 1024,
        full_rss / 1024,
        (full_rss - idle_rss) as f64 * 1024.0 / entries as f64,
        full_rss as f64 * 1024.0 / (bytes as f64 + 30.0 * 1048576.0)
    );
    println!("GET /api/cache/stats: best {stats_best:.2} ms, worst {stats_worst:.2} ms (20 calls)");
    for path in ["/api/cache/metrics", "/api/cache/health"] {
        let (best, worst, _) = timed(&client, Method::GET, &format!("{base}{path}"), 20).await;
        println!("GET {path}: best {best:.2} ms, worst {worst:.2} ms (20 calls)");
    }
    let (best, worst, _) = timed(
        &client,
        Method::GET,
        &format!("{base}/api/cache/keys?limit=10"),
        5,
    )
    .await;
    println!("GET /api/cache/keys?limit=10: best {best:.1} ms, worst {worst:.1} ms (5 calls)");

    let stop = Arc::new(AtomicBool::new(false));
    let idle_hits = tokio::spawn(hit_loop(client.clone(), hot.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let (idle_worst, idle_count) = idle_hits.await.unwrap();
    println!(
        "hit on the hot key, nothing else running: worst {idle_worst:.2} ms over {idle_count} hits"
    );

    let invalidate = format!("{base}/api/cache/invalidate?pattern=g%3D007x");
    let (ms, answer, worst) = with_hits(&client, &hot, Method::POST, &invalidate).await;
    println!(
        "POST invalidate (1 %): {ms:.0} ms, keys_deleted {}, worst hit meanwhile {worst:.2} ms",
        answer["keys_deleted"]
    );

    let before = rss_kib(pid);
    let refresh = format!("{base}/api/cache/refresh");
    let (ms, answer, worst) = with_hits(&client, &hot, Method::POST, &refresh).await;
    let during = rss_kib(pid);
    println!(
        "POST refresh (all): 202 in {ms:.0} ms, keys_scheduled {}, worst hit meanwhile {worst:.2} ms, RSS +{} MiB",
        answer["keys_scheduled"],
        during.saturating_sub(before) / 1024
    );

    let clear = format!("{base}/api/cache/clear");
    let (ms, _, worst) = with_hits(&client, &hot, Method::POST, &clear).await;
    println!("POST clear: {ms:.1} ms, worst hit meanwhile {worst:.2} ms");
    let after_clear = rss_kib(pid);
    // mimalloc hands pages back when the threads that own them run again:
    // a second of hits, as a cleared cache in service would get.
    let stop = Arc::new(AtomicBool::new(false));
    let hits = tokio::spawn(hit_loop(client.clone(), hot.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    hits.await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, _, stats) = timed(&client, Method::GET, &stats_url, 1).await;
    println!(
        "after clear: refresh {}, size {}",
        stats["cache"]["refresh"], stats["cache"]["size"]
    );
    println!(
        "RSS right after clear {} MiB; after 1 s of hits and 2 s: {} MiB (full {} MiB, idle {} MiB)",
        after_clear / 1024,
        rss_kib(pid) / 1024,
        full_rss / 1024,
        idle_rss / 1024
    );
}
