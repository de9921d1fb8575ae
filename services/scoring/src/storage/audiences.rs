//! Computed traits' and audiences' definitions, each profile's standing in each
//! audience, and the entries and exits in the order they happened. Written once for
//! both backends (`audience_store!`), like the rest of scoring's store.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_proto::{ProfileId, WorkspaceId};
use corvus_storage::StorageError;

use std::collections::HashMap;

use super::{IN_LIST, PgScoringStore, SqliteScoringStore, micros, placeholders, rows, time};

/// A saved definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub name: String,
    /// JSON.
    pub definition: String,
    pub created_at: DateTime<Utc>,
    /// Audiences: when every profile held at creation had been evaluated.
    pub built_at: Option<DateTime<Utc>>,
}

/// A profile's standing in an audience as just evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub audience: String,
    pub profile: ProfileId,
    pub member: bool,
    pub recheck_at: Option<DateTime<Utc>>,
    /// Why it was evaluated: "event", "merge", "time", "backfill", ...
    pub reason: &'static str,
}

/// An entry into or exit from an audience.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipChange {
    pub seq: i64,
    pub audience: String,
    pub profile: ProfileId,
    pub entered: bool,
    pub at: DateTime<Utc>,
    pub reason: String,
}

#[async_trait]
pub trait AudienceStore: Send + Sync + 'static {
    /// Saves a computed trait (`table` "computed_traits") or an audience ("audiences");
    /// false when the name is taken.
    async fn define(
        &self,
        ws: &WorkspaceId,
        table: Definitions,
        name: &str,
        definition: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StorageError>;

    async fn definitions(&self, ws: &WorkspaceId, table: Definitions) -> Result<Vec<Definition>, StorageError>;

    /// Deletes a definition (an audience with its members and changes); false when
    /// there was none.
    async fn undefine(&self, ws: &WorkspaceId, table: Definitions, name: &str) -> Result<bool, StorageError>;

    /// Audiences still being built, in every workspace.
    async fn building(&self) -> Result<Vec<(WorkspaceId, String)>, StorageError>;

    async fn mark_built(&self, ws: &WorkspaceId, audience: &str, at: DateTime<Utc>) -> Result<(), StorageError>;

    /// Records standings in one transaction, writing only those that differ from the
    /// ones held; returns the entries and exits they make. Concurrent recorders take
    /// turns, so each change is recorded once.
    async fn record(
        &self,
        ws: &WorkspaceId,
        standings: &[Standing],
        at: DateTime<Utc>,
    ) -> Result<Vec<MembershipChange>, StorageError>;

    /// Standings due to be looked at again by `now`, in every workspace.
    async fn due(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<(WorkspaceId, ProfileId)>, StorageError>;

    /// An audience's members after `after` in profile id order, with the time they
    /// entered.
    async fn members(
        &self,
        ws: &WorkspaceId,
        audience: &str,
        after: Option<ProfileId>,
        limit: i64,
    ) -> Result<Vec<(ProfileId, DateTime<Utc>)>, StorageError>;

    async fn member_count(&self, ws: &WorkspaceId, audience: &str) -> Result<u64, StorageError>;

    /// The audiences a profile is in.
    async fn memberships(&self, ws: &WorkspaceId, profile: ProfileId) -> Result<Vec<String>, StorageError>;

    /// The audiences each of `profiles` is in, sorted (a profile in none left out).
    async fn memberships_of(
        &self,
        ws: &WorkspaceId,
        profiles: &[ProfileId],
    ) -> Result<HashMap<ProfileId, Vec<String>>, StorageError>;

    /// An audience's entries and exits after `after` (a change's seq), oldest first.
    async fn changes(
        &self,
        ws: &WorkspaceId,
        audience: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<MembershipChange>, StorageError>;

    /// The sequence of an audience's latest entry or exit (0 before the first).
    async fn last_change(&self, ws: &WorkspaceId, audience: &str) -> Result<i64, StorageError>;

    /// Every profile scoring holds events of, in the workspace.
    async fn profiles(&self, ws: &WorkspaceId) -> Result<Vec<ProfileId>, StorageError>;
}

/// Which definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Definitions {
    Traits,
    Audiences,
}

impl Definitions {
    fn table(self) -> &'static str {
        match self {
            Definitions::Traits => "computed_traits",
            Definitions::Audiences => "audiences",
        }
    }
}

type ChangeRow = (i64, String, ProfileId, bool, i64, String);

fn change((seq, audience, profile, entered, at, reason): ChangeRow) -> MembershipChange {
    MembershipChange {
        seq,
        audience,
        profile,
        entered,
        at: time(at),
        reason,
    }
}

/// Rows one statement of `record` writes at most (six values each).
const ROWS: usize = 500;

/// An audience and a profile: a standing's key.
type Key = (String, ProfileId);
/// A standing as held: member, since, recheck_at (microseconds).
type Held = (bool, i64, Option<i64>);

/// What recording standings changes: rows gone, rows written, and the entries and exits
/// (audience, profile, entered, reason) in the standings' order.
struct Plan<'a> {
    deleted: Vec<Key>,
    held: Vec<(Key, Held)>,
    changes: Vec<(&'a str, ProfileId, bool, &'static str)>,
}

/// The writes that take `held` (the rows as they stand) to `standings`, each compared
/// with the one before it, so that a profile standing twice in a call is recorded in
/// turn; only what differs is written. Keys in order, as every recorder locks them.
fn plan_standings(standings: &[Standing], mut held: HashMap<Key, Held>, at: DateTime<Utc>) -> Plan<'_> {
    let mut writes: HashMap<Key, Option<Held>> = HashMap::new();
    let mut changes = Vec::new();
    for s in standings {
        let recheck = s.recheck_at.map(micros);
        let key = (s.audience.clone(), s.profile);
        let before = held.get(&key).copied();
        match before {
            // Nothing held, and nothing to hold: out, with nothing due.
            None if !s.member && recheck.is_none() => continue,
            Some((member, _, due)) if member == s.member && due == recheck => continue,
            Some(_) if !s.member && recheck.is_none() => {
                held.remove(&key);
                writes.insert(key, None);
            }
            _ => {
                let since = match before {
                    Some((member, since, _)) if member == s.member => since,
                    _ => micros(at),
                };
                held.insert(key.clone(), (s.member, since, recheck));
                writes.insert(key, Some((s.member, since, recheck)));
            }
        }
        if before.is_some_and(|(member, _, _)| member) != s.member {
            changes.push((s.audience.as_str(), s.profile, s.member, s.reason));
        }
    }
    let mut writes: Vec<_> = writes.into_iter().collect();
    writes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let (mut deleted, mut kept) = (Vec::new(), Vec::new());
    for (key, write) in writes {
        match write {
            Some(standing) => kept.push((key, standing)),
            None => deleted.push(key),
        }
    }
    Plan {
        deleted,
        held: kept,
        changes,
    }
}

macro_rules! audience_store {
    ($Store:ident) => {
        #[async_trait]
        impl AudienceStore for $Store {
            async fn define(
                &self,
                ws: &WorkspaceId,
                table: Definitions,
                name: &str,
                definition: &str,
                at: DateTime<Utc>,
            ) -> Result<bool, StorageError> {
                let (_writer, mut tx) = self.begin().await?;
                let inserted = sqlx::query(&format!(
                    "INSERT INTO {} (workspace_id, name, definition, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (workspace_id, name) DO NOTHING",
                    table.table()
                ))
                .bind(ws)
                .bind(name)
                .bind(definition)
                .bind(micros(at))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(inserted == 1)
            }

            async fn definitions(&self, ws: &WorkspaceId, table: Definitions) -> Result<Vec<Definition>, StorageError> {
                let built = match table {
                    Definitions::Traits => "NULL",
                    Definitions::Audiences => "built_at",
                };
                let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(&format!(
                    "SELECT name, definition, created_at, {built} FROM {} WHERE workspace_id = $1 ORDER BY name",
                    table.table()
                ))
                .bind(ws)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(name, definition, created_at, built_at)| Definition {
                        name,
                        definition,
                        created_at: time(created_at),
                        built_at: built_at.map(time),
                    })
                    .collect())
            }

            async fn undefine(&self, ws: &WorkspaceId, table: Definitions, name: &str) -> Result<bool, StorageError> {
                let (_writer, mut tx) = self.begin().await?;
                let deleted = sqlx::query(&format!(
                    "DELETE FROM {} WHERE workspace_id = $1 AND name = $2",
                    table.table()
                ))
                .bind(ws)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if table == Definitions::Audiences {
                    for of in ["audience_members", "audience_changes"] {
                        sqlx::query(&format!("DELETE FROM {of} WHERE workspace_id = $1 AND audience = $2"))
                            .bind(ws)
                            .bind(name)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
                Ok(deleted == 1)
            }

            async fn building(&self) -> Result<Vec<(WorkspaceId, String)>, StorageError> {
                Ok(
                    sqlx::query_as("SELECT workspace_id, name FROM audiences WHERE built_at IS NULL ORDER BY created_at")
                        .fetch_all(&self.pool)
                        .await?,
                )
            }

            async fn mark_built(&self, ws: &WorkspaceId, audience: &str, at: DateTime<Utc>) -> Result<(), StorageError> {
                let (_writer, mut tx) = self.begin().await?;
                sqlx::query("UPDATE audiences SET built_at = $3 WHERE workspace_id = $1 AND name = $2")
                    .bind(ws)
                    .bind(audience)
                    .bind(micros(at))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn record(
                &self,
                ws: &WorkspaceId,
                standings: &[Standing],
                at: DateTime<Utc>,
            ) -> Result<Vec<MembershipChange>, StorageError> {
                if standings.is_empty() {
                    return Ok(Vec::new());
                }
                let (_writer, mut tx) = self.begin().await?;
                // Recorders take turns (see `serialise_changes`), so the standings read here
                // are the ones each write replaces: a change is recorded once.
                Self::serialise_changes(&mut tx).await?;
                let mut profiles: Vec<ProfileId> = standings.iter().map(|s| s.profile).collect();
                profiles.sort();
                profiles.dedup();
                let mut held: HashMap<Key, Held> = HashMap::new();
                for chunk in profiles.chunks(IN_LIST) {
                    let sql = format!(
                        "SELECT audience, profile_id, member, since, recheck_at FROM audience_members \
                         WHERE workspace_id = $1 AND profile_id IN ({})",
                        placeholders(2, chunk.len())
                    );
                    let mut query = sqlx::query_as::<_, (String, ProfileId, bool, i64, Option<i64>)>(&sql).bind(ws);
                    for p in chunk {
                        query = query.bind(*p);
                    }
                    for (audience, profile, member, since, recheck) in query.fetch_all(&mut *tx).await? {
                        held.insert((audience, profile), (member, since, recheck));
                    }
                }
                let plan = plan_standings(standings, held, at);
                // Each step in statements of many rows: the transaction holds its id (and so
                // every log's read horizon) for a few round trips, not one a standing.
                for chunk in plan.deleted.chunks(ROWS) {
                    let sql = format!(
                        "DELETE FROM audience_members WHERE workspace_id = $1 AND (audience, profile_id) IN (VALUES {})",
                        rows(2, chunk.len(), 2)
                    );
                    let mut query = sqlx::query(&sql).bind(ws);
                    for (audience, profile) in chunk {
                        query = query.bind(audience).bind(*profile);
                    }
                    query.execute(&mut *tx).await?;
                }
                for chunk in plan.held.chunks(ROWS) {
                    let sql = format!(
                        "INSERT INTO audience_members (workspace_id, audience, profile_id, member, since, recheck_at) \
                         VALUES {} ON CONFLICT (workspace_id, audience, profile_id) DO UPDATE SET \
                         member = excluded.member, since = excluded.since, recheck_at = excluded.recheck_at",
                        rows(1, chunk.len(), 6)
                    );
                    let mut query = sqlx::query(&sql);
                    for ((audience, profile), (member, since, recheck)) in chunk {
                        query = query.bind(ws).bind(audience).bind(*profile).bind(*member).bind(*since).bind(*recheck);
                    }
                    query.execute(&mut *tx).await?;
                }
                let mut changes = Vec::with_capacity(plan.changes.len());
                for chunk in plan.changes.chunks(ROWS) {
                    let sql = format!(
                        "INSERT INTO audience_changes (workspace_id, audience, profile_id, entered, at, reason) \
                         VALUES {} RETURNING seq, audience, profile_id, entered, reason",
                        rows(1, chunk.len(), 6)
                    );
                    let mut query = sqlx::query_as::<_, (i64, String, ProfileId, bool, String)>(&sql);
                    for (audience, profile, entered, reason) in chunk {
                        query = query.bind(ws).bind(*audience).bind(*profile).bind(*entered).bind(micros(at)).bind(*reason);
                    }
                    let mut rows = query.fetch_all(&mut *tx).await?;
                    rows.sort_by_key(|row| row.0);
                    changes.extend(rows.into_iter().map(|(seq, audience, profile, entered, reason)| MembershipChange {
                        seq,
                        audience,
                        profile,
                        entered,
                        at,
                        reason,
                    }));
                }
                tx.commit().await?;
                self.recorded(plan.deleted.len() + plan.held.len());
                Ok(changes)
            }

            async fn due(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<(WorkspaceId, ProfileId)>, StorageError> {
                Ok(sqlx::query_as(
                    "SELECT DISTINCT workspace_id, profile_id FROM ( \
                         SELECT workspace_id, profile_id FROM audience_members \
                         WHERE recheck_at IS NOT NULL AND recheck_at <= $1 ORDER BY recheck_at LIMIT $2) due",
                )
                .bind(micros(now))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn members(
                &self,
                ws: &WorkspaceId,
                audience: &str,
                after: Option<ProfileId>,
                limit: i64,
            ) -> Result<Vec<(ProfileId, DateTime<Utc>)>, StorageError> {
                let rows: Vec<(ProfileId, i64)> = sqlx::query_as(
                    "SELECT profile_id, since FROM audience_members \
                     WHERE workspace_id = $1 AND audience = $2 AND member AND ($3 IS NULL OR profile_id > $3) \
                     ORDER BY profile_id LIMIT $4",
                )
                .bind(ws)
                .bind(audience)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(|(p, since)| (p, time(since))).collect())
            }

            async fn member_count(&self, ws: &WorkspaceId, audience: &str) -> Result<u64, StorageError> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM audience_members WHERE workspace_id = $1 AND audience = $2 AND member",
                )
                .bind(ws)
                .bind(audience)
                .fetch_one(&self.pool)
                .await?;
                Ok(n.max(0) as u64)
            }

            async fn memberships(&self, ws: &WorkspaceId, profile: ProfileId) -> Result<Vec<String>, StorageError> {
                // Sorted here, not by the statement: an ORDER BY audience lets the planner
                // walk the primary key (workspace, audience, profile) over every entry of
                // the workspace to spare a sort, rather than take the person's few entries
                // through `audience_members_of_profile`, and a plan made while the table
                // was small does just that.
                let mut audiences: Vec<String> = sqlx::query_scalar(
                    "SELECT audience FROM audience_members WHERE workspace_id = $1 AND profile_id = $2 AND member",
                )
                .bind(ws)
                .bind(profile)
                .fetch_all(&self.pool)
                .await?;
                audiences.sort_unstable();
                Ok(audiences)
            }

            async fn memberships_of(
                &self,
                ws: &WorkspaceId,
                profiles: &[ProfileId],
            ) -> Result<HashMap<ProfileId, Vec<String>>, StorageError> {
                let mut out: HashMap<ProfileId, Vec<String>> = HashMap::new();
                for chunk in profiles.chunks(IN_LIST) {
                    let sql = format!(
                        "SELECT profile_id, audience FROM audience_members \
                         WHERE workspace_id = $1 AND profile_id IN ({}) AND member",
                        placeholders(2, chunk.len())
                    );
                    let mut query = sqlx::query_as::<_, (ProfileId, String)>(&sql).bind(ws);
                    for p in chunk {
                        query = query.bind(*p);
                    }
                    for (profile, audience) in query.fetch_all(&self.pool).await? {
                        out.entry(profile).or_default().push(audience);
                    }
                }
                for audiences in out.values_mut() {
                    audiences.sort_unstable();
                }
                Ok(out)
            }

            async fn changes(
                &self,
                ws: &WorkspaceId,
                audience: &str,
                after: i64,
                limit: i64,
            ) -> Result<Vec<MembershipChange>, StorageError> {
                let rows: Vec<ChangeRow> = sqlx::query_as(
                    "SELECT seq, audience, profile_id, entered, at, reason FROM audience_changes \
                     WHERE workspace_id = $1 AND audience = $2 AND seq > $3 ORDER BY seq LIMIT $4",
                )
                .bind(ws)
                .bind(audience)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(change).collect())
            }

            async fn last_change(&self, ws: &WorkspaceId, audience: &str) -> Result<i64, StorageError> {
                let seq: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(seq) FROM audience_changes WHERE workspace_id = $1 AND audience = $2",
                )
                .bind(ws)
                .bind(audience)
                .fetch_one(&self.pool)
                .await?;
                Ok(seq.unwrap_or(0))
            }

            async fn profiles(&self, ws: &WorkspaceId) -> Result<Vec<ProfileId>, StorageError> {
                Ok(
                    sqlx::query_scalar(
                        "SELECT DISTINCT profile_id FROM facts WHERE workspace_id = $1 ORDER BY profile_id",
                    )
                    .bind(ws)
                    .fetch_all(&self.pool)
                    .await?,
                )
            }
        }
    };
}

audience_store!(PgScoringStore);
audience_store!(SqliteScoringStore);
