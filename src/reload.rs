//! Hot reload: SIGHUP re-reads proxy.toml and swaps the running
//! configuration without touching the store, the flights or any connection.
//!
//! The configuration lives behind an [`ArcSwap`]: a request loads the
//! current [`Settings`] once (lock-free, no allocation) and routes, keys and
//! looks itself up under that snapshot, so a reload never changes those
//! steps midway; a fill it starts takes the TTL and windows current then.
//! What is read per request takes effect at once: TTLs, routes, stale
//! windows, `lock_timeout`, `cacheable_statuses`, `honor_client_no_cache`,
//! the cache `mode`, `heuristic_freshness`, `targeted_cache_control`,
//! `credential_headers`, `max_body_bytes`, `enabled`, the admin token,
//! `trusted_proxies`.
//! Settings that shape objects built at start (the listeners and their
//! limits, the upstream client and its cap, the store's bounds, the purge
//! period, `auth_ttl`, `refresh_concurrency`) keep their running values and
//! are logged as needing a restart. An invalid file changes nothing: the
//! error is logged, naming the field.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tracing::{info, warn};

use crate::config::{Config, ConfigError};
use crate::tls::error_chain;

/// One loaded configuration and when it was loaded.
#[derive(Debug)]
pub struct Settings {
    pub config: Config,
    /// 1 at start, one more for every reload that was applied.
    pub generation: u64,
    pub loaded_at: SystemTime,
}

impl std::ops::Deref for Settings {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    /// Applied; the named settings changed in the file but need a restart.
    Applied {
        generation: u64,
        needs_restart: Vec<&'static str>,
    },
    /// The file is invalid: the running configuration is kept.
    Invalid(ConfigError),
    /// Started without a file: nothing to re-read.
    NoFile,
}

/// The running configuration, swapped whole by a reload.
pub struct LiveConfig {
    current: ArcSwap<Settings>,
}

impl LiveConfig {
    pub fn new(config: Config) -> Self {
        Self {
            current: ArcSwap::from_pointee(Settings {
                config,
                generation: 1,
                loaded_at: SystemTime::now(),
            }),
        }
    }

    pub fn load(&self) -> Arc<Settings> {
        self.current.load_full()
    }

    /// The running configuration for a read that ends before the caller
    /// awaits anything: no shared reference count is touched.
    pub fn peek(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.current.load()
    }

    /// Re-reads the file and swaps in the result if it is valid.
    pub fn reload(&self) -> Reload {
        let running = self.current.load_full();
        let mut config = match running.config.reread() {
            None => return Reload::NoFile,
            Some(Err(err)) => return Reload::Invalid(err),
            Some(Ok(config)) => config,
        };
        let needs_restart = keep_fixed(&running.config, &mut config);
        let generation = running.generation + 1;
        self.current.store(Arc::new(Settings {
            config,
            generation,
            loaded_at: SystemTime::now(),
        }));
        Reload::Applied {
            generation,
            needs_restart,
        }
    }

    /// [`LiveConfig::reload`], with the outcome logged (for SIGHUP).
    pub fn reload_and_log(&self) -> Reload {
        let outcome = self.reload();
        match &outcome {
            Reload::Applied {
                generation,
                needs_restart,
            } => {
                let settings = self.load();
                info!(
                    generation,
                    ttl_s = settings.cache.ttl.as_secs(),
                    routes = settings.routes.iter().count(),
                    "configuration reloaded"
                );
                for field in needs_restart {
                    warn!(
                        field,
                        "setting changed in the file but needs a restart; keeping the running value"
                    );
                }
            }
            Reload::Invalid(err) => {
                warn!(error = %error_chain(err), "configuration not reloaded; keeping the running one")
            }
            Reload::NoFile => info!("started without a configuration file; nothing to reload"),
        }
        outcome
    }
}

/// Puts the running values of the settings fixed at start back into `new`;
/// returns the names of those the file changed.
fn keep_fixed(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut keep = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    keep("listen", running.listen != new.listen);
    keep("admin_listen", running.admin_listen != new.admin_listen);
    keep("tls_cert/tls_key", running.tls != new.tls);
    keep("connection limits", running.limits != new.limits);
    keep("upstream settings", running.upstream != new.upstream);
    keep(
        "shutdown_timeout",
        running.shutdown_timeout != new.shutdown_timeout,
    );
    // The subscriber is installed once, before the runtime starts.
    keep("log_format", running.log_format != new.log_format);
    keep("redis", running.redis != new.redis);
    let (r, n) = (&running.cache, &new.cache);
    keep("cache.maxsize", r.maxsize != n.maxsize);
    keep("cache.max_bytes", r.max_bytes != n.max_bytes);
    keep(
        "cache.max_object_bytes",
        r.max_object_bytes != n.max_object_bytes,
    );
    keep("cache.purge_interval", r.purge_interval != n.purge_interval);
    keep("cache.snapshot_file", r.snapshot_file != n.snapshot_file);
    keep("cache.auth_ttl", r.auth_ttl != n.auth_ttl);
    keep(
        "cache.refresh_concurrency",
        r.refresh_concurrency != n.refresh_concurrency,
    );
    new.listen = running.listen;
    new.admin_listen = running.admin_listen;
    new.tls = running.tls.clone();
    new.limits = running.limits.clone();
    new.upstream = running.upstream.clone();
    new.shutdown_timeout = running.shutdown_timeout;
    new.log_format = running.log_format;
    new.redis = running.redis.clone();
    new.cache.maxsize = r.maxsize;
    new.cache.max_bytes = r.max_bytes;
    new.cache.max_object_bytes = r.max_object_bytes;
    new.cache.purge_interval = r.purge_interval;
    new.cache.auth_ttl = r.auth_ttl;
    new.cache.refresh_concurrency = r.refresh_concurrency;
    new.cache.snapshot_file = running.cache.snapshot_file.clone();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;
    use crate::Cli;
    use std::time::Duration;

    fn live(dir: &tempfile::TempDir, text: &str) -> (LiveConfig, std::path::PathBuf) {
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, text).unwrap();
        let cli = Cli {
            config: Some(path.clone()),
            ..Cli::default()
        };
        (LiveConfig::new(Config::load(&cli).unwrap()), path)
    }

    #[test]
    fn a_valid_file_is_swapped_in_with_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let (live, path) = live(&dir, "[cache]\nttl = \"1h\"\n");
        std::fs::write(&path, "[cache]\nttl = \"2h\"\n").unwrap();
        assert!(matches!(
            live.reload(),
            Reload::Applied { generation: 2, ref needs_restart } if needs_restart.is_empty()
        ));
        assert_eq!(live.load().cache.ttl, Duration::from_secs(7200));
    }

    #[test]
    fn an_invalid_file_keeps_the_running_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let (live, path) = live(&dir, "[cache]\nttl = \"1h\"\n");
        std::fs::write(&path, "[cache]\nttl = 0\n").unwrap();
        let Reload::Invalid(err) = live.reload() else {
            panic!("an invalid file is refused")
        };
        assert!(err.to_string().contains("cache.ttl"), "{err}");
        assert_eq!(live.load().generation, 1);
        assert_eq!(live.load().cache.ttl, Duration::from_secs(3600));
    }

    #[test]
    fn settings_fixed_at_start_keep_their_running_values() {
        let dir = tempfile::tempdir().unwrap();
        let (live, path) = live(&dir, "[cache]\nmaxsize = 10\n");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\nlog_format = \"json\"\n[cache]\nmaxsize = 20\nttl = 5\n",
        )
        .unwrap();
        let Reload::Applied { needs_restart, .. } = live.reload() else {
            panic!("applied")
        };
        assert_eq!(needs_restart, ["listen", "log_format", "cache.maxsize"]);
        let settings = live.load();
        assert_eq!(settings.cache.maxsize, 10);
        assert_ne!(settings.listen.port(), 1);
        assert_eq!(settings.log_format, crate::config::LogFormat::Text);
        assert_eq!(
            settings.cache.ttl,
            Duration::from_secs(5),
            "the rest applies"
        );
    }

    #[test]
    fn without_a_file_there_is_nothing_to_reload() {
        let config = Config::resolve(&Cli::default(), FileConfig::default(), None).unwrap();
        assert!(matches!(LiveConfig::new(config).reload(), Reload::NoFile));
    }
}
