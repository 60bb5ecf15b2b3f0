//! The cache proper: keys, the bounded store, the storage policy,
//! single-flight coalescing of misses, and the entry encoding that leaves
//! the process (Redis values, the snapshot file).

pub mod codec;
pub mod credentials;
pub mod flight;
pub mod key;
pub mod policy;
pub mod replay;
pub mod snapshot;
pub mod stale;
pub mod store;
mod tally;
pub mod vary;

pub use key::{CacheKey, KeyMemo, RequestIdentity};
pub use store::{Census, Entry, Lookup, Store};
