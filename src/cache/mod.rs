//! The cache proper: keys, the bounded store, the storage policy and
//! single-flight coalescing of misses, each route's key rules and the
//! sampler that suspects volatile fields.

pub mod credentials;
pub mod flight;
pub mod key;
pub mod key_rules;
pub mod policy;
pub mod replay;
pub mod sketch;
pub mod stale;
pub mod store;
pub mod vary;
pub mod volatile;

pub use key::{CacheKey, KeyMemo, RequestIdentity};
pub use store::{Census, Entry, Lookup, Store};
