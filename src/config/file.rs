//! `proxy.toml` as written ([`FileConfig`], [`FileCache`], [`FileRoute`]):
//! serde types with every field optional and unknown keys rejected, the
//! duration and size syntaxes they accept ([`FileDuration`], [`FileSize`]),
//! and reading and parsing the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::{parse_duration, CacheMode, ConfigError, LogFormat};

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
    pub body_read_timeout: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_min_rate: Option<FileSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_timeout: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_max_pending_accept_reset_streams: Option<usize>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<CacheMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heuristic_freshness: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targeted_cache_control: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_file: Option<PathBuf>,
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
    /// JSON body fields left out of the key (`cache::key_rules`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_ignore_fields: Option<Vec<String>>,
    /// JSON arrays whose element order is not part of the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_unordered: Option<Vec<String>>,
    /// Query parameters left out of the key (names, or prefixes ending in `*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_ignore_query: Option<Vec<String>>,
    /// Request headers whose values join the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_headers: Option<Vec<String>>,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{parse_duration, resolve_toml, Cli};

    #[test]
    fn durations_accept_seconds_and_strings() {
        let config = resolve_toml(Cli::default(), "[cache]\nttl = \"90s\"\n").unwrap();
        assert_eq!(config.cache.ttl, Duration::from_secs(90));
        let config = resolve_toml(Cli::default(), "[cache]\nttl = 7200\n").unwrap();
        assert_eq!(config.cache.ttl, Duration::from_secs(7200));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(14400)));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = resolve_toml(Cli::default(), "[cache]\nttll = 5\n").unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("ttll"), "{chain}");
    }

    #[test]
    fn sizes_accept_units() {
        let config = resolve_toml(
            Cli::default(),
            "[cache]\nmax_bytes = \"64MiB\"\nmax_object_bytes = \"1MiB\"\n",
        )
        .unwrap();
        assert_eq!(config.cache.max_bytes, 64 * 1024 * 1024);
        assert_eq!(config.cache.max_object_bytes, 1024 * 1024);
    }
}
