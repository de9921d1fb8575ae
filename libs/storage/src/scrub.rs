//! What is left of deleted rows, removed after an erasure.
//!
//! SQLite (with `secure_delete`, set on every connection) overwrites a deleted row's
//! bytes in the page it writes, but the page as it was stays in the write-ahead log,
//! and in the main file until a checkpoint copies the new page over it: a checkpoint
//! that also truncates the log leaves neither. Postgres keeps a deleted row in its heap
//! page until VACUUM removes it; a background VACUUM of the tables an erasure touched
//! does that soon after. What Postgres does not remove this way is documented with the
//! erasure (docs/identity.md, "Erasure"): index pages keep the bytes of deleted keys
//! until they are rewritten, and WAL segments until they are recycled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{PgPool, SqlitePool};

use crate::StorageError;

/// Copies SQLite's write-ahead log into the main file and truncates it, waiting (the
/// busy timeout) for readers of older snapshots to finish.
pub async fn checkpoint_sqlite(pool: &SqlitePool) -> Result<(), StorageError> {
    let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(pool)
        .await?;
    if busy != 0 {
        return Err(StorageError::Unavailable(
            "the write-ahead log could not be checkpointed: a reader held it".to_owned(),
        ));
    }
    Ok(())
}

/// VACUUMs tables in the background, one run at a time: a request made while one runs
/// makes it run once more, so erasures in quick succession cost two runs, not one each.
#[derive(Debug, Clone, Default)]
pub struct Vacuum {
    running: Arc<AtomicBool>,
    again: Arc<AtomicBool>,
}

impl Vacuum {
    /// Vacuums `tables` (a comma-separated list, as VACUUM takes it) soon.
    pub fn soon(&self, pool: &PgPool, tables: &'static str) {
        self.again.store(true, Ordering::Release);
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, state) = (pool.clone(), self.clone());
        tokio::spawn(async move {
            while state.again.swap(false, Ordering::AcqRel) {
                if let Err(err) = sqlx::query(&format!("VACUUM {tables}")).execute(&pool).await {
                    tracing::warn!(error = %err, tables, "vacuum after an erasure failed");
                }
            }
            state.running.store(false, Ordering::Release);
            // A request that came between the last check and the store above.
            if state.again.load(Ordering::Acquire) {
                state.soon(&pool, tables);
            }
        });
    }
}
