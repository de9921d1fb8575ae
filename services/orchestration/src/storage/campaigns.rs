//! Campaigns and their versions and states, and the workspace's control group.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_proto::WorkspaceId;
use corvus_storage::StorageError;
use serde::{Deserialize, Serialize};

use super::{PgOrchestrationStore, SqliteOrchestrationStore, micros, time, undecodable};
use crate::domain::campaign::Definition;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Draft,
    Live,
    Paused,
    Ended,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Live => "live",
            Self::Paused => "paused",
            Self::Ended => "ended",
        }
    }

    pub(super) fn parse(text: &str) -> Result<Self, StorageError> {
        match text {
            "draft" => Ok(Self::Draft),
            "live" => Ok(Self::Live),
            "paused" => Ok(Self::Paused),
            "ended" => Ok(Self::Ended),
            other => Err(StorageError::Internal(format!("unknown campaign state {other:?}"))),
        }
    }

    /// The states a campaign may move to this one from (itself included: setting the
    /// state it is in changes nothing).
    pub fn reached_from(self) -> &'static [State] {
        match self {
            Self::Draft => &[Self::Draft],
            Self::Live => &[Self::Draft, Self::Live, Self::Paused],
            Self::Paused => &[Self::Live, Self::Paused],
            Self::Ended => &[Self::Draft, Self::Live, Self::Paused, Self::Ended],
        }
    }
}

/// A campaign as stored: a version's definition, and the campaign's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub definition: Definition,
    pub version: u32,
    pub state: State,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why a campaign write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("no campaign is named {0:?}")]
    NotFound(String),
    #[error("a campaign is already named {0:?}")]
    Exists(String),
    #[error("campaign {name:?} is {state}; it cannot become {to}", state = .state.as_str(), to = .to.as_str())]
    State { name: String, state: State, to: State },
    #[error("campaign {name:?} is at version {current}, not {expected}")]
    Version { name: String, current: u32, expected: u32 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for WriteError {
    fn from(err: sqlx::Error) -> Self {
        Self::Storage(err.into())
    }
}

#[async_trait]
pub trait CampaignStore: Send + Sync {
    async fn create_campaign(
        &self,
        ws: &WorkspaceId,
        def: &Definition,
        at: DateTime<Utc>,
    ) -> Result<Stored, WriteError>;

    /// A new version; refused for an ended campaign, or when `expected` is not the
    /// current version.
    async fn update_campaign(
        &self,
        ws: &WorkspaceId,
        def: &Definition,
        expected: Option<u32>,
        at: DateTime<Utc>,
    ) -> Result<Stored, WriteError>;

    /// The current version, or `version`'s definition with the state as now.
    async fn campaign(
        &self,
        ws: &WorkspaceId,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<Stored>, StorageError>;

    /// Every campaign, current versions, by name.
    async fn campaigns(&self, ws: &WorkspaceId) -> Result<Vec<Stored>, StorageError>;

    async fn set_state(&self, ws: &WorkspaceId, name: &str, to: State, at: DateTime<Utc>)
    -> Result<Stored, WriteError>;

    /// Pauses every live campaign among `names`; returns those it paused.
    async fn pause(&self, ws: &WorkspaceId, names: &[String], at: DateTime<Utc>) -> Result<Vec<String>, StorageError>;

    /// Counts every change of the workspace's campaigns: a cache is current while it
    /// holds the count.
    async fn campaigns_changed(&self, ws: &WorkspaceId) -> Result<i64, StorageError>;

    async fn control_share(&self, ws: &WorkspaceId) -> Result<f64, StorageError>;
    async fn set_control_share(&self, ws: &WorkspaceId, share: f64) -> Result<(), StorageError>;
}

fn definition_json(def: &Definition) -> String {
    serde_json::to_string(def).expect("a definition serialises")
}

type CampaignRow = (String, i32, String, i64, i64, String);

fn stored(row: CampaignRow) -> Result<Stored, StorageError> {
    let (name, version, state, created_at, updated_at, definition) = row;
    Ok(Stored {
        definition: serde_json::from_str(&definition).map_err(|e| undecodable(&format!("campaign {name}"), e))?,
        version: version as u32,
        state: State::parse(&state)?,
        created_at: time(created_at),
        updated_at: time(updated_at),
    })
}

/// A campaign with its current version's definition.
const CAMPAIGN: &str = "SELECT c.name, c.version, c.state, c.created_at, c.updated_at, v.definition \
     FROM campaigns c JOIN campaign_versions v \
       ON v.workspace_id = c.workspace_id AND v.name = c.name AND v.version = c.version \
     WHERE c.workspace_id = $1";

const BUMP: &str = "INSERT INTO workspaces (workspace_id, campaigns) VALUES ($1, 1) \
     ON CONFLICT (workspace_id) DO UPDATE SET campaigns = workspaces.campaigns + 1";

/// The ids a person's decisions are kept under: their own and those merged into it.
macro_rules! campaign_store {
    ($Store:ident, $Db:ty) => {
        impl $Store {
            /// Keeps a version's definition, counts the change, commits, and returns the
            /// campaign as it now stands.
            async fn add_version(
                mut tx: sqlx::Transaction<'_, $Db>,
                ws: &WorkspaceId,
                def: &Definition,
                version: i32,
                at: DateTime<Utc>,
            ) -> Result<Stored, StorageError> {
                sqlx::query(
                    "INSERT INTO campaign_versions (workspace_id, name, version, definition, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(ws.as_str())
                .bind(&def.name)
                .bind(version)
                .bind(definition_json(def))
                .bind(micros(at))
                .execute(&mut *tx)
                .await?;
                sqlx::query(BUMP).bind(ws.as_str()).execute(&mut *tx).await?;
                let stored = Self::current(&mut tx, ws, &def.name).await?;
                tx.commit().await?;
                Ok(stored.expect("the campaign just written"))
            }

            async fn current(
                tx: &mut sqlx::Transaction<'_, $Db>,
                ws: &WorkspaceId,
                name: &str,
            ) -> Result<Option<Stored>, StorageError> {
                let row: Option<CampaignRow> = sqlx::query_as(&format!("{CAMPAIGN} AND c.name = $2"))
                    .bind(ws.as_str())
                    .bind(name)
                    .fetch_optional(&mut **tx)
                    .await?;
                row.map(stored).transpose()
            }
        }

        #[async_trait]
        impl CampaignStore for $Store {
            async fn create_campaign(
                &self,
                ws: &WorkspaceId,
                def: &Definition,
                at: DateTime<Utc>,
            ) -> Result<Stored, WriteError> {
                let (_guard, mut tx) = self.begin().await?;
                let inserted = sqlx::query(
                    "INSERT INTO campaigns (workspace_id, name, version, state, created_at, updated_at) \
                     VALUES ($1, $2, 1, 'draft', $3, $3) ON CONFLICT (workspace_id, name) DO NOTHING",
                )
                .bind(ws.as_str())
                .bind(&def.name)
                .bind(micros(at))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    return Err(WriteError::Exists(def.name.clone()));
                }
                Ok(Self::add_version(tx, ws, def, 1, at).await?)
            }

            async fn update_campaign(
                &self,
                ws: &WorkspaceId,
                def: &Definition,
                expected: Option<u32>,
                at: DateTime<Utc>,
            ) -> Result<Stored, WriteError> {
                let (_guard, mut tx) = self.begin().await?;
                let version: Option<(i32,)> = sqlx::query_as(
                    "UPDATE campaigns SET version = version + 1, updated_at = $3 \
                     WHERE workspace_id = $1 AND name = $2 AND state <> 'ended' AND version = COALESCE($4, version) \
                     RETURNING version",
                )
                .bind(ws.as_str())
                .bind(&def.name)
                .bind(micros(at))
                .bind(expected.map(|v| v as i32))
                .fetch_optional(&mut *tx)
                .await?;
                let Some((version,)) = version else {
                    let now = Self::current(&mut tx, ws, &def.name).await?;
                    return Err(match now {
                        None => WriteError::NotFound(def.name.clone()),
                        Some(c) if c.state == State::Ended => WriteError::State {
                            name: def.name.clone(),
                            state: c.state,
                            to: c.state,
                        },
                        Some(c) => WriteError::Version {
                            name: def.name.clone(),
                            current: c.version,
                            expected: expected.unwrap_or_default(),
                        },
                    });
                };
                Ok(Self::add_version(tx, ws, def, version, at).await?)
            }

            async fn campaign(
                &self,
                ws: &WorkspaceId,
                name: &str,
                version: Option<u32>,
            ) -> Result<Option<Stored>, StorageError> {
                let row: Option<CampaignRow> = match version {
                    None => {
                        sqlx::query_as(&format!("{CAMPAIGN} AND c.name = $2"))
                            .bind(ws.as_str())
                            .bind(name)
                            .fetch_optional(&self.pool)
                            .await?
                    }
                    Some(version) => {
                        sqlx::query_as(
                            "SELECT c.name, v.version, c.state, c.created_at, c.updated_at, v.definition \
                             FROM campaigns c JOIN campaign_versions v \
                               ON v.workspace_id = c.workspace_id AND v.name = c.name \
                             WHERE c.workspace_id = $1 AND c.name = $2 AND v.version = $3",
                        )
                        .bind(ws.as_str())
                        .bind(name)
                        .bind(version as i32)
                        .fetch_optional(&self.pool)
                        .await?
                    }
                };
                row.map(stored).transpose()
            }

            async fn campaigns(&self, ws: &WorkspaceId) -> Result<Vec<Stored>, StorageError> {
                let rows: Vec<CampaignRow> = sqlx::query_as(&format!("{CAMPAIGN} ORDER BY c.name"))
                    .bind(ws.as_str())
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(stored).collect()
            }

            async fn set_state(
                &self,
                ws: &WorkspaceId,
                name: &str,
                to: State,
                at: DateTime<Utc>,
            ) -> Result<Stored, WriteError> {
                let (_guard, mut tx) = self.begin().await?;
                let Some(now) = Self::current(&mut tx, ws, name).await? else {
                    return Err(WriteError::NotFound(name.to_owned()));
                };
                if now.state == to {
                    return Ok(now);
                }
                let from: Vec<&str> = to.reached_from().iter().map(|s| s.as_str()).collect();
                let moved = sqlx::query(
                    "UPDATE campaigns SET state = $3, updated_at = $4 \
                     WHERE workspace_id = $1 AND name = $2 AND state IN ($5, $6, $7, $8)",
                )
                .bind(ws.as_str())
                .bind(name)
                .bind(to.as_str())
                .bind(micros(at))
                .bind(from.first().copied())
                .bind(from.get(1).copied())
                .bind(from.get(2).copied())
                .bind(from.get(3).copied())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if moved == 0 {
                    let now = Self::current(&mut tx, ws, name).await?.map_or(now.state, |c| c.state);
                    return Err(WriteError::State {
                        name: name.to_owned(),
                        state: now,
                        to,
                    });
                }
                sqlx::query(BUMP).bind(ws.as_str()).execute(&mut *tx).await?;
                let stored = Self::current(&mut tx, ws, name).await?;
                tx.commit().await?;
                Ok(stored.expect("the campaign just written"))
            }

            async fn pause(
                &self,
                ws: &WorkspaceId,
                names: &[String],
                at: DateTime<Utc>,
            ) -> Result<Vec<String>, StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                let mut paused = Vec::new();
                for name in names {
                    let moved = sqlx::query(
                        "UPDATE campaigns SET state = 'paused', updated_at = $3 \
                         WHERE workspace_id = $1 AND name = $2 AND state = 'live'",
                    )
                    .bind(ws.as_str())
                    .bind(name)
                    .bind(micros(at))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if moved > 0 {
                        paused.push(name.clone());
                    }
                }
                sqlx::query(BUMP).bind(ws.as_str()).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(paused)
            }

            async fn campaigns_changed(&self, ws: &WorkspaceId) -> Result<i64, StorageError> {
                let row: Option<(i64,)> = sqlx::query_as("SELECT campaigns FROM workspaces WHERE workspace_id = $1")
                    .bind(ws.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map_or(0, |r| r.0))
            }

            async fn control_share(&self, ws: &WorkspaceId) -> Result<f64, StorageError> {
                let row: Option<(f64,)> =
                    sqlx::query_as("SELECT control_share FROM workspaces WHERE workspace_id = $1")
                        .bind(ws.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(row.map_or(0.0, |r| r.0))
            }

            async fn set_control_share(&self, ws: &WorkspaceId, share: f64) -> Result<(), StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                sqlx::query(
                    "INSERT INTO workspaces (workspace_id, campaigns, control_share) VALUES ($1, 1, $2) \
                     ON CONFLICT (workspace_id) DO UPDATE \
                     SET control_share = $2, campaigns = workspaces.campaigns + 1",
                )
                .bind(ws.as_str())
                .bind(share)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

campaign_store!(PgOrchestrationStore, sqlx::Postgres);
campaign_store!(SqliteOrchestrationStore, sqlx::Sqlite);
