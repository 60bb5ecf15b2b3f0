//! The cluster's history: every replica that shares a cache publishes each
//! closed [`IntervalRecord`] to a [`ClusterFigures`] source, and the
//! history answer reads them all back, merges them into the cluster's
//! series (counters add, sketches merge) and keeps each replica's own line.
//!
//! The source is a seam: the shared tier (Redis) implements it by storing
//! each record under a short expiry; [`MemoryCluster`] keeps them in
//! process (replicas in one process, and tests).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use super::ring::{IntervalRecord, KEEP};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster figures unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One replica's records, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaRecords {
    pub replica: String,
    pub records: Vec<IntervalRecord>,
}

/// Where replicas leave their per-interval figures for each other.
pub trait ClusterFigures: Send + Sync + std::fmt::Debug {
    /// Publishes `replica`'s record for one closed interval; it needs to be
    /// kept for an hour at most.
    fn publish<'a>(
        &'a self,
        replica: &'a str,
        record: &'a IntervalRecord,
    ) -> BoxFuture<'a, Result<(), ClusterError>>;

    /// Every replica's records that start at or after `since_ms`.
    fn collect(&self, since_ms: u64) -> BoxFuture<'_, Result<Vec<ReplicaRecords>, ClusterError>>;
}

/// Records kept in this process, an hour per replica.
#[derive(Debug, Default)]
pub struct MemoryCluster {
    replicas: Mutex<BTreeMap<String, VecDeque<IntervalRecord>>>,
}

impl ClusterFigures for MemoryCluster {
    fn publish<'a>(
        &'a self,
        replica: &'a str,
        record: &'a IntervalRecord,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        let mut replicas = self.replicas.lock().expect("cluster lock");
        let records = replicas.entry(replica.to_owned()).or_default();
        if records.len() == KEEP {
            records.pop_front();
        }
        records.push_back(record.clone());
        Box::pin(async { Ok(()) })
    }

    fn collect(&self, since_ms: u64) -> BoxFuture<'_, Result<Vec<ReplicaRecords>, ClusterError>> {
        let replicas = self.replicas.lock().expect("cluster lock");
        let all = replicas
            .iter()
            .map(|(replica, records)| ReplicaRecords {
                replica: replica.clone(),
                records: records
                    .iter()
                    .filter(|r| r.t >= since_ms)
                    .cloned()
                    .collect(),
            })
            .collect();
        Box::pin(async { Ok(all) })
    }
}

/// The cluster's records: per interval start, every replica's record merged.
pub fn merge_replicas(replicas: &[ReplicaRecords]) -> Vec<IntervalRecord> {
    let mut by_start: BTreeMap<u64, IntervalRecord> = BTreeMap::new();
    for record in replicas.iter().flat_map(|r| &r.records) {
        by_start
            .entry(record.t)
            .and_modify(|sum| sum.merge_replica(record))
            .or_insert_with(|| record.clone());
    }
    by_start.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(t: u64, hits: u64, misses: u64) -> IntervalRecord {
        IntervalRecord {
            t,
            ms: 10_000,
            hits,
            misses,
            ..IntervalRecord::default()
        }
    }

    #[tokio::test]
    async fn the_cluster_series_sums_every_replica_per_interval() {
        let cluster = MemoryCluster::default();
        cluster.publish("a", &record(10_000, 5, 1)).await.unwrap();
        cluster.publish("a", &record(20_000, 7, 0)).await.unwrap();
        cluster.publish("b", &record(20_000, 1, 9)).await.unwrap();
        let replicas = cluster.collect(0).await.unwrap();
        assert_eq!(replicas.len(), 2);
        let merged = merge_replicas(&replicas);
        let sums: Vec<_> = merged.iter().map(|r| (r.t, r.hits, r.misses)).collect();
        assert_eq!(sums, [(10_000, 5, 1), (20_000, 8, 9)]);
        let recent = cluster.collect(20_000).await.unwrap();
        assert_eq!(recent[0].records.len(), 1);
    }
}
