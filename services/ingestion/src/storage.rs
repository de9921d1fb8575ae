//! The event log: the shared log machinery (`corvus_log::store`) over the ingestion
//! schema's tables.

use std::sync::Arc;

use corvus_storage::{Database, Migrators, StorageConfig, StorageError};

pub use corvus_log::store::*;

static MIGRATE_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static MIGRATE_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The schema (Postgres) or file (SQLite) of the ingestion service.
pub const SCHEMA: &str = "ingestion";

/// The channel the `events` trigger NOTIFYs on a commit.
pub const CHANNEL: &str = "corvus_ingestion_events";

/// The ingestion schema's migrations.
pub fn migrators() -> Migrators {
    Migrators {
        postgres: &MIGRATE_POSTGRES,
        sqlite: &MIGRATE_SQLITE,
    }
}

/// Connects the log the configuration names and runs its migrations.
pub async fn connect(config: &StorageConfig) -> Result<Arc<dyn EventLog>, StorageError> {
    Ok(match Database::connect(config, SCHEMA, &migrators()).await? {
        Database::Postgres(pool) => Arc::new(PgEventLog::new(pool, CHANNEL)),
        Database::Sqlite(pool) => Arc::new(SqliteEventLog::new(pool)),
    })
}
