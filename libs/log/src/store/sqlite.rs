use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_proto::WorkspaceId;
use corvus_storage::StorageError;
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{QueryBuilder, Sqlite};
use tokio::sync::watch;
use uuid::Uuid;

use super::{
    Appended, BATCH_OF, ConsumerRow, ConsumerStatus, DeadLetter, DeadLetterRow, EventLog, EventRow, Lease, LoggedEvent,
    NewEvent, PRUNE_BATCHES, Position, QUEUED_ERASURES, RECORD_BATCH, RELAY, ReadBatch, convert, encode_relayed,
    find_relayed,
};

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// Rows per INSERT: 7 parameters a row stays far below SQLite's 32,766.
const ROWS_PER_INSERT: usize = 500;

/// The embedded event log. SQLite admits one writer at a time, so a seq is taken and
/// committed in the same order and seq alone is a safe position; one process owns the
/// file, so leases are held in memory.
#[derive(Debug)]
pub struct SqliteEventLog {
    pool: SqlitePool,
    wakeups: watch::Sender<u64>,
    leases: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    writer: tokio::sync::Mutex<()>,
}

impl SqliteEventLog {
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            wakeups: watch::channel(0).0,
            leases: Mutex::new(HashMap::new()),
            writer: tokio::sync::Mutex::new(()),
        }
    }
}

const DEAD_LETTER_COLUMNS: &str = "d.id, d.consumer, d.reason, d.attempts, d.failed_at, \
     e.tx_id, e.seq, e.workspace_id, e.event_id, e.payload, e.traceparent";

#[async_trait]
impl EventLog for SqliteEventLog {
    async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1 FROM events LIMIT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn append(&self, workspace: &WorkspaceId, events: &[NewEvent]) -> Result<Vec<Appended>, StorageError> {
        // One writer at a time, queued here rather than in SQLite's busy handler, which
        // sleeps in steps of up to 100 ms.
        let _writer = self.writer.lock().await;
        // A batch that fits one statement commits by itself (one round trip to SQLite's
        // thread); a larger one needs a transaction to commit whole.
        let (outcomes, any_inserted) = if events.len() <= ROWS_PER_INSERT {
            insert_batch(&mut *self.pool.acquire().await?, workspace, events).await?
        } else {
            let mut tx = self.pool.begin().await?;
            let done = insert_batch(&mut tx, workspace, events).await?;
            tx.commit().await?;
            done
        };
        if any_inserted {
            self.wakeups.send_modify(|n| *n += 1);
        }
        Ok(outcomes)
    }

    async fn list(
        &self,
        workspace: &WorkspaceId,
        after: Option<Position>,
        limit: u32,
    ) -> Result<Vec<LoggedEvent>, StorageError> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT tx_id, seq, workspace_id, event_id, payload, traceparent FROM events \
             WHERE workspace_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(workspace)
        .bind(after.unwrap_or_default().seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        convert(rows)
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.wakeups.subscribe()
    }

    fn wake(&self) {
        self.wakeups.send_modify(|n| *n += 1);
    }

    async fn ensure_consumer(&self, consumer: &str) -> Result<Position, StorageError> {
        sqlx::query("INSERT INTO consumers (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
            .bind(consumer)
            .execute(&self.pool)
            .await?;
        let (tx, seq): (i64, i64) = sqlx::query_as("SELECT tx_id, seq FROM consumers WHERE name = $1")
            .bind(consumer)
            .fetch_one(&self.pool)
            .await?;
        Ok(Position { tx, seq })
    }

    async fn lease(&self, consumer: &str) -> Result<Option<Lease>, StorageError> {
        let lock = self
            .leases
            .lock()
            .expect("lease map lock")
            .entry(consumer.to_owned())
            .or_default()
            .clone();
        Ok(lock.try_lock_owned().ok().map(|guard| Box::new(guard) as Lease))
    }

    async fn read_after(&self, after: Position, limit: u32, max_bytes: u64) -> Result<ReadBatch, StorageError> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT tx_id, seq, workspace_id, event_id, payload, traceparent FROM ( \
               SELECT *, sum(length(payload)) OVER (ORDER BY seq) - length(payload) AS before FROM events \
               WHERE seq > $1 ORDER BY seq LIMIT $2) \
             WHERE before < $3 ORDER BY seq",
        )
        .bind(after.seq)
        .bind(i64::from(limit))
        .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(ReadBatch {
            events: convert(rows)?,
            held_back: false,
        })
    }

    async fn advance(&self, consumer: &str, from: Position, to: Position) -> Result<bool, StorageError> {
        let moved = sqlx::query(&format!(
            "UPDATE consumers SET tx_id = $4, seq = $5, last_delivery_at = {NOW} \
             WHERE name = $1 AND tx_id = $2 AND seq = $3"
        ))
        .bind(consumer)
        .bind(from.tx)
        .bind(from.seq)
        .bind(to.tx)
        .bind(to.seq)
        .execute(&self.pool)
        .await?;
        Ok(moved.rows_affected() == 1)
    }

    async fn set_error(&self, consumer: &str, error: Option<&str>) -> Result<(), StorageError> {
        sqlx::query("UPDATE consumers SET last_error = $2 WHERE name = $1")
            .bind(consumer)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        consumer: &str,
        event: &LoggedEvent,
        reason: &str,
        attempts: u32,
    ) -> Result<(), StorageError> {
        sqlx::query(&format!(
            "INSERT INTO dead_letters (consumer, workspace_id, tx_id, seq, reason, attempts) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (consumer, tx_id, seq) DO UPDATE \
             SET reason = excluded.reason, attempts = dead_letters.attempts + excluded.attempts, \
                 failed_at = {NOW}, replay_requested = 0"
        ))
        .bind(consumer)
        .bind(&event.workspace)
        .bind(event.position.tx)
        .bind(event.position.seq)
        .bind(reason)
        .bind(i64::from(attempts))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_dead_letters(
        &self,
        workspace: &WorkspaceId,
        consumer: Option<&str>,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StorageError> {
        let rows = sqlx::query_as::<_, DeadLetterRow>(&format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters d \
             JOIN events e ON e.tx_id = d.tx_id AND e.seq = d.seq \
             WHERE d.workspace_id = $1 AND ($2 IS NULL OR d.consumer = $2) AND d.id > $3 \
             ORDER BY d.id LIMIT $4"
        ))
        .bind(workspace)
        .bind(consumer)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        convert(rows)
    }

    async fn request_replay(
        &self,
        workspace: &WorkspaceId,
        ids: &[i64],
        consumer: Option<&str>,
    ) -> Result<u64, StorageError> {
        let ids_json = serde_json::to_string(ids).map_err(|e| StorageError::Internal(e.to_string()))?;
        let done = sqlx::query(
            "UPDATE dead_letters SET replay_requested = 1 \
             WHERE workspace_id = $1 AND ($2 = '[]' OR id IN (SELECT value FROM json_each($2))) \
               AND ($3 IS NULL OR consumer = $3) AND replay_requested = 0",
        )
        .bind(workspace)
        .bind(ids_json)
        .bind(consumer)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            self.wakeups.send_modify(|n| *n += 1);
        }
        Ok(done.rows_affected())
    }

    async fn replays(&self, consumer: &str, limit: u32) -> Result<Vec<DeadLetter>, StorageError> {
        let rows = sqlx::query_as::<_, DeadLetterRow>(&format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters d \
             JOIN events e ON e.tx_id = d.tx_id AND e.seq = d.seq \
             WHERE d.consumer = $1 AND d.replay_requested = 1 ORDER BY d.id LIMIT $2"
        ))
        .bind(consumer)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        convert(rows)
    }

    async fn replay_done(&self, id: i64, failure: Option<&str>) -> Result<(), StorageError> {
        let query = match failure {
            None => sqlx::query("DELETE FROM dead_letters WHERE id = $1").bind(id),
            Some(reason) => sqlx::query(
                "UPDATE dead_letters SET replay_requested = 0, reason = $2, attempts = attempts + 1, \
                 failed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = $1",
            )
            .bind(id)
            .bind(reason),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    async fn erase(&self, workspace: &WorkspaceId, message_ids: &[String]) -> Result<u64, StorageError> {
        let _writer = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let mut erased = 0;
        for message_id in message_ids {
            sqlx::query(
                "DELETE FROM dead_letters WHERE (tx_id, seq) IN \
                 (SELECT tx_id, seq FROM events WHERE workspace_id = $1 AND message_id = $2)",
            )
            .bind(workspace)
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT OR IGNORE INTO stream_erasures (tx_id, seq) SELECT tx_id, seq FROM events \
                 WHERE workspace_id = $1 AND message_id = $2 \
                 AND EXISTS (SELECT 1 FROM consumers WHERE name = $3)",
            )
            .bind(workspace)
            .bind(message_id)
            .bind(RELAY)
            .execute(&mut *tx)
            .await?;
            erased += sqlx::query("DELETE FROM events WHERE workspace_id = $1 AND message_id = $2")
                .bind(workspace)
                .bind(message_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        corvus_storage::checkpoint_sqlite(&self.pool).await?;
        Ok(erased)
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StorageError> {
        let _writer = self.writer.lock().await;
        let pruned = sqlx::query(
            "DELETE FROM events AS e WHERE e.received_at < $1 \
             AND (NOT EXISTS (SELECT 1 FROM consumers) \
                  OR e.seq <= (SELECT min(c.seq) FROM consumers c)) \
             AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.tx_id = e.tx_id AND d.seq = e.seq)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected();
        sqlx::query(PRUNE_BATCHES).execute(&self.pool).await?;
        Ok(pruned)
    }

    async fn consumers(&self, workspace: &WorkspaceId) -> Result<Vec<ConsumerStatus>, StorageError> {
        let rows = sqlx::query_as::<_, ConsumerRow>(
            "SELECT c.name, c.last_delivery_at, c.last_error, \
               (SELECT count(*) FROM events e WHERE e.workspace_id = $1 AND e.seq > c.seq) AS lag, \
               (SELECT count(*) FROM dead_letters d WHERE d.workspace_id = $1 AND d.consumer = c.name) AS dead \
             FROM consumers c ORDER BY c.name",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ConsumerStatus::from).collect())
    }
    async fn relayed(&self, relayed: &[(Position, u64)]) -> Result<(), StorageError> {
        let (Some((first, _)), Some((last, _))) = (relayed.first(), relayed.last()) else {
            return Ok(());
        };
        let _writer = self.writer.lock().await;
        sqlx::query(RECORD_BATCH)
            .bind(first.tx)
            .bind(first.seq)
            .bind(last.tx)
            .bind(last.seq)
            .bind(encode_relayed(relayed))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn stream_erasures(
        &self,
        relayed_to: Position,
        limit: u32,
    ) -> Result<Vec<(Position, Option<u64>)>, StorageError> {
        let queued: Vec<(i64, i64)> = sqlx::query_as(QUEUED_ERASURES)
            .bind(relayed_to.tx)
            .bind(relayed_to.seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut erasures = Vec::with_capacity(queued.len());
        for (tx, seq) in queued {
            let position = Position { tx, seq };
            let batch: Option<Vec<u8>> = sqlx::query_scalar(BATCH_OF)
                .bind(tx)
                .bind(seq)
                .fetch_optional(&self.pool)
                .await?;
            erasures.push((position, batch.and_then(|b| find_relayed(&b, position))));
        }
        Ok(erasures)
    }

    async fn stream_erased(&self, erased: &[Position]) -> Result<(), StorageError> {
        let _writer = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        for position in erased {
            sqlx::query("DELETE FROM stream_erasures WHERE tx_id = $1 AND seq = $2")
                .bind(position.tx)
                .bind(position.seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Inserts `events` in statements of many rows each; the outcome of each, and whether
/// any was new.
fn insert_values<'a>(workspace: &'a WorkspaceId, events: &'a [NewEvent]) -> QueryBuilder<'a, Sqlite> {
    let mut insert = QueryBuilder::<Sqlite>::new(
        "INSERT INTO events (workspace_id, message_id, event_id, event_type, received_at, payload, traceparent) ",
    );
    insert.push_values(events, |mut row, e| {
        row.push_bind(workspace)
            .push_bind(&e.message_id)
            .push_bind(e.event_id.as_uuid())
            .push_bind(e.event_type)
            .push_bind(e.received_at)
            .push_bind(&e.payload)
            .push_bind(e.traceparent.as_deref());
    });
    insert
}

impl SqliteEventLog {
    /// Appends new entries in the owning service's own transaction (their keys must be
    /// new: a repeat fails the statement). Call `wake` once it has committed.
    pub async fn insert_in(
        conn: &mut SqliteConnection,
        workspace: &WorkspaceId,
        events: &[NewEvent],
    ) -> Result<(), sqlx::Error> {
        for chunk in events.chunks(ROWS_PER_INSERT) {
            insert_values(workspace, chunk).build().execute(&mut *conn).await?;
        }
        Ok(())
    }
}

async fn insert_batch(
    conn: &mut SqliteConnection,
    workspace: &WorkspaceId,
    events: &[NewEvent],
) -> Result<(Vec<Appended>, bool), StorageError> {
    let mut inserted: HashSet<String> = HashSet::with_capacity(events.len());
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let mut insert = insert_values(workspace, chunk);
        insert.push(" ON CONFLICT (workspace_id, message_id) DO NOTHING RETURNING message_id");
        let rows: Vec<String> = insert.build_query_scalar().fetch_all(&mut *conn).await?;
        inserted.extend(rows);
    }
    let mut outcomes = Vec::with_capacity(events.len());
    for e in events {
        outcomes.push(if inserted.contains(&e.message_id) {
            Appended::Inserted
        } else {
            let id: Uuid =
                sqlx::query_scalar("SELECT event_id FROM events WHERE workspace_id = $1 AND message_id = $2")
                    .bind(workspace)
                    .bind(&e.message_id)
                    .fetch_one(&mut *conn)
                    .await?;
            Appended::Duplicate(id.into())
        });
    }
    Ok((outcomes, !inserted.is_empty()))
}
