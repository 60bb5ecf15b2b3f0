//! Resolution: [`Config::resolve`] merges flags and env ([`Cli`]) over the
//! file ([`FileConfig`]) over the defaults, and validates every value, so an
//! error names the flag, env var or file field at fault.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use http::header::HeaderName;
use http::{StatusCode, Uri};

use super::{
    CacheConfig, CacheMode, Cli, Config, ConfigError, FileConfig, Limits, TlsFiles, TrustedProxies,
    UpstreamConfig, DEFAULT_AUTH_TTL, DEFAULT_BODY_MIN_RATE, DEFAULT_BODY_READ_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_CREDENTIAL_HEADERS, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL, DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT,
    DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS, DEFAULT_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS,
    DEFAULT_LISTEN, DEFAULT_LOCK_TIMEOUT, DEFAULT_MAXSIZE, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_OBJECT_BYTES,
    DEFAULT_PURGE_INTERVAL, DEFAULT_REFRESH_CONCURRENCY, DEFAULT_SEND_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_STALE_IF_ERROR, DEFAULT_STALE_WHILE_REVALIDATE,
    DEFAULT_TARGETED_CACHE_CONTROL, DEFAULT_TTL, DEFAULT_UPSTREAM, DEFAULT_UPSTREAM_CONCURRENCY,
    DEFAULT_UPSTREAM_IDLE_TIMEOUT, DEFAULT_UPSTREAM_QUEUE, DEFAULT_UPSTREAM_QUEUE_TIMEOUT,
    DEFAULT_UPSTREAM_TIMEOUT, MAX_MAX_HEADER_BYTES, MIN_MAX_HEADER_BYTES,
    STANDARD_CACHEABLE_STATUSES,
};
use crate::cache::stale::StaleWindows;
use crate::routes::{Route, RouteTable};

impl Config {
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
            idle_timeout: positive(
                "upstream_idle_timeout (DASHCACHE_UPSTREAM_IDLE_TIMEOUT, --upstream-idle-timeout)",
                cli.upstream_idle_timeout
                    .or(file.upstream_idle_timeout.map(|d| d.0)),
                DEFAULT_UPSTREAM_IDLE_TIMEOUT,
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
        let mode = cli.cache_mode.or(fc.mode).unwrap_or_default();
        let standard = mode == CacheMode::Standard;
        let cacheable_statuses = fc
            .cacheable_statuses
            .unwrap_or_else(|| {
                if standard {
                    STANDARD_CACHEABLE_STATUSES.to_vec()
                } else {
                    vec![200]
                }
            })
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
            honor_client_no_cache: fc.honor_client_no_cache.unwrap_or(standard),
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
                // Standard: only what the origin's stale-if-error allows.
                if_error: fc.stale_if_error.map_or(
                    if standard {
                        Duration::ZERO
                    } else {
                        DEFAULT_STALE_IF_ERROR
                    },
                    |d| d.0,
                ),
                while_revalidate: fc
                    .stale_while_revalidate
                    .map_or(DEFAULT_STALE_WHILE_REVALIDATE, |d| d.0),
                revalidate: Duration::ZERO,
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
            mode,
            heuristic_freshness: cli
                .heuristic_freshness
                .or(fc.heuristic_freshness)
                .unwrap_or(standard),
            targeted_cache_control: cli
                .targeted_cache_control
                .clone()
                .or(fc.targeted_cache_control)
                .unwrap_or_else(|| DEFAULT_TARGETED_CACHE_CONTROL.map(String::from).to_vec())
                .iter()
                .filter(|name| !name.trim().is_empty())
                .map(|name| {
                    HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                        ConfigError::invalid(
                            "cache.targeted_cache_control (DASHCACHE_TARGETED_CACHE_CONTROL, --targeted-cache-control)",
                            format!("{name:?} is not a header name"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            snapshot_file: snapshot_file(cli, fc.snapshot_file)?,
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
                "http2_keep_alive_interval (DASHCACHE_HTTP2_KEEP_ALIVE_INTERVAL, --http2-keep-alive-interval)",
                cli.http2_keep_alive_interval
                    .or(file.http2_keep_alive_interval.map(|d| d.0)),
                DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL,
            )?,
            http2_keep_alive_timeout: positive(
                "http2_keep_alive_timeout (DASHCACHE_HTTP2_KEEP_ALIVE_TIMEOUT, --http2-keep-alive-timeout)",
                cli.http2_keep_alive_timeout
                    .or(file.http2_keep_alive_timeout.map(|d| d.0)),
                DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT,
            )?,
            http2_max_concurrent_streams: match cli
                .http2_max_concurrent_streams
                .or(file.http2_max_concurrent_streams)
            {
                Some(0) => {
                    return Err(ConfigError::invalid(
                        "http2_max_concurrent_streams (DASHCACHE_HTTP2_MAX_CONCURRENT_STREAMS, --http2-max-concurrent-streams)",
                        "must be at least 1",
                    ))
                }
                Some(n) => n,
                None => DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
            },
            body_read_timeout: positive(
                "body_read_timeout (DASHCACHE_BODY_READ_TIMEOUT, --body-read-timeout)",
                cli.body_read_timeout.or(file.body_read_timeout.map(|d| d.0)),
                DEFAULT_BODY_READ_TIMEOUT,
            )?,
            body_min_rate: cli
                .body_min_rate
                .map(|b| b.0)
                .or(file.body_min_rate.map(|b| b.0))
                .unwrap_or(DEFAULT_BODY_MIN_RATE),
            send_timeout: positive(
                "send_timeout (DASHCACHE_SEND_TIMEOUT, --send-timeout)",
                cli.send_timeout.or(file.send_timeout.map(|d| d.0)),
                DEFAULT_SEND_TIMEOUT,
            )?,
            http2_max_pending_accept_reset_streams: match cli
                .http2_max_pending_accept_reset_streams
                .or(file.http2_max_pending_accept_reset_streams)
            {
                Some(0) => {
                    return Err(ConfigError::invalid(
                        "http2_max_pending_accept_reset_streams (DASHCACHE_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS, --http2-max-pending-accept-reset-streams)",
                        "must be at least 1",
                    ))
                }
                Some(n) => n,
                None => DEFAULT_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS,
            },
            idle_park_after: Limits::IDLE_PARK_AFTER,
        };

        let trusted_proxies = TrustedProxies::parse(
            cli.trusted_proxies
                .as_deref()
                .or(file.trusted_proxies.as_deref())
                .unwrap_or_default(),
        )
        .map_err(|reason| {
            ConfigError::invalid(
                "trusted_proxies (DASHCACHE_TRUSTED_PROXIES, --trusted-proxies)",
                reason,
            )
        })?;

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
            redis: super::redis::resolve(cli, file.redis)?,
            overrides: Arc::new(cli.clone()),
            trusted_proxies,
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

/// `cache.snapshot_file`: flag or env over the file. It must name a file;
/// whether its directory takes one is checked when the server starts.
fn snapshot_file(cli: &Cli, file: Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
    let Some(path) = cli.snapshot_file.clone().or(file) else {
        return Ok(None);
    };
    let text = path.to_string_lossy();
    if text.is_empty() || text.ends_with('/') || path.file_name().is_none() {
        return Err(ConfigError::invalid(
            crate::cache::snapshot::FIELD,
            format!("{text:?} does not name a file"),
        ));
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{resolve_toml, Cli, LogFormat};

    #[test]
    fn defaults_match_the_seed() {
        let config = resolve_toml(Cli::default(), "").unwrap();
        assert_eq!(config.cache.ttl, Duration::from_secs(14400));
        assert_eq!(config.cache.maxsize, 1000);
        assert!(config.cache.enabled);
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.upstream.display(), "http://127.0.0.1:8000");
    }

    #[test]
    fn flags_win_over_the_file() {
        let cli = Cli {
            ttl: Some(Duration::from_secs(60)),
            ..Cli::default()
        };
        let config = resolve_toml(cli, "[cache]\nttl = \"2h\"\nmaxsize = 5\n").unwrap();
        assert_eq!(config.cache.ttl, Duration::from_secs(60));
        assert_eq!(config.cache.maxsize, 5);
    }

    #[test]
    fn a_bad_ttl_names_the_field() {
        let err = resolve_toml(Cli::default(), "[cache]\nttl = \"soon\"\n").unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("ttl"), "{chain}");
        let err = resolve_toml(Cli::default(), "[cache]\nttl = 0\n").unwrap_err();
        assert!(err.to_string().contains("cache.ttl"), "{err}");
    }

    #[test]
    fn upstream_must_be_an_http_url() {
        for bad in ["ftp://x", "not a url", "http://"] {
            let cli = Cli {
                upstream: Some(bad.into()),
                ..Cli::default()
            };
            let err = resolve_toml(cli, "").unwrap_err();
            assert!(err.to_string().contains("upstream"), "{bad}: {err}");
        }
    }

    #[test]
    fn upstream_path_becomes_a_prefix() {
        let cli = Cli {
            upstream: Some("https://api.example:8443/backend/".into()),
            ..Cli::default()
        };
        let config = resolve_toml(cli, "").unwrap();
        assert_eq!(config.upstream.base_path, "/backend");
        assert_eq!(
            config.upstream.origin.to_string(),
            "https://api.example:8443/"
        );
    }

    #[test]
    fn limits_have_safe_defaults() {
        let limits = resolve_toml(Cli::default(), "").unwrap().limits;
        assert_eq!(limits.max_header_bytes, 64 * 1024);
        assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(limits.max_connections, 10_000);
        assert!(limits.http2_max_concurrent_streams >= 100);
        assert_eq!(limits.body_read_timeout, Duration::from_secs(10));
        assert_eq!(limits.body_min_rate, 1024);
        assert_eq!(limits.send_timeout, Duration::from_secs(30));
        assert_eq!(limits.http2_max_pending_accept_reset_streams, 20);
    }

    #[test]
    fn limits_come_from_the_file_and_flags() {
        let text = "max_header_bytes = \"16KiB\"\nheader_read_timeout = \"3s\"\nmax_connections = 5\nhttp2_max_concurrent_streams = 7\nhttp2_keep_alive_interval = 1\nhttp2_keep_alive_timeout = \"2s\"\n";
        let limits = resolve_toml(Cli::default(), text).unwrap().limits;
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
        let limits = resolve_toml(cli, text).unwrap().limits;
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
            let err = resolve_toml(Cli::default(), text).unwrap_err();
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
    }

    #[test]
    fn tls_needs_both_the_certificate_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "").unwrap();
        let text = format!("tls_cert = {:?}\n", cert.display().to_string());
        let err = resolve_toml(Cli::default(), &text).unwrap_err();
        assert!(err.to_string().contains("tls_key"), "{err}");
        let cli = Cli {
            tls_key: Some(cert.clone()),
            ..Cli::default()
        };
        let err = resolve_toml(cli, "").unwrap_err();
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
        let err = resolve_toml(cli, "").unwrap_err();
        assert!(err.to_string().contains("tls_key"), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let cli = Cli {
            tls_cert: Some(cert.clone()),
            tls_key: Some(cert.clone()),
            ..Cli::default()
        };
        let tls = resolve_toml(cli, "").unwrap().tls.unwrap();
        assert_eq!((tls.cert.as_path(), tls.key.as_path()), (&*cert, &*cert));
    }

    #[test]
    fn the_admin_listener_needs_its_own_address() {
        let text = "listen = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9000\"\n";
        let err = resolve_toml(Cli::default(), text).unwrap_err();
        assert!(err.to_string().contains("admin_listen"), "{err}");
        let text = "listen = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9001\"\n";
        let config = resolve_toml(Cli::default(), text).unwrap();
        assert_eq!(config.admin_listen, Some("127.0.0.1:9001".parse().unwrap()));
    }

    #[test]
    fn the_log_format_comes_from_the_flag_or_the_file() {
        assert_eq!(
            resolve_toml(Cli::default(), "").unwrap().log_format,
            LogFormat::Text
        );
        let config = resolve_toml(Cli::default(), "log_format = \"json\"\n").unwrap();
        assert_eq!(config.log_format, LogFormat::Json);
        let cli = Cli {
            log_format: Some(LogFormat::Text),
            ..Cli::default()
        };
        let config = resolve_toml(cli, "log_format = \"json\"\n").unwrap();
        assert_eq!(config.log_format, LogFormat::Text);
        let err = resolve_toml(Cli::default(), "log_format = \"xml\"\n").unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            chain.contains("log_format") && chain.contains("json"),
            "{chain}"
        );
    }

    #[test]
    fn pooled_upstream_connections_idle_less_than_uvicorns_keep_alive() {
        let config = resolve_toml(Cli::default(), "").unwrap();
        assert!(config.upstream.idle_timeout < Duration::from_secs(5));
        let text = "upstream_idle_timeout = \"1500ms\"\n";
        let config = resolve_toml(Cli::default(), text).unwrap();
        assert_eq!(config.upstream.idle_timeout, Duration::from_millis(1500));
        let cli = Cli {
            upstream_idle_timeout: Some(Duration::from_secs(2)),
            ..Cli::default()
        };
        assert_eq!(
            resolve_toml(cli, text).unwrap().upstream.idle_timeout,
            Duration::from_secs(2)
        );
        let err = resolve_toml(Cli::default(), "upstream_idle_timeout = 0\n").unwrap_err();
        assert!(err.to_string().contains("upstream_idle_timeout"), "{err}");
    }

    #[test]
    fn trusted_proxies_come_from_the_file_or_the_flag_and_bad_ones_are_named() {
        let config = resolve_toml(Cli::default(), "").unwrap();
        assert!(config.trusted_proxies.is_empty());
        let text = "trusted_proxies = [\"10.0.0.0/8\"]\n";
        let config = resolve_toml(Cli::default(), text).unwrap();
        assert!(config.trusted_proxies.contains("10.1.1.1".parse().unwrap()));
        let cli = Cli {
            trusted_proxies: Some(vec!["192.168.0.0/16".into()]),
            ..Cli::default()
        };
        let config = resolve_toml(cli, text).unwrap();
        assert!(!config.trusted_proxies.contains("10.1.1.1".parse().unwrap()));
        let err = resolve_toml(Cli::default(), "trusted_proxies = [\"lb\"]\n").unwrap_err();
        assert!(err.to_string().contains("trusted_proxies"), "{err}");
        assert!(err.to_string().contains("\"lb\""), "{err}");
    }

    #[test]
    fn the_upstream_password_is_never_displayed() {
        let cli = Cli {
            upstream: Some("http://svc:hunter2@api.internal:8000/backend".into()),
            ..Cli::default()
        };
        let config = resolve_toml(cli, "").unwrap();
        assert_eq!(
            config.upstream.display(),
            "http://svc:<redacted>@api.internal:8000/backend"
        );
        assert!(!config.to_toml().contains("hunter2"));
    }

    #[test]
    fn a_snapshot_file_must_name_a_file() {
        let config = resolve_toml(
            Cli::default(),
            "[cache]\nsnapshot_file = \"/var/lib/dashcache/cache.snap\"\n",
        )
        .unwrap();
        assert_eq!(
            config.cache.snapshot_file.unwrap().to_str(),
            Some("/var/lib/dashcache/cache.snap")
        );
        assert!(resolve_toml(Cli::default(), "")
            .unwrap()
            .cache
            .snapshot_file
            .is_none());
        for bad in ["", "/var/lib/dashcache/", ".."] {
            let cli = Cli {
                snapshot_file: Some(bad.into()),
                ..Cli::default()
            };
            let err = resolve_toml(cli, "").unwrap_err();
            assert!(err.to_string().contains("snapshot_file"), "{err}");
        }
    }
}
