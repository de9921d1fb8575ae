use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use secrecy::{ExposeSecret, SecretString};

use crate::{StorageConfig, StorageError};

/// Short-lived shared state: read models and counters. Never the source of truth, so a
/// value that is gone is rebuilt from the database; every key lives under a namespace.
#[async_trait]
pub trait Cache: Send + Sync + std::fmt::Debug {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StorageError>;
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Adds `by` to a counter that expires `ttl` after its first increment; returns the sum.
    async fn incr(&self, key: &str, by: u64, ttl: Duration) -> Result<u64, StorageError>;
    async fn ping(&self) -> Result<(), StorageError>;

    /// Stores each `(key, version, value)` unless the key holds a version at least as
    /// high, so that concurrent writers of a read model only ever move it forward.
    async fn set_versioned(&self, entries: &[Versioned<'_>], ttl: Duration) -> Result<(), StorageError>;
    /// A value stored by [`Cache::set_versioned`], with its version.
    async fn get_versioned(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, StorageError>;
}

/// One entry for [`Cache::set_versioned`].
#[derive(Debug, Clone, Copy)]
pub struct Versioned<'a> {
    pub key: &'a str,
    pub version: u64,
    pub value: &'a [u8],
}

/// Versioned values are stored behind their version in this many ASCII digits, which
/// Redis' Lua compares as a number.
const VERSION_DIGITS: usize = 20;

fn encode_versioned(version: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(VERSION_DIGITS + value.len());
    out.extend_from_slice(format!("{version:020}").as_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_versioned(stored: &[u8]) -> Option<(u64, Vec<u8>)> {
    let digits = std::str::from_utf8(stored.get(..VERSION_DIGITS)?).ok()?;
    Some((digits.parse().ok()?, stored[VERSION_DIGITS..].to_vec()))
}

/// For each KEYS[i]: ARGV[2i - 1] the encoded value, ARGV[2i] its version; the last ARGV
/// the TTL in ms. Many keys a call, so that a batch's marks cost few script runs.
const SET_IF_NEWER: &str = r"
local ttl = ARGV[#ARGV]
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if not (current and tonumber(string.sub(current, 1, 20)) >= tonumber(ARGV[2 * i])) then
    redis.call('SET', key, ARGV[2 * i - 1], 'PX', ttl)
  end
end
return 0
";

/// Keys per run of `SET_IF_NEWER`: large enough to spread a run's cost, small enough not
/// to hold Redis up for long (a run blocks every other client).
const KEYS_PER_RUN: usize = 128;

impl dyn Cache {
    /// Redis when a URL is configured (or `REDIS_URL` is set), else the in-process cache.
    pub async fn connect(config: &StorageConfig) -> Result<Arc<dyn Cache>, StorageError> {
        let url = config.redis_url.clone().or_else(|| {
            std::env::var("REDIS_URL")
                .ok()
                .filter(|u| !u.is_empty())
                .map(SecretString::from)
        });
        Ok(match url {
            Some(url) => {
                let cache = RedisCache::connect(&url, &config.cache_namespace).await?;
                // A Redis that cannot track keys for a client (before 6, or without RESP3)
                // still serves as the cache, without the near copies.
                let near = cache.clone().with_near_cache(&url, config.near_cache_entries).await;
                Arc::new(near.unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "Redis client-side caching unavailable; every read goes to Redis");
                    cache
                }))
            }
            None => Arc::new(MemoryCache::default()),
        })
    }
}

/// Redis through a connection manager that reconnects by itself after a drop.
///
/// Versioned reads may go through a second connection that keeps what it read in this
/// process (`with_near_cache`): Redis tracks the keys that connection read and pushes an
/// invalidation down it when any client changes one, ahead of any later reply on it. A
/// read on this process then costs no round trip; a change made through this process is
/// seen at once (its write waits for the invalidation to arrive), one made by another
/// process as soon as Redis has pushed it. The local copies are thrown away whenever
/// Redis cannot be reached: at once when a write fails, and within `HEARTBEAT` plus the
/// response timeout when the connection is cut while nothing is written.
#[derive(Clone)]
pub struct RedisCache {
    conn: ConnectionManager,
    near: Option<Arc<NearCache>>,
    namespace: String,
    set_if_newer: Arc<redis::Script>,
}

/// The caching connection, replaced by a new one (with an empty cache) when it fails.
struct NearCache {
    client: redis::Client,
    config: redis::aio::ConnectionManagerConfig,
    conn: std::sync::RwLock<Option<ConnectionManager>>,
    rebuilding: std::sync::atomic::AtomicBool,
}

/// Both connections: a request that gets no answer in two seconds fails (and the
/// connection is made again), so that a Redis that went away is noticed.
fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
}

/// How often an idle near cache checks that Redis can still reach it.
const HEARTBEAT: Duration = Duration::from_secs(1);

impl NearCache {
    fn current(&self) -> Option<ConnectionManager> {
        self.conn.read().expect("near cache lock").clone()
    }

    /// Drops the connection and what it cached; reads go to Redis until a new one is up.
    fn forget(self: &Arc<Self>) {
        self.conn.write().expect("near cache lock").take();
        if self.rebuilding.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let near = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(this) = near.upgrade() else { return };
                match ConnectionManager::new_with_config(this.client.clone(), this.config.clone()).await {
                    Ok(conn) => {
                        *this.conn.write().expect("near cache lock") = Some(conn);
                        this.rebuilding.store(false, std::sync::atomic::Ordering::Release);
                        return;
                    }
                    Err(err) => tracing::debug!(error = %err, "near cache cannot reconnect yet"),
                }
                drop(this);
                tokio::time::sleep(HEARTBEAT).await;
            }
        });
    }

    /// Checks the connection every `HEARTBEAT` for as long as the cache exists.
    fn watch(self: &Arc<Self>) {
        let near = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let Some(this) = near.upgrade() else { return };
                this.ping().await;
            }
        });
    }

    /// A round trip on the connection, if there is one; dropped (and made again) when it
    /// gets no answer. Redis sends what it has queued on the connection ahead of the reply.
    async fn ping(self: &Arc<Self>) {
        if let Some(mut conn) = self.current() {
            let answer: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
            if answer.is_err() {
                self.forget();
            }
        }
    }
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl RedisCache {
    pub async fn connect(url: &SecretString, namespace: &str) -> Result<Self, StorageError> {
        let client = redis::Client::open(url.expose_secret())
            .map_err(|e| StorageError::Internal(format!("invalid redis url: {e}")))?;
        let conn = ConnectionManager::new_with_config(client, manager_config()).await?;
        Ok(Self {
            conn,
            near: None,
            namespace: namespace.to_owned(),
            set_if_newer: Arc::new(redis::Script::new(SET_IF_NEWER)),
        })
    }

    /// Versioned reads through a connection that caches up to `entries` of them here.
    pub async fn with_near_cache(mut self, url: &SecretString, entries: usize) -> Result<Self, StorageError> {
        let Some(size) = std::num::NonZeroUsize::new(entries) else {
            return Ok(self);
        };
        let info = redis::IntoConnectionInfo::into_connection_info(url.expose_secret())
            .map_err(|e| StorageError::Internal(format!("invalid redis url: {e}")))?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))?;
        let config = manager_config().set_cache_config(
            redis::caching::CacheConfig::new()
                .set_mode(redis::caching::CacheMode::OptIn)
                .set_size(size),
        );
        let conn = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
        let near = Arc::new(NearCache {
            client,
            config,
            conn: std::sync::RwLock::new(Some(conn)),
            rebuilding: std::sync::atomic::AtomicBool::new(false),
        });
        near.watch();
        self.near = Some(near);
        Ok(self)
    }

    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.namespace)
    }

    /// Versioned reads answered in this process since its near cache last (re)connected.
    pub fn near_hits(&self) -> Option<usize> {
        Some(self.near.as_ref()?.current()?.get_cache_statistics()?.hit)
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.conn.clone().get(self.key(key)).await?)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StorageError> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let _: () = self.conn.clone().pset_ex(self.key(key), value, ttl_ms).await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let _: () = self.conn.clone().del(self.key(key)).await?;
        Ok(())
    }

    async fn incr(&self, key: &str, by: u64, ttl: Duration) -> Result<u64, StorageError> {
        let key = self.key(key);
        // One round trip; NX keeps the expiry of the first increment.
        let (sum, _): (u64, i64) = redis::pipe()
            .atomic()
            .incr(&key, by)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl.as_millis().max(1) as u64)
            .arg("NX")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(sum)
    }

    async fn ping(&self) -> Result<(), StorageError> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn set_versioned(&self, entries: &[Versioned<'_>], ttl: Duration) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ttl_ms = ttl.as_millis().max(1) as u64;
        // Load the script once per batch (a no-op when Redis has it), then one pipelined
        // round trip of EVALSHA.
        let mut conn = self.conn.clone();
        self.set_if_newer.prepare_invoke().load_async(&mut conn).await?;
        let mut pipe = redis::pipe();
        for run in entries.chunks(KEYS_PER_RUN) {
            let call = pipe.cmd("EVALSHA").arg(self.set_if_newer.get_hash()).arg(run.len());
            for entry in run {
                call.arg(self.key(entry.key));
            }
            for entry in run {
                call.arg(encode_versioned(entry.version, entry.value))
                    .arg(entry.version);
            }
            call.arg(ttl_ms).ignore();
        }
        let written: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
        if let Some(near) = &self.near {
            if written.is_err() {
                near.forget();
            } else {
                // Redis queued the invalidations of these keys on the near connection before
                // this PING's answer: once it is back, this process reads the new values.
                near.ping().await;
            }
        }
        Ok(written?)
    }

    async fn get_versioned(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let stored: Option<Vec<u8>> = match self.near.as_ref().and_then(|near| Some((near, near.current()?))) {
            Some((near, mut conn)) => {
                let mut get = redis::cmd("GET");
                get.arg(self.key(key))
                    .set_cache_config(redis::CommandCacheConfig::new().set_enable_cache(true));
                get.query_async(&mut conn).await.inspect_err(|_| near.forget())?
            }
            None => self.conn.clone().get(self.key(key)).await?,
        };
        Ok(stored.as_deref().and_then(decode_versioned))
    }
}

/// The embedded default: a map in this process, entries expiring lazily.
#[derive(Debug, Default)]
pub struct MemoryCache {
    entries: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
}

impl MemoryCache {
    fn live(entries: &mut HashMap<String, (Vec<u8>, Instant)>, key: &str, now: Instant) -> bool {
        match entries.get(key) {
            Some((_, expires)) if *expires > now => true,
            Some(_) => {
                entries.remove(key);
                false
            }
            None => false,
        }
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let mut entries = self.entries.lock().expect("cache lock");
        let live = Self::live(&mut entries, key, Instant::now());
        Ok(live.then(|| entries[key].0.clone()))
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StorageError> {
        let mut entries = self.entries.lock().expect("cache lock");
        // Bound the map: drop expired entries when it grows.
        if entries.len() > 100_000 {
            let now = Instant::now();
            entries.retain(|_, (_, expires)| *expires > now);
        }
        entries.insert(key.to_owned(), (value.to_vec(), Instant::now() + ttl));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.entries.lock().expect("cache lock").remove(key);
        Ok(())
    }

    async fn incr(&self, key: &str, by: u64, ttl: Duration) -> Result<u64, StorageError> {
        let mut entries = self.entries.lock().expect("cache lock");
        let now = Instant::now();
        let sum = if Self::live(&mut entries, key, now) {
            let (value, expires) = &entries[key];
            (decode_u64(value) + by, *expires)
        } else {
            (by, now + ttl)
        };
        entries.insert(key.to_owned(), (sum.0.to_le_bytes().to_vec(), sum.1));
        Ok(sum.0)
    }

    async fn ping(&self) -> Result<(), StorageError> {
        Ok(())
    }

    async fn set_versioned(&self, batch: &[Versioned<'_>], ttl: Duration) -> Result<(), StorageError> {
        let mut entries = self.entries.lock().expect("cache lock");
        let now = Instant::now();
        for entry in batch {
            let newer = !Self::live(&mut entries, entry.key, now)
                || decode_versioned(&entries[entry.key].0).is_none_or(|(version, _)| version < entry.version);
            if newer {
                let value = encode_versioned(entry.version, entry.value);
                entries.insert(entry.key.to_owned(), (value, now + ttl));
            }
        }
        Ok(())
    }

    async fn get_versioned(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        Ok(self.get(key).await?.as_deref().and_then(decode_versioned))
    }
}

fn decode_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_le_bytes).unwrap_or(0)
}
