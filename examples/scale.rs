//! The scale probe: fills a release `dashcache` with many small entries
//! over real sockets and measures what docs/performance.md reports: RSS per
//! entry against the `bytes` stats counts, the latency of stats, metrics,
//! health and `keys?limit=10`, how long `invalidate` (1 % of the entries),
//! `refresh` and `clear` take, how long a hit on another key waits while
//! they run, and the RSS given back after `clear`; hit latency percentiles on
//! random stored keys, and the hits in the seconds after a `clear` while its
//! sweep runs. With `SCALE_REFERENCE` set, a second proxy holding that many
//! entries is timed in the same run, in turn with the first a few
//! milliseconds at a time, so the host's noise falls on both alike and their percentiles
//! compare (`bench/scale.sh` does so at 1,000,000 entries against 1,000).
//!
//! ```text
//! cargo build --release && cargo run --release --example scale             # 100,000 entries
//! SCALE_ENTRIES=1000000 SCALE_REFERENCE=1000 cargo run --release --example scale
//! ```
//!
//! Environment: `SCALE_ENTRIES` (100000), `SCALE_REFERENCE` (0: none),
//! `SCALE_MAX_BYTES` (`max_bytes`,
//! default 4GiB so nothing is evicted), `SCALE_BIN` (target/release/dashcache),
//! `SCALE_CONCURRENCY` (32 fill connections), `SCALE_HITS` (100000 timed hits
//! on random stored keys), `SCALE_HIT_CONNECTIONS` (4 keep-alive connections,
//! sequential on each), `SCALE_CLEAR_WINDOW_MS` (2000: how long hits are
//! timed after the `clear` answer). The origin runs in this
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

/// Sends a GET and reads the whole answer; true when it was a cache hit
/// (`X-Cache: HIT`).
async fn get_hit(client: &HttpClient, url: &str) -> bool {
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let response = client.request(request).await.expect("proxy answers");
    assert_eq!(response.status(), 200, "GET {url}");
    let hit = response
        .headers()
        .get("x-cache")
        .is_some_and(|v| v.as_bytes() == b"HIT");
    response.into_body().collect().await.unwrap();
    hit
}

/// The value at percentile `p` (0..=100) of sorted samples, nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(f64::total_cmp);
    samples
}

/// A small xorshift generator: random stored keys without a dependency.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A proxy whose hits are timed: its base URL and how many keys it stores.
#[derive(Clone)]
struct Target {
    base: String,
    entries: usize,
}

/// The hits timed on one [`Target`]: sorted latencies in ms, and how many
/// answers were misses (keys the store did not keep), left out.
struct HitTimes {
    latencies: Vec<f64>,
    misses: usize,
}

impl HitTimes {
    fn with_capacity(hits: usize) -> Self {
        Self {
            latencies: Vec::with_capacity(hits),
            misses: 0,
        }
    }
}

/// Requests each task sends to one target before all of them move on to
/// the next: a few milliseconds, so that a target's workers are as busy as
/// with no other target, and host noise lasting longer falls on all.
const TURN: usize = 100;

/// Times `total` GETs of random stored keys on each target, over
/// `connections` keep-alive connections to each, each task sending its
/// requests one after the other (after 50 untimed ones to open them). The
/// tasks take the targets in turn together, [`TURN`] requests each at a
/// time: whatever the host does meanwhile falls on all of them alike, so
/// their percentiles compare.
async fn random_hits(targets: &[Target], total: usize, connections: usize) -> Vec<HitTimes> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build(connector);
    let per = total.div_ceil(connections);
    let targets: Arc<[Target]> = targets.into();
    let turns = Arc::new(tokio::sync::Barrier::new(connections));
    let mut tasks = Vec::new();
    for task in 0..connections {
        let (client, targets, turns) = (client.clone(), targets.clone(), turns.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ ((task as u64 + 1) * 0x2545_F491));
            for _ in 0..50 {
                for target in targets.iter() {
                    get_hit(&client, &url(&target.base, rng.below(target.entries))).await;
                }
            }
            let mut timed: Vec<HitTimes> = targets
                .iter()
                .map(|_| HitTimes::with_capacity(per))
                .collect();
            for turn in 0..per.div_ceil(TURN) {
                let requests = TURN.min(per - turn * TURN);
                // Each target goes first in its turn as often as the others.
                for at in 0..targets.len() {
                    let at = (at + turn) % targets.len();
                    let (target, timed) = (&targets[at], &mut timed[at]);
                    turns.wait().await;
                    for _ in 0..requests {
                        let key = url(&target.base, rng.below(target.entries));
                        let started = Instant::now();
                        if get_hit(&client, &key).await {
                            timed
                                .latencies
                                .push(started.elapsed().as_secs_f64() * 1000.0);
                        } else {
                            timed.misses += 1;
                        }
                    }
                }
            }
            timed
        }));
    }
    let mut all: Vec<HitTimes> = targets
        .iter()
        .map(|_| HitTimes::with_capacity(per * connections))
        .collect();
    for task in tasks {
        for (all, timed) in all.iter_mut().zip(task.await.unwrap()) {
            all.latencies.extend(timed.latencies);
            all.misses += timed.misses;
        }
    }
    for timed in &mut all {
        timed.latencies = sorted(std::mem::take(&mut timed.latencies));
    }
    all
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

/// One request of a hit loop: when it started, how long it took (ms), and
/// whether it was a hit.
struct Sample {
    at: Instant,
    ms: f64,
    hit: bool,
}

/// Hits one hot key in a loop until `stop`; every request's sample.
async fn sample_loop(client: HttpClient, url: String, stop: Arc<AtomicBool>) -> Vec<Sample> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        let hit = get_hit(&client, &url).await;
        let ms = at.elapsed().as_secs_f64() * 1000.0;
        samples.push(Sample { at, ms, hit });
    }
    samples
}

/// Hits one hot key in a loop until `stop`; the slowest hit, in ms.
async fn hit_loop(client: HttpClient, url: String, stop: Arc<AtomicBool>) -> (f64, u64) {
    let samples = sample_loop(client, url, stop).await;
    let worst = samples.iter().map(|s| s.ms).fold(0f64, f64::max);
    (worst, samples.len() as u64)
}

/// What `with_samples` measured: the operation's time and answer, when the
/// answer came, the proxy's RSS 300 ms after it, and the hit loop's samples.
struct Timed {
    ms: f64,
    answer: Value,
    answered: Instant,
    rss_kib: u64,
    samples: Vec<Sample>,
}

impl Timed {
    /// The slowest request of the loop that started before `after` past the
    /// answer (the loop starts 200 ms before the operation).
    fn worst_until(&self, after: Duration) -> f64 {
        let end = self.answered + after;
        self.samples
            .iter()
            .filter(|s| s.at < end)
            .map(|s| s.ms)
            .fold(0f64, f64::max)
    }
}

/// Runs `operation` while a hit loop on another key runs (from 200 ms
/// before it to `after` past its answer).
async fn with_samples(
    pid: u32,
    client: &HttpClient,
    hot: &str,
    method: Method,
    url: &str,
    after: Duration,
) -> Timed {
    let stop = Arc::new(AtomicBool::new(false));
    let hits = tokio::spawn(sample_loop(client.clone(), hot.to_owned(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (_, body) = call(client, method, url).await;
    let answered = Instant::now();
    let ms = (answered - started).as_secs_f64() * 1000.0;
    let first = after.min(Duration::from_millis(300));
    tokio::time::sleep(first).await;
    let rss_kib = rss_kib(pid);
    tokio::time::sleep(after - first).await;
    stop.store(true, Ordering::Relaxed);
    Timed {
        ms,
        answer: serde_json::from_slice(&body).unwrap_or(Value::Null),
        answered,
        rss_kib,
        samples: hits.await.unwrap(),
    }
}

/// Runs `operation` while a hit loop on another key runs; returns the
/// operation's time, its answer, and the slowest hit meanwhile (up to
/// 300 ms after the answer).
async fn with_hits(
    pid: u32,
    client: &HttpClient,
    hot: &str,
    method: Method,
    url: &str,
) -> (f64, Value, f64) {
    let after = Duration::from_millis(300);
    let timed = with_samples(pid, client, hot, method, url, after).await;
    let worst = timed.worst_until(after);
    (timed.ms, timed.answer, worst)
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

/// Starts `bin` as a proxy for `origin` with room for `entries` (nothing
/// evicted) and waits until it answers; returns it and its base URL.
async fn start_proxy(
    bin: &str,
    origin: SocketAddr,
    entries: usize,
    max_bytes: u64,
    client: &HttpClient,
) -> (Proxy, String) {
    let port = free_port();
    let child = Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &format!("http://{origin}")])
        // 10 % headroom: the store's shards fill unevenly, and a full shard
        // evicts before `maxsize` is reached (2 % left 760 of a million
        // evicted, whose misses then stood among the timed hits).
        .args(["--maxsize", &(entries + entries / 10 + 1000).to_string()])
        .args(["--max-bytes", &max_bytes.to_string()])
        .args(["--max-object-bytes", "1MiB"])
        .args(["--ttl", "4h", "--log-level", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (cargo build --release first)"));
    let proxy = Proxy(child);
    let base = format!("http://127.0.0.1:{port}");
    let health = format!("{base}/api/cache/health");
    for _ in 0..200 {
        let request = Request::get(&health).body(Full::new(Bytes::new())).unwrap();
        if client.request(request).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (proxy, base)
}

/// Stores `entries` keys in the proxy at `base` (one miss each) over
/// `concurrency` connections; returns the seconds it took.
async fn fill(client: &HttpClient, base: &str, entries: usize, concurrency: usize) -> f64 {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let misses = Arc::new(AtomicU64::new(0));
    let mut fillers = Vec::new();
    for _ in 0..concurrency {
        let (client, base, next, misses) = (
            client.clone(),
            base.to_owned(),
            next.clone(),
            misses.clone(),
        );
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
    started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let entries = env("SCALE_ENTRIES", 100_000) as usize;
    let reference = env("SCALE_REFERENCE", 0) as usize;
    let max_bytes = env("SCALE_MAX_BYTES", 4 << 30);
    let concurrency = env("SCALE_CONCURRENCY", 32) as usize;
    let hit_count = env("SCALE_HITS", 100_000) as usize;
    let hit_connections = env("SCALE_HIT_CONNECTIONS", 4).max(1) as usize;
    let clear_window = Duration::from_millis(env("SCALE_CLEAR_WINDOW_MS", 2000));
    let bin = std::env::var("SCALE_BIN").unwrap_or_else(|_| "target/release/dashcache".into());
    let origin = origin().await;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency + 4)
        .build(connector);
    let (proxy, base) = start_proxy(&bin, origin, entries, max_bytes, &client).await;
    let pid = proxy.0.id();
    let hot = format!("{base}/api/hot");
    call(&client, Method::GET, &hot).await;
    let idle_rss = rss_kib(pid);

    let fill_s = fill(&client, &base, entries, concurrency).await;
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

    let mut targets = vec![Target {
        base: base.clone(),
        entries,
    }];
    // The reference store, filled now and timed in turn with this one.
    let reference_proxy = if reference > 0 {
        let (proxy, base) = start_proxy(&bin, origin, reference, max_bytes, &client).await;
        fill(&client, &base, reference, concurrency).await;
        targets.push(Target {
            base,
            entries: reference,
        });
        Some(proxy)
    } else {
        None
    };
    let hit_times = random_hits(&targets, hit_count, hit_connections).await;
    for (target, times) in targets.iter().zip(&hit_times) {
        let latencies = &times.latencies;
        println!(
            "hit latency, random stored keys, {} entries: p50 {:.3} ms, p99 {:.3} ms, max {:.2} ms over {} hits ({hit_connections} connections, sequential on each{}; {} misses left out)",
            target.entries,
            percentile(latencies, 50.0),
            percentile(latencies, 99.0),
            latencies.last().copied().unwrap_or(0.0),
            latencies.len(),
            if targets.len() > 1 { ", the stores in turn" } else { "" },
            times.misses
        );
    }
    if let [this, reference] = &hit_times[..] {
        let ratio = |p| percentile(&this.latencies, p) / percentile(&reference.latencies, p);
        println!(
            "hit latency, {entries} entries against {} in the same run: p50 {:.2}x, p99 {:.2}x (p90 {:.2}x, p95 {:.2}x, p99.9 {:.2}x)",
            targets[1].entries,
            ratio(50.0),
            ratio(99.0),
            ratio(90.0),
            ratio(95.0),
            ratio(99.9)
        );
    }
    drop(reference_proxy);

    let invalidate = format!("{base}/api/cache/invalidate?pattern=g%3D007x");
    let (ms, answer, worst) = with_hits(pid, &client, &hot, Method::POST, &invalidate).await;
    println!(
        "POST invalidate (1 %): {ms:.0} ms, keys_deleted {}, worst hit meanwhile {worst:.2} ms",
        answer["keys_deleted"]
    );

    let before = rss_kib(pid);
    let refresh = format!("{base}/api/cache/refresh");
    let (ms, answer, worst) = with_hits(pid, &client, &hot, Method::POST, &refresh).await;
    let during = rss_kib(pid);
    println!(
        "POST refresh (all): 202 in {ms:.0} ms, keys_scheduled {}, worst hit meanwhile {worst:.2} ms, RSS +{} MiB",
        answer["keys_scheduled"],
        during.saturating_sub(before) / 1024
    );

    let clear = format!("{base}/api/cache/clear");
    let cleared = with_samples(
        pid,
        &client,
        &hot,
        Method::POST,
        &clear,
        clear_window.max(Duration::from_millis(300)),
    )
    .await;
    let worst = cleared.worst_until(Duration::from_millis(300));
    println!(
        "POST clear: {:.1} ms, worst hit meanwhile {worst:.2} ms",
        cleared.ms
    );
    // The window after the answer, while the cleared entries are swept: the
    // first request refills the hot key (a miss), the rest are hits.
    let window: Vec<&Sample> = cleared
        .samples
        .iter()
        .filter(|s| s.at >= cleared.answered && s.at < cleared.answered + clear_window)
        .collect();
    let hits = sorted(window.iter().filter(|s| s.hit).map(|s| s.ms).collect());
    let misses = sorted(window.iter().filter(|s| !s.hit).map(|s| s.ms).collect());
    println!(
        "clear: {} hits in the {:.1} s after the answer (sweep running): p50 {:.3} ms, p99 {:.3} ms, worst hit meanwhile {:.2} ms; {} misses, worst {:.2} ms",
        hits.len(),
        clear_window.as_secs_f64(),
        percentile(&hits, 50.0),
        percentile(&hits, 99.0),
        hits.last().copied().unwrap_or(0.0),
        misses.len(),
        misses.last().copied().unwrap_or(0.0)
    );
    let after_clear = cleared.rss_kib;
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
