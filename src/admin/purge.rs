//! The seed's mutations: `POST /api/cache/clear` empties the store and
//! `POST /api/cache/invalidate?pattern=` drops the entries whose
//! description contains the pattern, both with the seed's exact JSON shapes.
//!
//! Neither holds a request worker for a walk of the store: `clear` is O(1)
//! (a new store epoch) and hands the memory back from a blocking thread;
//! `invalidate` walks on a blocking thread, one entry under a lock at a time.

use http::{Response, StatusCode};
use serde::Serialize;
use tracing::{info, warn};

use super::query_pattern;
use crate::body::ProxyBody;
use crate::cache::storage::L2Error;
use crate::error::ProxyError;
use crate::metrics::EventKind;
use crate::proxy::Proxy;
use crate::respond;

#[derive(Serialize)]
struct ClearAnswer {
    status: &'static str,
    message: &'static str,
    warning: &'static str,
}

#[derive(Serialize)]
struct InvalidateAnswer<'a> {
    status: &'static str,
    pattern: &'a str,
    keys_deleted: usize,
    message: String,
}

pub(super) async fn clear(proxy: &Proxy) -> Result<Response<ProxyBody>, ProxyError> {
    let removed = proxy.store.clear().await.map_err(shared_tier_down)?;
    proxy.vary.clear();
    info!(keys_deleted = removed, "Cache CLEARED");
    proxy
        .metrics
        .history()
        .events
        .record(EventKind::Clear, format!("{removed} keys deleted"));
    Ok(respond::json(
        StatusCode::OK,
        &ClearAnswer {
            status: "success",
            message: "Cache cleared successfully",
            warning: "Next requests will hit the database",
        },
    ))
}

pub(super) async fn invalidate(
    proxy: &Proxy,
    query: Option<&str>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Some(pattern) = query_pattern(query) else {
        return Err(ProxyError::AdminParameter(
            "query parameter 'pattern' is required and must not be empty".into(),
        ));
    };
    let removed = proxy
        .store
        .invalidate(&pattern)
        .await
        .map_err(shared_tier_down)?;
    info!(pattern = %pattern, keys_deleted = removed, "Cache INVALIDATED: {removed} keys matching '{pattern}'");
    proxy.metrics.history().events.record(
        EventKind::Invalidate,
        format!("pattern '{pattern}': {removed} keys deleted"),
    );
    Ok(respond::json(
        StatusCode::OK,
        &InvalidateAnswer {
            status: "success",
            pattern: &pattern,
            keys_deleted: removed,
            message: format!("Invalidated {removed} cache keys matching pattern '{pattern}'"),
        },
    ))
}

/// The shared tier could not be reached: other replicas keep their
/// entries, so the operator must hear that the call did not take effect.
fn shared_tier_down(err: L2Error) -> ProxyError {
    warn!(
        error = err.as_str(),
        "shared cache tier unreachable; clear/invalidate not applied to it"
    );
    ProxyError::SharedTierUnavailable
}

#[cfg(test)]
mod tests {
    use super::{ClearAnswer, InvalidateAnswer};

    #[test]
    fn answers_keep_the_seeds_field_order() {
        let clear = serde_json::to_string(&ClearAnswer {
            status: "success",
            message: "Cache cleared successfully",
            warning: "Next requests will hit the database",
        })
        .unwrap();
        assert_eq!(
            clear,
            r#"{"status":"success","message":"Cache cleared successfully","warning":"Next requests will hit the database"}"#
        );
        let invalidate = serde_json::to_string(&InvalidateAnswer {
            status: "success",
            pattern: "get_metrics",
            keys_deleted: 12,
            message: "Invalidated 12 cache keys matching pattern 'get_metrics'".into(),
        })
        .unwrap();
        assert!(invalidate
            .starts_with(r#"{"status":"success","pattern":"get_metrics","keys_deleted":12,"#));
    }
}
