//! Error enums of the request path and their one mapping to an HTTP answer.
//!
//! Every failure a client can see is a [`ProxyError`]; [`ProxyError::status`]
//! is an exhaustive match, so adding a variant forces a decision about its
//! status code. The JSON body is the seed's error shape,
//! `{"status":"error","message":"…"}`, with a short, stable message from
//! [`ProxyError::client_message`] that never names the upstream or repeats
//! an OS or TLS error; the whole chain ([`ProxyError::message`]) goes to the
//! request's access line instead, next to the `X-Request-Id` the answer
//! carries. Errors are never cached.

use std::time::Duration;

use http::StatusCode;

/// Boxed error from hyper, the connector or a body stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream {upstream} is unreachable")]
    UpstreamUnreachable {
        upstream: String,
        #[source]
        source: BoxError,
    },

    #[error("request to upstream {upstream} failed")]
    UpstreamFailed {
        upstream: String,
        #[source]
        source: BoxError,
    },

    #[error("upstream {upstream} did not accept a connection within {timeout:?}")]
    UpstreamConnectTimeout { upstream: String, timeout: Duration },

    #[error("upstream {upstream} did not answer within {timeout:?}")]
    UpstreamTimeout { upstream: String, timeout: Duration },

    #[error("upstream {upstream} is busy: upstream_concurrency requests are running and the queue is full; retry after {retry_after:?}")]
    UpstreamBusy {
        upstream: String,
        retry_after: Duration,
    },

    #[error("upstream {upstream} sent an incomplete or invalid response body")]
    UpstreamBody {
        upstream: String,
        #[source]
        source: BoxError,
    },

    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },

    #[error("request carries both Content-Length and Transfer-Encoding (RFC 9112 §6.3); refused")]
    FramingConflict,

    #[error("request body could not be read")]
    ClientBody {
        #[source]
        source: BoxError,
    },

    #[error("request body not received in time")]
    ClientBodyTimeout {
        #[source]
        source: BoxError,
    },

    #[error("{problem} (RFC 9112 §3.2)")]
    InvalidHost { problem: HostProblem },

    #[error("the fill for this key was abandoned before it completed")]
    FillAbandoned,

    #[error("gave up after waiting {timeout:?} for another request's upstream fill of this key (lock_timeout)")]
    LockTimeout { timeout: Duration },

    #[error("{0}")]
    AdminParameter(String),

    #[error("admin endpoint requires a valid bearer token")]
    AdminUnauthorized,

    #[error(
        "admin endpoint {path} only answers loopback clients when no admin token is configured"
    )]
    AdminForbidden { path: String },

    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        method: http::Method,
        path: String,
        allow: &'static str,
    },

    #[error("no admin endpoint at {path}")]
    AdminNotFound { path: String },

    #[error("the shared cache tier (redis) cannot be reached; nothing was changed there")]
    SharedTierUnavailable,
    /// A store walk run off the request workers (keys, invalidate) did not
    /// finish: it panicked, or the runtime is shutting down.
    #[error("admin {task} did not complete")]
    AdminTask {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// What is wrong with a request's `Host` (see `admission.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostProblem {
    #[error("HTTP/1.1 request without a Host field")]
    Missing,
    #[error("request with more than one Host field")]
    Repeated,
    #[error("Host field is not a valid host[:port]")]
    Invalid,
    #[error("Host field disagrees with the authority of the request target")]
    Mismatch,
}

impl HostProblem {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "host-missing",
            Self::Repeated => "host-repeated",
            Self::Invalid => "host-invalid",
            Self::Mismatch => "host-mismatch",
        }
    }
}

impl ProxyError {
    /// A failure reading the client's request body: 408 when the client
    /// was too slow (`body_read_timeout`), 400 otherwise.
    pub fn client_body(source: BoxError) -> Self {
        if crate::client_io::is_body_timeout(&*source) {
            Self::ClientBodyTimeout { source }
        } else {
            Self::ClientBody { source }
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamConnectTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamBody { .. } => StatusCode::BAD_GATEWAY,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::FramingConflict => StatusCode::BAD_REQUEST,
            Self::ClientBody { .. } => StatusCode::BAD_REQUEST,
            Self::ClientBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::InvalidHost { .. } => StatusCode::BAD_REQUEST,
            Self::FillAbandoned => StatusCode::BAD_GATEWAY,
            Self::LockTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::AdminParameter(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            Self::AdminForbidden { .. } => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::AdminNotFound { .. } => StatusCode::NOT_FOUND,
            Self::SharedTierUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::AdminTask { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short machine-friendly name, used in logs and in `Cache-Status` details.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::UpstreamUnreachable { .. } => "upstream-unreachable",
            Self::UpstreamFailed { .. } => "upstream-failed",
            Self::UpstreamConnectTimeout { .. } => "upstream-connect-timeout",
            Self::UpstreamTimeout { .. } => "upstream-timeout",
            Self::UpstreamBusy { .. } => "upstream-busy",
            Self::UpstreamBody { .. } => "upstream-body",
            Self::BodyTooLarge { .. } => "body-too-large",
            Self::FramingConflict => "framing-conflict",
            Self::ClientBody { .. } => "client-body",
            Self::ClientBodyTimeout { .. } => "client-body-timeout",
            Self::InvalidHost { problem } => problem.as_str(),
            Self::FillAbandoned => "fill-abandoned",
            Self::LockTimeout { .. } => "lock-timeout",
            Self::AdminParameter(_) => "admin-parameter",
            Self::AdminUnauthorized => "admin-unauthorized",
            Self::AdminForbidden { .. } => "admin-forbidden",
            Self::MethodNotAllowed { .. } => "method-not-allowed",
            Self::AdminNotFound { .. } => "admin-not-found",
            Self::SharedTierUnavailable => "shared-tier-unavailable",
            Self::AdminTask { .. } => "admin-task",
        }
    }

    /// True when `T` appears anywhere in this error's source chain.
    pub fn caused_by<T: std::error::Error + 'static>(&self) -> bool {
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            if err.is::<T>() {
                return true;
            }
            cause = err.source();
        }
        false
    }

    /// The message shown to the client: short and stable (scripts may match
    /// it), naming no host, address, OS error or TLS detail. Errors about
    /// the client's own request or an admin call say what was wrong with it.
    pub fn client_message(&self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow;
        match self {
            Self::UpstreamUnreachable { .. } => Cow::Borrowed("upstream unreachable"),
            Self::UpstreamFailed { .. } => Cow::Borrowed("upstream request failed"),
            Self::UpstreamConnectTimeout { .. } => Cow::Borrowed("upstream connect timed out"),
            Self::UpstreamTimeout { .. } => Cow::Borrowed("upstream timed out"),
            Self::UpstreamBusy { .. } => Cow::Borrowed("upstream busy; retry later"),
            Self::UpstreamBody { .. } => Cow::Borrowed("upstream sent an incomplete answer"),
            Self::FillAbandoned => Cow::Borrowed("upstream request abandoned"),
            Self::LockTimeout { .. } => {
                Cow::Borrowed("timed out waiting for the upstream answer (lock_timeout)")
            }
            Self::ClientBody { .. } => Cow::Borrowed("request body could not be read"),
            Self::SharedTierUnavailable => {
                Cow::Borrowed("shared cache tier unavailable; nothing was changed")
            }
            Self::AdminTask { .. } => Cow::Borrowed("admin task did not complete"),
            Self::BodyTooLarge { .. }
            | Self::ClientBodyTimeout { .. }
            | Self::InvalidHost { .. }
            | Self::FramingConflict
            | Self::AdminParameter(_)
            | Self::AdminUnauthorized
            | Self::AdminForbidden { .. }
            | Self::MethodNotAllowed { .. }
            | Self::AdminNotFound { .. } => Cow::Owned(self.to_string()),
        }
    }

    /// The message for the log: this error and its sources, joined.
    pub fn message(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn refused() -> BoxError {
        Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "tcp connect error: Connection refused (os error 111)",
        ))
    }

    #[test]
    fn clients_are_told_what_failed_but_not_where() {
        let upstream = "http://admin:secret@10.1.2.3:8000".to_owned();
        let errors = [
            ProxyError::UpstreamUnreachable {
                upstream: upstream.clone(),
                source: refused(),
            },
            ProxyError::UpstreamFailed {
                upstream: upstream.clone(),
                source: refused(),
            },
            ProxyError::UpstreamBody {
                upstream: upstream.clone(),
                source: refused(),
            },
            ProxyError::UpstreamTimeout {
                upstream: upstream.clone(),
                timeout: Duration::from_secs(60),
            },
            ProxyError::UpstreamConnectTimeout {
                upstream: upstream.clone(),
                timeout: Duration::from_secs(5),
            },
            ProxyError::UpstreamBusy {
                upstream,
                retry_after: Duration::from_secs(1),
            },
        ];
        for err in &errors {
            let shown = err.client_message();
            assert!(shown.starts_with("upstream "), "{shown}");
            for secret in ["10.1.2.3", "secret", "os error", "8000"] {
                assert!(!shown.contains(secret), "{shown} reveals {secret}");
            }
        }
        assert_eq!(errors[0].client_message(), "upstream unreachable");
        assert_eq!(errors[3].client_message(), "upstream timed out");
    }

    #[test]
    fn the_log_gets_the_whole_chain() {
        let err = ProxyError::UpstreamUnreachable {
            upstream: "http://10.1.2.3:8000".to_owned(),
            source: refused(),
        };
        let chain = err.message();
        assert!(chain.contains("10.1.2.3:8000"), "{chain}");
        assert!(chain.contains("os error 111"), "{chain}");
    }

    #[test]
    fn errors_about_the_request_itself_say_what_was_wrong() {
        let err = ProxyError::BodyTooLarge { limit: 1024 };
        assert!(err.client_message().contains("1024"));
        let err = ProxyError::AdminParameter("pattern is required".to_owned());
        assert_eq!(err.client_message(), "pattern is required");
    }
}
