//! dashcache: a caching reverse proxy for slow analytics APIs.
//!
//! Modules in request-flow order:
//!
//! - [`config`]: flags + env + proxy.toml → one validated [`config::Config`]
//! - [`server`]: listeners (main, admin), connection limits, graceful
//!   shutdown (`drain`), expiry purge
//! - `connection`: one client connection: TLS, HTTP/1.1 or HTTP/2 (ALPN or
//!   the prior-knowledge preface), the service, HTTP/2's idle close
//! - `keep_alive`: HTTP/1.1 connections, parked while idle so that they
//!   hold only their socket
//! - [`tls`]: TLS termination (rustls, ALPN h2/http1.1), certificate reload
//! - [`client_io`]: a client connection's bytes: framing followed in place,
//!   request body and answer write deadlines
//! - [`framing`]: HTTP/1 request framing (refuses Content-Length with Transfer-Encoding)
//! - [`admission`]: Host rules and the framing refusal, before the pipeline
//! - [`request_id`]: the `X-Request-Id` every answer and access line carries
//! - [`admin`]: `/api/cache/*` (stats, metrics, health, history, keys, clear,
//!   invalidate, the status page), answered locally; the history sampler
//! - [`proxy`]: the pipeline: route → key → lookup → coalesce → forward → store → respond
//! - `access`: the one access line per request, in the seed's wording
//! - `fill`: the detached upstream request behind a miss, and what it stores
//! - [`refresh`]: `POST /api/cache/refresh`, re-fetching entries in the background
//! - [`reload`]: the running configuration, swapped whole on SIGHUP
//! - [`routes`]: route table (name, TTL, cache on/off per path and method)
//! - [`cache`]: [`cache::key`] (md5 key, canonical JSON), [`cache::key_rules`]
//!   (per-route key rules), [`cache::volatile`] (suspected volatile fields),
//!   [`cache::storage`] (the storage seam: memory alone, or memory in front of
//!   Redis shared by replicas), [`cache::store`] (bounded store on quick_cache),
//!   [`cache::lock`] (cross-replica fill lock), [`cache::policy`] (what may be
//!   stored), [`cache::flight`] (single-flight), [`cache::vary`] (variants),
//!   [`cache::credentials`] (who may see which entry), [`cache::codec`]
//!   (the entry encoding that leaves the process), [`cache::snapshot`]
//!   (the store across a restart)
//! - [`upstream`]: pooled http/https client with timeouts
//! - [`headers`]: hop-by-hop and forwarding header rules
//! - [`body`]: response body types, bounded upstream reads
//! - [`respond`]: `X-Cache`/`Age`/`Cache-Status`, JSON answers
//! - [`metrics`]: counters behind stats and the Prometheus exposition, and
//!   the last hour of them with event markers (`metrics::history`)
//! - [`error`]: the request path's error enum and its HTTP mapping
//! - [`log_format`]: the text log format, with the access line's fast path
//! - [`log_writer`]: log lines batched to stderr by a thread of their own
//! - [`allocator`]: when the allocator gives freed memory back to the OS
//! - `background`: walks of the store on threads of their own, below the
//!   request workers' priority

mod access;
pub mod admin;
pub mod admission;
pub mod allocator;
mod background;
pub mod body;
pub mod body_deadline;
pub mod cache;
pub mod client_io;
pub mod config;
mod connection;
mod drain;
pub mod error;
mod express;
mod fill;
pub mod framing;
mod head_writer;
pub mod headers;
mod keep_alive;
pub mod log_format;
pub mod log_writer;
pub mod metrics;
mod per_thread;
pub mod proxy;
pub mod refresh;
pub mod reload;
pub mod request_body;
pub mod request_id;
pub mod respond;
pub mod routes;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod write_batch;

pub use config::{Cli, Config};
pub use server::Server;
