//! Serving stale: how long an entry may outlive its TTL, and why a stale
//! answer was given (pure rules; RFC 5861 and RFC 9111 §4.2.4).
//!
//! Every entry carries two windows past its expiry: `stale-if-error`, in
//! which it answers for an upstream that fails (unreachable, timed out,
//! 5xx, busy), and `stale-while-revalidate`, in which it answers at once
//! while one background fill refreshes it. The defaults come from the
//! configuration (global, or the route's); the origin's own
//! `Cache-Control: stale-if-error=N` / `stale-while-revalidate=N` override
//! them for that answer, and `must-revalidate` / `proxy-revalidate` forbid
//! serving it stale at all.

use std::time::Duration;

use http::header::CACHE_CONTROL;
use http::{HeaderMap, StatusCode};

/// How long past its expiry an entry may still be served, and for what.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StaleWindows {
    /// Served when the upstream fails.
    pub if_error: Duration,
    /// Served at once while a background fill refreshes the entry.
    pub while_revalidate: Duration,
}

impl StaleWindows {
    /// How long past its expiry the store must keep an entry.
    pub fn longest(&self) -> Duration {
        self.if_error.max(self.while_revalidate)
    }

    /// The windows for one answer: `defaults`, overridden by the answer's
    /// own `Cache-Control` directives.
    pub fn for_answer(defaults: StaleWindows, headers: &HeaderMap) -> StaleWindows {
        let mut windows = defaults;
        let directives = headers
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for directive in directives {
            let (name, value) = match directive.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (directive, None),
            };
            let seconds = || value.and_then(|v| v.parse::<u64>().ok());
            match name.to_ascii_lowercase().as_str() {
                "must-revalidate" | "proxy-revalidate" => return StaleWindows::default(),
                "stale-if-error" => {
                    if let Some(s) = seconds() {
                        windows.if_error = Duration::from_secs(s);
                    }
                }
                "stale-while-revalidate" => {
                    if let Some(s) = seconds() {
                        windows.while_revalidate = Duration::from_secs(s);
                    }
                }
                _ => {}
            }
        }
        windows
    }
}

/// Why a stale entry was answered; `detail` feeds `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// The upstream request failed (its `ProxyError::as_str`).
    UpstreamError(&'static str),
    /// The upstream answered with this 5xx.
    UpstreamStatus(StatusCode),
    /// The fill this request waited for took longer than `lock_timeout`.
    LockTimeout,
    /// Inside `stale-while-revalidate`: a background fill refreshes it.
    Revalidating,
}

impl StaleReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::UpstreamError(kind) => kind,
            Self::UpstreamStatus(_) => "upstream-status",
            Self::LockTimeout => "lock-timeout",
            Self::Revalidating => "revalidating",
        }
    }

    /// The upstream's status, when it answered one.
    pub fn upstream_status(&self) -> Option<u16> {
        match self {
            Self::UpstreamStatus(status) => Some(status.as_u16()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const DEFAULTS: StaleWindows = StaleWindows {
        if_error: Duration::from_secs(86_400),
        while_revalidate: Duration::ZERO,
    };

    fn cache_control(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn without_directives_the_defaults_apply() {
        assert_eq!(
            StaleWindows::for_answer(DEFAULTS, &HeaderMap::new()),
            DEFAULTS
        );
    }

    #[test]
    fn origin_directives_override_the_defaults() {
        let windows = StaleWindows::for_answer(
            DEFAULTS,
            &cache_control("max-age=60, stale-while-revalidate=30, stale-if-error=\"600\""),
        );
        assert_eq!(windows.if_error, Duration::from_secs(600));
        assert_eq!(windows.while_revalidate, Duration::from_secs(30));
        assert_eq!(windows.longest(), Duration::from_secs(600));
    }

    #[test]
    fn must_revalidate_forbids_serving_stale() {
        let windows = StaleWindows::for_answer(
            DEFAULTS,
            &cache_control("max-age=60, stale-if-error=600, must-revalidate"),
        );
        assert_eq!(windows, StaleWindows::default());
    }

    #[test]
    fn a_malformed_directive_keeps_the_default() {
        let windows = StaleWindows::for_answer(DEFAULTS, &cache_control("stale-if-error=soon"));
        assert_eq!(windows, DEFAULTS);
    }

    #[test]
    fn reasons_name_themselves() {
        assert_eq!(
            StaleReason::UpstreamError("upstream-timeout").as_str(),
            "upstream-timeout"
        );
        assert_eq!(
            StaleReason::UpstreamStatus(StatusCode::SERVICE_UNAVAILABLE).upstream_status(),
            Some(503)
        );
        assert_eq!(StaleReason::Revalidating.upstream_status(), None);
    }
}
