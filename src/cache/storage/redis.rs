//! The shared tier on Redis (or Valkey, or a Redis Cluster): entries as
//! encoded values (`cache::codec`), an index of descriptions for
//! `invalidate`, and the connection's health.
//!
//! Keys (the `{…}` part is the Cluster hash tag):
//!
//! - `PREFIX:entry:{HEX}`: one entry, expiring with its last stale window;
//! - `PREFIX:lock:{HEX}`: its fill lock (same slot as the entry);
//! - `PREFIX:index:{PREFIX}`: hash of `HEX` → `EXPIRY_MS DESCRIPTION`, so
//!   `invalidate`, `clear` and `refresh` walk descriptions, not the keyspace;
//! - `PREFIX:secret:{PREFIX}`: the credential digest key (`cache::credentials`);
//! - `PREFIX:history:{PREFIX}:<start ms>`: each replica's figures for one
//!   10 s interval, kept an hour (`admin::history_redis`);
//! - channel `PREFIX:events`: invalidations and fill news (`storage::events`).
//!
//! Redis down or slow is never worse than no Redis: every call made for a
//! request runs under the `timeout` budget; a failed call marks the tier
//! down at once (one log line), and while it is down calls fail without
//! touching the network. A background task pings it back up with backoff
//! (one log line again). Values are read with `GETRANGE` capped at the
//! largest storable entry, so a huge or hostile value costs one bounded read
//! and is a miss.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use hmac::{Hmac, Mac};
use md5::Md5;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline};
use tracing::{info, warn};

use super::connection::{error_chain, Conn};
pub(crate) use super::connection::{random_hex, unix_ms};
pub use super::connection::{L2Counters, L2Error, LATENCY_BUCKETS};

use crate::cache::codec::{self, Clock};
use crate::cache::{CacheKey, Entry};
use crate::config::RedisConfig;

/// Budget of admin walks (invalidate, clear, refresh listing) per round trip.
const WALK_BUDGET: Duration = Duration::from_secs(5);
/// Index fields read per `HSCAN` round trip.
const SCAN_COUNT: usize = 2000;
/// Slack kept past the entry's last window before Redis drops the value.
const EXPIRY_SLACK_MS: u64 = 1000;

/// The shared tier: connection, health, key names and entry operations.
pub struct RedisTier {
    config: RedisConfig,
    /// Set once connected (at once for a single node: the manager connects
    /// lazily and reconnects by itself; for a Cluster, by the health task).
    conn: ArcSwapOption<Conn>,
    /// Whether request-path calls may use Redis; flipped (and logged) on
    /// every change of state only.
    up: AtomicBool,
    /// This process's name on the events channel (its own messages are skipped).
    pub(crate) replica: String,
    /// The largest value read back: the largest storable entry plus room
    /// for its headers and description.
    max_value_bytes: u64,
    /// Whether a rejected value was logged already (one warning, then debug).
    rejected_logged: AtomicBool,
    pub counters: L2Counters,
    /// Fill-lock waiters on this replica, woken by the events listener.
    pub(crate) wakers: super::events::Wakers,
    /// Key of the credential digest: `redis.key_secret`, else the one kept
    /// in Redis once read (a random local one until then, so credentialed
    /// entries are not shared before every replica agrees on it).
    secret: ArcSwap<Vec<u8>>,
    /// Whether `secret` is the shared one (configured, or read from Redis).
    secret_shared: AtomicBool,
    /// Whether the events listener is subscribed now.
    pub(crate) listening: AtomicBool,
    /// When the tier was last seen down (for stats), as unix ms; 0 never.
    down_since_ms: AtomicU64,
}

impl RedisTier {
    /// The tier for `config`; nothing is sent until the health task runs.
    pub fn new(config: RedisConfig, max_entry_bytes: u64) -> Result<Self, redis::RedisError> {
        let conn = if config.cluster {
            None
        } else {
            let client = redis::Client::open(config.urls[0].as_str())?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.timeout.max(Duration::from_millis(200))))
                .set_response_timeout(Some(WALK_BUDGET))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(200));
            Some(Arc::new(Conn::Single(
                ConnectionManager::new_lazy_with_config(client, manager_config)?,
            )))
        };
        Ok(Self {
            conn: ArcSwapOption::new(conn),
            up: AtomicBool::new(false),
            replica: random_hex::<8>(),
            max_value_bytes: max_entry_bytes.saturating_mul(2).saturating_add(64 << 10),
            rejected_logged: AtomicBool::new(false),
            counters: L2Counters::default(),
            wakers: super::events::Wakers::default(),
            down_since_ms: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            secret: ArcSwap::from_pointee(config.key_secret.as_ref().map_or_else(
                || random_hex::<32>().into_bytes(),
                |s| s.as_bytes().to_vec(),
            )),
            secret_shared: AtomicBool::new(config.key_secret.is_some()),
            config,
        })
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// HMAC-MD5 of a credential digest under the shared secret.
    pub fn scope_credential(&self, digest: &[u8; 16]) -> [u8; 16] {
        let secret = self.secret.load();
        let mut mac =
            <Hmac<Md5> as Mac>::new_from_slice(&secret).expect("HMAC takes keys of any length");
        mac.update(digest);
        mac.finalize().into_bytes().into()
    }

    /// Reads (or creates) the shared secret once Redis answers.
    async fn load_secret(&self) {
        if self.secret_shared.load(Ordering::Relaxed) {
            return;
        }
        match self.shared_secret().await {
            Ok(secret) => {
                self.secret.store(Arc::new(secret));
                self.secret_shared.store(true, Ordering::Relaxed);
                info!("credential digest key read from redis; credentialed entries are shared");
            }
            Err(err) => {
                warn!(error = %error_chain(&err), "credential digest key not read from redis; credentialed entries stay local")
            }
        }
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Unix ms since when it is down (0: up, or never connected yet).
    pub fn down_since_ms(&self) -> u64 {
        self.down_since_ms.load(Ordering::Relaxed)
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            self.down_since_ms.store(0, Ordering::Relaxed);
            info!(redis = %self.config.redacted_urls(), "redis up: sharing the cache tier");
        }
    }

    fn mark_down(&self, err: &L2Error) {
        if self.up.swap(false, Ordering::SeqCst) {
            self.down_since_ms
                .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
            warn!(redis = %self.config.redacted_urls(), error = %error_chain(err), "redis down: serving from memory and the upstream until it is back");
        }
    }

    // ------------------------------------------------------------ keys

    pub fn entry_key(&self, key: &CacheKey) -> String {
        format!("{}:entry:{{{key}}}", self.config.prefix)
    }

    pub fn lock_key(&self, key: &CacheKey) -> String {
        format!("{}:lock:{{{key}}}", self.config.prefix)
    }

    pub fn index_key(&self) -> String {
        format!("{0}:index:{{{0}}}", self.config.prefix)
    }

    pub fn secret_key(&self) -> String {
        format!("{0}:secret:{{{0}}}", self.config.prefix)
    }

    pub fn channel(&self) -> String {
        format!("{}:events", self.config.prefix)
    }

    // ------------------------------------------------------------ calls

    /// Runs `cmd` under the request budget (or `budget`); a failure marks the
    /// tier down.
    pub(crate) async fn call<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        budget: Option<Duration>,
    ) -> Result<T, L2Error> {
        let conn = self.live_conn()?;
        let budget = budget.unwrap_or(self.config.timeout);
        let started = Instant::now();
        let result = tokio::time::timeout(budget, cmd.query_async::<T>(&mut (*conn).clone())).await;
        self.settle(result, budget, started)
    }

    pub(crate) async fn pipe<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
        budget: Option<Duration>,
    ) -> Result<T, L2Error> {
        let conn = self.live_conn()?;
        let budget = budget.unwrap_or(self.config.timeout);
        let started = Instant::now();
        let result =
            tokio::time::timeout(budget, pipe.query_async::<T>(&mut (*conn).clone())).await;
        self.settle(result, budget, started)
    }

    fn live_conn(&self) -> Result<Arc<Conn>, L2Error> {
        if !self.is_up() {
            return Err(L2Error::Down);
        }
        self.conn.load_full().ok_or(L2Error::Down)
    }

    fn settle<T>(
        &self,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
        budget: Duration,
        started: Instant,
    ) -> Result<T, L2Error> {
        self.counters.observe(started.elapsed());
        let err = match result {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => L2Error::Redis(err),
            Err(_) => L2Error::Timeout(budget),
        };
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        // A refusal of one command (wrong type, script error) says nothing
        // about the connection; anything else does.
        let fatal = match &err {
            L2Error::Redis(e) => !matches!(
                e.kind(),
                redis::ErrorKind::Server(
                    redis::ServerErrorKind::ResponseError
                        | redis::ServerErrorKind::NoScript
                        | redis::ServerErrorKind::ExecAbort
                        | redis::ServerErrorKind::CrossSlot
                ) | redis::ErrorKind::UnexpectedReturnType
                    | redis::ErrorKind::Parse
            ),
            L2Error::Timeout(_) | L2Error::Down => true,
        };
        if fatal {
            self.mark_down(&err);
        } else {
            warn!(error = %error_chain(&err), "redis call refused");
        }
        Err(err)
    }

    /// Keeps the tier's state true: connects (Cluster), pings, flips up and
    /// down with one log line each. Runs until the tier is dropped.
    pub fn spawn_health(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            let mut logged_unreachable = false;
            loop {
                let Some(tier) = weak.upgrade() else { return };
                let healthy = tier.probe().await;
                match &healthy {
                    Ok(()) => {
                        tier.mark_up();
                        tier.load_secret().await;
                        backoff = Duration::from_millis(50);
                        logged_unreachable = false;
                    }
                    Err(err) => {
                        if tier.is_up() {
                            tier.mark_down(err);
                        } else if !logged_unreachable {
                            warn!(redis = %tier.config.redacted_urls(), error = %error_chain(err), "redis unreachable; retrying in the background");
                        }
                        logged_unreachable = true;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
                let pause = if healthy.is_ok() {
                    Duration::from_millis(500)
                } else {
                    backoff
                };
                drop(tier);
                tokio::time::sleep(pause).await;
            }
        });
    }

    /// One health check: connect if needed, then `PING` within a short budget.
    async fn probe(&self) -> Result<(), L2Error> {
        let budget = self.config.timeout.max(Duration::from_millis(250));
        if self.conn.load().is_none() {
            let nodes: Vec<&str> = self.config.urls.iter().map(String::as_str).collect();
            let client = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(budget)
                .response_timeout(WALK_BUDGET)
                .retries(1)
                .build()?;
            let conn = tokio::time::timeout(budget * 4, client.get_async_connection())
                .await
                .map_err(|_| L2Error::Timeout(budget * 4))??;
            self.conn.store(Some(Arc::new(Conn::Cluster(conn))));
        }
        let conn = self.conn.load_full().ok_or(L2Error::Down)?;
        let pong = tokio::time::timeout(
            budget,
            redis::cmd("PING").query_async::<String>(&mut (*conn).clone()),
        )
        .await
        .map_err(|_| L2Error::Timeout(budget))??;
        debug_assert_eq!(pong, "PONG");
        Ok(())
    }

    // ------------------------------------------------------------ entries

    /// The entry under `key`, if Redis holds a valid one.
    pub async fn get(&self, key: &CacheKey) -> Result<Option<Entry>, L2Error> {
        let mut pipe = redis::pipe();
        let name = self.entry_key(key);
        pipe.cmd("STRLEN").arg(&name);
        pipe.cmd("GETRANGE")
            .arg(&name)
            .arg(0)
            .arg(self.max_value_bytes);
        let (length, value): (u64, Vec<u8>) = self.pipe(&pipe, None).await?;
        if length == 0 {
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let entry = self.read_value(key, length, &value);
        let counter = if entry.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(entry)
    }

    /// Decodes a value read for `key`; anything else than a valid entry for
    /// that very key is a miss, logged once.
    fn read_value(&self, key: &CacheKey, length: u64, value: &[u8]) -> Option<Entry> {
        let refused = if length > self.max_value_bytes {
            "too-large"
        } else {
            match codec::decode(value, &Clock::now()) {
                Ok(entry) if entry.key == *key => return Some(entry),
                Ok(_) => "wrong-key",
                Err(err) => err.as_str(),
            }
        };
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        if !self.rejected_logged.swap(true, Ordering::Relaxed) {
            warn!(key = %key.short(), bytes = length, reason = refused, "value in redis is not a valid entry; treated as a miss (further ones logged at debug)");
        } else {
            tracing::debug!(key = %key.short(), bytes = length, reason = refused, "value in redis is not a valid entry");
        }
        None
    }

    /// Writes `entry` with its index line, expiring after its last window,
    /// and announces it (`stored`) in the same round trip.
    pub async fn put(&self, entry: &Entry, event: &str) -> Result<(), L2Error> {
        let clock = Clock::now();
        let value = codec::encode(entry, &clock);
        let keep_ms = clock.unix_ms(entry.keep_until());
        let now_ms = clock.unix_ms(clock.mono);
        let px = keep_ms.saturating_sub(now_ms).max(1) + EXPIRY_SLACK_MS;
        // Entry and index live in different Cluster slots: two calls, at once.
        let mut set = redis::cmd("SET");
        set.arg(self.entry_key(&entry.key))
            .arg(value)
            .arg("PX")
            .arg(px);
        let mut index = redis::cmd("HSET");
        index
            .arg(self.index_key())
            .arg(entry.key.to_string())
            .arg(index_line(keep_ms, &entry.description));
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.channel()).arg(event);
        tokio::try_join!(
            self.call::<()>(&set, None),
            self.call::<u64>(&index, None),
            self.call::<u64>(&publish, None)
        )?;
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes the entry under `key` and its index line, and announces it.
    pub async fn delete(&self, key: &CacheKey, event: &str) -> Result<bool, L2Error> {
        let mut unlink = redis::cmd("UNLINK");
        unlink.arg(self.entry_key(key));
        let mut index = redis::pipe();
        index
            .cmd("HDEL")
            .arg(self.index_key())
            .arg(key.to_string())
            .ignore();
        index.cmd("PUBLISH").arg(self.channel()).arg(event).ignore();
        let (removed, ()) = tokio::try_join!(
            self.call::<u64>(&unlink, None),
            self.pipe::<()>(&index, None)
        )?;
        self.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
        Ok(removed > 0)
    }

    /// Sends one message on the events channel.
    pub async fn publish(&self, event: &str, budget: Option<Duration>) -> Result<(), L2Error> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.channel()).arg(event);
        self.call::<u64>(&cmd, budget).await?;
        self.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Walks the index and deletes every entry whose description contains
    /// `pattern` (every entry for `None`), pruning lines of expired ones;
    /// returns how many entries Redis removed. Each round trip is one
    /// `HSCAN` batch, so hits keep being answered between them.
    pub async fn delete_matching(&self, pattern: Option<&str>) -> Result<usize, L2Error> {
        let mut deleted = 0;
        let mut cursor = 0u64;
        let now_ms = unix_ms(SystemTime::now());
        loop {
            let (next, lines) = self.scan(cursor).await?;
            let mut victims = Vec::new();
            let mut dead = Vec::new();
            for (hex, line) in lines {
                match parse_index_line(&line) {
                    Some((keep_ms, _)) if keep_ms <= now_ms => dead.push(hex),
                    Some((_, description)) if pattern.is_none_or(|p| description.contains(p)) => {
                        victims.push(hex)
                    }
                    Some(_) => {}
                    None => dead.push(hex),
                }
            }
            if !victims.is_empty() || !dead.is_empty() {
                // One multi-key UNLINK (split by slot in a Cluster) and one HDEL.
                let unlink = async {
                    if victims.is_empty() {
                        return Ok(0);
                    }
                    let mut unlink = redis::cmd("UNLINK");
                    for hex in &victims {
                        unlink.arg(format!("{}:entry:{{{hex}}}", self.config.prefix));
                    }
                    self.call::<u64>(&unlink, Some(WALK_BUDGET)).await
                };
                let mut hdel = redis::cmd("HDEL");
                hdel.arg(self.index_key()).arg(&victims).arg(&dead);
                let (removed, _) =
                    tokio::try_join!(unlink, self.call::<u64>(&hdel, Some(WALK_BUDGET)))?;
                deleted += removed as usize;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// The keys of live entries whose description contains `pattern`.
    pub async fn matching(&self, pattern: &str) -> Result<Vec<CacheKey>, L2Error> {
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        let now_ms = unix_ms(SystemTime::now());
        loop {
            let (next, lines) = self.scan(cursor).await?;
            for (hex, line) in lines {
                let Some((keep_ms, description)) = parse_index_line(&line) else {
                    continue;
                };
                if keep_ms > now_ms && description.contains(pattern) {
                    if let Some(key) = parse_key(&hex) {
                        keys.push(key);
                    }
                }
            }
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    async fn scan(&self, cursor: u64) -> Result<(u64, Vec<(String, String)>), L2Error> {
        let mut cmd = redis::cmd("HSCAN");
        cmd.arg(self.index_key())
            .arg(cursor)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        self.call(&cmd, Some(WALK_BUDGET)).await
    }

    /// The credential digest key kept in Redis: read, or created once by
    /// the first replica to ask (`SET NX`), so every replica agrees.
    pub async fn shared_secret(&self) -> Result<Vec<u8>, L2Error> {
        let candidate = random_hex::<32>();
        let mut set = redis::cmd("SET");
        set.arg(self.secret_key()).arg(&candidate).arg("NX");
        self.call::<Option<String>>(&set, None).await?;
        let mut get = redis::cmd("GET");
        get.arg(self.secret_key());
        let secret: Option<Vec<u8>> = self.call(&get, None).await?;
        match secret {
            Some(secret) if secret.len() >= 16 && secret.len() <= 256 => Ok(secret),
            _ => Err(L2Error::Redis(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "credential key in redis is missing or malformed",
            )))),
        }
    }
}

/// `EXPIRY_MS DESCRIPTION`, the index line of one entry.
fn index_line(keep_ms: u64, description: &str) -> String {
    format!("{keep_ms} {description}")
}

fn parse_index_line(line: &str) -> Option<(u64, &str)> {
    let (ms, description) = line.split_once(' ')?;
    Some((ms.parse().ok()?, description))
}

/// A cache key from its 32 hex digits.
pub fn parse_key(hex: &str) -> Option<CacheKey> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(CacheKey::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(prefix: &str) -> RedisTier {
        RedisTier::new(
            RedisConfig {
                urls: vec!["redis://127.0.0.1:1".into()],
                cluster: false,
                prefix: prefix.into(),
                timeout: Duration::from_millis(50),
                l1_ttl: Duration::from_secs(10),
                lock_lease: Duration::from_secs(10),
                key_secret: None,
            },
            1 << 20,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn an_entry_and_its_lock_share_a_cluster_slot() {
        let tier = tier("app");
        let key = CacheKey::from_bytes([0xab; 16]);
        let entry = tier.entry_key(&key);
        let lock = tier.lock_key(&key);
        assert!(entry.starts_with("app:entry:{abab"));
        // Cluster hashes only the part between the first braces.
        let tag = |name: &str| {
            name.split_once('{')
                .unwrap()
                .1
                .split_once('}')
                .unwrap()
                .0
                .to_owned()
        };
        assert_eq!(tag(&entry), key.to_string());
        assert_eq!(tag(&entry), tag(&lock));
        assert_eq!(tier.index_key(), "app:index:{app}");
    }

    #[tokio::test]
    async fn credential_digests_are_keyed_by_the_secret() {
        let mut config = tier("app").config.clone();
        config.key_secret = Some("a-secret-of-sixteen+".into());
        let one = RedisTier::new(config.clone(), 1 << 20).unwrap();
        let same = RedisTier::new(config.clone(), 1 << 20).unwrap();
        config.key_secret = Some("another-secret-16+".into());
        let other = RedisTier::new(config, 1 << 20).unwrap();
        let digest = [9u8; 16];
        assert_eq!(
            one.scope_credential(&digest),
            same.scope_credential(&digest)
        );
        assert_ne!(
            one.scope_credential(&digest),
            other.scope_credential(&digest)
        );
        assert_ne!(
            one.scope_credential(&digest),
            digest,
            "never the bare digest"
        );
    }

    #[tokio::test]
    async fn calls_fail_fast_while_the_tier_is_down() {
        let tier = tier("app");
        let started = Instant::now();
        let result = tier.get(&CacheKey::from_bytes([1; 16])).await;
        assert!(matches!(result, Err(L2Error::Down)));
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn garbage_and_foreign_values_are_misses() {
        let tier = tier("app");
        let key = CacheKey::from_bytes([2; 16]);
        assert!(tier.read_value(&key, 3, b"\xff\x00\x01").is_none());
        assert!(tier.read_value(&key, u64::MAX, b"").is_none());
        assert_eq!(tier.counters.rejected.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn index_lines_round_trip_with_spaces_in_descriptions() {
        let line = index_line(42, r#"get_metrics POST /api/metrics {"org":"Vale S.A."}"#);
        assert_eq!(
            parse_index_line(&line),
            Some((42, r#"get_metrics POST /api/metrics {"org":"Vale S.A."}"#))
        );
        assert_eq!(parse_index_line("garbage"), None);
    }

    #[test]
    fn keys_parse_from_their_hex_form_only() {
        let key = CacheKey::from_bytes([0x5a; 16]);
        assert_eq!(parse_key(&key.to_string()), Some(key));
        assert_eq!(parse_key("xyz"), None);
        assert_eq!(parse_key(&"g".repeat(32)), None);
    }
}
