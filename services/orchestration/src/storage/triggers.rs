//! Triggered campaigns waiting to be decided.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_proto::{ProfileId, WorkspaceId};
use corvus_storage::StorageError;
use uuid::Uuid;

use super::{PgOrchestrationStore, SqliteOrchestrationStore, micros, time, undecodable};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    /// Decide at due_at (unless cancelled).
    Event,
    /// Look at the person's score, and decide if it crossed the threshold.
    Score,
}

impl TriggerKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Score => "score",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub id: Uuid,
    pub workspace: WorkspaceId,
    pub campaign: String,
    pub profile: ProfileId,
    pub kind: TriggerKind,
    pub due_at: DateTime<Utc>,
    /// The event that cancels it, within the wait.
    pub unless: String,
    /// What started it, kept with the decision ("Product Added").
    pub cause: String,
}

#[async_trait]
pub trait TriggerStore: Send + Sync {
    /// Adds triggers; a score look already waiting for a campaign and person is not
    /// added twice.
    async fn add_triggers(&self, triggers: &[Pending]) -> Result<(), StorageError>;

    /// Cancels a person's waiting event triggers whose `unless` is `event`, due after
    /// `at`. Returns how many.
    async fn cancel_triggers(
        &self,
        ws: &WorkspaceId,
        profile: ProfileId,
        event: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, StorageError>;

    /// Leases up to `limit` triggers due by `now`, until `lease_until`.
    async fn claim_triggers(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Pending>, StorageError>;

    async fn remove_trigger(&self, id: Uuid) -> Result<(), StorageError>;

    /// Where the cursor `key` of the workspace stands (`None` before it first moved).
    async fn trigger_cursor(&self, ws: &WorkspaceId, key: &str) -> Result<Option<i64>, StorageError>;

    /// Moves the cursor from `from` to `to` and queues `triggers`, in one transaction;
    /// false, with nothing queued, when the cursor was no longer at `from`.
    async fn advance_trigger_cursor(
        &self,
        ws: &WorkspaceId,
        key: &str,
        from: Option<i64>,
        to: i64,
        triggers: &[Pending],
    ) -> Result<bool, StorageError>;

    /// The workspaces with a live campaign.
    async fn live_workspaces(&self) -> Result<Vec<WorkspaceId>, StorageError>;

    /// The score last seen of a person for a campaign, and records `value` as it.
    async fn swap_score(
        &self,
        ws: &WorkspaceId,
        campaign: &str,
        profile: ProfileId,
        value: f64,
    ) -> Result<Option<f64>, StorageError>;
}

type Row = (Uuid, String, String, Uuid, String, i64, String, String);

fn pending_of(row: Row) -> Result<Pending, StorageError> {
    let (id, ws, campaign, profile, kind, due_at, unless, cause) = row;
    Ok(Pending {
        id,
        workspace: ws.parse().map_err(|e| undecodable("trigger's workspace", e))?,
        campaign,
        profile: profile.into(),
        kind: match kind.as_str() {
            "score" => TriggerKind::Score,
            _ => TriggerKind::Event,
        },
        due_at: time(due_at),
        unless,
        cause,
    })
}

macro_rules! trigger_store {
    ($Store:ident, $Db:ty) => {
        impl $Store {
            /// Queues triggers in the transaction; a score look already waiting for a
            /// campaign and person is not queued twice.
            async fn queue_in(tx: &mut sqlx::Transaction<'_, $Db>, triggers: &[Pending]) -> Result<(), sqlx::Error> {
                for t in triggers {
                    let sql = match t.kind {
                        TriggerKind::Event => {
                            "INSERT INTO triggers (id, workspace_id, campaign, profile_id, kind, due_at, unless, cause) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                        }
                        TriggerKind::Score => {
                            "INSERT INTO triggers (id, workspace_id, campaign, profile_id, kind, due_at, unless, cause) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                             ON CONFLICT (workspace_id, campaign, profile_id) WHERE kind = 'score' DO NOTHING"
                        }
                    };
                    sqlx::query(sql)
                        .bind(t.id)
                        .bind(t.workspace.as_str())
                        .bind(&t.campaign)
                        .bind(t.profile.as_uuid())
                        .bind(t.kind.as_str())
                        .bind(micros(t.due_at))
                        .bind(&t.unless)
                        .bind(&t.cause)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(())
            }
        }

        #[async_trait]
        impl TriggerStore for $Store {
            async fn add_triggers(&self, triggers: &[Pending]) -> Result<(), StorageError> {
                if triggers.is_empty() {
                    return Ok(());
                }
                let (_guard, mut tx) = self.begin().await?;
                Self::queue_in(&mut tx, triggers).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn trigger_cursor(&self, ws: &WorkspaceId, key: &str) -> Result<Option<i64>, StorageError> {
                let row: Option<(i64,)> =
                    sqlx::query_as("SELECT position FROM trigger_cursors WHERE workspace_id = $1 AND key = $2")
                        .bind(ws.as_str())
                        .bind(key)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(row.map(|r| r.0))
            }

            async fn advance_trigger_cursor(
                &self,
                ws: &WorkspaceId,
                key: &str,
                from: Option<i64>,
                to: i64,
                triggers: &[Pending],
            ) -> Result<bool, StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                let moved = match from {
                    None => sqlx::query(
                        "INSERT INTO trigger_cursors (workspace_id, key, position) VALUES ($1, $2, $3) \
                         ON CONFLICT (workspace_id, key) DO NOTHING",
                    )
                    .bind(ws.as_str())
                    .bind(key)
                    .bind(to)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
                    Some(from) => sqlx::query(
                        "UPDATE trigger_cursors SET position = $3 WHERE workspace_id = $1 AND key = $2 AND position = $4",
                    )
                    .bind(ws.as_str())
                    .bind(key)
                    .bind(to)
                    .bind(from)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
                };
                if moved == 0 {
                    return Ok(false);
                }
                Self::queue_in(&mut tx, triggers).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn live_workspaces(&self) -> Result<Vec<WorkspaceId>, StorageError> {
                let rows: Vec<(String,)> =
                    sqlx::query_as("SELECT DISTINCT workspace_id FROM campaigns WHERE state = 'live'")
                        .fetch_all(&self.pool)
                        .await?;
                rows.into_iter()
                    .map(|(ws,)| ws.parse().map_err(|e| undecodable("campaign's workspace", e)))
                    .collect()
            }

            async fn cancel_triggers(
                &self,
                ws: &WorkspaceId,
                profile: ProfileId,
                event: &str,
                at: DateTime<Utc>,
            ) -> Result<u64, StorageError> {
                let _guard = self.writer_guard().await;
                let cancelled = sqlx::query(
                    "DELETE FROM triggers WHERE workspace_id = $1 AND profile_id = $2 AND kind = 'event' \
                     AND unless = $3 AND due_at > $4",
                )
                .bind(ws.as_str())
                .bind(profile.as_uuid())
                .bind(event)
                .bind(micros(at))
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(cancelled)
            }

            async fn claim_triggers(
                &self,
                now: DateTime<Utc>,
                lease_until: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<Pending>, StorageError> {
                let _guard = self.writer_guard().await;
                let rows: Vec<Row> = sqlx::query_as(
                    "UPDATE triggers SET lease_until = $2 \
                     WHERE due_at <= $1 AND (lease_until IS NULL OR lease_until < $1) \
                       AND id IN (SELECT id FROM triggers WHERE due_at <= $1 \
                         AND (lease_until IS NULL OR lease_until < $1) ORDER BY due_at LIMIT $3) \
                     RETURNING id, workspace_id, campaign, profile_id, kind, due_at, unless, cause",
                )
                .bind(micros(now))
                .bind(micros(lease_until))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(pending_of).collect()
            }

            async fn remove_trigger(&self, id: Uuid) -> Result<(), StorageError> {
                let _guard = self.writer_guard().await;
                sqlx::query("DELETE FROM triggers WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn swap_score(
                &self,
                ws: &WorkspaceId,
                campaign: &str,
                profile: ProfileId,
                value: f64,
            ) -> Result<Option<f64>, StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                let before: Option<(f64,)> = sqlx::query_as(
                    "SELECT value FROM trigger_scores WHERE workspace_id = $1 AND campaign = $2 AND profile_id = $3",
                )
                .bind(ws.as_str())
                .bind(campaign)
                .bind(profile.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO trigger_scores (workspace_id, campaign, profile_id, value) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (workspace_id, campaign, profile_id) DO UPDATE SET value = $4",
                )
                .bind(ws.as_str())
                .bind(campaign)
                .bind(profile.as_uuid())
                .bind(value)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(before.map(|b| b.0))
            }
        }
    };
}

trigger_store!(PgOrchestrationStore, sqlx::Postgres);
trigger_store!(SqliteOrchestrationStore, sqlx::Sqlite);
