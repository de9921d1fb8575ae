use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_proto::WorkspaceId;
use corvus_storage::StorageError;
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Connection, FromRow, Row};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use super::{
    Appended, BATCH_OF, ConsumerRow, ConsumerStatus, DeadLetter, DeadLetterRow, EventLog, EventRow, Lease, LoggedEvent,
    NewEvent, PRUNE_BATCHES, Position, QUEUED_ERASURES, RECORD_BATCH, RELAY, ReadBatch, convert, encode_relayed,
    find_relayed,
};

const INSERT: &str = "INSERT INTO events \
     (workspace_id, message_id, event_id, event_type, received_at, payload, traceparent) \
     SELECT $1, * FROM UNNEST($2::text[], $3::uuid[], $4::int2[], $5::timestamptz[], $6::bytea[], $7::text[])";

const INSERT_NEW_ONLY: &str = "INSERT INTO events \
     (workspace_id, message_id, event_id, event_type, received_at, payload, traceparent) \
     SELECT $1, * FROM UNNEST($2::text[], $3::uuid[], $4::int2[], $5::timestamptz[], $6::bytea[], $7::text[]) \
     ON CONFLICT (workspace_id, message_id) DO NOTHING";

/// A log in Postgres: UNNEST batch inserts, the snapshot horizon for safe reads,
/// advisory locks for one dispatcher per consumer, LISTEN/NOTIFY wake-ups.
///
/// Other replicas are woken by a NOTIFY sent after the commit, on a statement of its
/// own, by one task a process that folds the commits made while one was on its way into
/// the next: a notifying commit takes a lock that every other notifying commit of the
/// database waits for, through its WAL flush, and a trigger on `events` would put every
/// write of every log in that queue (holding their transactions, and so every log's
/// read horizon, open while they wait).
#[derive(Debug)]
pub struct PgEventLog {
    pool: PgPool,
    /// The NOTIFY channel of this log's replicas.
    channel: &'static str,
    wakeups: watch::Sender<u64>,
    /// Commits of this process the other replicas are still to hear of.
    to_notify: watch::Sender<u64>,
    /// Erased events' rows removed from the heap soon after.
    vacuum: corvus_storage::Vacuum,
    /// Stops the listener and the notifier when the log is dropped.
    _tasks: DropGuard,
}

impl PgEventLog {
    /// The log in the schema `pool` is set to, woken through `channel`.
    pub fn new(pool: PgPool, channel: &'static str) -> Self {
        let (wakeups, _) = watch::channel(0);
        let (to_notify, asked) = watch::channel(0);
        // This log's NOTIFYs carry it, so that its own listener, woken already, skips them.
        let own = Uuid::now_v7().to_string();
        let stop = CancellationToken::new();
        tokio::spawn({
            let (pool, wakeups, stop, own) = (pool.clone(), wakeups.clone(), stop.clone(), own.clone());
            async move { stop.run_until_cancelled(listen(pool, channel, &own, wakeups)).await }
        });
        tokio::spawn({
            let (pool, stop) = (pool.clone(), stop.clone());
            async move { stop.run_until_cancelled(notify(pool, channel, &own, asked)).await }
        });
        Self {
            pool,
            channel,
            wakeups,
            to_notify,
            vacuum: Default::default(),
            _tasks: stop.drop_guard(),
        }
    }
}

/// Forwards the NOTIFY of every replica's commits to the local wake-up channel; while
/// the database is away it retries, and the dispatchers' fallback poll covers the gap.
async fn listen(pool: PgPool, channel: &str, own: &str, wakeups: watch::Sender<u64>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(err) => {
                tracing::debug!(error = %err, "event listener cannot connect, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(err) = listener.listen(channel).await {
            tracing::debug!(error = %err, "LISTEN failed, retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // recv reconnects by itself; a wake-up after reconnecting covers what was missed.
        loop {
            match listener.recv().await {
                Ok(n) if n.payload() == own => {}
                Ok(_) => wakeups.send_modify(|n| *n += 1),
                Err(err) => {
                    tracing::debug!(error = %err, "event listener lost its connection");
                    wakeups.send_modify(|n| *n += 1);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}

/// Sends a NOTIFY on `channel` after each commit of this process, those made while one
/// was on its way folded into the next. One that fails is not sent again: the other
/// replicas' dispatchers find the entries by their poll.
async fn notify(pool: PgPool, channel: &str, own: &str, mut asked: watch::Receiver<u64>) {
    while asked.changed().await.is_ok() {
        asked.borrow_and_update();
        if let Err(err) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(own)
            .execute(&pool)
            .await
        {
            tracing::debug!(error = %err, "NOTIFY failed; other replicas find the entries by their poll");
        }
    }
}

/// New entries as the UNNEST of the log's inserts takes them: a column each.
pub struct EntryColumns<'a> {
    message_ids: Vec<&'a str>,
    event_ids: Vec<Uuid>,
    types: Vec<i16>,
    received: Vec<DateTime<Utc>>,
    payloads: Vec<&'a [u8]>,
    traces: Vec<Option<&'a str>>,
}

impl<'a> EntryColumns<'a> {
    pub fn of(events: &'a [NewEvent]) -> Self {
        Self {
            message_ids: events.iter().map(|e| e.message_id.as_str()).collect(),
            event_ids: events.iter().map(|e| e.event_id.as_uuid()).collect(),
            types: events.iter().map(|e| e.event_type).collect(),
            received: events.iter().map(|e| e.received_at).collect(),
            payloads: events.iter().map(|e| e.payload.as_slice()).collect(),
            traces: events.iter().map(|e| e.traceparent.as_deref()).collect(),
        }
    }

    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        workspace: &'q WorkspaceId,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        self.bind_arrays(query.bind(workspace))
    }

    /// Binds the six arrays, in the order `PgEventLog::insert_after_lock_steps` takes them.
    pub fn bind_arrays<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.message_ids)
            .bind(&self.event_ids)
            .bind(&self.types)
            .bind(&self.received)
            .bind(&self.payloads)
            .bind(&self.traces)
    }
}

impl PgEventLog {
    /// Appends new entries in the owning service's own transaction (their keys must be
    /// new: a repeat fails the statement). Once it commits, `wake` wakes this process's
    /// dispatchers and every other replica's.
    pub async fn insert_in(
        conn: &mut sqlx::PgConnection,
        workspace: &WorkspaceId,
        events: &[NewEvent],
    ) -> Result<(), sqlx::Error> {
        if !events.is_empty() {
            EntryColumns::of(events)
                .bind(sqlx::query(INSERT), workspace)
                .execute(conn)
                .await?;
        }
        Ok(())
    }

    /// The steps (common table expressions) of a larger statement that add entries
    /// once the transaction holds an advisory lock, held to its commit: a log whose
    /// writers all take it has its order, `seq`, in the order of their commits. Every
    /// entry, and so its `seq`, is made after the one row of `locked` was (the lock
    /// taken). `$workspace` is the workspace's parameter, `$lock` the lock's name, and
    /// `EntryColumns::bind_arrays` binds the entries' six arrays from `$first` on.
    pub fn insert_after_lock_steps(workspace: usize, lock: usize, first: usize) -> String {
        let arrays: Vec<String> = ["text", "uuid", "int2", "timestamptz", "bytea", "text"]
            .iter()
            .enumerate()
            .map(|(i, ty)| format!("${}::{ty}[]", first + i))
            .collect();
        format!(
            "locked AS MATERIALIZED (SELECT pg_advisory_xact_lock(hashtextextended(${lock}, 0))), \
             logged AS (INSERT INTO events \
               (workspace_id, message_id, event_id, event_type, received_at, payload, traceparent) \
               SELECT ${workspace}, u.* FROM locked, UNNEST({}) AS u)",
            arrays.join(", ")
        )
    }
}

const DEAD_LETTER_COLUMNS: &str = "d.id, d.consumer, d.reason, d.attempts::int8 AS attempts, d.failed_at, \
     e.tx_id, e.seq, e.workspace_id, e.event_id, e.payload, e.traceparent";

#[async_trait]
impl EventLog for PgEventLog {
    async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1 FROM events LIMIT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn append(&self, workspace: &WorkspaceId, events: &[NewEvent]) -> Result<Vec<Appended>, StorageError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let columns = EntryColumns::of(events);
        let insert = |sql| columns.bind(sqlx::query(sql), workspace);
        // One statement, so one implicit transaction: the batch commits whole or not at
        // all. Repeats are rare (client retries), so the plain INSERT goes first; only
        // when it meets one does the batch go again with ON CONFLICT DO NOTHING.
        let inserted = match insert(INSERT).execute(&self.pool).await {
            Ok(done) => done.rows_affected(),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
                insert(INSERT_NEW_ONLY).execute(&self.pool).await?.rows_affected()
            }
            Err(e) => return Err(e.into()),
        };
        if inserted > 0 {
            self.wake();
        }
        if inserted as usize == events.len() {
            return Ok(vec![Appended::Inserted; events.len()]);
        }
        // Which were repeats: the stored event id of each message id says.
        let message_ids = &columns.message_ids;
        let stored: HashMap<String, Uuid> =
            sqlx::query_as("SELECT message_id, event_id FROM events WHERE workspace_id = $1 AND message_id = ANY($2)")
                .bind(workspace)
                .bind(message_ids)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect();
        events
            .iter()
            .map(|e| match stored.get(&e.message_id) {
                Some(id) if *id == e.event_id.as_uuid() => Ok(Appended::Inserted),
                Some(id) => Ok(Appended::Duplicate((*id).into())),
                None => Err(StorageError::Internal(format!(
                    "message {} vanished from the log",
                    e.message_id
                ))),
            })
            .collect()
    }

    async fn list(
        &self,
        workspace: &WorkspaceId,
        after: Option<Position>,
        limit: u32,
    ) -> Result<Vec<LoggedEvent>, StorageError> {
        let after = after.unwrap_or_default();
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT tx_id, seq, workspace_id, event_id, payload, traceparent FROM events \
             WHERE workspace_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(workspace)
        .bind(after.seq)
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
        self.to_notify.send_modify(|n| *n += 1);
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
        // A session-level advisory lock on a connection of its own: held while the
        // connection lives, released by the server if this process dies.
        let mut conn = self.pool.acquire().await?.detach();
        let key = format!("corvus.{}.{consumer}", self.channel);
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(&key)
            .fetch_one(&mut conn)
            .await?;
        if held {
            Ok(Some(Box::new(tokio::sync::Mutex::new(conn))))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    async fn read_after(&self, after: Position, limit: u32, max_bytes: u64) -> Result<ReadBatch, StorageError> {
        // Rows of transactions older than the oldest one still running can no longer
        // be joined by a late commit, so handing them on never skips anything.
        let rows = sqlx::query(
            // held_back: is anything after the cursor at or past the horizon? Asked as the
            // first key of one range, in index order, so the index answers it at once however
            // long the backlog is. (An EXISTS would let the planner, short of statistics,
            // read the table from the start in the hope of an early match.)
            // before: the payload bytes ahead of the row in the batch.
            "WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin) \
             SELECT * FROM ( \
               SELECT tx_id, seq, workspace_id, event_id, payload, traceparent, \
                      (SELECT tx_id FROM events WHERE (tx_id, seq) >= \
                         (GREATEST(horizon.xmin, $1), CASE WHEN horizon.xmin > $1 THEN 0 ELSE $2 + 1 END) \
                       ORDER BY tx_id, seq LIMIT 1) IS NOT NULL AS held_back, \
                      sum(octet_length(payload)) OVER (ORDER BY tx_id, seq) - octet_length(payload) AS before \
               FROM events, horizon \
               WHERE (tx_id, seq) > ($1, $2) AND tx_id < horizon.xmin \
               ORDER BY tx_id, seq LIMIT $3) batch \
             WHERE before < $4 ORDER BY tx_id, seq",
        )
        .bind(after.tx)
        .bind(after.seq)
        .bind(i64::from(limit))
        .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            let held_back: bool =
                sqlx::query_scalar("SELECT (SELECT tx_id FROM events WHERE (tx_id, seq) > ($1, $2) ORDER BY tx_id, seq LIMIT 1) IS NOT NULL")
                    .bind(after.tx)
                    .bind(after.seq)
                    .fetch_one(&self.pool)
                    .await?;
            return Ok(ReadBatch {
                events: Vec::new(),
                held_back,
            });
        }
        let held_back = rows[0].try_get("held_back")?;
        Ok(ReadBatch {
            events: rows
                .iter()
                .map(|row| LoggedEvent::try_from(EventRow::from_row(row)?))
                .collect::<Result<_, _>>()?,
            held_back,
        })
    }

    async fn advance(&self, consumer: &str, from: Position, to: Position) -> Result<bool, StorageError> {
        let moved = sqlx::query(
            "UPDATE consumers SET tx_id = $4, seq = $5, last_delivery_at = now() \
             WHERE name = $1 AND tx_id = $2 AND seq = $3",
        )
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
        sqlx::query(
            "INSERT INTO dead_letters (consumer, workspace_id, tx_id, seq, reason, attempts) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (consumer, tx_id, seq) DO UPDATE \
             SET reason = excluded.reason, attempts = dead_letters.attempts + excluded.attempts, \
                 failed_at = now(), replay_requested = false",
        )
        .bind(consumer)
        .bind(&event.workspace)
        .bind(event.position.tx)
        .bind(event.position.seq)
        .bind(reason)
        .bind(attempts as i32)
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
             WHERE d.workspace_id = $1 AND ($2::text IS NULL OR d.consumer = $2) AND d.id > $3 \
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
        let done = sqlx::query(
            "UPDATE dead_letters SET replay_requested = true \
             WHERE workspace_id = $1 AND (cardinality($2::int8[]) = 0 OR id = ANY($2)) \
               AND ($3::text IS NULL OR consumer = $3) AND NOT replay_requested",
        )
        .bind(workspace)
        .bind(ids)
        .bind(consumer)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            self.wake();
        }
        Ok(done.rows_affected())
    }

    async fn replays(&self, consumer: &str, limit: u32) -> Result<Vec<DeadLetter>, StorageError> {
        let rows = sqlx::query_as::<_, DeadLetterRow>(&format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters d \
             JOIN events e ON e.tx_id = d.tx_id AND e.seq = d.seq \
             WHERE d.consumer = $1 AND d.replay_requested ORDER BY d.id LIMIT $2"
        ))
        .bind(consumer)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        convert(rows)
    }

    async fn replay_done(&self, id: i64, failure: Option<&str>) -> Result<(), StorageError> {
        match failure {
            None => {
                sqlx::query("DELETE FROM dead_letters WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await?
            }
            Some(reason) => {
                sqlx::query(
                    "UPDATE dead_letters SET replay_requested = false, reason = $2, \
                     attempts = attempts + 1, failed_at = now() WHERE id = $1",
                )
                .bind(id)
                .bind(reason)
                .execute(&self.pool)
                .await?
            }
        };
        Ok(())
    }

    async fn erase(&self, workspace: &WorkspaceId, message_ids: &[String]) -> Result<u64, StorageError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM dead_letters d USING events e WHERE e.workspace_id = $1 AND e.message_id = ANY($2) \
             AND d.tx_id = e.tx_id AND d.seq = e.seq",
        )
        .bind(workspace)
        .bind(message_ids)
        .execute(&mut *tx)
        .await?;
        // While a relay to a stream exists, the positions deleted are queued for it.
        let erased: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM events WHERE workspace_id = $1 AND message_id = ANY($2) RETURNING tx_id, seq), \
             queued AS (INSERT INTO stream_erasures (tx_id, seq) SELECT tx_id, seq FROM gone \
                        WHERE EXISTS (SELECT 1 FROM consumers WHERE name = $3) ON CONFLICT DO NOTHING) \
             SELECT count(*) FROM gone",
        )
        .bind(workspace)
        .bind(message_ids)
        .bind(RELAY)
        .fetch_one(&mut *tx)
        .await?;
        let erased = erased as u64;
        tx.commit().await?;
        self.vacuum.soon(&self.pool, "events, dead_letters");
        Ok(erased)
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StorageError> {
        let pruned = sqlx::query(
            "DELETE FROM events e WHERE e.received_at < $1 \
             AND (NOT EXISTS (SELECT 1 FROM consumers) \
                  OR (e.tx_id, e.seq) <= (SELECT c.tx_id, c.seq FROM consumers c ORDER BY c.tx_id, c.seq LIMIT 1)) \
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
               (SELECT count(*) FROM events e WHERE e.workspace_id = $1 AND (e.tx_id, e.seq) > (c.tx_id, c.seq)) AS lag, \
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
        let tx_ids: Vec<i64> = erased.iter().map(|p| p.tx).collect();
        let seqs: Vec<i64> = erased.iter().map(|p| p.seq).collect();
        sqlx::query(
            "DELETE FROM stream_erasures q USING unnest($1::bigint[], $2::bigint[]) AS e(tx_id, seq) \
             WHERE q.tx_id = e.tx_id AND q.seq = e.seq",
        )
        .bind(&tx_ids)
        .bind(&seqs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
