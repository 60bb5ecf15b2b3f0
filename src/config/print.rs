//! `--print-config`: [`Config::to_toml`] writes the effective configuration
//! back in `proxy.toml` form, which reads back to the same [`Config`].

use super::{Config, FileCache, FileConfig, FileDuration, FileSize};
use crate::routes::Route;

impl Config {
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
            body_read_timeout: Some(FileDuration(limits.body_read_timeout)),
            body_min_rate: Some(FileSize(limits.body_min_rate)),
            send_timeout: Some(FileDuration(limits.send_timeout)),
            http2_max_pending_accept_reset_streams: Some(
                limits.http2_max_pending_accept_reset_streams,
            ),
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
                mode: Some(self.cache.mode),
                heuristic_freshness: Some(self.cache.heuristic_freshness),
                targeted_cache_control: Some(
                    self.cache
                        .targeted_cache_control
                        .iter()
                        .map(|n| n.as_str().to_owned())
                        .collect(),
                ),
                snapshot_file: self.cache.snapshot_file.clone(),
            },
            routes: self.routes.iter().map(Route::to_file).collect(),
        };
        toml::to_string_pretty(&file).expect("effective config serialises")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{resolve_toml, Cli};

    #[test]
    fn the_effective_config_round_trips() {
        let text = "[cache]\nttl = \"2h\"\n\n[[route]]\nname = \"get_metrics\"\npath = \"/api/metrics\"\nmethods = [\"POST\"]\n";
        let config = resolve_toml(Cli::default(), text).unwrap();
        let printed = config.to_toml();
        let again = resolve_toml(Cli::default(), &printed).unwrap();
        assert_eq!(again.cache.ttl, Duration::from_secs(7200));
        assert_eq!(
            again.limits.max_header_bytes,
            config.limits.max_header_bytes
        );
        assert_eq!(again.limits.max_connections, config.limits.max_connections);
        assert_eq!(again.routes.iter().count(), 1);
    }
}
