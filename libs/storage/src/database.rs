use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::{StorageConfig, StorageError};

/// How long a pooled Postgres connection may sit idle before it is checked on acquire.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// A service's database: its own schema in Postgres, or its own file in the data dir.
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// The migrations a service embeds for each backend (`sqlx::migrate!`).
pub struct Migrators {
    pub postgres: &'static Migrator,
    pub sqlite: &'static Migrator,
}

impl Database {
    /// Connects to the database for `service` (a schema name such as `ingestion`) and
    /// runs its migrations. Postgres: the schema is created if missing and becomes the
    /// pool's search path, so each service's tables and migration history stay apart.
    pub async fn connect(config: &StorageConfig, service: &str, migrators: &Migrators) -> Result<Self, StorageError> {
        Self::connect_with(config, service, migrators, &[]).await
    }

    /// As `connect`, with Postgres settings (`SET name = value`) in force on every
    /// connection of the pool, for a service whose statements want a planner of its own.
    pub async fn connect_with(
        config: &StorageConfig,
        service: &str,
        migrators: &Migrators,
        settings: &[(&str, &str)],
    ) -> Result<Self, StorageError> {
        let db = Self::connect_lazy(config, service, settings)?;
        db.migrate(service, migrators).await?;
        Ok(db)
    }

    /// Builds the pool without touching the server: connections open on first use, so a
    /// service can start (and say NOT_SERVING) while its database is still down.
    pub fn connect_lazy(
        config: &StorageConfig,
        service: &str,
        settings: &[(&str, &str)],
    ) -> Result<Self, StorageError> {
        let url = config
            .database_url
            .as_ref()
            .map(|u| u.expose_secret().to_owned())
            .or_else(|| std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()));
        match url {
            Some(url) => {
                let options = PgConnectOptions::from_str(&url)
                    .map_err(|e| StorageError::Internal(format!("invalid database url: {e}")))?
                    // No JIT: every statement here is short, and one estimated to read
                    // a large table (ingestion's lag count over the log, say) would else be
                    // compiled on every call, ~200 ms of CPU a ListConsumers at 200,000
                    // events against ~20 ms to run it.
                    .options([("search_path", service), ("jit", "off")])
                    .options(settings.iter().copied())
                    .application_name(&format!("corvus-{service}"));
                let pool = PgPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    // A connection in use within the last second is taken as it is: a check
                    // on every acquire costs a round trip (and a wake-up of its server
                    // process) per statement. One idle for longer is checked first, so that
                    // a server restart does not hand a dead connection to a caller.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= CHECK_IDLE_AFTER {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_lazy_with(options);
                Ok(Self::Postgres(pool))
            }
            None => {
                std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                    StorageError::Internal(format!("cannot create data dir {}: {e}", config.data_dir.display()))
                })?;
                let options = SqliteConnectOptions::new()
                    .filename(config.data_dir.join(format!("{service}.sqlite")))
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL: an acknowledged write survives a power cut, not only a crash.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(10))
                    // 16 MiB of page cache a connection (the default is 2 MiB), so that
                    // index pages stay in memory under a steady insert load.
                    .pragma("cache_size", "-16384")
                    // Checkpoint every ~40 MiB of WAL instead of 4 MiB: an index page
                    // rewritten by many commits is copied back once per checkpoint.
                    .pragma("wal_autocheckpoint", "10000")
                    // Deleted content is overwritten with zeros, not left in freed pages
                    // for `grep -a` to find after an erasure.
                    .pragma("secure_delete", "ON")
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(config.max_connections.min(8))
                    // A file on this machine does not go stale like a socket: spare the
                    // round trip to SQLite's thread that a check on every acquire costs.
                    .test_before_acquire(false)
                    .connect_lazy_with(options);
                Ok(Self::Sqlite(pool))
            }
        }
    }

    pub async fn migrate(&self, service: &str, migrators: &Migrators) -> Result<(), StorageError> {
        match self {
            Self::Postgres(pool) => {
                // Quoted identifier: the name is ours, but quote it all the same.
                sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{service}\""))
                    .execute(pool)
                    .await?;
                migrators.postgres.run(pool).await.map_err(migrate_error)?;
            }
            Self::Sqlite(pool) => migrators.sqlite.run(pool).await.map_err(migrate_error)?,
        }
        Ok(())
    }

    /// One round trip: does the database answer?
    pub async fn ping(&self) -> Result<(), StorageError> {
        match self {
            Self::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Self::Sqlite(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }
}

fn migrate_error(err: sqlx::migrate::MigrateError) -> StorageError {
    match err {
        sqlx::migrate::MigrateError::Execute(e) => e.into(),
        other => StorageError::Internal(format!("migration failed: {other}")),
    }
}
