//! The cache proper: keys, the bounded store, the storage policy and
//! single-flight coalescing of misses.

pub mod credentials;
pub mod flight;
pub mod key;
pub mod policy;
pub mod replay;
pub mod stale;
pub mod store;
mod tally;
pub mod vary;

pub use key::{CacheKey, KeyMemo, RequestIdentity};
pub use store::{Census, Entry, Lookup, Store};
