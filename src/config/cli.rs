//! Command line flags and the env vars each names ([`Cli`]), as clap parses
//! them: raw, unvalidated input (`resolve` checks it), plus the duration
//! syntax flags and the file share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::builder::BoolishValueParser;
use clap::Parser;

use super::{CacheMode, LogFormat};

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

    /// Longest wait for request body bytes; 408 beyond.
    #[arg(long, value_name = "DURATION", env = "DASHCACHE_BODY_READ_TIMEOUT", value_parser = parse_duration)]
    pub body_read_timeout: Option<Duration>,

    /// Bytes per second a request body must average after its first
    /// body_read_timeout ("1KiB"); 0 turns the rate off.
    #[arg(long, value_name = "SIZE", env = "DASHCACHE_BODY_MIN_RATE")]
    pub body_min_rate: Option<ByteSize>,

    /// Longest a client may leave its answer unread before the connection is closed.
    #[arg(long, value_name = "DURATION", env = "DASHCACHE_SEND_TIMEOUT", value_parser = parse_duration)]
    pub send_timeout: Option<Duration>,

    /// HTTP/2 PING period, to find dead peers.
    #[arg(long, value_name = "DURATION", env = "DASHCACHE_HTTP2_KEEP_ALIVE_INTERVAL", value_parser = parse_duration)]
    pub http2_keep_alive_interval: Option<Duration>,

    /// How long an HTTP/2 PING may stay unanswered before the connection is closed.
    #[arg(long, value_name = "DURATION", env = "DASHCACHE_HTTP2_KEEP_ALIVE_TIMEOUT", value_parser = parse_duration)]
    pub http2_keep_alive_timeout: Option<Duration>,

    /// Requests one HTTP/2 connection may have open at once.
    #[arg(long, value_name = "N", env = "DASHCACHE_HTTP2_MAX_CONCURRENT_STREAMS")]
    pub http2_max_concurrent_streams: Option<u32>,

    /// HTTP/2 streams a client may open and reset before they are served;
    /// beyond, the connection is closed.
    #[arg(
        long,
        value_name = "N",
        env = "DASHCACHE_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS"
    )]
    pub http2_max_pending_accept_reset_streams: Option<usize>,

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

    /// Cache rules: "dashboard" (the default: cache header-less answers for
    /// the TTL) or "standard" (a shared HTTP cache per RFC 9111/9213).
    #[arg(long, value_name = "MODE", env = "DASHCACHE_CACHE_MODE")]
    pub cache_mode: Option<CacheMode>,

    /// Give answers without explicit freshness a heuristic lifetime from
    /// Last-Modified instead of the TTL (default: on in standard mode).
    #[arg(long, value_name = "BOOL", env = "DASHCACHE_HEURISTIC_FRESHNESS", value_parser = BoolishValueParser::new())]
    pub heuristic_freshness: Option<bool>,

    /// Targeted cache-control fields obeyed before Cache-Control, comma
    /// separated, first present wins (default: CDN-Cache-Control).
    #[arg(
        long,
        value_name = "FIELDS",
        env = "DASHCACHE_TARGETED_CACHE_CONTROL",
        value_delimiter = ','
    )]
    pub targeted_cache_control: Option<Vec<String>>,

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
