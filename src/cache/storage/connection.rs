//! The connection to Redis and what it reports: one handle for a single
//! node or a Cluster ([`Conn`]), why a call failed ([`L2Error`]), the tier's
//! counters ([`L2Counters`]), and small helpers the tier and the lock share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Why a Redis call gave no answer. Never reaches a client: the request
/// goes on with L1 and the upstream.
#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    #[error("redis is down")]
    Down,
    #[error("redis call took longer than its {0:?} budget")]
    Timeout(Duration),
    #[error("redis call failed")]
    Redis(#[from] redis::RedisError),
}

impl L2Error {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Timeout(_) => "timeout",
            Self::Redis(_) => "error",
        }
    }
}

/// One connection handle, plain or Cluster; both are cheap to clone and
/// multiplex every caller on one socket per node.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Counters of the shared tier, for stats and Prometheus (relaxed atomics,
/// read only by those).
#[derive(Default)]
pub struct L2Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub errors: AtomicU64,
    pub writes: AtomicU64,
    /// Values that were not entries (garbage, unknown version, too large).
    pub rejected: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub lock_acquired: AtomicU64,
    pub lock_waits: AtomicU64,
    /// Latency of request-path calls: counts per bucket of [`LATENCY_BUCKETS`].
    pub latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    pub latency_sum_us: AtomicU64,
}

/// Upper bounds (seconds) of the L2 latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 8] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1];

impl L2Counters {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `N` random bytes from the OS, as hex.
pub(crate) fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).expect("the OS random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn error_chain(err: &L2Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
