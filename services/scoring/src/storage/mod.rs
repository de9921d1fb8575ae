//! Scoring's store: the facts of each profile's events, the aliases of merged profiles
//! and the workspaces' models. One trait, written once for Postgres and SQLite (the
//! SQL runs unchanged on both; `scoring_store!` expands it per backend) and held to one
//! conformance suite (`tests/scoring/main.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_proto::{EventId, ProfileId, WorkspaceId};
use corvus_storage::sql::{placeholders, rows};
use corvus_storage::{Database, Migrators, Statistics, StorageConfig, StorageError, Vacuum};
use futures::{StreamExt as _, TryStreamExt as _};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::Mutex;

use crate::domain::facts::Fact;
use crate::domain::features::Dated;
use crate::domain::traits::{Held, Payload};

mod audiences;
mod delivery;

pub use audiences::{AudienceStore, Definition, Definitions, MembershipChange, Standing};
use delivery::{facts_of, is_barrier, moves, segments};

static MIGRATE_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static MIGRATE_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The schema (Postgres) or file (SQLite) of the scoring service.
pub const SCHEMA: &str = "scoring";

pub fn migrators() -> Migrators {
    Migrators {
        postgres: &MIGRATE_POSTGRES,
        sqlite: &MIGRATE_SQLITE,
    }
}

/// One thing identity's log tells scoring, in log order.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// An event resolved to `profile`, with what scoring keeps of it.
    Fact {
        event: EventId,
        profile: ProfileId,
        at: DateTime<Utc>,
        fact: Box<Fact>,
        payload: Box<Payload>,
    },
    Merged {
        survivor: ProfileId,
        merged: Vec<ProfileId>,
    },
    /// Each side with every event that belongs to it now.
    Unmerged {
        sides: Vec<(ProfileId, Vec<EventId>)>,
    },
    Erased {
        profiles: Vec<ProfileId>,
    },
}

/// A profile's facts and its events' payloads, in time order.
pub type History = (Vec<Dated>, Vec<Held>);

/// A purchase, as a model is fitted from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Purchase {
    pub profile: ProfileId,
    pub at: DateTime<Utc>,
    pub revenue: f64,
}

#[async_trait]
pub trait ScoringStore: AudienceStore {
    async fn ping(&self) -> Result<(), StorageError>;

    /// Applies changes as in their order: within a run of facts and merges, the facts
    /// first and every merge after (so a fact that names an id merged earlier in the run
    /// lands with its survivor); unmerges and erasures in their place. Changes with an
    /// unmerge or an erasure among them are applied in one transaction; others in
    /// several, which a retry after a failure part way repeats harmlessly. A fact already held (by event
    /// id) is left as it is. An erasure deletes the profiles' facts and audience
    /// standings (their history of entries and exits ends in one exit, "erased").
    /// Returns, for each erasure among them, the facts and the standings it deleted.
    async fn apply(&self, changes: &[(WorkspaceId, Change)]) -> Result<Vec<(u64, u64)>, StorageError>;

    /// Those of `profiles` merged into another.
    async fn merged_among(&self, ws: &WorkspaceId, profiles: &[ProfileId]) -> Result<HashSet<ProfileId>, StorageError>;

    /// The profile `profile` stands for now (its survivor if it was merged) and that
    /// profile's facts, with those of every id merged into it, in time order.
    async fn survivor_facts(
        &self,
        ws: &WorkspaceId,
        profile: ProfileId,
    ) -> Result<(ProfileId, Vec<Dated>), StorageError>;

    /// A profile's facts and its events' payloads (for those held with one), in time
    /// order.
    async fn history(&self, ws: &WorkspaceId, profile: ProfileId) -> Result<(Vec<Dated>, Vec<Held>), StorageError>;

    /// The histories of many profiles, as `history` gives each.
    async fn histories(
        &self,
        ws: &WorkspaceId,
        profiles: &[ProfileId],
    ) -> Result<HashMap<ProfileId, History>, StorageError>;

    /// Every purchase of the workspace up to `until`, by profile.
    async fn purchases(&self, ws: &WorkspaceId, until: DateTime<Utc>) -> Result<Vec<Purchase>, StorageError>;

    /// Every fact of the workspace up to `until` (only purchases with
    /// `purchases_only`), by profile and in time order.
    async fn workspace_facts(
        &self,
        ws: &WorkspaceId,
        until: DateTime<Utc>,
        purchases_only: bool,
    ) -> Result<Vec<(ProfileId, Dated)>, StorageError>;

    async fn save_model(
        &self,
        ws: &WorkspaceId,
        kind: &str,
        model: &str,
        fitted_at: DateTime<Utc>,
    ) -> Result<(), StorageError>;

    async fn model(&self, ws: &WorkspaceId, kind: &str) -> Result<Option<String>, StorageError>;

    /// The version of each model of the workspace, by kind: each save counts it up.
    async fn model_versions(&self, ws: &WorkspaceId) -> Result<Vec<(String, i64)>, StorageError>;

    /// Every model of the workspace, by kind.
    async fn models(&self, ws: &WorkspaceId) -> Result<Vec<(String, String)>, StorageError>;

    /// The workspaces with a model of `kind`.
    async fn workspaces_with_model(&self, kind: &str) -> Result<Vec<WorkspaceId>, StorageError>;
}

fn dated(at: i64, fact: &str) -> Result<Dated, StorageError> {
    Ok(Dated {
        at: time(at),
        fact: serde_json::from_str(fact).map_err(|e| undecodable("fact", e))?,
    })
}

/// Connects the store the configuration names and runs its migrations.
pub async fn connect(config: &StorageConfig) -> Result<Arc<dyn ScoringStore>, StorageError> {
    Ok(match Database::connect(config, SCHEMA, &migrators()).await? {
        Database::Postgres(pool) => Arc::new(PgScoringStore {
            pool,
            vacuum: Vacuum::default(),
            facts_statistics: Statistics::new("scoring", ANALYZE_FIRST, ANALYZE_FACTS),
            standings_statistics: Statistics::new("scoring", ANALYZE_FIRST, ANALYZE_STANDINGS),
        }),
        Database::Sqlite(pool) => Arc::new(SqliteScoringStore {
            pool,
            writer: Mutex::new(()),
        }),
    })
}

pub struct PgScoringStore {
    pool: PgPool,
    vacuum: Vacuum,
    /// Scoring's tables analyzed as they grow: facts and aliases counted in changes
    /// applied, audience standings in standings recorded.
    facts_statistics: Arc<Statistics>,
    standings_statistics: Arc<Statistics>,
}

/// Rows written (changes applied; standings recorded) before scoring's tables are
/// first analyzed, then at each doubling, each count for its own tables: the standings
/// come in bursts (an audience's build), long after the facts, and a table analyzed
/// while still empty is planned as empty (read whole) until its next `ANALYZE`.
const ANALYZE_FIRST: u64 = 1_000;
/// The key columns scoring's lookups go by: a delivery's people's histories and
/// standings, and a person's memberships, are read by (workspace, profile), each a range
/// of an index, which a table last analyzed when it held a handful of rows is planned
/// to read whole.
const ANALYZE_FACTS: &str = "ANALYZE facts (workspace_id, profile_id, event_id), \
     aliases (workspace_id, profile_id, survivor_id)";
const ANALYZE_STANDINGS: &str = "ANALYZE audience_members (workspace_id, audience, profile_id), \
     audience_changes (workspace_id, audience, profile_id)";

pub struct SqliteScoringStore {
    pool: SqlitePool,
    /// SQLite takes one writer at a time: writers queue here rather than on the file.
    writer: Mutex<()>,
}

impl PgScoringStore {
    /// A long run of facts is written in chunks side by side (`SIDE_BY_SIDE` at a time,
    /// between half of `FACT_ROWS` and `FACT_ROWS` each): a short one in one.
    const SIDE_BY_SIDE: bool = true;

    async fn begin(
        &self,
    ) -> Result<
        (
            Option<tokio::sync::MutexGuard<'_, ()>>,
            sqlx::Transaction<'_, sqlx::Postgres>,
        ),
        sqlx::Error,
    > {
        Ok((None, self.pool.begin().await?))
    }

    /// Writers of audience changes take turns, so that the changes' sequence numbers
    /// commit in their order and a stream reading after one never skips an earlier one.
    /// Facts written by their one statement, which commits them (no transaction
    /// around it: a round trip, not three).
    async fn write_facts_alone(&self, facts: &[&(WorkspaceId, Change)]) -> Result<(), StorageError> {
        Self::write_facts(&mut *self.pool.acquire().await?, facts).await
    }

    /// A run's merges: one workspace's by their one statement, several together.
    async fn write_merges_alone(&self, moves: &delivery::Moves<'_>) -> Result<(), StorageError> {
        if moves.len() == 1 {
            return Self::write_merges(&mut *self.pool.acquire().await?, moves).await;
        }
        let mut tx = self.pool.begin().await?;
        Self::write_merges(&mut tx, moves).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn serialise_changes(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_xact_lock(7320112)")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Deleted rows leave the heap at the next VACUUM, soon after an erasure.
    async fn scrub(&self) -> Result<(), StorageError> {
        self.vacuum.soon(&self.pool, "facts, aliases");
        Ok(())
    }

    fn applied(&self, changes: usize) {
        self.facts_statistics.wrote(&self.pool, changes);
    }

    fn recorded(&self, standings: usize) {
        self.standings_statistics.wrote(&self.pool, standings);
    }
}

impl SqliteScoringStore {
    /// One writer at a time: chunks side by side would only take turns, each with a
    /// commit of its own.
    const SIDE_BY_SIDE: bool = false;

    async fn begin(
        &self,
    ) -> Result<
        (
            Option<tokio::sync::MutexGuard<'_, ()>>,
            sqlx::Transaction<'_, sqlx::Sqlite>,
        ),
        sqlx::Error,
    > {
        let guard = self.writer.lock().await;
        Ok((Some(guard), self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }

    /// SQLite's one writer at a time already commits the changes in their order.
    async fn write_facts_alone(&self, facts: &[&(WorkspaceId, Change)]) -> Result<(), StorageError> {
        let (_writer, mut tx) = self.begin().await?;
        Self::write_facts(&mut tx, facts).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn write_merges_alone(&self, moves: &delivery::Moves<'_>) -> Result<(), StorageError> {
        let (_writer, mut tx) = self.begin().await?;
        Self::write_merges(&mut tx, moves).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn serialise_changes(_: &mut sqlx::Transaction<'_, sqlx::Sqlite>) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// `secure_delete` overwrote the rows in their pages; a checkpoint leaves no copy
    /// of the old pages in the write-ahead log.
    async fn scrub(&self) -> Result<(), StorageError> {
        corvus_storage::checkpoint_sqlite(&self.pool).await
    }

    /// SQLite plans a lookup by an index's leading columns as one without statistics.
    fn applied(&self, _changes: usize) {}

    fn recorded(&self, _standings: usize) {}
}

/// Ids bound one by one into an `IN (...)` list, this many at a time.
const IN_LIST: usize = 500;

/// Facts written by one statement, at most (7 values each).
const FACT_ROWS: usize = 500;

/// Statements a delivery runs side by side, at most: half of the store's pool (16 by
/// default), which serves the API's reads too.
const SIDE_BY_SIDE: usize = 8;

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

fn undecodable(what: &str, err: impl std::fmt::Display) -> StorageError {
    StorageError::Internal(format!("{what}: {err}"))
}

/// The ids whose facts are a profile's: the one `$start` selects and every id merged
/// into it, up the chain of merges.
macro_rules! family {
    ($start:literal) => {
        concat!(
            "family(id, depth) AS ( \
                SELECT ",
            $start,
            " UNION ALL \
                SELECT a.profile_id, f.depth + 1 FROM aliases a JOIN family f \
                    ON a.workspace_id = $1 AND a.survivor_id = f.id WHERE f.depth < 64) "
        )
    };
}

/// The profile an id stands for now, up the chain of merges (each alias row names the
/// profile an id was merged into; an unmerge removes one link), with each fact of its
/// family in time order (one row with none when it has none).
const FACTS_OF_SURVIVOR: &str = concat!(
    "WITH RECURSIVE chain(id, depth) AS ( \
        SELECT $2, 0 \
        UNION ALL \
        SELECT a.survivor_id, c.depth + 1 FROM aliases a JOIN chain c \
            ON a.workspace_id = $1 AND a.profile_id = c.id WHERE c.depth < 64), \
     root(id) AS (SELECT id FROM chain ORDER BY depth DESC LIMIT 1), ",
    family!("id, 0 FROM root"),
    "SELECT r.id, f.at, f.fact FROM root r LEFT JOIN facts f \
       ON f.workspace_id = $1 AND f.profile_id IN (SELECT id FROM family) \
     ORDER BY f.at, f.event_id"
);

/// A profile's facts (with its events' payloads) and those of every id merged into it,
/// in time order.
const FACTS_OF_FAMILY: &str = concat!(
    "WITH RECURSIVE ",
    family!("$2, 0"),
    "SELECT at, fact, event FROM facts WHERE workspace_id = $1 AND profile_id IN (SELECT id FROM family) \
     ORDER BY at, event_id"
);

/// The profile an id stands for, following `next` (the profile each id was merged
/// into) up the chain of merges.
fn root_of(next: impl Fn(&ProfileId) -> Option<ProfileId>, mut id: ProfileId) -> ProfileId {
    for _ in 0..64 {
        match next(&id) {
            Some(survivor) => id = survivor,
            None => break,
        }
    }
    id
}

macro_rules! scoring_store {
    ($Store:ident, $Db:ty) => {
        impl $Store {
            /// The workspace's aliases: merged id → the profile it was merged into.
            async fn roots(&self, ws: &WorkspaceId) -> Result<HashMap<ProfileId, ProfileId>, StorageError> {
                let rows: Vec<(ProfileId, ProfileId)> =
                    sqlx::query_as("SELECT profile_id, survivor_id FROM aliases WHERE workspace_id = $1")
                        .bind(ws)
                        .fetch_all(&self.pool)
                        .await?;
                Ok(rows.into_iter().collect())
            }

            /// The histories of up to `IN_LIST` profiles (those with no facts left out).
            async fn histories_of(
                &self,
                ws: &WorkspaceId,
                chunk: &[ProfileId],
            ) -> Result<HashMap<ProfileId, History>, StorageError> {
                let mut out: HashMap<ProfileId, History> = HashMap::new();
                let list = placeholders(2, chunk.len());
                let sql = format!(
                    "SELECT profile_id, at, fact, event FROM facts WHERE workspace_id = $1 \
                     AND profile_id IN ({list}) ORDER BY profile_id, at, event_id"
                );
                let mut query = sqlx::query_as::<_, (ProfileId, i64, String, Option<String>)>(&sql).bind(ws);
                for p in chunk {
                    query = query.bind(*p);
                }
                for (profile, at, fact, event) in query.fetch_all(&self.pool).await? {
                    let entry = out.entry(profile).or_default();
                    entry.0.push(dated(at, &fact)?);
                    if let Some(event) = event {
                        entry.1.push(Held {
                            at: time(at),
                            payload: serde_json::from_str(&event).map_err(|e| undecodable("event", e))?,
                        });
                    }
                }
                // A survivor of merges may hold facts under a merged id too (an event
                // replayed after the merge): those few are read with their family.
                let sql = format!(
                    "SELECT DISTINCT a.survivor_id FROM aliases a JOIN facts f \
                     ON f.workspace_id = a.workspace_id AND f.profile_id = a.profile_id \
                     WHERE a.workspace_id = $1 AND a.survivor_id IN ({list})"
                );
                let mut query = sqlx::query_scalar::<_, ProfileId>(&sql).bind(ws);
                for p in chunk {
                    query = query.bind(*p);
                }
                for survivor in query.fetch_all(&self.pool).await? {
                    out.insert(survivor, self.history(ws, survivor).await?);
                }
                Ok(out)
            }
        }

        #[async_trait]
        impl ScoringStore for $Store {
            async fn ping(&self) -> Result<(), StorageError> {
                sqlx::query("SELECT 1 FROM models LIMIT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn apply(&self, changes: &[(WorkspaceId, Change)]) -> Result<Vec<(u64, u64)>, StorageError> {
                let mut erased = Vec::new();
                if changes.is_empty() {
                    return Ok(erased);
                }
                // In a run of facts and merges the facts are written first: a merge then
                // moves every fact of the merged id, whichever came first in the run.
                if changes.iter().any(|(_, c)| is_barrier(c)) {
                    // An erasure's counts are its answer, and an unmerge moves back only
                    // the events it names (a merge repeated by a retry would take the
                    // others with it): such a delivery is applied whole or not at all.
                    let (_writer, mut tx) = self.begin().await?;
                    for segment in segments(changes) {
                        if let [barrier] = segment
                            && is_barrier(&barrier.1)
                        {
                            erased.extend(Self::write_barrier(&mut tx, barrier).await?);
                        } else {
                            Self::write_facts(&mut *tx, &facts_of(segment)).await?;
                            Self::write_merges(&mut *tx, &moves(segment)).await?;
                        }
                    }
                    tx.commit().await?;
                    drop(_writer);
                    self.scrub().await?;
                    return Ok(erased);
                }
                // Otherwise the delivery is one run of facts and merges: its facts are
                // written in chunks side by side (Postgres), each committed alone (a fact
                // is kept once by its event id, and merges are repeated whole, so a retry
                // after a failure part way is harmless), then its merges, together.
                let facts = facts_of(changes);
                let chunk = match Self::SIDE_BY_SIDE {
                    true => facts.len().div_ceil(SIDE_BY_SIDE).clamp(FACT_ROWS / 2, FACT_ROWS),
                    false => facts.len().max(1),
                };
                let writes: Vec<_> = facts
                    .chunks(chunk)
                    .map(|part| self.write_facts_alone(part))
                    .collect();
                futures::stream::iter(writes)
                    .buffer_unordered(SIDE_BY_SIDE)
                    .try_collect::<()>()
                    .await?;
                let moves = moves(changes);
                if !moves.is_empty() {
                    self.write_merges_alone(&moves).await?;
                }
                self.applied(changes.len());
                Ok(erased)
            }

            async fn merged_among(
                &self,
                ws: &WorkspaceId,
                profiles: &[ProfileId],
            ) -> Result<HashSet<ProfileId>, StorageError> {
                let mut merged = HashSet::new();
                for chunk in profiles.chunks(IN_LIST) {
                    let sql = format!(
                        "SELECT profile_id FROM aliases WHERE workspace_id = $1 AND profile_id IN ({})",
                        placeholders(2, chunk.len())
                    );
                    let mut query = sqlx::query_scalar::<_, ProfileId>(&sql).bind(ws);
                    for p in chunk {
                        query = query.bind(*p);
                    }
                    merged.extend(query.fetch_all(&self.pool).await?);
                }
                Ok(merged)
            }

            async fn survivor_facts(
                &self,
                ws: &WorkspaceId,
                profile: ProfileId,
            ) -> Result<(ProfileId, Vec<Dated>), StorageError> {
                let rows: Vec<(ProfileId, Option<i64>, Option<String>)> = sqlx::query_as(FACTS_OF_SURVIVOR)
                    .bind(ws)
                    .bind(profile)
                    .fetch_all(&self.pool)
                    .await?;
                let survivor = rows.first().map_or(profile, |r| r.0);
                let facts = rows
                    .iter()
                    .filter_map(|(_, at, fact)| Some(dated((*at)?, fact.as_deref()?)))
                    .collect::<Result<_, _>>()?;
                Ok((survivor, facts))
            }

            async fn history(
                &self,
                ws: &WorkspaceId,
                profile: ProfileId,
            ) -> Result<(Vec<Dated>, Vec<Held>), StorageError> {
                let rows: Vec<(i64, String, Option<String>)> = sqlx::query_as(FACTS_OF_FAMILY)
                    .bind(ws)
                    .bind(profile)
                    .fetch_all(&self.pool)
                    .await?;
                let mut facts = Vec::with_capacity(rows.len());
                let mut held = Vec::with_capacity(rows.len());
                for (at, fact, event) in rows {
                    facts.push(dated(at, &fact)?);
                    if let Some(event) = event {
                        held.push(Held {
                            at: time(at),
                            payload: serde_json::from_str(&event).map_err(|e| undecodable("event", e))?,
                        });
                    }
                }
                Ok((facts, held))
            }

            async fn histories(
                &self,
                ws: &WorkspaceId,
                profiles: &[ProfileId],
            ) -> Result<HashMap<ProfileId, History>, StorageError> {
                let mut out: HashMap<ProfileId, History> =
                    profiles.iter().map(|p| (*p, (Vec::new(), Vec::new()))).collect();
                // The chunks are read side by side.
                let reads: Vec<_> = profiles.chunks(IN_LIST).map(|chunk| self.histories_of(ws, chunk)).collect();
                let mut read = futures::stream::iter(reads).buffer_unordered(SIDE_BY_SIDE);
                while let Some(histories) = read.try_next().await? {
                    out.extend(histories);
                }
                Ok(out)
            }

            async fn workspace_facts(
                &self,
                ws: &WorkspaceId,
                until: DateTime<Utc>,
                purchases_only: bool,
            ) -> Result<Vec<(ProfileId, Dated)>, StorageError> {
                let rows: Vec<(ProfileId, i64, String)> = sqlx::query_as(
                    "SELECT profile_id, at, fact FROM facts WHERE workspace_id = $1 AND at <= $2 \
                     AND (revenue IS NOT NULL OR NOT $3) ORDER BY profile_id, at, event_id",
                )
                .bind(ws)
                .bind(micros(until))
                .bind(purchases_only)
                .fetch_all(&self.pool)
                .await?;
                let roots = self.roots(ws).await?;
                let mut facts = rows
                    .into_iter()
                    .map(|(profile, at, fact)| Ok((root_of(|p| roots.get(p).copied(), profile), dated(at, &fact)?)))
                    .collect::<Result<Vec<_>, StorageError>>()?;
                // Facts under an id merged away (rare: an event replayed after the merge)
                // join their survivor's.
                facts.sort_by(|(a, x), (b, y)| a.cmp(b).then(x.at.cmp(&y.at)));
                Ok(facts)
            }

            async fn purchases(&self, ws: &WorkspaceId, until: DateTime<Utc>) -> Result<Vec<Purchase>, StorageError> {
                let rows: Vec<(ProfileId, i64, f64)> = sqlx::query_as(
                    "SELECT profile_id, at, revenue FROM facts \
                     WHERE workspace_id = $1 AND revenue IS NOT NULL AND at <= $2",
                )
                .bind(ws)
                .bind(micros(until))
                .fetch_all(&self.pool)
                .await?;
                let roots = self.roots(ws).await?;
                Ok(rows
                    .into_iter()
                    .map(|(profile, at, revenue)| Purchase {
                        profile: root_of(|p| roots.get(p).copied(), profile),
                        at: time(at),
                        revenue,
                    })
                    .collect())
            }

            async fn save_model(
                &self,
                ws: &WorkspaceId,
                kind: &str,
                model: &str,
                fitted_at: DateTime<Utc>,
            ) -> Result<(), StorageError> {
                let (_writer, mut tx) = self.begin().await?;
                sqlx::query(
                    "INSERT INTO models (workspace_id, kind, model, fitted_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (workspace_id, kind) DO UPDATE SET model = excluded.model, fitted_at = excluded.fitted_at, \
                     version = models.version + 1",
                )
                .bind(ws)
                .bind(kind)
                .bind(model)
                .bind(micros(fitted_at))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn models(&self, ws: &WorkspaceId) -> Result<Vec<(String, String)>, StorageError> {
                Ok(
                    sqlx::query_as("SELECT kind, model FROM models WHERE workspace_id = $1 ORDER BY kind")
                        .bind(ws)
                        .fetch_all(&self.pool)
                        .await?,
                )
            }

            async fn workspaces_with_model(&self, kind: &str) -> Result<Vec<WorkspaceId>, StorageError> {
                Ok(
                    sqlx::query_scalar("SELECT workspace_id FROM models WHERE kind = $1 ORDER BY workspace_id")
                        .bind(kind)
                        .fetch_all(&self.pool)
                        .await?,
                )
            }

            async fn model_versions(&self, ws: &WorkspaceId) -> Result<Vec<(String, i64)>, StorageError> {
                Ok(
                    sqlx::query_as("SELECT kind, version FROM models WHERE workspace_id = $1 ORDER BY kind")
                        .bind(ws)
                        .fetch_all(&self.pool)
                        .await?,
                )
            }

            async fn model(&self, ws: &WorkspaceId, kind: &str) -> Result<Option<String>, StorageError> {
                Ok(
                    sqlx::query_scalar("SELECT model FROM models WHERE workspace_id = $1 AND kind = $2")
                        .bind(ws)
                        .bind(kind)
                        .fetch_optional(&self.pool)
                        .await?,
                )
            }
        }
    };
}

scoring_store!(PgScoringStore, sqlx::Postgres);
scoring_store!(SqliteScoringStore, sqlx::Sqlite);
