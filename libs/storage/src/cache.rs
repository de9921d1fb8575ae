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

/// KEYS[1]; ARGV[1] the encoded value, ARGV[2] the version, ARGV[3] the TTL in ms.
const SET_IF_NEWER: &str = r"
local current = redis.call('GET', KEYS[1])
if current and tonumber(string.sub(current, 1, 20)) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
";

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
            Some(url) => Arc::new(RedisCache::connect(&url, &config.cache_namespace).await?),
            None => Arc::new(MemoryCache::default()),
        })
    }
}

/// Redis through a connection manager that reconnects by itself after a drop.
#[derive(Clone)]
pub struct RedisCache {
    conn: ConnectionManager,
    namespace: String,
    set_if_newer: Arc<redis::Script>,
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
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            conn,
            namespace: namespace.to_owned(),
            set_if_newer: Arc::new(redis::Script::new(SET_IF_NEWER)),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.namespace)
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
        for entry in entries {
            pipe.cmd("EVALSHA")
                .arg(self.set_if_newer.get_hash())
                .arg(1)
                .arg(self.key(entry.key))
                .arg(encode_versioned(entry.version, entry.value))
                .arg(entry.version)
                .arg(ttl_ms)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    async fn get_versioned(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let stored: Option<Vec<u8>> = self.conn.clone().get(self.key(key)).await?;
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
