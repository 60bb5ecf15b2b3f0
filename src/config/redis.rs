//! The `[redis]` section: the shared cache tier's settings, raw
//! ([`FileRedis`], flags in `cli.rs`) and resolved ([`RedisConfig`]).
//!
//! Without a URL there is no shared tier and nothing here applies: the
//! proxy keeps its in-memory store alone, exactly as before.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Cli, ConfigError, FileDuration};

pub const DEFAULT_REDIS_PREFIX: &str = "dashcache";
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
pub const DEFAULT_REDIS_L1_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_REDIS_LOCK_LEASE: Duration = Duration::from_secs(10);

/// `[redis]` as written in proxy.toml.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedis {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l1_ttl: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_lease: Option<FileDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_secret: Option<String>,
}

impl FileRedis {
    pub fn is_empty(&self) -> bool {
        self.url.is_none()
            && self.cluster.is_none()
            && self.prefix.is_none()
            && self.timeout.is_none()
            && self.l1_ttl.is_none()
            && self.lock_lease.is_none()
            && self.key_secret.is_none()
    }
}

/// The shared tier's validated settings.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// One `redis://` or `rediss://` URL, or (Cluster) a comma-separated
    /// list of seed nodes. May carry user and password.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// Starts every key, so two deployments can share one Redis.
    pub prefix: String,
    /// Budget of every Redis call made for a request.
    pub timeout: Duration,
    /// Longest life of an in-memory copy of a shared entry.
    pub l1_ttl: Duration,
    /// How long a fill's lock lives without renewal (the takeover bound).
    pub lock_lease: Duration,
    /// Key of the credential digest; `None`: generated and kept in Redis.
    pub key_secret: Option<String>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("urls", &self.redacted_urls())
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("l1_ttl", &self.l1_ttl)
            .field("lock_lease", &self.lock_lease)
            .field(
                "key_secret",
                &self.key_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl RedisConfig {
    /// The URLs with any password replaced, for logs, stats and `--print-config`.
    pub fn redacted_urls(&self) -> String {
        self.urls
            .iter()
            .map(|url| redact(url))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn to_file(&self) -> FileRedis {
        FileRedis {
            url: Some(self.redacted_urls()),
            cluster: Some(self.cluster),
            prefix: Some(self.prefix.clone()),
            timeout: Some(FileDuration(self.timeout)),
            l1_ttl: Some(FileDuration(self.l1_ttl)),
            lock_lease: Some(FileDuration(self.lock_lease)),
            key_secret: self.key_secret.as_ref().map(|_| "<redacted>".to_owned()),
        }
    }
}

/// `redis://user:secret@host` → `redis://user:<redacted>@host`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:<redacted>@{host}")
        }
        None => url.to_owned(),
    }
}

const URL: &str = "redis.url (DASHCACHE_REDIS_URL, --redis-url)";

/// Flags and env over the file; `None` when no URL is given.
pub(super) fn resolve(cli: &Cli, file: FileRedis) -> Result<Option<RedisConfig>, ConfigError> {
    let Some(url) = cli.redis_url.clone().or(file.url).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let cluster = cli.redis_cluster.or(file.cluster).unwrap_or(false);
    let urls: Vec<String> = url.split(',').map(|u| u.trim().to_owned()).collect();
    if urls.len() > 1 && !cluster {
        return Err(ConfigError::invalid(
            URL,
            "several URLs are only accepted with redis.cluster = true",
        ));
    }
    for url in &urls {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ConfigError::invalid(
                URL,
                format!("{} must start with redis:// or rediss://", redact(url)),
            ));
        }
        if redis::Client::open(url.as_str()).is_err() {
            return Err(ConfigError::invalid(
                URL,
                format!("{} is not a valid URL", redact(url)),
            ));
        }
    }
    let prefix = cli
        .redis_prefix
        .clone()
        .or(file.prefix)
        .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_owned());
    if prefix.is_empty()
        || prefix.len() > 64
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(ConfigError::invalid(
            "redis.prefix (DASHCACHE_REDIS_PREFIX, --redis-prefix)",
            "must be 1 to 64 characters of letters, digits, '-', '_', '.' or ':'",
        ));
    }
    let positive = |field: &str, value: Option<Duration>, default: Duration| match value {
        Some(d) if d.is_zero() => Err(ConfigError::invalid(field, "must be greater than zero")),
        Some(d) => Ok(d),
        None => Ok(default),
    };
    let timeout = positive(
        "redis.timeout (DASHCACHE_REDIS_TIMEOUT, --redis-timeout)",
        cli.redis_timeout.or(file.timeout.map(|d| d.0)),
        DEFAULT_REDIS_TIMEOUT,
    )?;
    let l1_ttl = positive(
        "redis.l1_ttl (DASHCACHE_REDIS_L1_TTL, --redis-l1-ttl)",
        cli.redis_l1_ttl.or(file.l1_ttl.map(|d| d.0)),
        DEFAULT_REDIS_L1_TTL,
    )?;
    let lock_lease = positive(
        "redis.lock_lease (DASHCACHE_REDIS_LOCK_LEASE, --redis-lock-lease)",
        cli.redis_lock_lease.or(file.lock_lease.map(|d| d.0)),
        DEFAULT_REDIS_LOCK_LEASE,
    )?;
    if lock_lease < Duration::from_millis(300) {
        return Err(ConfigError::invalid(
            "redis.lock_lease (DASHCACHE_REDIS_LOCK_LEASE, --redis-lock-lease)",
            "must be at least 300ms (it is renewed every third of itself)",
        ));
    }
    let key_secret = cli
        .redis_key_secret
        .clone()
        .or(file.key_secret)
        .filter(|s| !s.is_empty());
    if key_secret.as_ref().is_some_and(|s| s.len() < 16) {
        return Err(ConfigError::invalid(
            "redis.key_secret (DASHCACHE_REDIS_KEY_SECRET, --redis-key-secret)",
            "must be at least 16 characters",
        ));
    }
    Ok(Some(RedisConfig {
        urls,
        cluster,
        prefix,
        timeout,
        l1_ttl,
        lock_lease,
        key_secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::redact;
    use crate::config::{resolve_toml, Cli};

    #[test]
    fn no_url_means_no_shared_tier() {
        let config = resolve_toml(Cli::default(), "").unwrap();
        assert!(config.redis.is_none());
    }

    #[test]
    fn the_flag_beats_the_file_and_defaults_fill_the_rest() {
        let cli = Cli {
            redis_url: Some("redis://127.0.0.1:7000".into()),
            ..Cli::default()
        };
        let config = resolve_toml(
            cli,
            "[redis]\nurl = \"redis://10.0.0.1\"\nprefix = \"app1\"\n",
        )
        .unwrap();
        let redis = config.redis.unwrap();
        assert_eq!(redis.urls, ["redis://127.0.0.1:7000"]);
        assert_eq!(redis.prefix, "app1");
        assert_eq!(redis.timeout, super::DEFAULT_REDIS_TIMEOUT);
    }

    #[test]
    fn a_bad_url_names_the_field() {
        let err = resolve_toml(Cli::default(), "[redis]\nurl = \"http://x\"\n").unwrap_err();
        assert!(err.to_string().contains("redis.url"), "{err}");
        let err =
            resolve_toml(Cli::default(), "[redis]\nurl = \"redis://a,redis://b\"\n").unwrap_err();
        assert!(err.to_string().contains("cluster"), "{err}");
    }

    #[test]
    fn a_prefix_with_hash_tag_braces_is_refused() {
        let err = resolve_toml(
            Cli::default(),
            "[redis]\nurl = \"redis://127.0.0.1\"\nprefix = \"a{b}\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("redis.prefix"), "{err}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("rediss://app:hunter2@cache:6380/0"),
            "rediss://app:<redacted>@cache:6380/0"
        );
        assert_eq!(redact("redis://cache:6379"), "redis://cache:6379");
    }
}
