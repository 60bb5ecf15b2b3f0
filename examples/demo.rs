//! The demo: a slow dashboard-like backend on 127.0.0.1:8000 and dashcache
//! in front of it on 0.0.0.0:8080, in one process.
//!
//! ```text
//! cargo run --release --example demo                 # proxy.toml, 2 s backend
//! DEMO_DELAY_MS=500 cargo run --release --example demo -- --ttl 60
//! curl -X POST localhost:8080/api/metrics -d '{"org":"Vale"}'
//! ```
//!
//! The backend stands in for the FastAPI "Dashboard CRM API": every answer
//! takes `DEMO_DELAY_MS` (default 2000) like a Databricks query, and is a
//! JSON document derived from the request, so equal filters give equal
//! answers. Flags after `--` are dashcache's own (`--help` lists them).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use md5::{Digest, Md5};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const BACKEND: &str = "127.0.0.1:8000";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cli = dashcache::Cli::parse();
    if cli.config.is_none() && std::path::Path::new("proxy.toml").is_file() {
        cli.config = Some("proxy.toml".into());
    }
    let delay = Duration::from_millis(
        std::env::var("DEMO_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
    );
    let backend: SocketAddr = std::env::var("DEMO_BACKEND_LISTEN")
        .unwrap_or_else(|_| BACKEND.to_owned())
        .parse()?;
    cli.upstream = Some(format!("http://{backend}"));
    let config = dashcache::Config::load(&cli)?;

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let listener = TcpListener::bind(backend).await?;
    tracing::info!(%backend, delay_ms = delay.as_millis() as u64, "demo backend listening");
    tokio::spawn(serve_backend(listener, delay));

    let server = dashcache::Server::bind(config).await?;
    tracing::info!(
        "try: curl -i -X POST localhost:{}/api/metrics -d '{{\"org\":\"Vale\"}}'",
        server.local_addr().port()
    );
    server.run(dashcache::server::shutdown_signal()).await;
    Ok(())
}

async fn serve_backend(listener: TcpListener, delay: Duration) {
    let queries = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let queries = queries.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let queries = queries.clone();
                async move { Ok::<_, Infallible>(answer(request, delay, &queries).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    delay: Duration,
    queries: &AtomicU64,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let filters: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let function = match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/health") => return reply(StatusCode::OK, json!({"status": "healthy"})),
        (&Method::POST, "/api/metrics") => "get_metrics",
        (&Method::POST, "/api/actions") => "get_actions",
        (&Method::GET, "/api/filter-options") => "get_filter_options",
        _ => return reply(StatusCode::NOT_FOUND, json!({"detail": "Not Found"})),
    };
    let n = queries.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::info!(query = n, function, "demo backend: running warehouse query");
    tokio::time::sleep(delay).await;

    // Deterministic figures from the request, so equal filters give equal JSON.
    let seed = Md5::digest([parts.uri.to_string().as_bytes(), &body].concat());
    let figure = |i: usize| u32::from_be_bytes([seed[i], seed[i + 1], seed[i + 2], 0]) / 256;
    let data = match function {
        "get_metrics" => json!({
            "filters": filters,
            "total_customers": figure(0),
            "active_customers": figure(3) % 50_000,
            "revenue": figure(6) as f64 / 10.0,
            "churn_rate": (figure(9) % 1000) as f64 / 10_000.0,
        }),
        "get_actions" => json!({
            "filters": filters,
            "actions": (0..5).map(|i| {
                let kind = ["call", "email", "visit"][i % 3];
                json!({"id": figure(i) % 10_000, "type": kind})
            }).collect::<Vec<_>>(),
        }),
        _ => json!({
            "orgs": ["Vale", "Petrobras", "Itaú", "Ambev"],
            "locations": ["Sao Paulo", "Rio de Janeiro", "Belo Horizonte"],
        }),
    };
    reply(StatusCode::OK, data)
}

fn reply(status: StatusCode, value: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("static response parts are valid")
}
