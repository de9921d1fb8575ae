//! Orchestration's store: campaigns and their versions, the decision log, what caps and
//! budgets count, and the policy's evidence. One trait, written once for Postgres and
//! SQLite (`orchestration_store!` expands it per backend) and held to one conformance
//! suite (`tests/orchestration/main.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_log::store::{EventLog, NewEvent, PgEventLog, SqliteEventLog};
use corvus_proto::{ProfileId, WorkspaceId};
use corvus_storage::sql::rows;
use corvus_storage::{Database, Migrators, Statistics, StorageConfig, StorageError};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::Mutex;
use uuid::Uuid;

mod alerts;
mod bulk;
mod campaigns;
mod decide;
mod decision;
mod sends;
mod triggers;

pub use alerts::{
    Alert, AlertFilter, AlertState, AlertStore, NewAlert, Raised, StoredRule, WebhookAttempt, WebhookState,
};
pub use campaigns::{CampaignStore, State, Stored, WriteError};
pub use decision::{
    Blocked, Candidate, Cell, DecideRequest, Decision, Explanation, Ledger, Plan, Reason, Recorded, Touch, Writes,
};
pub use sends::{ConnectorDef, ConnectorKind, Outbound, SendRow, SendState, SendStore, Settle};
pub use triggers::{Pending, TriggerKind, TriggerStore};

static MIGRATE_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static MIGRATE_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The schema (Postgres) or file (SQLite) of the orchestration service.
pub const SCHEMA: &str = "orchestration";

pub fn migrators() -> Migrators {
    Migrators {
        postgres: &MIGRATE_POSTGRES,
        sqlite: &MIGRATE_SQLITE,
    }
}

#[async_trait]
pub trait OrchestrationStore: CampaignStore + SendStore + AlertStore + TriggerStore {
    async fn ping(&self) -> Result<(), StorageError>;

    /// The policy's evidence of every cell of the workspace: (successes, trials).
    async fn evidence(&self, ws: &WorkspaceId) -> Result<HashMap<Cell, (u64, u64)>, StorageError>;

    /// Records the decisions, in order, in one transaction: each takes its person's
    /// lock (people in key order, so that two batches never wait on each other), reads
    /// their ledger as the decisions before it in the batch left it, and writes what its
    /// plan makes of it. Decisions for one person never interleave, on any replica. One
    /// outcome a request; an error writes nothing of any of them.
    async fn decide(&self, requests: &[DecideRequest]) -> Result<Vec<Recorded>, StorageError>;

    /// A person's sends since `since`, read without their lock (for a simulation).
    async fn touches(
        &self,
        ws: &WorkspaceId,
        profile: ProfileId,
        since: DateTime<Utc>,
    ) -> Result<Vec<Touch>, StorageError>;

    /// Sends spent of a campaign's budget.
    async fn spent(&self, ws: &WorkspaceId, campaign: &str) -> Result<u64, StorageError>;

    /// Counts the decisions among `ids` that sent, and were not counted yet, as trials of
    /// their cells: however often a decision is handed over, it is counted once. Returns
    /// how many were counted now.
    async fn count_trials(&self, ws: &WorkspaceId, ids: &[Uuid]) -> Result<u64, StorageError>;

    /// Orchestration's log of decisions, over the same database: `decide` writes each
    /// decision's entry in its own transaction.
    fn log(&self) -> Arc<dyn EventLog>;

    async fn decision(&self, ws: &WorkspaceId, id: Uuid) -> Result<Option<Decision>, StorageError>;

    /// The log in order, after `after`, at most `limit`.
    async fn decisions(
        &self,
        ws: &WorkspaceId,
        campaign: Option<&str>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Decision>, StorageError>;

    /// Each person's decisions (under their id or one merged into it) decided at or
    /// after `since`, without an outcome yet, newest first; a person with none is left
    /// out.
    async fn open_decisions(
        &self,
        ws: &WorkspaceId,
        profiles: &[ProfileId],
        since: DateTime<Utc>,
    ) -> Result<HashMap<ProfileId, Vec<Decision>>, StorageError>;

    /// Records an outcome on a decision that has none, and counts it as a success of its
    /// cell when it sent. False when it had one already.
    async fn record_outcome(
        &self,
        ws: &WorkspaceId,
        decision: &Decision,
        event: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StorageError>;

    /// In order, in one transaction: each merge's `merged` now stand for its `survivor`:
    /// their sends count against its caps, its outcomes find their decisions, their
    /// alerts are its, and their cooldowns too (the later end of two kept).
    async fn merge(&self, merges: &[Merge]) -> Result<(), StorageError>;

    /// Marks the profiles erased, so that no decision is written for them after, then
    /// deletes what is kept of them: decisions (and their entries in the log), sends,
    /// aliases. Returns the rows deleted.
    async fn erase(&self, ws: &WorkspaceId, profiles: &[ProfileId]) -> Result<u64, StorageError>;
}

pub async fn connect(config: &StorageConfig) -> Result<Arc<dyn OrchestrationStore>, StorageError> {
    Ok(match Database::connect(config, SCHEMA, &migrators()).await? {
        Database::Postgres(pool) => Arc::new(PgOrchestrationStore {
            log: Arc::new(PgEventLog::new(pool.clone(), crate::log::CHANNEL)),
            pool,
            decisions_statistics: Statistics::new("orchestration", ANALYZE_FIRST, ANALYZE_DECISIONS),
            aliases_statistics: Statistics::new("orchestration", ANALYZE_FIRST, ANALYZE_ALIASES),
        }),
        Database::Sqlite(pool) => Arc::new(SqliteOrchestrationStore {
            log: Arc::new(SqliteEventLog::new(pool.clone())),
            pool,
            writer: Mutex::new(()),
        }),
    })
}

/// Profiles merged into a survivor, as identity's log tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Merge {
    pub ws: WorkspaceId,
    pub survivor: ProfileId,
    pub merged: Vec<ProfileId>,
}

pub struct PgOrchestrationStore {
    pool: PgPool,
    log: Arc<dyn EventLog>,
    /// Orchestration's tables analyzed as they grow: those of decisions counted in
    /// decisions written, aliases in merged ids.
    decisions_statistics: Arc<Statistics>,
    aliases_statistics: Arc<Statistics>,
}

/// Rows written before a group of tables is first analyzed, then at each doubling, each
/// group counted by what fills it: a table analyzed while still empty is planned as
/// empty (read whole) until its next `ANALYZE`.
const ANALYZE_FIRST: u64 = 1_000;
/// The key columns a decision's reads go by (a person's lock row, touches and open
/// decisions; the sends due and unreported).
const ANALYZE_DECISIONS: &str = "ANALYZE decisions (workspace_id, profile_id, decided_at), \
     touches (workspace_id, profile_id, at), people (workspace_id, profile_id), \
     sends (workspace_id, profile_id, decision_id, state, reported, next_attempt_at)";
const ANALYZE_ALIASES: &str = "ANALYZE aliases (workspace_id, profile_id, survivor_id)";

pub struct SqliteOrchestrationStore {
    pool: SqlitePool,
    log: Arc<dyn EventLog>,
    /// SQLite takes one writer at a time: writers queue here rather than on the file.
    writer: Mutex<()>,
}

type Guard<'a> = Option<tokio::sync::MutexGuard<'a, ()>>;

impl PgOrchestrationStore {
    async fn begin(&self) -> Result<(Guard<'_>, sqlx::Transaction<'_, sqlx::Postgres>), sqlx::Error> {
        Ok((None, self.pool.begin().await?))
    }
}

impl SqliteOrchestrationStore {
    /// `BEGIN IMMEDIATE` takes the file's write lock at once, so another process on the
    /// same file (a second replica) waits for this transaction as a second writer here
    /// waits on `writer`.
    async fn begin(&self) -> Result<(Guard<'_>, sqlx::Transaction<'_, sqlx::Sqlite>), sqlx::Error> {
        let guard = self.writer.lock().await;
        Ok((Some(guard), self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

fn undecodable(what: &str, err: impl std::fmt::Display) -> StorageError {
    StorageError::Internal(format!("{what}: {err}"))
}

fn touch_of((campaign, channel, at, local_day): (String, String, i64, i32)) -> Touch {
    Touch {
        campaign,
        channel,
        at: time(at),
        local_day,
    }
}

type DecisionRow = (String, Option<String>, Option<i64>);

/// A policy cell as read: campaign, segment, action, channel.
type CellRow = (String, String, String, String);

fn decision_of(row: DecisionRow) -> Result<Decision, StorageError> {
    let (detail, event, at) = row;
    let mut decision: Decision = serde_json::from_str(&detail).map_err(|e| undecodable("decision", e))?;
    decision.outcome = event.zip(at.map(time));
    Ok(decision)
}

const DECISION: &str = "SELECT detail, outcome_event, outcome_at FROM decisions";

/// The policy's cells counted by one statement, at most (six values each).
const CELLS_AT_ONCE: usize = 100;

macro_rules! orchestration_store {
    ($Store:ident, $Db:ty) => {
        #[async_trait]
        impl OrchestrationStore for $Store {
            async fn ping(&self) -> Result<(), StorageError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn evidence(&self, ws: &WorkspaceId) -> Result<HashMap<Cell, (u64, u64)>, StorageError> {
                let rows: Vec<(String, String, String, String, i64, i64)> = sqlx::query_as(
                    "SELECT campaign, segment, action, channel, successes, trials FROM outcomes \
                     WHERE workspace_id = $1",
                )
                .bind(ws.as_str())
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(campaign, segment, action, channel, successes, trials)| {
                        let cell = Cell {
                            campaign,
                            segment,
                            action,
                            channel,
                        };
                        (cell, (successes as u64, trials as u64))
                    })
                    .collect())
            }

            async fn decide(&self, requests: &[DecideRequest]) -> Result<Vec<Recorded>, StorageError> {
                self.decide_batch(requests).await
            }

            async fn touches(
                &self,
                ws: &WorkspaceId,
                profile: ProfileId,
                since: DateTime<Utc>,
            ) -> Result<Vec<Touch>, StorageError> {
                let touches: Vec<(String, String, i64, i32)> = sqlx::query_as(
                    "SELECT campaign, channel, at, local_day FROM touches \
                     WHERE workspace_id = $1 AND profile_id = $2 AND at >= $3",
                )
                .bind(ws.as_str())
                .bind(profile.as_uuid())
                .bind(micros(since))
                .fetch_all(&self.pool)
                .await?;
                Ok(touches.into_iter().map(touch_of).collect())
            }

            async fn spent(&self, ws: &WorkspaceId, campaign: &str) -> Result<u64, StorageError> {
                let spent: Option<(i64,)> =
                    sqlx::query_as("SELECT spent FROM budgets WHERE workspace_id = $1 AND campaign = $2")
                        .bind(ws.as_str())
                        .bind(campaign)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(spent.map_or(0, |s| s.0 as u64))
            }

            async fn count_trials(&self, ws: &WorkspaceId, ids: &[Uuid]) -> Result<u64, StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                let mut cells: HashMap<Cell, i64> = HashMap::new();
                for (campaign, segment, action, channel) in Self::mark_counted(&mut tx, ws, ids).await? {
                    let cell = Cell {
                        campaign,
                        segment,
                        action,
                        channel,
                    };
                    *cells.entry(cell).or_default() += 1;
                }
                let counted: Vec<(&Cell, &i64)> = cells.iter().collect();
                for chunk in counted.chunks(CELLS_AT_ONCE) {
                    let sql = format!(
                        "INSERT INTO outcomes (workspace_id, campaign, segment, action, channel, trials) \
                         VALUES {} ON CONFLICT (workspace_id, campaign, segment, action, channel) \
                         DO UPDATE SET trials = outcomes.trials + excluded.trials",
                        rows(1, chunk.len(), 6)
                    );
                    let mut query = sqlx::query(&sql);
                    for (cell, n) in chunk {
                        query = query
                            .bind(ws.as_str())
                            .bind(&cell.campaign)
                            .bind(&cell.segment)
                            .bind(&cell.action)
                            .bind(&cell.channel)
                            .bind(**n);
                    }
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(cells.values().sum::<i64>() as u64)
            }

            fn log(&self) -> Arc<dyn EventLog> {
                self.log.clone()
            }

            async fn decision(&self, ws: &WorkspaceId, id: Uuid) -> Result<Option<Decision>, StorageError> {
                let row: Option<DecisionRow> = sqlx::query_as(&format!(
                    "{DECISION} WHERE workspace_id = $1 AND decision_id = $2"
                ))
                .bind(ws.as_str())
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(decision_of).transpose()
            }

            async fn decisions(
                &self,
                ws: &WorkspaceId,
                campaign: Option<&str>,
                after: Option<Uuid>,
                limit: u32,
            ) -> Result<Vec<Decision>, StorageError> {
                let rows: Vec<DecisionRow> = sqlx::query_as(&format!(
                    "{DECISION} WHERE workspace_id = $1 AND ($2 IS NULL OR campaign = $2) AND decision_id > $3 \
                     ORDER BY decision_id LIMIT $4"
                ))
                .bind(ws.as_str())
                .bind(campaign)
                .bind(after.unwrap_or(Uuid::nil()))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(decision_of).collect()
            }

            async fn open_decisions(
                &self,
                ws: &WorkspaceId,
                profiles: &[ProfileId],
                since: DateTime<Utc>,
            ) -> Result<HashMap<ProfileId, Vec<Decision>>, StorageError> {
                let mut open: HashMap<ProfileId, Vec<Decision>> = HashMap::new();
                for (asked, detail, event, at) in self.open_rows(ws, profiles, since).await? {
                    open.entry(ProfileId::from(asked))
                        .or_default()
                        .push(decision_of((detail, event, at))?);
                }
                for decisions in open.values_mut() {
                    decisions.sort_by(|a, b| b.decided_at.cmp(&a.decided_at));
                }
                Ok(open)
            }

            async fn record_outcome(
                &self,
                ws: &WorkspaceId,
                decision: &Decision,
                event: &str,
                at: DateTime<Utc>,
            ) -> Result<bool, StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                let marked = sqlx::query(
                    "UPDATE decisions SET outcome_event = $3, outcome_at = $4 \
                     WHERE workspace_id = $1 AND decision_id = $2 AND outcome_at IS NULL",
                )
                .bind(ws.as_str())
                .bind(decision.id)
                .bind(event)
                .bind(micros(at))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if marked > 0 && decision.sends() {
                    sqlx::query(
                        "INSERT INTO outcomes (workspace_id, campaign, segment, action, channel, successes) \
                         VALUES ($1, $2, $3, $4, $5, 1) \
                         ON CONFLICT (workspace_id, campaign, segment, action, channel) \
                         DO UPDATE SET successes = outcomes.successes + 1",
                    )
                    .bind(ws.as_str())
                    .bind(&decision.campaign)
                    .bind(&decision.segment)
                    .bind(&decision.action)
                    .bind(&decision.channel)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(marked > 0)
            }

            async fn merge(&self, merges: &[Merge]) -> Result<(), StorageError> {
                self.merge_all(merges).await
            }

            async fn erase(&self, ws: &WorkspaceId, profiles: &[ProfileId]) -> Result<u64, StorageError> {
                // The people marked first, committed: a decision read before it and
                // written after it finds the mark and is not written, and one written
                // before it is found below. Then the log's entries: should what follows
                // fail, the erasure is delivered again and finds the decisions still
                // there to name them.
                let (guard, mut tx) = self.begin().await?;
                for id in profiles {
                    sqlx::query(
                        "INSERT INTO people (workspace_id, profile_id, erased) VALUES ($1, $2, true) \
                         ON CONFLICT (workspace_id, profile_id) DO UPDATE SET erased = true",
                    )
                    .bind(ws.as_str())
                    .bind(id.as_uuid())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                drop(guard);
                let mut ids = Vec::new();
                for id in profiles {
                    let decided: Vec<(Uuid,)> =
                        sqlx::query_as("SELECT decision_id FROM decisions WHERE workspace_id = $1 AND profile_id = $2")
                            .bind(ws.as_str())
                            .bind(id.as_uuid())
                            .fetch_all(&self.pool)
                            .await?;
                    ids.extend(decided.into_iter().map(|d| d.0.to_string()));
                }
                if !ids.is_empty() {
                    self.log.erase(ws, &ids).await?;
                }
                let (_guard, mut tx) = self.begin().await?;
                let mut removed = 0;
                for id in profiles {
                    for table in [
                        "decisions",
                        "touches",
                        "sends",
                        "triggers",
                        "trigger_scores",
                        "aliases",
                    ] {
                        removed += sqlx::query(&format!(
                            "DELETE FROM {table} WHERE workspace_id = $1 AND profile_id = $2"
                        ))
                        .bind(ws.as_str())
                        .bind(id.as_uuid())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    }
                    sqlx::query("DELETE FROM aliases WHERE workspace_id = $1 AND survivor_id = $2")
                        .bind(ws.as_str())
                        .bind(id.as_uuid())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(removed)
            }
        }
    };
}

impl PgOrchestrationStore {
    async fn writer_guard(&self) -> Guard<'_> {
        None
    }

    async fn log_in(conn: &mut sqlx::PgConnection, ws: &WorkspaceId, entries: &[NewEvent]) -> Result<(), sqlx::Error> {
        PgEventLog::insert_in(conn, ws, entries).await
    }

    /// Marks the sent decisions among `ids` not counted yet as counted; their cells.
    async fn mark_counted(
        conn: &mut sqlx::PgConnection,
        ws: &WorkspaceId,
        ids: &[Uuid],
    ) -> Result<Vec<CellRow>, sqlx::Error> {
        // By the key alone (decision ids are unique across workspaces; the workspace is
        // checked on the rows): the indexes that start with the workspace would read all
        // of its decisions.
        sqlx::query_as(
            "UPDATE decisions SET counted = true \
             WHERE decision_id = ANY($2) AND workspace_id || '' = $1 AND NOT counted AND channel <> '' \
             RETURNING campaign, segment, action, channel",
        )
        .bind(ws.as_str())
        .bind(ids)
        .fetch_all(conn)
        .await
    }
}

impl SqliteOrchestrationStore {
    async fn writer_guard(&self) -> Guard<'_> {
        Some(self.writer.lock().await)
    }

    async fn log_in(
        conn: &mut sqlx::SqliteConnection,
        ws: &WorkspaceId,
        entries: &[NewEvent],
    ) -> Result<(), sqlx::Error> {
        SqliteEventLog::insert_in(conn, ws, entries).await
    }

    /// Marks the sent decisions among `ids` not counted yet as counted; their cells.
    async fn mark_counted(
        conn: &mut sqlx::SqliteConnection,
        ws: &WorkspaceId,
        ids: &[Uuid],
    ) -> Result<Vec<CellRow>, sqlx::Error> {
        let mut cells = Vec::new();
        for id in ids {
            let cell: Option<CellRow> = sqlx::query_as(
                "UPDATE decisions SET counted = true \
                 WHERE workspace_id = $1 AND decision_id = $2 AND NOT counted AND channel <> '' \
                 RETURNING campaign, segment, action, channel",
            )
            .bind(ws.as_str())
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            cells.extend(cell);
        }
        Ok(cells)
    }
}

orchestration_store!(PgOrchestrationStore, sqlx::Postgres);
orchestration_store!(SqliteOrchestrationStore, sqlx::Sqlite);
