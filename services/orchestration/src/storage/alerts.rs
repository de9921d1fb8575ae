//! Alert rules, the alerts they raise, the cooldowns that make one cause raise one
//! alert, and the churn risk each person was last seen with. Written once for both
//! backends (`alert_store!`), like the rest of orchestration's store.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_proto::{ProfileId, WorkspaceId};
use corvus_storage::StorageError;
use uuid::Uuid;

use super::{PgOrchestrationStore, SqliteOrchestrationStore, micros, time, undecodable};
use crate::domain::alert::{Kind, Rule, Summary};

/// A rule as kept.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRule {
    pub rule: Rule,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Open,
    Acknowledged,
    Assigned,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Acknowledged => "acknowledged",
            Self::Assigned => "assigned",
        }
    }

    fn parse(text: &str) -> Result<Self, StorageError> {
        match text {
            "open" => Ok(Self::Open),
            "acknowledged" => Ok(Self::Acknowledged),
            "assigned" => Ok(Self::Assigned),
            other => Err(undecodable("alert state", other)),
        }
    }
}

/// How an alert's webhook went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookState {
    /// The rule has no webhook.
    None,
    Pending,
    Delivered,
    Failed,
}

impl WebhookState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<Self, StorageError> {
        match text {
            "none" => Ok(Self::None),
            "pending" => Ok(Self::Pending),
            "delivered" => Ok(Self::Delivered),
            "failed" => Ok(Self::Failed),
            other => Err(undecodable("alert webhook state", other)),
        }
    }
}

/// An alert about to be raised.
#[derive(Debug, Clone)]
pub struct NewAlert {
    pub id: Uuid,
    pub rule: String,
    pub kind: Kind,
    pub profile: ProfileId,
    pub reason: String,
    pub event_id: String,
    pub raised_at: DateTime<Utc>,
    pub summary: Summary,
    /// Whether the rule has a webhook to deliver it to.
    pub webhook: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub workspace: WorkspaceId,
    pub id: Uuid,
    pub sequence: u64,
    pub rule: String,
    pub kind: Kind,
    pub profile: ProfileId,
    pub reason: String,
    pub event_id: String,
    pub raised_at: DateTime<Utc>,
    pub state: AlertState,
    pub assignee: String,
    pub note: String,
    pub updated_at: DateTime<Utc>,
    pub summary: Summary,
    pub webhook: WebhookState,
    pub webhook_attempts: u32,
    pub webhook_error: String,
}

/// What raising came to.
#[derive(Debug, Clone)]
pub enum Raised {
    Alert(Box<Alert>),
    /// The rule is cooling down for the person until then: nothing raised.
    Cooling(DateTime<Utc>),
}

/// Which alerts: each set field narrows.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub rules: Vec<String>,
    pub segment: Option<String>,
    pub region: Option<String>,
    pub state: Option<AlertState>,
    pub profile: Option<ProfileId>,
}

/// An attempt's end, recorded on the alert.
#[derive(Debug, Clone)]
pub struct WebhookAttempt {
    pub state: WebhookState,
    pub attempts: u32,
    pub error: String,
    /// Pending: when it is next due.
    pub next_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait AlertStore: Send + Sync {
    /// False when the name is taken.
    async fn create_rule(&self, ws: &WorkspaceId, rule: &Rule, at: DateTime<Utc>) -> Result<bool, StorageError>;

    /// The workspace's rules, by name.
    async fn rules(&self, ws: &WorkspaceId) -> Result<Vec<StoredRule>, StorageError>;

    /// Every workspace's rules of `kind`.
    async fn rules_of_kind(&self, kind: Kind) -> Result<Vec<(WorkspaceId, StoredRule)>, StorageError>;

    /// Deletes a rule and its cooldowns (its alerts stay); false when there was none.
    async fn delete_rule(&self, ws: &WorkspaceId, name: &str) -> Result<bool, StorageError>;

    /// Counts every change of the workspace's rules: a cache is current while it holds
    /// the count.
    async fn rules_changed(&self, ws: &WorkspaceId) -> Result<i64, StorageError>;

    /// Raises the alert unless its rule is cooling down for the person: the cooldown is
    /// checked and moved to `until` in one statement, and the alert numbered and kept
    /// in the same transaction, so that of replicas raising it at once one does.
    async fn raise(&self, ws: &WorkspaceId, alert: &NewAlert, until: DateTime<Utc>) -> Result<Raised, StorageError>;

    async fn alert(&self, ws: &WorkspaceId, id: Uuid) -> Result<Option<Alert>, StorageError>;

    /// Alerts after `after` (a sequence; before it when `newest_first`), at most `limit`.
    async fn alerts(
        &self,
        ws: &WorkspaceId,
        filter: &AlertFilter,
        after: Option<u64>,
        limit: u32,
        newest_first: bool,
    ) -> Result<Vec<Alert>, StorageError>;

    /// The sequence of the workspace's latest alert (0 before the first).
    async fn last_alert(&self, ws: &WorkspaceId) -> Result<u64, StorageError>;

    /// Open becomes acknowledged; `None` for an unknown alert.
    async fn acknowledge(&self, ws: &WorkspaceId, id: Uuid, at: DateTime<Utc>) -> Result<Option<Alert>, StorageError>;

    async fn assign(
        &self,
        ws: &WorkspaceId,
        id: Uuid,
        assignee: &str,
        note: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<Alert>, StorageError>;

    /// Claims a look at the person's churn risk, unless one was taken within `recheck`
    /// of `now`: `Some` with the risk last seen (none the first time), else `None`.
    async fn look_at_churn(
        &self,
        ws: &WorkspaceId,
        profile: ProfileId,
        now: DateTime<Utc>,
        recheck: chrono::Duration,
    ) -> Result<Option<Option<f64>>, StorageError>;

    /// Keeps the churn risk a look found.
    async fn saw_churn(&self, ws: &WorkspaceId, profile: ProfileId, risk: f64) -> Result<(), StorageError>;

    /// Leases up to `limit` pending webhooks due by `now`, in every workspace, until
    /// `lease_until`: another replica takes none of them before then.
    async fn claim_webhooks(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Alert>, StorageError>;

    /// Records how a webhook attempt ended.
    async fn webhook_attempted(
        &self,
        ws: &WorkspaceId,
        sequence: u64,
        attempt: &WebhookAttempt,
    ) -> Result<(), StorageError>;

    /// Deletes the people's alerts, cooldowns and churn risk seen; the rows deleted.
    async fn erase_alerts(&self, ws: &WorkspaceId, profiles: &[ProfileId]) -> Result<u64, StorageError>;
}

const ALERT: &str = "SELECT workspace_id, sequence, alert_id, rule, kind, profile_id, event_id, reason, raised_at, \
     state, assignee, note, updated_at, summary, webhook_state, webhook_attempts, webhook_error FROM alerts";

#[derive(sqlx::FromRow)]
struct AlertRow {
    workspace_id: String,
    sequence: i64,
    alert_id: Uuid,
    rule: String,
    kind: String,
    profile_id: Uuid,
    event_id: String,
    reason: String,
    raised_at: i64,
    state: String,
    assignee: String,
    note: String,
    updated_at: i64,
    summary: String,
    webhook_state: String,
    webhook_attempts: i32,
    webhook_error: String,
}

fn alert_of(row: AlertRow) -> Result<Alert, StorageError> {
    Ok(Alert {
        workspace: row
            .workspace_id
            .parse()
            .map_err(|e| undecodable("alert's workspace", e))?,
        id: row.alert_id,
        sequence: row.sequence as u64,
        rule: row.rule,
        kind: Kind::parse(&row.kind).ok_or_else(|| undecodable("alert kind", &row.kind))?,
        profile: row.profile_id.into(),
        reason: row.reason,
        event_id: row.event_id,
        raised_at: time(row.raised_at),
        state: AlertState::parse(&row.state)?,
        assignee: row.assignee,
        note: row.note,
        updated_at: time(row.updated_at),
        summary: serde_json::from_str(&row.summary).map_err(|e| undecodable("alert summary", e))?,
        webhook: WebhookState::parse(&row.webhook_state)?,
        webhook_attempts: row.webhook_attempts as u32,
        webhook_error: row.webhook_error,
    })
}

/// The conditions of a filter after `$1` (the workspace), numbered from `$2`, with the
/// values to bind in order.
fn conditions(filter: &AlertFilter) -> (String, Vec<String>) {
    let mut sql = String::new();
    let mut binds = Vec::new();
    let next = |binds: &mut Vec<String>, value: String| {
        binds.push(value);
        format!("${}", binds.len() + 1)
    };
    if !filter.rules.is_empty() {
        let slots: Vec<String> = filter.rules.iter().map(|r| next(&mut binds, r.clone())).collect();
        sql.push_str(&format!(" AND rule IN ({})", slots.join(", ")));
    }
    if let Some(segment) = &filter.segment {
        sql.push_str(&format!(" AND segment = {}", next(&mut binds, segment.clone())));
    }
    if let Some(region) = &filter.region {
        sql.push_str(&format!(" AND region = {}", next(&mut binds, region.clone())));
    }
    if let Some(state) = filter.state {
        sql.push_str(&format!(" AND state = {}", next(&mut binds, state.as_str().to_owned())));
    }
    (sql, binds)
}

const BUMP_RULES: &str = "INSERT INTO alert_counters (workspace_id, rules) VALUES ($1, 1) \
     ON CONFLICT (workspace_id) DO UPDATE SET rules = alert_counters.rules + 1";

macro_rules! alert_store {
    ($Store:ident, $Db:ty) => {
        impl $Store {
            async fn alert_by_id<'e, E>(executor: E, ws: &WorkspaceId, id: Uuid) -> Result<Option<Alert>, StorageError>
            where
                E: sqlx::Executor<'e, Database = $Db>,
            {
                let row: Option<AlertRow> =
                    sqlx::query_as(&format!("{ALERT} WHERE workspace_id = $1 AND alert_id = $2"))
                        .bind(ws.as_str())
                        .bind(id)
                        .fetch_optional(executor)
                        .await?;
                row.map(alert_of).transpose()
            }
        }

        #[async_trait]
        impl AlertStore for $Store {
            async fn create_rule(
                &self,
                ws: &WorkspaceId,
                rule: &Rule,
                at: DateTime<Utc>,
            ) -> Result<bool, StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                let inserted = sqlx::query(
                    "INSERT INTO alert_rules (workspace_id, name, definition, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (workspace_id, name) DO NOTHING",
                )
                .bind(ws.as_str())
                .bind(&rule.name)
                .bind(serde_json::to_string(rule).expect("a rule serialises"))
                .bind(micros(at))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    return Ok(false);
                }
                sqlx::query(BUMP_RULES)
                    .bind(ws.as_str())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn rules(&self, ws: &WorkspaceId) -> Result<Vec<StoredRule>, StorageError> {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT definition, created_at FROM alert_rules WHERE workspace_id = $1 ORDER BY name",
                )
                .bind(ws.as_str())
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(definition, created_at)| {
                        Ok(StoredRule {
                            rule: serde_json::from_str(&definition).map_err(|e| undecodable("alert rule", e))?,
                            created_at: time(created_at),
                        })
                    })
                    .collect()
            }

            async fn rules_of_kind(&self, kind: Kind) -> Result<Vec<(WorkspaceId, StoredRule)>, StorageError> {
                // The kind is inside the definition's JSON (`"condition":{"kind":…`).
                let rows: Vec<(String, String, i64)> = sqlx::query_as(
                    "SELECT workspace_id, definition, created_at FROM alert_rules \
                     WHERE definition LIKE $1 ORDER BY workspace_id, name",
                )
                .bind(format!("%\"kind\":\"{}\"%", kind.as_str()))
                .fetch_all(&self.pool)
                .await?;
                let mut found = Vec::new();
                for (ws, definition, created_at) in rows {
                    let rule: Rule = serde_json::from_str(&definition).map_err(|e| undecodable("alert rule", e))?;
                    if let (Ok(ws), true) = (ws.parse::<WorkspaceId>(), rule.kind() == kind) {
                        found.push((
                            ws,
                            StoredRule {
                                rule,
                                created_at: time(created_at),
                            },
                        ));
                    }
                }
                Ok(found)
            }

            async fn delete_rule(&self, ws: &WorkspaceId, name: &str) -> Result<bool, StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                let deleted = sqlx::query("DELETE FROM alert_rules WHERE workspace_id = $1 AND name = $2")
                    .bind(ws.as_str())
                    .bind(name)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if deleted == 0 {
                    return Ok(false);
                }
                sqlx::query("DELETE FROM cooldowns WHERE workspace_id = $1 AND rule = $2")
                    .bind(ws.as_str())
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(BUMP_RULES)
                    .bind(ws.as_str())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn rules_changed(&self, ws: &WorkspaceId) -> Result<i64, StorageError> {
                let row: Option<(i64,)> = sqlx::query_as("SELECT rules FROM alert_counters WHERE workspace_id = $1")
                    .bind(ws.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map_or(0, |r| r.0))
            }

            async fn raise(
                &self,
                ws: &WorkspaceId,
                alert: &NewAlert,
                until: DateTime<Utc>,
            ) -> Result<Raised, StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                let now = micros(alert.raised_at);
                // Of two replicas here at once, the second waits on the first's row and
                // then finds its cooldown running.
                let moved = sqlx::query(
                    "INSERT INTO cooldowns (workspace_id, rule, profile_id, until_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (workspace_id, rule, profile_id) DO UPDATE SET until_at = $4 \
                     WHERE cooldowns.until_at <= $5",
                )
                .bind(ws.as_str())
                .bind(&alert.rule)
                .bind(alert.profile.as_uuid())
                .bind(micros(until))
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if moved == 0 {
                    let (ends,): (i64,) = sqlx::query_as(
                        "SELECT until_at FROM cooldowns WHERE workspace_id = $1 AND rule = $2 AND profile_id = $3",
                    )
                    .bind(ws.as_str())
                    .bind(&alert.rule)
                    .bind(alert.profile.as_uuid())
                    .fetch_one(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    return Ok(Raised::Cooling(time(ends)));
                }
                // The workspace's counter row orders alerts: each commits before the next
                // takes its sequence.
                let (sequence,): (i64,) = sqlx::query_as(
                    "INSERT INTO alert_counters (workspace_id, alerts) VALUES ($1, 1) \
                     ON CONFLICT (workspace_id) DO UPDATE SET alerts = alert_counters.alerts + 1 \
                     RETURNING alerts",
                )
                .bind(ws.as_str())
                .fetch_one(&mut *tx)
                .await?;
                let webhook = match alert.webhook {
                    true => WebhookState::Pending,
                    false => WebhookState::None,
                };
                sqlx::query(
                    "INSERT INTO alerts (workspace_id, sequence, alert_id, rule, kind, profile_id, event_id, reason, \
                     raised_at, state, updated_at, summary, segment, region, webhook_state, webhook_next_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'open', $9, $10, $11, $12, $13, $14)",
                )
                .bind(ws.as_str())
                .bind(sequence)
                .bind(alert.id)
                .bind(&alert.rule)
                .bind(alert.kind.as_str())
                .bind(alert.profile.as_uuid())
                .bind(&alert.event_id)
                .bind(&alert.reason)
                .bind(now)
                .bind(serde_json::to_string(&alert.summary).expect("a summary serialises"))
                .bind(&alert.summary.segment)
                .bind(&alert.summary.region)
                .bind(webhook.as_str())
                .bind(alert.webhook.then_some(now))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Raised::Alert(Box::new(Alert {
                    workspace: ws.clone(),
                    id: alert.id,
                    sequence: sequence as u64,
                    rule: alert.rule.clone(),
                    kind: alert.kind,
                    profile: alert.profile,
                    reason: alert.reason.clone(),
                    event_id: alert.event_id.clone(),
                    raised_at: time(now),
                    state: AlertState::Open,
                    assignee: String::new(),
                    note: String::new(),
                    updated_at: time(now),
                    summary: alert.summary.clone(),
                    webhook,
                    webhook_attempts: 0,
                    webhook_error: String::new(),
                })))
            }

            async fn alert(&self, ws: &WorkspaceId, id: Uuid) -> Result<Option<Alert>, StorageError> {
                Self::alert_by_id(&self.pool, ws, id).await
            }

            async fn alerts(
                &self,
                ws: &WorkspaceId,
                filter: &AlertFilter,
                after: Option<u64>,
                limit: u32,
                newest_first: bool,
            ) -> Result<Vec<Alert>, StorageError> {
                let (narrow, binds) = conditions(filter);
                let n = binds.len();
                let (profile, at, limit_at) = (n + 2, n + 3, n + 4);
                let (position, order, from) = match newest_first {
                    false => (">", "", after.map_or(0, |a| a as i64)),
                    true => ("<", " DESC", after.map_or(i64::MAX, |a| a as i64)),
                };
                let sql = format!(
                    "{ALERT} WHERE workspace_id = $1{narrow} AND (${profile} IS NULL OR profile_id = ${profile}) \
                     AND sequence {position} ${at} ORDER BY sequence{order} LIMIT ${limit_at}"
                );
                let mut query = sqlx::query_as::<_, AlertRow>(&sql).bind(ws.as_str());
                for value in binds {
                    query = query.bind(value);
                }
                let rows = query
                    .bind(filter.profile.map(|p| p.as_uuid()))
                    .bind(from)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(alert_of).collect()
            }

            async fn last_alert(&self, ws: &WorkspaceId) -> Result<u64, StorageError> {
                let row: Option<(i64,)> = sqlx::query_as("SELECT alerts FROM alert_counters WHERE workspace_id = $1")
                    .bind(ws.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map_or(0, |r| r.0 as u64))
            }

            async fn acknowledge(
                &self,
                ws: &WorkspaceId,
                id: Uuid,
                at: DateTime<Utc>,
            ) -> Result<Option<Alert>, StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                sqlx::query(
                    "UPDATE alerts SET state = 'acknowledged', updated_at = $3 \
                     WHERE workspace_id = $1 AND alert_id = $2 AND state = 'open'",
                )
                .bind(ws.as_str())
                .bind(id)
                .bind(micros(at))
                .execute(&mut *tx)
                .await?;
                let alert = Self::alert_by_id(&mut *tx, ws, id).await?;
                tx.commit().await?;
                Ok(alert)
            }

            async fn assign(
                &self,
                ws: &WorkspaceId,
                id: Uuid,
                assignee: &str,
                note: &str,
                at: DateTime<Utc>,
            ) -> Result<Option<Alert>, StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                sqlx::query(
                    "UPDATE alerts SET state = 'assigned', assignee = $3, note = $4, updated_at = $5 \
                     WHERE workspace_id = $1 AND alert_id = $2",
                )
                .bind(ws.as_str())
                .bind(id)
                .bind(assignee)
                .bind(note)
                .bind(micros(at))
                .execute(&mut *tx)
                .await?;
                let alert = Self::alert_by_id(&mut *tx, ws, id).await?;
                tx.commit().await?;
                Ok(alert)
            }

            async fn look_at_churn(
                &self,
                ws: &WorkspaceId,
                profile: ProfileId,
                now: DateTime<Utc>,
                recheck: chrono::Duration,
            ) -> Result<Option<Option<f64>>, StorageError> {
                let _guard = self.writer_guard().await;
                // The row comes back only when inserted or moved: the risk it held then.
                let row: Option<(Option<f64>,)> = sqlx::query_as(
                    "INSERT INTO churn_seen (workspace_id, profile_id, looked_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (workspace_id, profile_id) DO UPDATE SET looked_at = $3 \
                     WHERE churn_seen.looked_at <= $4 \
                     RETURNING churn_risk",
                )
                .bind(ws.as_str())
                .bind(profile.as_uuid())
                .bind(micros(now))
                .bind(micros(now - recheck))
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|r| r.0))
            }

            async fn saw_churn(&self, ws: &WorkspaceId, profile: ProfileId, risk: f64) -> Result<(), StorageError> {
                let _guard = self.writer_guard().await;
                sqlx::query("UPDATE churn_seen SET churn_risk = $3 WHERE workspace_id = $1 AND profile_id = $2")
                    .bind(ws.as_str())
                    .bind(profile.as_uuid())
                    .bind(risk)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn claim_webhooks(
                &self,
                now: DateTime<Utc>,
                lease_until: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<Alert>, StorageError> {
                let _guard = self.writer_guard().await;
                // The due time is checked again on each row as it is updated: of two
                // replicas choosing the same rows, the second finds them held and takes
                // none.
                let rows: Vec<AlertRow> = sqlx::query_as(&format!(
                    "UPDATE alerts SET webhook_next_at = $2 \
                     WHERE webhook_state = 'pending' AND webhook_next_at <= $1 \
                       AND (workspace_id, sequence) IN (SELECT workspace_id, sequence FROM alerts \
                         WHERE webhook_state = 'pending' AND webhook_next_at <= $1 \
                         ORDER BY webhook_next_at LIMIT $3) \
                     RETURNING {}",
                    ALERT
                        .trim_start_matches("SELECT ")
                        .trim_end_matches(" FROM alerts")
                ))
                .bind(micros(now))
                .bind(micros(lease_until))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(alert_of).collect()
            }

            async fn webhook_attempted(
                &self,
                ws: &WorkspaceId,
                sequence: u64,
                attempt: &WebhookAttempt,
            ) -> Result<(), StorageError> {
                let _guard = self.writer_guard().await;
                sqlx::query(
                    "UPDATE alerts SET webhook_state = $3, webhook_attempts = $4, webhook_error = $5, \
                     webhook_next_at = $6 WHERE workspace_id = $1 AND sequence = $2",
                )
                .bind(ws.as_str())
                .bind(sequence as i64)
                .bind(attempt.state.as_str())
                .bind(attempt.attempts as i32)
                .bind(&attempt.error)
                .bind(attempt.next_at.map(micros))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn erase_alerts(&self, ws: &WorkspaceId, profiles: &[ProfileId]) -> Result<u64, StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                let mut removed = 0;
                for id in profiles {
                    for table in ["alerts", "cooldowns", "churn_seen"] {
                        removed += sqlx::query(&format!(
                            "DELETE FROM {table} WHERE workspace_id = $1 AND profile_id = $2"
                        ))
                        .bind(ws.as_str())
                        .bind(id.as_uuid())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    }
                }
                tx.commit().await?;
                Ok(removed)
            }
        }
    };
}

alert_store!(PgOrchestrationStore, sqlx::Postgres);
alert_store!(SqliteOrchestrationStore, sqlx::Sqlite);
