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

use http::StatusCode;

use super::directives::Directives;

/// How long past its expiry an entry that carries a validator (`ETag`,
/// `Last-Modified`) is kept so that it can be revalidated with a
/// conditional request instead of fetched again (RFC 9111 §4.3.1); the
/// store's bounds still evict it earlier when space is needed.
pub const REVALIDATE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The revalidation window of an entry with (`validated`) or without a
/// validator. Derived, never stored: `cache::codec` recomputes it on decode.
pub fn revalidate_window(validated: bool) -> Duration {
    if validated {
        REVALIDATE_WINDOW
    } else {
        Duration::ZERO
    }
}

/// How long past its expiry an entry may still be served, and for what.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StaleWindows {
    /// Served when the upstream fails.
    pub if_error: Duration,
    /// Served at once while a background fill refreshes the entry.
    pub while_revalidate: Duration,
    /// Kept (never served) so a conditional request can revalidate it.
    pub revalidate: Duration,
}

impl StaleWindows {
    /// How long past its expiry the store must keep an entry.
    pub fn longest(&self) -> Duration {
        self.if_error
            .max(self.while_revalidate)
            .max(self.revalidate)
    }

    /// The windows for one answer: `defaults`, overridden by the answer's
    /// own directives (RFC 5861). `must-revalidate`, `proxy-revalidate`,
    /// `s-maxage` and an unqualified `no-cache` forbid serving it stale at
    /// all; `validated` (it has a validator) keeps it for revalidation.
    pub fn for_answer(
        defaults: StaleWindows,
        directives: &Directives,
        validated: bool,
    ) -> StaleWindows {
        let revalidate = revalidate_window(validated);
        let no_cache = matches!(&directives.no_cache, Some(fields) if fields.is_empty());
        if directives.forbids_stale() || no_cache {
            return StaleWindows {
                revalidate,
                ..StaleWindows::default()
            };
        }
        let seconds = |value: Option<u64>, default| value.map_or(default, Duration::from_secs);
        StaleWindows {
            if_error: seconds(directives.stale_if_error, defaults.if_error),
            while_revalidate: seconds(directives.stale_while_revalidate, defaults.while_revalidate),
            revalidate,
        }
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

    const DEFAULTS: StaleWindows = StaleWindows {
        if_error: Duration::from_secs(86_400),
        while_revalidate: Duration::ZERO,
        revalidate: Duration::ZERO,
    };

    fn windows(cache_control: &str, validated: bool) -> StaleWindows {
        StaleWindows::for_answer(DEFAULTS, &Directives::parse(cache_control), validated)
    }

    #[test]
    fn without_directives_the_defaults_apply() {
        assert_eq!(windows("", false), DEFAULTS);
    }

    #[test]
    fn origin_directives_override_the_defaults() {
        let windows = windows(
            "max-age=60, stale-while-revalidate=30, stale-if-error=\"600\"",
            false,
        );
        assert_eq!(windows.if_error, Duration::from_secs(600));
        assert_eq!(windows.while_revalidate, Duration::from_secs(30));
        assert_eq!(windows.longest(), Duration::from_secs(600));
    }

    #[test]
    fn must_revalidate_forbids_serving_stale() {
        assert_eq!(
            windows("max-age=60, stale-if-error=600, must-revalidate", false),
            StaleWindows::default()
        );
    }

    #[test]
    fn s_maxage_and_no_cache_forbid_serving_stale_too() {
        assert_eq!(
            windows("s-maxage=5, stale-if-error=600", false).if_error,
            Duration::ZERO
        );
        assert_eq!(windows("no-cache", false).if_error, Duration::ZERO);
    }

    #[test]
    fn an_entry_with_a_validator_is_kept_for_revalidation_but_not_served() {
        let windows = windows("max-age=60, must-revalidate", true);
        assert_eq!(windows.revalidate, REVALIDATE_WINDOW);
        assert_eq!(windows.if_error, Duration::ZERO);
        assert_eq!(windows.longest(), REVALIDATE_WINDOW);
    }

    #[test]
    fn a_malformed_directive_keeps_the_default() {
        assert_eq!(windows("stale-if-error=soon", false), DEFAULTS);
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
