//! The `dashcache` binary: parse flags, load the configuration, start
//! logging, run the proxy until SIGTERM/SIGINT, and turn any error into one
//! message and a non-zero exit code. `--healthcheck` asks a running proxy
//! instead (Docker's HEALTHCHECK: the runtime image has no curl).

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use dashcache::config::LogFormat;
use dashcache::{Cli, Config, Server};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: with glibc, memory freed by a
/// `clear` stayed in the per-thread arenas (RSS did not come down), and
/// many small entries cost more RSS than their bytes; figures in
/// docs/performance.md. `--no-default-features` builds with glibc's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long `--healthcheck` waits for the proxy's answer.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("dashcache: {}", error_chain(&err));
            return ExitCode::from(2);
        }
    };
    if cli.healthcheck {
        return match healthcheck(&config) {
            Ok(summary) => {
                println!("dashcache: healthy ({summary})");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("dashcache: unhealthy: {message}");
                ExitCode::FAILURE
            }
        };
    }
    if cli.check {
        // The PEM files are read only when the listener starts; --check
        // reads them now so a bad certificate fails the check, not the deploy.
        if let Some(files) = &config.tls {
            if let Err(err) = dashcache::tls::check(files) {
                eprintln!("dashcache: {}", error_chain(&err));
                return ExitCode::from(2);
            }
        }
        if let Some(path) = &config.cache.snapshot_file {
            if let Err(err) = dashcache::cache::snapshot::check_writable(path) {
                eprintln!("dashcache: {}", error_chain(&err));
                return ExitCode::from(2);
            }
        }
        let source = config
            .source
            .as_ref()
            .map_or("flags, env and defaults".into(), |p| {
                p.display().to_string()
            });
        println!("dashcache: configuration OK ({source})");
        return ExitCode::SUCCESS;
    }
    if cli.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }

    // Log lines go to a buffer that a thread of its own writes out, so a
    // slow terminal or pipe never stalls a request and no line wakes a
    // thread (`log_writer.rs`); the guard flushes them at exit.
    let (writer, _flush_guard) = match dashcache::log_writer::batch_writer(std::io::stderr()) {
        Ok(writer) => writer,
        Err(err) => {
            eprintln!("dashcache: cannot start the log writer thread: {err}");
            return ExitCode::FAILURE;
        }
    };
    // --log-level (or DASHCACHE_LOG) wins over RUST_LOG; a filter that does
    // not parse is an error, not a silent fallback.
    let (source, directives) = match (&cli.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => ("--log-level / DASHCACHE_LOG", level.clone()),
        (None, Ok(env)) => ("RUST_LOG", env),
        (None, Err(_)) => ("default", "info".to_owned()),
    };
    let filter = match EnvFilter::try_new(&directives) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("dashcache: invalid log filter {directives:?} from {source}: {err}");
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match config.log_format {
        // The access line has a formatter of its own (same bytes, less
        // work: `log_format.rs`); every other line is tracing-subscriber's.
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .event_format(dashcache::log_format::TextLines::default())
            .init(),
        // One object per line, the event's fields at the top level next to
        // timestamp, level and target, so `jq .cache` or a log shipper's
        // field extraction needs no nesting.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }

    // Freed pages go back to the OS about a second after they are freed,
    // even when no traffic follows, and a worker's heap stays small enough
    // for mimalloc's periodic walk of it inside a request (`allocator.rs`).
    dashcache::allocator::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("dashcache: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let server = Server::bind(config).await?;
        server.run(dashcache::server::shutdown_signal()).await;
        Ok::<_, dashcache::server::ServerError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %error_chain(&err), "dashcache stopped");
            eprintln!("dashcache: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// `--healthcheck`: `GET /api/cache/health` from the proxy this
/// configuration describes (on `admin_listen` when set, else on `listen`,
/// an unspecified address asked on loopback). Healthy when it answers 200
/// with status "ok"; an unreachable upstream is reported, not fatal, since
/// the proxy still answers hits.
fn healthcheck(config: &Config) -> Result<String, String> {
    let addr = match config.admin_listen {
        Some(addr) => addr,
        None if config.tls.is_some() => return Err(
            "the main listener serves HTTPS only; set admin_listen (plain HTTP) for health checks"
                .into(),
        ),
        None => config.listen,
    };
    if addr.port() == 0 {
        return Err(format!("{addr} has no fixed port to ask"));
    }
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let url = format!(
        "http://{}/api/cache/health",
        SocketAddr::new(ip, addr.port())
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))?;
    let (status, body) = runtime.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let ask = async {
            let response = client.get(url.parse()?).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        };
        match tokio::time::timeout(HEALTHCHECK_TIMEOUT, ask).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(err)) => Err(format!("{url}: {}", error_chain(&*err))),
            Err(_) => Err(format!(
                "{url} did not answer within {}s",
                HEALTHCHECK_TIMEOUT.as_secs()
            )),
        }
    })?;
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|err| format!("{url} answered {status} without JSON: {err}"))?;
    if !status.is_success() || answer["status"] != "ok" {
        return Err(format!("{url} answered {status}: {answer}"));
    }
    let upstream = &answer["upstream"];
    let name = upstream["url"].as_str().unwrap_or("?");
    Ok(match upstream["error"].as_str() {
        None => format!("upstream {name} reachable"),
        Some(error) => format!("upstream {name} unreachable: {error}"),
    })
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
