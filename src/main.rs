//! The `dashcache` binary: parse flags, load the configuration, start
//! logging, run the proxy until SIGTERM/SIGINT, and turn any error into one
//! message and a non-zero exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use dashcache::config::LogFormat;
use dashcache::{Cli, Config, Server};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("dashcache: {}", error_chain(&err));
            return ExitCode::from(2);
        }
    };
    if cli.check {
        // The PEM files are read only when the listener starts; --check
        // reads them now so a bad certificate fails the check, not the deploy.
        if let Some(files) = &config.tls {
            if let Err(err) = dashcache::tls::check(files) {
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

    // Log lines go through a background writer so a slow terminal or pipe
    // never stalls a request; the guard flushes them at exit.
    let (writer, _flush_guard) = tracing_appender::non_blocking(std::io::stderr());
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
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
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
