//! Command line flags and the env vars each names ([`Cli`]), as clap parses
//! them: raw, unvalidated input (`resolve` checks it), plus the duration
//! syntax flags and the file share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::builder::BoolishValueParser;
use clap::Parser;

use super::LogFormat;

/// Command line flags; each also reads the env var it names.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "dashcache",
    version,
    about = "Caching reverse proxy for slow analytics APIs"
)]
pub struct Cli {
    /// TOML configuration file (see proxy.toml).
    #[arg(long, value_name = "FILE", env = "DASHCACHE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on.
    #[arg(long, value_name = "ADDR", env = "DASHCACHE_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Backend base URL, http:// or https://.
    #[arg(long, value_name = "URL", env = "DASHCACHE_UPSTREAM")]
    pub upstream: Option<String>,

    /// Default time to live: seconds, or a duration such as "4h".
    #[arg(long, value_name = "SECONDS", env = "CACHE_TTL", value_parser = parse_duration)]
    pub ttl: Option<Duration>,

    /// Maximum number of cached entries.
    #[arg(long, value_name = "N", env = "CACHE_MAXSIZE")]
    pub maxsize: Option<u64>,

    /// Turn caching on or off (off: pure pass-through).
    #[arg(long, value_name = "BOOL", env = "CACHE_ENABLED", value_parser = BoolishValueParser::new())]
    pub cache_enabled: Option<bool>,

    /// Bound on the bytes held by the store, e.g. "256MiB".
    #[arg(long, value_name = "SIZE", env = "DASHCACHE_MAX_BYTES")]
    pub max_bytes: Option<ByteSize>,

    /// Largest answer that is cached; larger ones stream through.
    #[arg(long, value_name = "SIZE", env = "DASHCACHE_MAX_OBJECT_BYTES")]
    pub max_object_bytes: Option<ByteSize>,

    /// Largest request body accepted (413 beyond).
    #[arg(long, value_name = "SIZE", env = "DASHCACHE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<ByteSize>,

    /// Time allowed to open a connection to the upstream.
    #[arg(long, value_name = "DURATION", env = "DASHCACHE_CONNECT_TIMEOUT", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,

    /// Time allowed for the upstream's response head, and between body chunks.
    #[arg(long, value_name = "DURATION", env = "DASHCACHE_UPSTREAM_TIMEOUT", value_parser = parse_duration)]
    pub upstream_timeout: Option<Duration>,

    /// Extra PEM CA bundle trusted for an https upstream.
    #[arg(long, value_name = "FILE", env = "DASHCACHE_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,

    /// Serve the admin API (`/api/cache/*`) only on this address, plain HTTP.
    #[arg(long, value_name = "ADDR", env = "DASHCACHE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long, value_name = "FILE", env = "DASHCACHE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", env = "DASHCACHE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Largest request head (request line and headers) accepted; 431 beyond.
    #[arg(long, value_name = "SIZE", env = "DASHCACHE_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<ByteSize>,

    /// Time a client gets to send a request head (TLS handshake included);
    /// also how long an idle keep-alive connection is kept.
    #[arg(long, value_name = "DURATION", env = "DASHCACHE_HEADER_READ_TIMEOUT", value_parser = parse_duration)]
    pub header_read_timeout: Option<Duration>,

    /// Client connections served at once; further ones are closed on accept.
    #[arg(long, value_name = "N", env = "DASHCACHE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Bearer token required by the admin API's mutations.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CACHE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Log filter, e.g. "info" or "dashcache=debug" (default: RUST_LOG, else info).
    #[arg(long, value_name = "FILTER", env = "DASHCACHE_LOG")]
    pub log_level: Option<String>,

    /// Log line format: "text" (readable) or "json" (one object per line).
    #[arg(long, value_name = "FORMAT", env = "DASHCACHE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Write the cache to this file on shutdown and load it at start.
    #[arg(long, value_name = "FILE", env = "DASHCACHE_SNAPSHOT_FILE")]
    pub snapshot_file: Option<PathBuf>,

    /// Validate the configuration and exit.
    #[arg(long)]
    pub check: bool,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Ask the running proxy's /api/cache/health (on admin_listen, else
    /// listen) and exit 0 if it answers: for Docker's HEALTHCHECK.
    #[arg(long)]
    pub healthcheck: bool,
}

/// Seconds ("14400") or a humantime duration ("4h", "90s", "1h 30m").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}; expected seconds or a duration such as \"4h\" or \"90s\""))
}
