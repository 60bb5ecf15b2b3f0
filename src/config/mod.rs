//! Configuration: the validated [`Config`] every other module reads, its
//! defaults and its error, and [`Config::load`] / [`Config::reread`].
//!
//! Raw input is kept apart from the result (ripgrep's LowArgs/HiArgs split):
//! `cli.rs` holds the clap flags and env vars ([`Cli`]), `file.rs` the
//! `proxy.toml` serde types ([`FileConfig`]), `resolve.rs` merges them over
//! the defaults with precedence flags > env > file > defaults and validates
//! everything (errors name the flag or file field at fault), and `print.rs`
//! writes the effective configuration back as TOML for `--print-config`.
//! Nothing downstream re-reads the environment or re-checks a value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::{StatusCode, Uri};
use serde::{Deserialize, Serialize};

pub use crate::cache::policy::CacheMode;
use crate::cache::stale::StaleWindows;
pub use crate::request_id::TrustedProxies;
use crate::routes::RouteTable;

mod cli;
mod file;
mod print;
pub mod redis;
mod resolve;

pub use cli::{parse_duration, Cli};
pub use file::{FileCache, FileConfig, FileDuration, FileRoute, FileSize};
pub use redis::{FileRedis, RedisConfig};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:8000";
pub const DEFAULT_TTL: Duration = Duration::from_secs(4 * 3600);
pub const DEFAULT_MAXSIZE: u64 = 1000;
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 8 * 1024 * 1024;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_AUTH_TTL: Duration = Duration::from_secs(300);
/// How long past its TTL an entry still answers for a failing upstream.
pub const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(24 * 3600);
/// Serving stale while revalidating is opt-in.
pub const DEFAULT_STALE_WHILE_REVALIDATE: Duration = Duration::ZERO;
/// How long a coalesced caller waits for another caller's fill.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// Refreshes (`POST /api/cache/refresh`) asking the upstream at once.
pub const DEFAULT_REFRESH_CONCURRENCY: usize = 4;
/// Requests the upstream may have from this proxy at once.
pub const DEFAULT_UPSTREAM_CONCURRENCY: usize = 32;
/// Callers that may wait for one of those; beyond, 503 at once.
pub const DEFAULT_UPSTREAM_QUEUE: usize = 256;
/// How long a queued caller waits before its 503.
pub const DEFAULT_UPSTREAM_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Targeted cache-control fields obeyed by default (RFC 9213).
pub const DEFAULT_TARGETED_CACHE_CONTROL: [&str; 1] = ["cdn-cache-control"];
/// Statuses RFC 9110 §15.1 makes heuristically cacheable (206 left out:
/// ranges are not stored); the standard mode's default list.
pub const STANDARD_CACHEABLE_STATUSES: [u16; 11] =
    [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];
/// Request headers that identify a caller: the browser's, and the common
/// API-key and proxy credential fields.
pub const DEFAULT_CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "cookie",
    "x-api-key",
    "x-auth-token",
    "proxy-authorization",
];
/// How long a pooled upstream connection may sit idle before the proxy
/// closes it: below uvicorn's `--timeout-keep-alive` (5 s by default), so
/// the backend never closes a connection just as the proxy reuses it.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Longest wait for request body bytes (nginx's `client_body_timeout`).
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes per second a request body must average after its first
/// `body_read_timeout` (Apache's `MinRate` is 500).
pub const DEFAULT_BODY_MIN_RATE: u64 = 1024;
/// Longest a client may leave its answer unread (nginx's `send_timeout`).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 streams a client may open and reset before the server has
/// accepted them (h2's default; the rapid-reset bound).
pub const DEFAULT_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// hyper's HTTP/1 read buffer cannot be smaller than this.
pub const MIN_MAX_HEADER_BYTES: u64 = 8 * 1024;
/// HTTP/2 carries the header list limit in a 32-bit setting; far below that,
/// a 16 MiB head is already no legitimate client's.
pub const MAX_MAX_HEADER_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// How log lines are written: `text` for people, `json` (one object per
/// line) for log shippers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where and how to reach the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Scheme and authority, e.g. `https://api.internal:8443`.
    pub origin: Uri,
    /// Path prefix joined before every request path ("" for none).
    pub base_path: String,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Requests the upstream may have at once (at least 1).
    pub concurrency: usize,
    /// Callers that may wait for a free slot; beyond, 503 at once.
    pub queue: usize,
    /// How long a caller waits in the queue before its 503.
    pub queue_timeout: Duration,
    /// How long a pooled connection may stay idle before it is closed.
    pub idle_timeout: Duration,
}

impl UpstreamConfig {
    /// The URL as the operator wrote it, for messages, with the password
    /// of any userinfo redacted (`http://user:<redacted>@host`).
    pub fn display(&self) -> String {
        let origin = self.origin.to_string();
        let origin = origin.trim_end_matches('/');
        let redacted = self
            .origin
            .authority()
            .and_then(|a| a.as_str().rsplit_once('@'))
            .and_then(|(userinfo, host)| {
                let (user, _password) = userinfo.split_once(':')?;
                let scheme = self.origin.scheme_str().unwrap_or("http");
                Some(format!("{scheme}://{user}:<redacted>@{host}"))
            });
        format!(
            "{}{}",
            redacted.as_deref().unwrap_or(origin),
            self.base_path
        )
    }
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub enabled: bool,
    pub ttl: Duration,
    pub maxsize: u64,
    pub max_bytes: u64,
    pub max_object_bytes: u64,
    pub cacheable_statuses: Vec<StatusCode>,
    pub honor_client_no_cache: bool,
    pub purge_interval: Duration,
    /// Request headers that identify a caller; their digest joins the key.
    pub credential_headers: Vec<HeaderName>,
    /// How long an upstream 2xx vouches for a credential on a shared route.
    pub auth_ttl: Duration,
    /// Default stale windows of every entry (a route or the origin's
    /// `Cache-Control` may override them; see `cache::stale`).
    pub stale: StaleWindows,
    /// How long a caller waits for another caller's fill of the same key
    /// before it answers stale or 504 (never its own upstream request).
    pub lock_timeout: Duration,
    /// Refreshes asking the upstream at once (at least 1).
    pub refresh_concurrency: usize,
    /// Which rules the cache follows; sets the defaults of the fields above.
    pub mode: CacheMode,
    /// Answers without explicit freshness get 10 % of their
    /// `Last-Modified` age (at most `ttl`) instead of `ttl`, or are not
    /// stored without `Last-Modified` (RFC 9111 §4.2.2).
    pub heuristic_freshness: bool,
    /// Targeted `Cache-Control` fields this cache obeys before
    /// `Cache-Control`, first present wins (RFC 9213).
    pub targeted_cache_control: Vec<HeaderName>,
    /// Where the store is written at shutdown and read at start
    /// (`cache::snapshot`); `None`: a restart starts cold.
    pub snapshot_file: Option<PathBuf>,
}

/// The certificate and key files of TLS termination; both or neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// What one client connection may cost the proxy: the defences against
/// header floods, slow clients (slowloris) and connection floods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head; HTTP/1 answers 431 beyond, HTTP/2 refuses the stream.
    pub max_header_bytes: u64,
    /// Deadline for a request head, for the TLS handshake plus first head of
    /// a new connection, and for an idle HTTP/1 keep-alive connection.
    pub header_read_timeout: Duration,
    /// Client connections served at once on each listener.
    pub max_connections: usize,
    /// HTTP/2 PING period, to find dead peers.
    pub http2_keep_alive_interval: Duration,
    /// How long an HTTP/2 PING may stay unanswered before the connection is closed.
    pub http2_keep_alive_timeout: Duration,
    /// Requests one HTTP/2 connection may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// Longest wait for request body bytes (HTTP/1), answered 408 beyond.
    pub body_read_timeout: Duration,
    /// Bytes per second a request body must average past its first
    /// `body_read_timeout`; 0 turns the rate off.
    pub body_min_rate: u64,
    /// Longest a write to the client may make no progress before the
    /// connection is closed.
    pub send_timeout: Duration,
    /// HTTP/2 streams opened and reset by the client before being served;
    /// past it the connection is closed (GOAWAY).
    pub http2_max_pending_accept_reset_streams: usize,
    /// How long an HTTP/1 keep-alive connection stays quiet before its
    /// hyper state is dropped and only the socket is kept (`keep_alive.rs`).
    /// Not an option: always [`Limits::IDLE_PARK_AFTER`], shortened by tests.
    #[doc(hidden)]
    pub idle_park_after: Duration,
}

impl Limits {
    /// Quiet time before an idle HTTP/1 connection is parked: long enough
    /// that a client sending requests back to back never meets it, short
    /// enough that a crowd of idle keep-alives costs little memory.
    pub const IDLE_PARK_AFTER: Duration = Duration::from_secs(1);
}

/// The validated configuration every other module reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// When set, the admin API is served here (plain HTTP) and not on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// When set, `listen` serves HTTPS only.
    pub tls: Option<TlsFiles>,
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
    pub routes: RouteTable,
    pub max_body_bytes: u64,
    pub limits: Limits,
    pub admin_token: Option<String>,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    pub source: Option<PathBuf>,
    /// The shared cache tier (`[redis]`), when configured.
    pub redis: Option<RedisConfig>,
    /// The flags and env this was resolved with, kept so that a reload
    /// (SIGHUP) re-reads `source` under the same overrides.
    pub overrides: Arc<Cli>,
    /// Peers whose `X-Request-Id` is kept (others get a generated one).
    pub trusted_proxies: TrustedProxies,
}

impl Config {
    /// Flags and env from `cli`, then the file it names (if any), then defaults.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(cli, file, cli.config.clone())
    }

    /// The configuration again: `source` re-read under the same flags and
    /// env. `None` when there is no file to re-read.
    pub fn reread(&self) -> Option<Result<Self, ConfigError>> {
        let path = self.source.as_ref()?;
        Some(
            FileConfig::read(path)
                .and_then(|file| Self::resolve(&self.overrides, file, Some(path.clone()))),
        )
    }
}

/// [`Config::resolve`] over a `proxy.toml` text, for the unit tests of every part.
#[cfg(test)]
fn resolve_toml(cli: Cli, toml_text: &str) -> Result<Config, ConfigError> {
    let file = FileConfig::parse(toml_text, std::path::Path::new("test.toml"))?;
    Config::resolve(&cli, file, None)
}
