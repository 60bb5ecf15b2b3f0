//! The cluster's history on the shared tier ([`ClusterFigures`] over
//! Redis): each replica writes every closed 10 s interval as one field of a
//! hash per interval, `PREFIX:history:{PREFIX}:<start ms>` → `replica` →
//! the record's compact JSON, expiring an hour and a bit later; the history
//! answer reads the window's hashes back in one pipeline.
//!
//! Every key carries the hash tag `{PREFIX}` (as the index and the secret
//! do, see `cache::storage::redis`), so on a Redis
//! Cluster all of them live in one slot and the read stays one pipeline
//! (a few hundred small hashes: no node is loaded by it). Values read back
//! are untrusted: a field over [`MAX_RECORD_BYTES`] or one that does not
//! parse is skipped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::storage::RedisTier;
use crate::metrics::history::{
    BoxFuture, ClusterError, ClusterFigures, IntervalRecord, ReplicaRecords, INTERVAL_MS,
};

/// How long a published interval is kept: the hour shown, plus slack.
const KEEP_MS: u64 = 3_700_000;
/// The largest record read back (a real one is well under 4 KB).
const MAX_RECORD_BYTES: usize = 64 << 10;
/// Budget of one read of the window (an admin read, not a request).
const READ_BUDGET: Duration = Duration::from_millis(400);

pub struct RedisHistory {
    tier: Arc<RedisTier>,
    /// `PREFIX:history:{PREFIX}`: what every history key starts with.
    stem: String,
}

impl std::fmt::Debug for RedisHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHistory")
            .field("stem", &self.stem)
            .finish()
    }
}

impl RedisHistory {
    pub fn new(tier: Arc<RedisTier>) -> Self {
        let stem = format!("{0}:history:{{{0}}}", tier.config().prefix);
        Self { tier, stem }
    }

    fn key(&self, t: u64) -> String {
        format!("{}:{t}", self.stem)
    }
}

fn unavailable(err: impl std::error::Error + Send + Sync + 'static) -> ClusterError {
    ClusterError::Unavailable(Box::new(err))
}

impl ClusterFigures for RedisHistory {
    fn publish<'a>(
        &'a self,
        replica: &'a str,
        record: &'a IntervalRecord,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            let json = serde_json::to_string(record).map_err(unavailable)?;
            let key = self.key(record.t);
            let mut pipe = redis::pipe();
            pipe.cmd("HSET").arg(&key).arg(replica).arg(json).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(KEEP_MS).ignore();
            self.tier.pipe::<()>(&pipe, None).await.map_err(unavailable)
        })
    }

    fn collect(&self, since_ms: u64) -> BoxFuture<'_, Result<Vec<ReplicaRecords>, ClusterError>> {
        Box::pin(async move {
            let first = since_ms.div_ceil(INTERVAL_MS) * INTERVAL_MS;
            let now = crate::metrics::Clock::system().now_ms();
            let starts: Vec<u64> = (first..=now).step_by(INTERVAL_MS as usize).collect();
            let mut pipe = redis::pipe();
            for &t in &starts {
                pipe.cmd("HGETALL").arg(self.key(t));
            }
            let hashes: Vec<Vec<(String, Vec<u8>)>> = self
                .tier
                .pipe(&pipe, Some(READ_BUDGET))
                .await
                .map_err(unavailable)?;
            let mut by_replica: BTreeMap<String, Vec<IntervalRecord>> = BTreeMap::new();
            for (t, fields) in starts.iter().zip(hashes) {
                for (replica, value) in fields {
                    if value.len() > MAX_RECORD_BYTES || replica.len() > 200 {
                        continue;
                    }
                    let Ok(record) = serde_json::from_slice::<IntervalRecord>(&value) else {
                        continue;
                    };
                    if record.t == *t {
                        by_replica.entry(replica).or_default().push(record);
                    }
                }
            }
            Ok(by_replica
                .into_iter()
                .map(|(replica, records)| ReplicaRecords { replica, records })
                .collect())
        })
    }
}
