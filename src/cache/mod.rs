//! The cache proper: keys, each route's key rules and the sampler that
//! suspects volatile fields, the storage seam (the bounded in-memory store,
//! alone or in front of a shared Redis tier), the storage policy,
//! single-flight coalescing of misses (in-process, and across replicas with
//! a lock in Redis), and the entry encoding that leaves the process (Redis
//! values, the snapshot file).

pub mod codec;
pub mod credentials;
pub mod directives;
pub mod flight;
pub mod freshness;
pub mod header_names;
pub mod invalidation;
pub mod key;
pub mod key_rules;
pub mod listing;
pub mod lock;
pub mod policy;
pub mod replay;
pub mod sketch;
pub mod snapshot;
pub mod stale;
pub mod storage;
pub mod store;
pub mod stored_headers;
mod tally;
pub mod vary;
pub mod volatile;

pub use key::{CacheKey, KeyMemo, RequestIdentity};
pub use storage::Storage;
pub use store::{Census, Entry, Lookup, Store};
pub use stored_headers::StoredHeaders;
