use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

/// Where a service keeps its data. Without `database_url` the embedded SQLite default
/// is used; without `redis_url` the in-process cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `postgres://…`; `DATABASE_URL` is read when this is not set.
    pub database_url: Option<SecretString>,
    /// `redis://…`; `REDIS_URL` is read when this is not set.
    pub redis_url: Option<SecretString>,
    /// Where the embedded SQLite files live.
    pub data_dir: PathBuf,
    /// Connections per pool.
    pub max_connections: u32,
    /// Prefix of every cache key, so that several deployments can share one Redis.
    pub cache_namespace: String,
    /// Read-model entries (versioned values) also kept in this process, up to this many,
    /// with Redis telling the process as soon as one changes (client-side caching over
    /// RESP3). 0 reads every one from Redis.
    pub near_cache_entries: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            database_url: None,
            redis_url: None,
            data_dir: PathBuf::from(".corvus-data"),
            max_connections: 16,
            cache_namespace: "corvus".to_owned(),
            near_cache_entries: 100_000,
        }
    }
}
