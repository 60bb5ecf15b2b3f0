//! Configuration: clap flags and env vars ([`Cli`]) over `proxy.toml`
//! ([`FileConfig`]) over defaults, resolved once into a validated [`Config`].
//!
//! Precedence is flags > env > file > defaults. clap resolves the first two
//! (every flag names its env var), [`Config::resolve`] applies the file and
//! the defaults and validates everything, so nothing downstream re-reads the
//! environment or re-checks a value. Errors name the flag or file field at
//! fault.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use clap::builder::BoolishValueParser;
use clap::Parser;
use http::header::HeaderName;
use http::{StatusCode, Uri};
use serde::{Deserialize, Serialize};

use crate::cache::stale::StaleWindows;
use crate::routes::{Route, RouteTable};

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
pub const DEFAULT_CREDENTIAL_HEADERS: [&str; 2] = ["authorization", "cookie"];
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 128;
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

/// A duration in the file: an integer of seconds or a string such as "4h".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDuration(pub Duration);

impl<'de> Deserialize<'de> for FileDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected seconds or a duration string such as \"4h\"")
        })? {
            Raw::Seconds(s) => Ok(Self(Duration::from_secs(s))),
            Raw::Text(t) => parse_duration(&t)
                .map(Self)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for FileDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A size in the file: bytes as an integer, or a string such as "256MiB".
/// Printed back as exact bytes, so `--print-config` reproduces the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSize(pub u64);

impl<'de> Deserialize<'de> for FileSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected bytes or a size string such as \"256MiB\"")
        })? {
            Raw::Bytes(b) => Ok(Self(b)),
            Raw::Text(t) => t
                .trim()
                .parse::<ByteSize>()
                .map(|b| Self(b.0))
                .map_err(|e| serde::de::Error::custom(format!("invalid size {t:?}: {e}"))),
        }
    }
}

impl Serialize for FileSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

/// `proxy.toml` as written: every field optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_timeout: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_queue: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_queue_timeout: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<FileSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<FileSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive_interval: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive_timeout: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_max_concurrent_streams: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub cache: FileCache,
    #[serde(default, rename = "route", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<FileRoute>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileCache {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxsize: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<FileSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_object_bytes: Option<FileSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cacheable_statuses: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub honor_client_no_cache: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purge_interval: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_headers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_ttl: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_if_error: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_concurrency: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub name: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_if_error: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate: Option<FileDuration>,
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
}

impl UpstreamConfig {
    /// The URL as the operator wrote it, for messages.
    pub fn display(&self) -> String {
        format!(
            "{}{}",
            self.origin.to_string().trim_end_matches('/'),
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
    /// The flags and env this was resolved with, kept so that a reload
    /// (SIGHUP) re-reads `source` under the same overrides.
    pub overrides: Arc<Cli>,
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

    pub fn resolve(
        cli: &Cli,
        file: FileConfig,
        source: Option<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let fc = file.cache;
        let listen = cli.listen.or(file.listen).unwrap_or_else(|| {
            DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses")
        });
        let upstream_text = cli
            .upstream
            .clone()
            .or(file.upstream)
            .unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned());
        let (origin, base_path) = parse_upstream(&upstream_text)?;
        let ca_file = cli.upstream_ca_file.clone().or(file.upstream_ca_file);
        if let Some(path) = &ca_file {
            if !path.is_file() {
                return Err(ConfigError::invalid(
                    "upstream_ca_file",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        let upstream = UpstreamConfig {
            origin,
            base_path,
            ca_file,
            connect_timeout: positive(
                "connect_timeout",
                cli.connect_timeout.or(file.connect_timeout.map(|d| d.0)),
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            timeout: positive(
                "upstream_timeout",
                cli.upstream_timeout.or(file.upstream_timeout.map(|d| d.0)),
                DEFAULT_UPSTREAM_TIMEOUT,
            )?,
            concurrency: match file.upstream_concurrency {
                Some(0) => {
                    return Err(ConfigError::invalid(
                        "upstream_concurrency",
                        "must be at least 1",
                    ))
                }
                Some(n) => n,
                None => DEFAULT_UPSTREAM_CONCURRENCY,
            },
            queue: file.upstream_queue.unwrap_or(DEFAULT_UPSTREAM_QUEUE),
            queue_timeout: positive(
                "upstream_queue_timeout",
                file.upstream_queue_timeout.map(|d| d.0),
                DEFAULT_UPSTREAM_QUEUE_TIMEOUT,
            )?,
        };

        let maxsize = cli.maxsize.or(fc.maxsize).unwrap_or(DEFAULT_MAXSIZE);
        if maxsize == 0 {
            return Err(ConfigError::invalid(
                "cache.maxsize (CACHE_MAXSIZE, --maxsize)",
                "must be at least 1",
            ));
        }
        let max_bytes = cli
            .max_bytes
            .map(|b| b.0)
            .or(fc.max_bytes.map(|b| b.0))
            .unwrap_or(DEFAULT_MAX_BYTES);
        let max_object_bytes = cli
            .max_object_bytes
            .map(|b| b.0)
            .or(fc.max_object_bytes.map(|b| b.0))
            .unwrap_or(DEFAULT_MAX_OBJECT_BYTES);
        if max_bytes == 0 {
            return Err(ConfigError::invalid(
                "cache.max_bytes",
                "must be greater than zero",
            ));
        }
        if max_object_bytes == 0 || max_object_bytes > max_bytes {
            return Err(ConfigError::invalid(
                "cache.max_object_bytes",
                format!(
                    "must be between 1 byte and cache.max_bytes ({})",
                    ByteSize(max_bytes)
                ),
            ));
        }
        let cacheable_statuses = fc
            .cacheable_statuses
            .unwrap_or_else(|| vec![200])
            .into_iter()
            .map(|code| {
                StatusCode::from_u16(code)
                    .ok()
                    .filter(|s| !s.is_informational())
                    .ok_or_else(|| {
                        ConfigError::invalid(
                            "cache.cacheable_statuses",
                            format!("{code} is not a final HTTP status"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cache = CacheConfig {
            enabled: cli.cache_enabled.or(fc.enabled).unwrap_or(true),
            ttl: positive(
                "cache.ttl (CACHE_TTL, --ttl)",
                cli.ttl.or(fc.ttl.map(|d| d.0)),
                DEFAULT_TTL,
            )?,
            maxsize,
            max_bytes,
            max_object_bytes,
            cacheable_statuses,
            honor_client_no_cache: fc.honor_client_no_cache.unwrap_or(false),
            purge_interval: positive(
                "cache.purge_interval",
                fc.purge_interval.map(|d| d.0),
                DEFAULT_PURGE_INTERVAL,
            )?,
            credential_headers: fc
                .credential_headers
                .unwrap_or_else(|| DEFAULT_CREDENTIAL_HEADERS.map(String::from).to_vec())
                .iter()
                .map(|name| {
                    HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                        ConfigError::invalid(
                            "cache.credential_headers",
                            format!("{name:?} is not a header name"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            auth_ttl: positive("cache.auth_ttl", fc.auth_ttl.map(|d| d.0), DEFAULT_AUTH_TTL)?,
            stale: StaleWindows {
                if_error: fc.stale_if_error.map_or(DEFAULT_STALE_IF_ERROR, |d| d.0),
                while_revalidate: fc
                    .stale_while_revalidate
                    .map_or(DEFAULT_STALE_WHILE_REVALIDATE, |d| d.0),
            },
            lock_timeout: positive(
                "cache.lock_timeout",
                fc.lock_timeout.map(|d| d.0),
                DEFAULT_LOCK_TIMEOUT,
            )?,
            refresh_concurrency: match fc.refresh_concurrency {
                Some(0) => {
                    return Err(ConfigError::invalid(
                        "cache.refresh_concurrency",
                        "must be at least 1",
                    ))
                }
                Some(n) => n,
                None => DEFAULT_REFRESH_CONCURRENCY,
            },
        };

        let routes = file
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Route::from_file(r)
                    .map_err(|reason| ConfigError::invalid(format!("route[{i}]"), reason))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let admin_token = cli
            .admin_token
            .clone()
            .or(file.admin_token)
            .filter(|t| !t.is_empty());
        let admin_listen = cli.admin_listen.or(file.admin_listen);
        if admin_listen == Some(listen) && listen.port() != 0 {
            return Err(ConfigError::invalid(
                "admin_listen (DASHCACHE_ADMIN_LISTEN, --admin-listen)",
                format!("{listen} is already the main listen address"),
            ));
        }
        let tls = tls_files(
            cli.tls_cert.clone().or(file.tls_cert),
            cli.tls_key.clone().or(file.tls_key),
        )?;
        let limits = Limits {
            max_header_bytes: max_header_bytes(
                cli.max_header_bytes
                    .map(|b| b.0)
                    .or(file.max_header_bytes.map(|b| b.0)),
            )?,
            header_read_timeout: positive(
                "header_read_timeout (DASHCACHE_HEADER_READ_TIMEOUT, --header-read-timeout)",
                cli.header_read_timeout
                    .or(file.header_read_timeout.map(|d| d.0)),
                DEFAULT_HEADER_READ_TIMEOUT,
            )?,
            max_connections: match cli.max_connections.or(file.max_connections) {
                Some(0) => {
                    return Err(ConfigError::invalid(
                        "max_connections (DASHCACHE_MAX_CONNECTIONS, --max-connections)",
                        "must be at least 1",
                    ))
                }
                Some(n) => n,
                None => DEFAULT_MAX_CONNECTIONS,
            },
            http2_keep_alive_interval: positive(
                "http2_keep_alive_interval",
                file.http2_keep_alive_interval.map(|d| d.0),
                DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL,
            )?,
            http2_keep_alive_timeout: positive(
                "http2_keep_alive_timeout",
                file.http2_keep_alive_timeout.map(|d| d.0),
                DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT,
            )?,
            http2_max_concurrent_streams: match file.http2_max_concurrent_streams {
                Some(0) => {
                    return Err(ConfigError::invalid(
                        "http2_max_concurrent_streams",
                        "must be at least 1",
                    ))
                }
                Some(n) => n,
                None => DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
            },
        };

        Ok(Self {
            listen,
            admin_listen,
            tls,
            limits,
            upstream,
            cache,
            routes: RouteTable::new(routes),
            max_body_bytes: cli
                .max_body_bytes
                .map(|b| b.0)
                .or(file.max_body_bytes.map(|b| b.0))
                .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            admin_token,
            shutdown_timeout: positive(
                "shutdown_timeout",
                file.shutdown_timeout.map(|d| d.0),
                DEFAULT_SHUTDOWN_TIMEOUT,
            )?,
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            source,
            overrides: Arc::new(cli.clone()),
        })
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

    /// The effective configuration in `proxy.toml` form (the token redacted).
    pub fn to_toml(&self) -> String {
        let limits = &self.limits;
        let file = FileConfig {
            listen: Some(self.listen),
            admin_listen: self.admin_listen,
            tls_cert: self.tls.as_ref().map(|t| t.cert.clone()),
            tls_key: self.tls.as_ref().map(|t| t.key.clone()),
            max_header_bytes: Some(FileSize(limits.max_header_bytes)),
            header_read_timeout: Some(FileDuration(limits.header_read_timeout)),
            max_connections: Some(limits.max_connections),
            http2_keep_alive_interval: Some(FileDuration(limits.http2_keep_alive_interval)),
            http2_keep_alive_timeout: Some(FileDuration(limits.http2_keep_alive_timeout)),
            http2_max_concurrent_streams: Some(limits.http2_max_concurrent_streams),
            log_format: Some(self.log_format),
            upstream: Some(self.upstream.display()),
            upstream_ca_file: self.upstream.ca_file.clone(),
            connect_timeout: Some(FileDuration(self.upstream.connect_timeout)),
            upstream_timeout: Some(FileDuration(self.upstream.timeout)),
            upstream_concurrency: Some(self.upstream.concurrency),
            upstream_queue: Some(self.upstream.queue),
            upstream_queue_timeout: Some(FileDuration(self.upstream.queue_timeout)),
            shutdown_timeout: Some(FileDuration(self.shutdown_timeout)),
            max_body_bytes: Some(FileSize(self.max_body_bytes)),
            admin_token: self.admin_token.as_ref().map(|_| "<redacted>".to_owned()),
            cache: FileCache {
                enabled: Some(self.cache.enabled),
                ttl: Some(FileDuration(self.cache.ttl)),
                maxsize: Some(self.cache.maxsize),
                max_bytes: Some(FileSize(self.cache.max_bytes)),
                max_object_bytes: Some(FileSize(self.cache.max_object_bytes)),
                cacheable_statuses: Some(
                    self.cache
                        .cacheable_statuses
                        .iter()
                        .map(|s| s.as_u16())
                        .collect(),
                ),
                honor_client_no_cache: Some(self.cache.honor_client_no_cache),
                purge_interval: Some(FileDuration(self.cache.purge_interval)),
                credential_headers: Some(
                    self.cache
                        .credential_headers
                        .iter()
                        .map(|n| n.as_str().to_owned())
                        .collect(),
                ),
                auth_ttl: Some(FileDuration(self.cache.auth_ttl)),
                stale_if_error: Some(FileDuration(self.cache.stale.if_error)),
                stale_while_revalidate: Some(FileDuration(self.cache.stale.while_revalidate)),
                lock_timeout: Some(FileDuration(self.cache.lock_timeout)),
                refresh_concurrency: Some(self.cache.refresh_concurrency),
            },
            routes: self.routes.iter().map(Route::to_file).collect(),
        };
        toml::to_string_pretty(&file).expect("effective config serialises")
    }
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }
}

fn positive(
    field: &str,
    value: Option<Duration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        Some(d) if d.is_zero() => Err(ConfigError::invalid(field, "must be greater than zero")),
        Some(d) => Ok(d),
        None => Ok(default),
    }
}

/// Both TLS files or neither; each must be a file (its PEM is checked when
/// the listener starts, and on every reload).
fn tls_files(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<TlsFiles>, ConfigError> {
    const CERT: &str = "tls_cert (DASHCACHE_TLS_CERT, --tls-cert)";
    const KEY: &str = "tls_key (DASHCACHE_TLS_KEY, --tls-key)";
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                KEY,
                "is required when tls_cert is set",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                CERT,
                "is required when tls_key is set",
            ))
        }
    };
    for (field, path) in [(CERT, &cert), (KEY, &key)] {
        if !path.is_file() {
            return Err(ConfigError::invalid(
                field,
                format!("{} is not a readable file", path.display()),
            ));
        }
    }
    Ok(Some(TlsFiles { cert, key }))
}

fn max_header_bytes(value: Option<u64>) -> Result<u64, ConfigError> {
    let bytes = value.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
    if (MIN_MAX_HEADER_BYTES..=MAX_MAX_HEADER_BYTES).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(ConfigError::invalid(
            "max_header_bytes (DASHCACHE_MAX_HEADER_BYTES, --max-header-bytes)",
            format!(
                "must be between {} and {}",
                ByteSize(MIN_MAX_HEADER_BYTES),
                ByteSize(MAX_MAX_HEADER_BYTES)
            ),
        ))
    }
}

/// Splits an upstream URL into its origin (scheme + authority) and path prefix.
fn parse_upstream(text: &str) -> Result<(Uri, String), ConfigError> {
    const FIELD: &str = "upstream (DASHCACHE_UPSTREAM, --upstream)";
    let uri: Uri = text
        .parse()
        .map_err(|e| ConfigError::invalid(FIELD, format!("{text:?} is not a URL: {e}")))?;
    let scheme = uri.scheme_str().unwrap_or_default();
    if scheme != "http" && scheme != "https" {
        return Err(ConfigError::invalid(
            FIELD,
            format!("{text:?} must start with http:// or https://"),
        ));
    }
    let Some(authority) = uri.authority().cloned() else {
        return Err(ConfigError::invalid(FIELD, format!("{text:?} has no host")));
    };
    if uri.query().is_some() {
        return Err(ConfigError::invalid(
            FIELD,
            format!("{text:?} must not carry a query"),
        ));
    }
    let origin = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query("/")
        .build()
        .map_err(|e| ConfigError::invalid(FIELD, e.to_string()))?;
    Ok((origin, uri.path().trim_end_matches('/').to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(cli: Cli, toml_text: &str) -> Result<Config, ConfigError> {
        let file = FileConfig::parse(toml_text, Path::new("test.toml"))?;
        Config::resolve(&cli, file, None)
    }

    #[test]
    fn defaults_match_the_seed() {
        let config = resolve(Cli::default(), "").unwrap();
        assert_eq!(config.cache.ttl, Duration::from_secs(14400));
        assert_eq!(config.cache.maxsize, 1000);
        assert!(config.cache.enabled);
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.upstream.display(), "http://127.0.0.1:8000");
    }

    #[test]
    fn durations_accept_seconds_and_strings() {
        let config = resolve(Cli::default(), "[cache]\nttl = \"90s\"\n").unwrap();
        assert_eq!(config.cache.ttl, Duration::from_secs(90));
        let config = resolve(Cli::default(), "[cache]\nttl = 7200\n").unwrap();
        assert_eq!(config.cache.ttl, Duration::from_secs(7200));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(14400)));
    }

    #[test]
    fn flags_win_over_the_file() {
        let cli = Cli {
            ttl: Some(Duration::from_secs(60)),
            ..Cli::default()
        };
        let config = resolve(cli, "[cache]\nttl = \"2h\"\nmaxsize = 5\n").unwrap();
        assert_eq!(config.cache.ttl, Duration::from_secs(60));
        assert_eq!(config.cache.maxsize, 5);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = resolve(Cli::default(), "[cache]\nttll = 5\n").unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("ttll"), "{chain}");
    }

    #[test]
    fn a_bad_ttl_names_the_field() {
        let err = resolve(Cli::default(), "[cache]\nttl = \"soon\"\n").unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("ttl"), "{chain}");
        let err = resolve(Cli::default(), "[cache]\nttl = 0\n").unwrap_err();
        assert!(err.to_string().contains("cache.ttl"), "{err}");
    }

    #[test]
    fn upstream_must_be_an_http_url() {
        for bad in ["ftp://x", "not a url", "http://"] {
            let cli = Cli {
                upstream: Some(bad.into()),
                ..Cli::default()
            };
            let err = resolve(cli, "").unwrap_err();
            assert!(err.to_string().contains("upstream"), "{bad}: {err}");
        }
    }

    #[test]
    fn upstream_path_becomes_a_prefix() {
        let cli = Cli {
            upstream: Some("https://api.example:8443/backend/".into()),
            ..Cli::default()
        };
        let config = resolve(cli, "").unwrap();
        assert_eq!(config.upstream.base_path, "/backend");
        assert_eq!(
            config.upstream.origin.to_string(),
            "https://api.example:8443/"
        );
    }

    #[test]
    fn sizes_accept_units() {
        let config = resolve(
            Cli::default(),
            "[cache]\nmax_bytes = \"64MiB\"\nmax_object_bytes = \"1MiB\"\n",
        )
        .unwrap();
        assert_eq!(config.cache.max_bytes, 64 * 1024 * 1024);
        assert_eq!(config.cache.max_object_bytes, 1024 * 1024);
    }

    #[test]
    fn limits_have_safe_defaults() {
        let limits = resolve(Cli::default(), "").unwrap().limits;
        assert_eq!(limits.max_header_bytes, 64 * 1024);
        assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(limits.max_connections, 10_000);
        assert!(limits.http2_max_concurrent_streams >= 100);
    }

    #[test]
    fn limits_come_from_the_file_and_flags() {
        let text = "max_header_bytes = \"16KiB\"\nheader_read_timeout = \"3s\"\nmax_connections = 5\nhttp2_max_concurrent_streams = 7\nhttp2_keep_alive_interval = 1\nhttp2_keep_alive_timeout = \"2s\"\n";
        let limits = resolve(Cli::default(), text).unwrap().limits;
        assert_eq!(limits.max_header_bytes, 16 * 1024);
        assert_eq!(limits.header_read_timeout, Duration::from_secs(3));
        assert_eq!(limits.max_connections, 5);
        assert_eq!(limits.http2_max_concurrent_streams, 7);
        assert_eq!(limits.http2_keep_alive_interval, Duration::from_secs(1));
        assert_eq!(limits.http2_keep_alive_timeout, Duration::from_secs(2));
        let cli = Cli {
            max_connections: Some(9),
            header_read_timeout: Some(Duration::from_secs(4)),
            ..Cli::default()
        };
        let limits = resolve(cli, text).unwrap().limits;
        assert_eq!(limits.max_connections, 9);
        assert_eq!(limits.header_read_timeout, Duration::from_secs(4));
    }

    #[test]
    fn limits_out_of_range_name_their_field() {
        for (text, field) in [
            ("max_header_bytes = 100\n", "max_header_bytes"),
            ("max_header_bytes = \"1GiB\"\n", "max_header_bytes"),
            ("max_connections = 0\n", "max_connections"),
            ("header_read_timeout = 0\n", "header_read_timeout"),
            (
                "http2_max_concurrent_streams = 0\n",
                "http2_max_concurrent_streams",
            ),
        ] {
            let err = resolve(Cli::default(), text).unwrap_err();
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
    }

    #[test]
    fn tls_needs_both_the_certificate_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "").unwrap();
        let text = format!("tls_cert = {:?}\n", cert.display().to_string());
        let err = resolve(Cli::default(), &text).unwrap_err();
        assert!(err.to_string().contains("tls_key"), "{err}");
        let cli = Cli {
            tls_key: Some(cert.clone()),
            ..Cli::default()
        };
        let err = resolve(cli, "").unwrap_err();
        assert!(err.to_string().contains("tls_cert"), "{err}");
    }

    #[test]
    fn tls_files_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "").unwrap();
        let cli = Cli {
            tls_cert: Some(cert.clone()),
            tls_key: Some(dir.path().join("missing.pem")),
            ..Cli::default()
        };
        let err = resolve(cli, "").unwrap_err();
        assert!(err.to_string().contains("tls_key"), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let cli = Cli {
            tls_cert: Some(cert.clone()),
            tls_key: Some(cert.clone()),
            ..Cli::default()
        };
        let tls = resolve(cli, "").unwrap().tls.unwrap();
        assert_eq!((tls.cert.as_path(), tls.key.as_path()), (&*cert, &*cert));
    }

    #[test]
    fn the_admin_listener_needs_its_own_address() {
        let text = "listen = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9000\"\n";
        let err = resolve(Cli::default(), text).unwrap_err();
        assert!(err.to_string().contains("admin_listen"), "{err}");
        let text = "listen = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9001\"\n";
        let config = resolve(Cli::default(), text).unwrap();
        assert_eq!(config.admin_listen, Some("127.0.0.1:9001".parse().unwrap()));
    }

    #[test]
    fn the_log_format_comes_from_the_flag_or_the_file() {
        assert_eq!(
            resolve(Cli::default(), "").unwrap().log_format,
            LogFormat::Text
        );
        let config = resolve(Cli::default(), "log_format = \"json\"\n").unwrap();
        assert_eq!(config.log_format, LogFormat::Json);
        let cli = Cli {
            log_format: Some(LogFormat::Text),
            ..Cli::default()
        };
        let config = resolve(cli, "log_format = \"json\"\n").unwrap();
        assert_eq!(config.log_format, LogFormat::Text);
        let err = resolve(Cli::default(), "log_format = \"xml\"\n").unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            chain.contains("log_format") && chain.contains("json"),
            "{chain}"
        );
    }

    #[test]
    fn the_effective_config_round_trips() {
        let text = "[cache]\nttl = \"2h\"\n\n[[route]]\nname = \"get_metrics\"\npath = \"/api/metrics\"\nmethods = [\"POST\"]\n";
        let config = resolve(Cli::default(), text).unwrap();
        let printed = config.to_toml();
        let again = resolve(Cli::default(), &printed).unwrap();
        assert_eq!(again.cache.ttl, Duration::from_secs(7200));
        assert_eq!(
            again.limits.max_header_bytes,
            config.limits.max_header_bytes
        );
        assert_eq!(again.limits.max_connections, config.limits.max_connections);
        assert_eq!(again.routes.iter().count(), 1);
    }
}
