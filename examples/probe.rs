//! The miss and coalescing probe behind `bench/scale.sh miss`: measures
//! what a cache miss costs over calling the backend directly, and how a
//! burst of identical cold requests is coalesced. It talks to a running
//! `bench-origin` (the origin of `../shared/bench/compare.sh`: it counts
//! requests at `GET /__origin/count` and takes its delay from
//! `POST /__origin/delay?ms=N`) and to proxies in front of it.
//!
//! ```text
//! cargo build --release --example probe
//! target/release/examples/probe miss --origin http://127.0.0.1:18180 \
//!     --target dashcache=http://127.0.0.1:18183 --target nginx=http://127.0.0.1:18181 --n 2000
//! target/release/examples/probe coalesce --origin http://127.0.0.1:18180 \
//!     --target dashcache=http://127.0.0.1:18183 --n 200 --delay-ms 2000
//! ```
//!
//! `miss`: sets the origin delay to 0, then sends `--n` GETs on distinct
//! keys to every target and to the origin itself, one request at a time on
//! one keep-alive connection per target, interleaved (request i goes to
//! each target in turn), so every proxied request is a miss and the noise of
//! the machine falls on all of them alike. Prints p50/p99/mean per path and
//! the difference to the direct calls.
//!
//! `coalesce`: per target, sets the origin delay to `--delay-ms`, opens
//! `--n` connections, then sends `--n` identical GETs for a cold key at the
//! same moment; prints how many reached the origin (ideal 1), when the
//! first and the last answer came (from the common start), and how long
//! after the fill the last waiter was answered: at least the time from the
//! first answer to the last (the fill completes before the first answer),
//! at most the last answer minus the origin delay (the fill cannot complete
//! sooner than the delay after the start).
//! The delay is set back to 0 at the end.
//!
//! Every request has a deadline (`--deadline-s`, 60 s), so a run is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{handshake, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Barrier;

type Sender = SendRequest<Empty<Bytes>>;

/// What one answer was: its status and whether a cache header said MISS
/// (`X-Cache` for dashcache, `X-Cache-Status` for nginx).
struct Answer {
    status: u16,
    miss: bool,
}

struct Args {
    mode: String,
    origin: String,
    targets: Vec<(String, String)>,
    n: usize,
    delay_ms: u64,
    deadline: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: probe miss|coalesce --origin URL --target NAME=URL [--target ...] \
         [--n N] [--delay-ms MS] [--deadline-s S]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut raw = std::env::args().skip(1);
    let mode = raw.next().unwrap_or_else(|| usage());
    if mode != "miss" && mode != "coalesce" {
        usage();
    }
    let mut args = Args {
        n: if mode == "miss" { 2000 } else { 200 },
        mode,
        origin: String::new(),
        targets: Vec::new(),
        delay_ms: 2000,
        deadline: Duration::from_secs(60),
    };
    while let Some(flag) = raw.next() {
        let value = raw.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--origin" => args.origin = value.trim_end_matches('/').to_owned(),
            "--target" => {
                let (name, url) = value.split_once('=').unwrap_or_else(|| usage());
                args.targets
                    .push((name.to_owned(), url.trim_end_matches('/').to_owned()));
            }
            "--n" => args.n = value.parse().unwrap_or_else(|_| usage()),
            "--delay-ms" => args.delay_ms = value.parse().unwrap_or_else(|_| usage()),
            "--deadline-s" => {
                args.deadline = Duration::from_secs(value.parse().unwrap_or_else(|_| usage()))
            }
            _ => usage(),
        }
    }
    if args.origin.is_empty() || args.n == 0 {
        usage();
    }
    args
}

/// Opens one HTTP/1.1 keep-alive connection to the `host:port` of `base`.
async fn connect(base: &str) -> Sender {
    let uri: Uri = base.parse().expect("a URL like http://127.0.0.1:8080");
    let authority = uri.authority().expect("URL with host and port").as_str();
    let stream = TcpStream::connect(authority)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {authority}: {e}"));
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

/// Sends `method path` on `sender` and reads the whole answer.
async fn send(sender: &mut Sender, base: &str, method: Method, path: &str) -> Answer {
    let host = base.trim_start_matches("http://");
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
        .body(Empty::new())
        .unwrap();
    sender.ready().await.expect("connection usable");
    let response = sender.send_request(request).await.expect("an answer");
    let status = response.status().as_u16();
    let miss = ["x-cache", "x-cache-status"].iter().any(|name| {
        response
            .headers()
            .get(*name)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"MISS"))
    });
    response.into_body().collect().await.expect("a whole body");
    Answer { status, miss }
}

/// One control call to the origin (`/__origin/...`); its body as text.
async fn origin_control(origin: &str, method: Method, path: &str) -> String {
    let mut sender = connect(origin).await;
    let host = origin.trim_start_matches("http://");
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("origin answers");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).trim().to_owned()
}

async fn origin_count(origin: &str) -> u64 {
    let text = origin_control(origin, Method::GET, "/__origin/count").await;
    text.trim_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or_else(|_| panic!("origin count is not a number: {text:?}"))
}

async fn origin_delay(origin: &str, ms: u64) {
    origin_control(origin, Method::POST, &format!("/__origin/delay?ms={ms}")).await;
}

/// The value at percentile `p` (0..=100) of sorted samples, nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn run_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn miss(args: &Args) {
    origin_delay(&args.origin, 0).await;
    let mut paths = vec![("direct (origin)".to_owned(), args.origin.clone())];
    paths.extend(args.targets.iter().cloned());
    let mut senders = Vec::new();
    for (_, base) in &paths {
        senders.push(connect(base).await);
    }
    let id = run_id();
    // A few untimed requests per path first: connections to the origin
    // opened, code paths warm.
    for round in 0..20 {
        for (p, (_, base)) in paths.iter().enumerate() {
            let path = format!("/api/miss/{id}/warm/{p}/{round}");
            send(&mut senders[p], base, Method::GET, &path).await;
        }
    }
    let before = origin_count(&args.origin).await;
    let mut samples = vec![Vec::with_capacity(args.n); paths.len()];
    let mut statuses = vec![(0usize, 0usize); paths.len()];
    for i in 0..args.n {
        for k in 0..paths.len() {
            // Start with a different path each round.
            let p = (i + k) % paths.len();
            let path = format!("/api/miss/{id}/{p}/{i}?range=7d&region=eu-west-1");
            let started = Instant::now();
            let answer = tokio::time::timeout(
                args.deadline,
                send(&mut senders[p], &paths[p].1, Method::GET, &path),
            )
            .await
            .expect("request within the deadline");
            samples[p].push(started.elapsed().as_secs_f64() * 1000.0);
            statuses[p].0 += usize::from(answer.status == 200);
            statuses[p].1 += usize::from(answer.miss);
        }
    }
    let origin_requests = origin_count(&args.origin).await - before;
    for s in &mut samples {
        s.sort_by(f64::total_cmp);
    }
    let (direct50, direct99) = (percentile(&samples[0], 50.0), percentile(&samples[0], 99.0));
    println!(
        "miss overhead: {} sequential GETs on distinct keys per path, one keep-alive connection each, interleaved; origin delay 0; origin saw {origin_requests} requests (ideal {})",
        args.n,
        args.n * paths.len()
    );
    println!();
    println!("| path | p50 ms | p99 ms | mean ms | p50 over direct | p99 over direct | 200 answers | MISS answers |");
    println!("|---|---|---|---|---|---|---|---|");
    for (p, (name, _)) in paths.iter().enumerate() {
        let s = &samples[p];
        let (p50, p99) = (percentile(s, 50.0), percentile(s, 99.0));
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        let (over50, over99) = if p == 0 {
            ("".to_owned(), "".to_owned())
        } else {
            (
                format!("{:+.3} ms", p50 - direct50),
                format!("{:+.3} ms", p99 - direct99),
            )
        };
        println!(
            "| {name} | {p50:.3} | {p99:.3} | {mean:.3} | {over50} | {over99} | {} | {} |",
            statuses[p].0, statuses[p].1
        );
    }
}

async fn coalesce(args: &Args) {
    println!(
        "coalescing: {} connections opened first, then {} identical GETs for a cold key at once; origin delay {} ms",
        args.n, args.n, args.delay_ms
    );
    println!();
    println!("| target | origin requests (ideal 1) | 200 answers | first answer ms | p50 ms | last answer ms | last - first ms | last - origin delay ms |");
    println!("|---|---|---|---|---|---|---|---|");
    let id = run_id();
    for (name, base) in &args.targets {
        origin_delay(&args.origin, args.delay_ms).await;
        let mut senders = Vec::with_capacity(args.n);
        for _ in 0..args.n {
            senders.push(connect(base).await);
        }
        let path = format!("/api/coalesce/{id}/{name}?range=7d");
        let barrier = Arc::new(Barrier::new(args.n + 1));
        let before = origin_count(&args.origin).await;
        let mut tasks = Vec::with_capacity(args.n);
        for mut sender in senders {
            let (barrier, base, path) = (barrier.clone(), base.clone(), path.clone());
            let deadline = args.deadline;
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let answer =
                    tokio::time::timeout(deadline, send(&mut sender, &base, Method::GET, &path))
                        .await;
                (Instant::now(), answer.map(|a| a.status).unwrap_or(0))
            }));
        }
        barrier.wait().await;
        let started = Instant::now();
        let mut done = Vec::with_capacity(args.n);
        let mut ok = 0;
        for task in tasks {
            let (at, status) = task.await.unwrap();
            ok += usize::from(status == 200);
            done.push(at.saturating_duration_since(started).as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let origin_requests = origin_count(&args.origin).await - before;
        done.sort_by(f64::total_cmp);
        let (first, last) = (done[0], done[done.len() - 1]);
        println!(
            "| {name} | {origin_requests} | {ok} | {first:.1} | {:.1} | {last:.1} | {:.1} | {:.1} |",
            percentile(&done, 50.0),
            last - first,
            last - args.delay_ms as f64
        );
    }
    origin_delay(&args.origin, 0).await;
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    if args.mode == "miss" {
        miss(&args).await;
    } else {
        coalesce(&args).await;
    }
}
