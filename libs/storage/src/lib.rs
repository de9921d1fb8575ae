//! Storage every Corvus service stands on: a Postgres or SQLite database (one schema or
//! one file per service, with embedded migrations) and a Redis or in-process cache.
//!
//! Postgres and Redis are the production stores. With no `database_url` and no
//! `redis_url` the same services run on SQLite files in a data directory and an
//! in-process cache, so a laptop with nothing installed runs all of Corvus.

mod cache;
mod config;
mod database;
mod error;
mod scrub;
pub mod sql;
mod statistics;

pub use cache::{Cache, MemoryCache, RedisCache, Versioned};
pub use config::StorageConfig;
pub use database::{Database, Migrators};
pub use error::StorageError;
pub use scrub::{Vacuum, checkpoint_sqlite};
pub use statistics::Statistics;
