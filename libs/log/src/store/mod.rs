//! A log, its consumer cursors and dead letters: one trait, a Postgres and a SQLite
//! implementation, held to one conformance suite (ingestion's `tests/ingestion/log.rs`).
//! The tables (`events`, `consumers`, `dead_letters`) are created by the migrations of
//! the service that owns the log, in its own schema or file.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_proto::{EventId, WorkspaceId};
use corvus_storage::StorageError;
use tokio::sync::watch;

pub use postgres::{EntryColumns, PgEventLog};
pub use sqlite::SqliteEventLog;

/// A place in the log. Postgres orders by (transaction id, seq); SQLite by seq alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub tx: i64,
    pub seq: i64,
}

/// An event ready to commit.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: EventId,
    pub message_id: String,
    pub event_type: i16,
    pub received_at: DateTime<Utc>,
    /// The protobuf-encoded `corvus.common.v1.Event`.
    pub payload: Vec<u8>,
    pub traceparent: Option<String>,
}

/// What became of one appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Inserted,
    /// The message id was in the log already, under this event id.
    Duplicate(EventId),
}

/// An event as the log holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    pub position: Position,
    pub workspace: WorkspaceId,
    pub event_id: EventId,
    pub payload: Vec<u8>,
    pub traceparent: Option<String>,
}

/// Events after a position, and whether later commits exist that are not yet safe to
/// read (a transaction begun before them is still running): then read again soon.
#[derive(Debug, Default)]
pub struct ReadBatch {
    pub events: Vec<LoggedEvent>,
    pub held_back: bool,
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub consumer: String,
    pub event: LoggedEvent,
    pub reason: String,
    pub attempts: u32,
    pub failed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStatus {
    pub name: String,
    pub lag: u64,
    pub dead_letters: u64,
    pub last_delivery_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// Proof of being the one dispatcher of a consumer across replicas; dropping it lets
/// another replica take over.
pub type Lease = Box<dyn Send + Sync>;

#[async_trait]
pub trait EventLog: Send + Sync + std::fmt::Debug {
    async fn ping(&self) -> Result<(), StorageError>;

    /// Commits the events whose message id the workspace has not used, in order, in one
    /// transaction; the outcome of each, in input order. Message ids within `events`
    /// must be distinct.
    async fn append(&self, workspace: &WorkspaceId, events: &[NewEvent]) -> Result<Vec<Appended>, StorageError>;

    /// The workspace's events after `after`, in log order.
    async fn list(
        &self,
        workspace: &WorkspaceId,
        after: Option<Position>,
        limit: u32,
    ) -> Result<Vec<LoggedEvent>, StorageError>;

    /// Ticks whenever events commit (in this process, or in any replica on Postgres).
    fn wakeups(&self) -> watch::Receiver<u64>;

    /// Wakes the dispatchers, this process's at once and other replicas' (where the
    /// store has them) soon after: for entries the owning service committed in a
    /// transaction of its own rather than through `append`.
    fn wake(&self);

    /// Creates the consumer's cursor at the start of the log if it has none.
    async fn ensure_consumer(&self, consumer: &str) -> Result<Position, StorageError>;

    /// Becomes the consumer's dispatcher, or `None` while another replica is.
    async fn lease(&self, consumer: &str) -> Result<Option<Lease>, StorageError>;

    /// Events of all workspaces after `after` that are safe to hand on, in log order: at
    /// most `limit`, and no more than `max_bytes` of payload (but always the first).
    async fn read_after(&self, after: Position, limit: u32, max_bytes: u64) -> Result<ReadBatch, StorageError>;

    /// Moves the cursor from `from` to `to`; false if it was not at `from` (another
    /// dispatcher moved it, so this one has lost its lease).
    async fn advance(&self, consumer: &str, from: Position, to: Position) -> Result<bool, StorageError>;

    /// Notes the consumer's last delivery error, or clears it.
    async fn set_error(&self, consumer: &str, error: Option<&str>) -> Result<(), StorageError>;

    async fn dead_letter(
        &self,
        consumer: &str,
        event: &LoggedEvent,
        reason: &str,
        attempts: u32,
    ) -> Result<(), StorageError>;

    async fn list_dead_letters(
        &self,
        workspace: &WorkspaceId,
        consumer: Option<&str>,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StorageError>;

    /// Marks the workspace's dead letters (these ids, or all when empty) for replay.
    async fn request_replay(
        &self,
        workspace: &WorkspaceId,
        ids: &[i64],
        consumer: Option<&str>,
    ) -> Result<u64, StorageError>;

    /// Dead letters of the consumer marked for replay.
    async fn replays(&self, consumer: &str, limit: u32) -> Result<Vec<DeadLetter>, StorageError>;

    /// A replayed dead letter went through (removed) or failed again (kept, unmarked).
    async fn replay_done(&self, id: i64, failure: Option<&str>) -> Result<(), StorageError>;

    /// Deletes the workspace's events with these message ids, and their dead letters (right
    /// to erasure); how many events there were.
    async fn erase(&self, workspace: &WorkspaceId, message_ids: &[String]) -> Result<u64, StorageError>;

    /// Deletes the entries received before `before` that every consumer's cursor has
    /// passed (all of them, when the log has no consumer), except those a dead letter
    /// still names; how many. For a hand-off log (identity's), not for a log that is
    /// the record (ingestion's).
    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StorageError>;

    /// Every registered consumer, with its lag and dead letters in the workspace.
    async fn consumers(&self, workspace: &WorkspaceId) -> Result<Vec<ConsumerStatus>, StorageError>;

    /// A log relayed to a stream: records the stream sequence each entry of a batch the
    /// relay published (in log order) was given.
    async fn relayed(&self, relayed: &[(Position, u64)]) -> Result<(), StorageError>;

    /// Entries erased while a relay existed, at or before `relayed_to` (where the relay
    /// has recorded up to), each with the stream sequence it was relayed under, or `None`
    /// when it was erased before it was relayed.
    async fn stream_erasures(
        &self,
        relayed_to: Position,
        limit: u32,
    ) -> Result<Vec<(Position, Option<u64>)>, StorageError>;

    /// These erased entries are gone from the stream, or were never in it.
    async fn stream_erased(&self, erased: &[Position]) -> Result<(), StorageError>;
}

/// A row of `events`, as both backends return it.
#[derive(sqlx::FromRow)]
struct EventRow {
    tx_id: i64,
    seq: i64,
    workspace_id: String,
    event_id: uuid::Uuid,
    payload: Vec<u8>,
    traceparent: Option<String>,
}

impl TryFrom<EventRow> for LoggedEvent {
    type Error = StorageError;
    fn try_from(row: EventRow) -> Result<Self, StorageError> {
        Ok(Self {
            position: Position {
                tx: row.tx_id,
                seq: row.seq,
            },
            workspace: row
                .workspace_id
                .parse()
                .map_err(|e| StorageError::Internal(format!("bad workspace id in the log: {e}")))?,
            event_id: EventId::from(row.event_id),
            payload: row.payload,
            traceparent: row.traceparent,
        })
    }
}

/// A dead letter joined with its event.
#[derive(sqlx::FromRow)]
struct DeadLetterRow {
    id: i64,
    consumer: String,
    reason: String,
    attempts: i64,
    failed_at: DateTime<Utc>,
    #[sqlx(flatten)]
    event: EventRow,
}

impl TryFrom<DeadLetterRow> for DeadLetter {
    type Error = StorageError;
    fn try_from(row: DeadLetterRow) -> Result<Self, StorageError> {
        Ok(Self {
            id: row.id,
            consumer: row.consumer,
            event: row.event.try_into()?,
            reason: row.reason,
            attempts: row.attempts as u32,
            failed_at: row.failed_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ConsumerRow {
    name: String,
    last_delivery_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    lag: i64,
    dead: i64,
}

impl From<ConsumerRow> for ConsumerStatus {
    fn from(row: ConsumerRow) -> Self {
        Self {
            name: row.name,
            lag: row.lag as u64,
            dead_letters: row.dead as u64,
            last_delivery_at: row.last_delivery_at,
            last_error: row.last_error,
        }
    }
}

/// The relay's name: its cursor on a log relayed to a stream. While it has one, an
/// erasure queues the positions it deleted (`stream_erasures`).
pub const RELAY: &str = "jetstream";

/// A batch's record in `stream_batches`: (tx, seq, stream sequence), little-endian.
fn encode_relayed(relayed: &[(Position, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(relayed.len() * 24);
    for (position, stream_seq) in relayed {
        out.extend_from_slice(&position.tx.to_le_bytes());
        out.extend_from_slice(&position.seq.to_le_bytes());
        out.extend_from_slice(&stream_seq.to_le_bytes());
    }
    out
}

/// The stream sequence `position` was relayed under, in a batch's record.
fn find_relayed(entries: &[u8], position: Position) -> Option<u64> {
    let word = |b: &[u8]| i64::from_le_bytes(b.try_into().expect("8 bytes"));
    entries.chunks_exact(24).find_map(|e| {
        let at = Position {
            tx: word(&e[..8]),
            seq: word(&e[8..16]),
        };
        (at == position).then(|| word(&e[16..]) as u64)
    })
}

/// Queued erasures (`stream_erasures`) that a relay has passed, and the batch records
/// that might hold them: the same statements on both backends.
const QUEUED_ERASURES: &str = "SELECT tx_id, seq FROM stream_erasures WHERE (tx_id, seq) <= ($1, $2) \
     ORDER BY tx_id, seq LIMIT $3";
const BATCH_OF: &str = "SELECT entries FROM stream_batches WHERE (last_tx, last_seq) >= ($1, $2) \
     ORDER BY last_tx, last_seq LIMIT 1";
const RECORD_BATCH: &str = "INSERT INTO stream_batches (first_tx, first_seq, last_tx, last_seq, entries) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (last_tx, last_seq) DO UPDATE SET \
     first_tx = excluded.first_tx, first_seq = excluded.first_seq, entries = excluded.entries";
/// Batch records no entry of the log, and no queued erasure, is in any more.
const PRUNE_BATCHES: &str = "DELETE FROM stream_batches \
     WHERE (last_tx, last_seq) < (SELECT tx_id, seq FROM events ORDER BY tx_id, seq LIMIT 1) \
     AND NOT EXISTS (SELECT 1 FROM stream_erasures q \
                     WHERE (q.tx_id, q.seq) <= (stream_batches.last_tx, stream_batches.last_seq))";

/// Converts every row, failing on the first that does not convert.
fn convert<R, T: TryFrom<R, Error = StorageError>>(rows: Vec<R>) -> Result<Vec<T>, StorageError> {
    rows.into_iter().map(T::try_from).collect()
}
