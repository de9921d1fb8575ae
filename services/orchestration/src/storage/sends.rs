//! Connectors and the sends waiting for them, for delivery.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_proto::{ProfileId, WorkspaceId};
use corvus_storage::StorageError;
use corvus_storage::sql::{placeholders, rows};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{PgOrchestrationStore, SqliteOrchestrationStore, micros, time, undecodable};

/// Where a workspace's sends on a channel go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorDef {
    pub channel: String,
    pub kind: ConnectorKind,
    pub rate_per_second: f64,
    pub max_attempts: u32,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ConnectorKind {
    Webhook { url: String, secret: String },
    Log,
}

impl ConnectorDef {
    /// The log connector with the defaults, for a channel with none set.
    pub fn log(channel: &str) -> Self {
        Self {
            channel: channel.to_owned(),
            kind: ConnectorKind::Log,
            rate_per_second: 50.0,
            max_attempts: 8,
            timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendState {
    Pending,
    Sent,
    Dead,
}

impl SendState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Dead => "dead",
        }
    }

    fn parse(text: &str) -> Result<Self, StorageError> {
        match text {
            "pending" => Ok(Self::Pending),
            "sent" => Ok(Self::Sent),
            "dead" => Ok(Self::Dead),
            other => Err(StorageError::Internal(format!("unknown send state {other:?}"))),
        }
    }
}

/// What a decision that sends hands delivery, in its transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    /// `kind:value` of the address, empty when the person has none.
    pub recipient: String,
    /// The JSON a connector sends.
    pub payload: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SendRow {
    pub decision_id: Uuid,
    pub workspace: WorkspaceId,
    pub profile: ProfileId,
    pub campaign: String,
    pub channel: String,
    pub state: SendState,
    pub attempts: u32,
    pub send_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub last_error: String,
    pub receipt: String,
    pub recipient: String,
    pub payload: String,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    Sent { receipt: String, at: DateTime<Utc> },
    Retry { error: String, next: DateTime<Utc> },
    Dead { error: String },
}

#[async_trait]
pub trait SendStore: Send + Sync {
    async fn set_connector(&self, ws: &WorkspaceId, connector: &ConnectorDef) -> Result<(), StorageError>;
    async fn connectors(&self, ws: &WorkspaceId) -> Result<Vec<ConnectorDef>, StorageError>;
    /// False when the channel had none.
    async fn delete_connector(&self, ws: &WorkspaceId, channel: &str) -> Result<bool, StorageError>;

    /// The (workspace, channel) queues with a send due by `now` and not leased.
    async fn due_queues(&self, now: DateTime<Utc>) -> Result<Vec<(WorkspaceId, String)>, StorageError>;

    /// Leases up to `limit` of a queue's sends due by `now`, earliest first, until
    /// `lease_until`: another replica takes none of them before then.
    async fn claim(
        &self,
        ws: &WorkspaceId,
        channel: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<SendRow>, StorageError>;

    /// Records attempts' ends (and counts each attempt); frees their leases. One
    /// transaction for them all.
    async fn settle(&self, settled: &[(Uuid, Settle)]) -> Result<(), StorageError>;

    /// Sends that ended (sent or dead) and are not yet reported back as events.
    async fn unreported(&self, limit: u32) -> Result<Vec<SendRow>, StorageError>;
    async fn mark_reported(&self, decisions: &[Uuid]) -> Result<(), StorageError>;

    async fn sends(
        &self,
        ws: &WorkspaceId,
        state: Option<SendState>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<SendRow>, StorageError>;

    /// A dead send pending again from `now`, its attempts counted afresh; `None` when
    /// there is no such dead send.
    async fn retry_send(
        &self,
        ws: &WorkspaceId,
        decision: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<SendRow>, StorageError>;
}

const SEND: &str = "SELECT decision_id, workspace_id, profile_id, campaign, channel, state, attempts, send_at, \
     next_attempt_at, sent_at, last_error, receipt, recipient, payload FROM sends";

type Row = (
    Uuid,
    String,
    Uuid,
    String,
    String,
    String,
    i32,
    i64,
    i64,
    Option<i64>,
    String,
    String,
    String,
    String,
);

fn send_of(row: Row) -> Result<SendRow, StorageError> {
    let (id, ws, profile, campaign, channel, state, attempts, send_at, next, sent_at, error, receipt, to, payload) =
        row;
    Ok(SendRow {
        decision_id: id,
        workspace: ws.parse().map_err(|e| undecodable("send's workspace", e))?,
        profile: profile.into(),
        campaign,
        channel,
        state: SendState::parse(&state)?,
        attempts: attempts as u32,
        send_at: time(send_at),
        next_attempt_at: time(next),
        sent_at: sent_at.map(time),
        last_error: error,
        receipt,
        recipient: to,
        payload,
    })
}

/// Sends settled or marked reported by one statement, at most (three values each).
const SETTLED_AT_ONCE: usize = 300;

/// The queues with a send due (each workspace's channel).
const DUE_QUEUES: &str = "SELECT DISTINCT workspace_id, channel FROM sends \
     WHERE state = 'pending' AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until < $1)";

/// The sends a claim takes: the head of the queue, not leased.
macro_rules! queue_head {
    () => {
        "SELECT decision_id FROM sends WHERE workspace_id = $1 AND channel = $2 AND state = 'pending' \
         AND next_attempt_at <= $3 AND (lease_until IS NULL OR lease_until < $3) ORDER BY next_attempt_at LIMIT $5"
    };
}

impl PgOrchestrationStore {
    /// Taken once, as an array, so that the update finds the rows by key: as `IN (…)` the
    /// planner may join every due send of every queue instead.
    const CHOSEN: &str = concat!("= ANY(ARRAY(", queue_head!(), "))");

    /// Through the pending sends' index: statistics taken while most sends were new (and
    /// pending) have the planner read every send ever made instead, a poll's cost
    /// growing with the table.
    async fn due_queue_rows(&self, now: i64) -> Result<Vec<(String, String)>, StorageError> {
        let mut tx = self.pool.begin_with("BEGIN; SET LOCAL enable_seqscan = off").await?;
        let rows = sqlx::query_as(DUE_QUEUES).bind(now).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows)
    }
}

impl SqliteOrchestrationStore {
    const CHOSEN: &str = concat!("IN (", queue_head!(), ")");

    async fn due_queue_rows(&self, now: i64) -> Result<Vec<(String, String)>, StorageError> {
        Ok(sqlx::query_as(DUE_QUEUES).bind(now).fetch_all(&self.pool).await?)
    }
}

macro_rules! send_store {
    ($Store:ident) => {
        #[async_trait]
        impl SendStore for $Store {
            async fn set_connector(&self, ws: &WorkspaceId, connector: &ConnectorDef) -> Result<(), StorageError> {
                let _guard = self.writer_guard().await;
                sqlx::query(
                    "INSERT INTO connectors (workspace_id, channel, definition) VALUES ($1, $2, $3) \
                     ON CONFLICT (workspace_id, channel) DO UPDATE SET definition = $3",
                )
                .bind(ws.as_str())
                .bind(&connector.channel)
                .bind(serde_json::to_string(connector).expect("a connector serialises"))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn connectors(&self, ws: &WorkspaceId) -> Result<Vec<ConnectorDef>, StorageError> {
                let rows: Vec<(String,)> =
                    sqlx::query_as("SELECT definition FROM connectors WHERE workspace_id = $1 ORDER BY channel")
                        .bind(ws.as_str())
                        .fetch_all(&self.pool)
                        .await?;
                rows.into_iter()
                    .map(|(d,)| serde_json::from_str(&d).map_err(|e| undecodable("connector", e)))
                    .collect()
            }

            async fn delete_connector(&self, ws: &WorkspaceId, channel: &str) -> Result<bool, StorageError> {
                let _guard = self.writer_guard().await;
                let deleted = sqlx::query("DELETE FROM connectors WHERE workspace_id = $1 AND channel = $2")
                    .bind(ws.as_str())
                    .bind(channel)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(deleted > 0)
            }

            async fn due_queues(&self, now: DateTime<Utc>) -> Result<Vec<(WorkspaceId, String)>, StorageError> {
                let rows = self.due_queue_rows(micros(now)).await?;
                rows.into_iter()
                    .map(|(ws, channel)| Ok((ws.parse().map_err(|e| undecodable("send's workspace", e))?, channel)))
                    .collect()
            }

            async fn claim(
                &self,
                ws: &WorkspaceId,
                channel: &str,
                now: DateTime<Utc>,
                lease_until: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<SendRow>, StorageError> {
                let _guard = self.writer_guard().await;
                // The lease is checked again on each row as it is updated: of two replicas
                // choosing the same rows, the second finds them leased and takes none.
                let rows: Vec<Row> = sqlx::query_as(&format!(
                    "UPDATE sends SET lease_until = $4 \
                     WHERE decision_id {} \
                       AND state = 'pending' AND next_attempt_at <= $3 AND (lease_until IS NULL OR lease_until < $3) \
                     RETURNING {}",
                    Self::CHOSEN,
                    SEND.trim_start_matches("SELECT ").trim_end_matches(" FROM sends")
                ))
                .bind(ws.as_str())
                .bind(channel)
                .bind(micros(now))
                .bind(micros(lease_until))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                let mut sends: Vec<SendRow> = rows.into_iter().map(send_of).collect::<Result<_, _>>()?;
                sends.sort_by_key(|s| (s.next_attempt_at, s.decision_id));
                Ok(sends)
            }

            async fn settle(&self, settled: &[(Uuid, Settle)]) -> Result<(), StorageError> {
                if settled.is_empty() {
                    return Ok(());
                }
                let _guard = self.writer_guard().await;
                let mut tx = self.pool.begin().await?;
                // The sends that went out (most of them), in a statement for many.
                let sent: Vec<(&Uuid, &String, i64)> = settled
                    .iter()
                    .filter_map(|(decision, settle)| match settle {
                        Settle::Sent { receipt, at } => Some((decision, receipt, micros(*at))),
                        _ => None,
                    })
                    .collect();
                for chunk in sent.chunks(SETTLED_AT_ONCE) {
                    let sql = format!(
                        "UPDATE sends SET state = 'sent', attempts = attempts + 1, lease_until = NULL, \
                         receipt = v.column2, sent_at = v.column3 FROM (VALUES {}) AS v \
                         WHERE sends.decision_id = v.column1 AND sends.state = 'pending'",
                        rows(1, chunk.len(), 3)
                    );
                    let mut query = sqlx::query(&sql);
                    for (decision, receipt, at) in chunk {
                        query = query.bind(*decision).bind(*receipt).bind(*at);
                    }
                    query.execute(&mut *tx).await?;
                }
                for (decision, settle) in settled {
                    let query = match settle {
                        Settle::Sent { .. } => continue,
                        Settle::Retry { error, next } => sqlx::query(
                            "UPDATE sends SET attempts = attempts + 1, lease_until = NULL, last_error = $2, \
                             next_attempt_at = $3 WHERE decision_id = $1 AND state = 'pending'",
                        )
                        .bind(decision)
                        .bind(error)
                        .bind(micros(*next)),
                        Settle::Dead { error } => sqlx::query(
                            "UPDATE sends SET state = 'dead', attempts = attempts + 1, lease_until = NULL, \
                             last_error = $2 WHERE decision_id = $1 AND state = 'pending'",
                        )
                        .bind(decision)
                        .bind(error),
                    };
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn unreported(&self, limit: u32) -> Result<Vec<SendRow>, StorageError> {
                let rows: Vec<Row> = sqlx::query_as(&format!(
                    "{SEND} WHERE state <> 'pending' AND NOT reported ORDER BY decision_id LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(send_of).collect()
            }

            async fn mark_reported(&self, decisions: &[Uuid]) -> Result<(), StorageError> {
                let _guard = self.writer_guard().await;
                let mut tx = self.pool.begin().await?;
                for chunk in decisions.chunks(SETTLED_AT_ONCE) {
                    let sql = format!(
                        "UPDATE sends SET reported = true WHERE decision_id IN ({})",
                        placeholders(1, chunk.len())
                    );
                    let mut query = sqlx::query(&sql);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn sends(
                &self,
                ws: &WorkspaceId,
                state: Option<SendState>,
                after: Option<Uuid>,
                limit: u32,
            ) -> Result<Vec<SendRow>, StorageError> {
                let rows: Vec<Row> = sqlx::query_as(&format!(
                    "{SEND} WHERE workspace_id = $1 AND ($2 IS NULL OR state = $2) AND decision_id > $3 \
                     ORDER BY decision_id LIMIT $4"
                ))
                .bind(ws.as_str())
                .bind(state.map(SendState::as_str))
                .bind(after.unwrap_or(Uuid::nil()))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(send_of).collect()
            }

            async fn retry_send(
                &self,
                ws: &WorkspaceId,
                decision: Uuid,
                now: DateTime<Utc>,
            ) -> Result<Option<SendRow>, StorageError> {
                let _guard = self.writer_guard().await;
                let moved = sqlx::query(
                    "UPDATE sends SET state = 'pending', attempts = 0, next_attempt_at = $3, lease_until = NULL, \
                     reported = false WHERE workspace_id = $1 AND decision_id = $2 AND state = 'dead'",
                )
                .bind(ws.as_str())
                .bind(decision)
                .bind(micros(now))
                .execute(&self.pool)
                .await?
                .rows_affected();
                if moved == 0 {
                    return Ok(None);
                }
                let row: Option<Row> = sqlx::query_as(&format!("{SEND} WHERE decision_id = $1"))
                    .bind(decision)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(send_of).transpose()
            }
        }
    };
}

send_store!(PgOrchestrationStore);
send_store!(SqliteOrchestrationStore);
