/// Why a store call failed, in the terms a caller acts on.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database or cache cannot be reached or dropped the connection: retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness or foreign-key constraint refused the write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Anything else: a bug, a migration missing, corrupt data.
    #[error("storage error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for StorageError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => Self::Unavailable(err.to_string()),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // unique_violation, foreign_key_violation (Postgres); SQLite's constraint codes
                Some("23505" | "23503" | "2067" | "1555" | "787") => Self::Conflict(db.message().to_owned()),
                // admin_shutdown, crash_shutdown, cannot_connect_now, connection failures
                Some(code) if code.starts_with("08") || code.starts_with("57P") => {
                    Self::Unavailable(db.message().to_owned())
                }
                // SQLITE_BUSY, SQLITE_LOCKED: another writer held the file past the busy timeout
                Some("5" | "6" | "517") => Self::Unavailable(db.message().to_owned()),
                _ => Self::Internal(err.to_string()),
            },
            _ => Self::Internal(err.to_string()),
        }
    }
}

impl From<redis::RedisError> for StorageError {
    fn from(err: redis::RedisError) -> Self {
        if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() || err.is_timeout() {
            Self::Unavailable(err.to_string())
        } else {
            Self::Internal(err.to_string())
        }
    }
}
