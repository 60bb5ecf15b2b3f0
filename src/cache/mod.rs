//! The cache proper: keys, each route's key rules and the sampler that
//! suspects volatile fields, the bounded store, the storage policy,
//! single-flight coalescing of misses, and the entry encoding that leaves
//! the process (Redis values, the snapshot file).

pub mod codec;
pub mod credentials;
pub mod directives;
pub mod flight;
pub mod freshness;
pub mod invalidation;
pub mod key;
pub mod key_rules;
pub mod policy;
pub mod replay;
pub mod sketch;
pub mod snapshot;
pub mod stale;
pub mod store;
mod tally;
pub mod vary;
pub mod volatile;

pub use key::{CacheKey, KeyMemo, RequestIdentity};
pub use store::{Census, Entry, Lookup, Store};
