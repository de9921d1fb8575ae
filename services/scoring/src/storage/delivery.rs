//! How a delivery of identity's log is cut for writing (runs of facts and merges
//! between unmerges and erasures, each run's facts once, and where its merges move
//! facts), and the writes of each step.

use std::collections::BTreeMap;

use chrono::Utc;
use corvus_proto::{ProfileId, WorkspaceId};
use corvus_storage::StorageError;
use corvus_storage::sql::rows;

use super::{Change, FACT_ROWS, IN_LIST, PgScoringStore, SqliteScoringStore, micros, root_of, undecodable};

pub(super) fn is_barrier(change: &Change) -> bool {
    matches!(change, Change::Unmerged { .. } | Change::Erased { .. })
}

/// Changes cut into runs of facts and merges, each unmerge and erasure alone between
/// them, in order.
pub(super) fn segments(changes: &[(WorkspaceId, Change)]) -> Vec<&[(WorkspaceId, Change)]> {
    changes
        .chunk_by(|(_, a), (_, b)| !is_barrier(a) && !is_barrier(b))
        .collect()
}

/// A run's facts, each event once (a replay can bring one twice; two chunks side by side
/// inserting the same two events in turn would deadlock).
pub(super) fn facts_of(run: &[(WorkspaceId, Change)]) -> Vec<&(WorkspaceId, Change)> {
    let mut seen = std::collections::HashSet::new();
    run.iter()
        .filter(|(ws, c)| matches!(c, Change::Fact { event, .. } if seen.insert((ws, *event))))
        .collect()
}

/// A run's merges, per workspace: where each merged id's facts go (to where the run's
/// chain of merges ends: a merged into b and b into c send a and b to c, in whichever
/// order they came), and each alias as merged (a to b, b to c).
pub(super) type Moves<'a> = BTreeMap<&'a WorkspaceId, (BTreeMap<ProfileId, ProfileId>, BTreeMap<ProfileId, ProfileId>)>;

pub(super) fn moves(run: &[(WorkspaceId, Change)]) -> Moves<'_> {
    let mut moves: Moves<'_> = BTreeMap::new();
    for (ws, change) in run {
        if let Change::Merged { survivor, merged } = change {
            let (to, _) = moves.entry(ws).or_default();
            for id in merged {
                to.insert(*id, *survivor);
            }
        }
    }
    for (to, aliases) in moves.values_mut() {
        aliases.clone_from(to);
        for end in to.values_mut() {
            *end = root_of(|p| aliases.get(p).copied(), *end);
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(survivor: ProfileId, merged: &[ProfileId]) -> (WorkspaceId, Change) {
        (
            "acme".parse().unwrap(),
            Change::Merged {
                survivor,
                merged: merged.to_vec(),
            },
        )
    }

    /// Facts go to the end of the run's chain, in whichever order its links came; the
    /// aliases are the links as merged.
    #[test]
    fn a_runs_merges_move_facts_to_the_end_of_their_chain() {
        let [a, b, c, d, e] = [(); 5].map(|_| ProfileId::new());
        for run in [
            vec![merged(b, &[a]), merged(c, &[b]), merged(e, &[d])],
            vec![merged(c, &[b]), merged(b, &[a]), merged(e, &[d])],
        ] {
            let moves = moves(&run);
            let (to, aliases) = &moves[&"acme".parse::<WorkspaceId>().unwrap()];
            assert_eq!(to, &BTreeMap::from([(a, c), (b, c), (d, e)]));
            assert_eq!(aliases, &BTreeMap::from([(a, b), (b, c), (d, e)]));
        }
    }
}

/// A delivery's unmerges and erasures, written once for both backends; its facts and
/// merges' moves are each backend's own (below: arrays on Postgres, a statement for
/// many rows on SQLite).
macro_rules! delivery_writes {
    ($Store:ident, $Db:ty) => {
        impl $Store {
            /// Applies an unmerge or an erasure; returns what an erasure deleted.
            pub(super) async fn write_barrier(
                tx: &mut sqlx::Transaction<'_, $Db>,
                (ws, change): &(WorkspaceId, Change),
            ) -> Result<Option<(u64, u64)>, StorageError> {
                match change {
                    Change::Unmerged { sides } => {
                        for (profile, events) in sides {
                            sqlx::query("DELETE FROM aliases WHERE workspace_id = $1 AND profile_id = $2")
                                .bind(ws)
                                .bind(*profile)
                                .execute(&mut **tx)
                                .await?;
                            for event in events {
                                sqlx::query(
                                    "UPDATE facts SET profile_id = $3 WHERE workspace_id = $1 AND event_id = $2",
                                )
                                .bind(ws)
                                .bind(*event)
                                .bind(*profile)
                                .execute(&mut **tx)
                                .await?;
                            }
                        }
                    }
                    Change::Erased { profiles } => {
                        let (mut removed, mut standings) = (0, 0);
                        for profile in profiles {
                            Self::serialise_changes(tx).await?;
                            // The person's history of entries and exits goes; an exit
                            // from each audience they were in tells its stream.
                            let held: Vec<(String, bool)> = sqlx::query_as(
                                "DELETE FROM audience_members WHERE workspace_id = $1 AND profile_id = $2 \
                                 RETURNING audience, member",
                            )
                            .bind(ws)
                            .bind(*profile)
                            .fetch_all(&mut **tx)
                            .await?;
                            sqlx::query("DELETE FROM audience_changes WHERE workspace_id = $1 AND profile_id = $2")
                                .bind(ws)
                                .bind(*profile)
                                .execute(&mut **tx)
                                .await?;
                            for (audience, _) in held.iter().filter(|(_, member)| *member) {
                                sqlx::query(
                                    "INSERT INTO audience_changes \
                                     (workspace_id, audience, profile_id, entered, at, reason) \
                                     VALUES ($1, $2, $3, $4, $5, 'erased')",
                                )
                                .bind(ws)
                                .bind(audience)
                                .bind(*profile)
                                .bind(false)
                                .bind(micros(Utc::now()))
                                .execute(&mut **tx)
                                .await?;
                            }
                            standings += held.len() as u64;
                            removed += sqlx::query("DELETE FROM facts WHERE workspace_id = $1 AND profile_id = $2")
                                .bind(ws)
                                .bind(*profile)
                                .execute(&mut **tx)
                                .await?
                                .rows_affected();
                            sqlx::query(
                                "DELETE FROM aliases WHERE workspace_id = $1 AND (profile_id = $2 OR survivor_id = $2)",
                            )
                            .bind(ws)
                            .bind(*profile)
                            .execute(&mut **tx)
                            .await?;
                        }
                        return Ok(Some((removed, standings)));
                    }
                    Change::Fact { .. } | Change::Merged { .. } => {}
                }
                Ok(None)
            }
        }
    };
}

delivery_writes!(PgScoringStore, sqlx::Postgres);
delivery_writes!(SqliteScoringStore, sqlx::Sqlite);

impl SqliteScoringStore {
    /// Writes facts; one already held (by event id) is left as it is. A statement for
    /// `FACT_ROWS` facts.
    pub(super) async fn write_facts(
        conn: &mut sqlx::SqliteConnection,
        facts: &[&(WorkspaceId, Change)],
    ) -> Result<(), StorageError> {
        for run in facts.chunks(FACT_ROWS) {
            let sql = format!(
                "INSERT INTO facts (workspace_id, event_id, profile_id, at, revenue, fact, event) \
                 VALUES {} ON CONFLICT (workspace_id, event_id) DO NOTHING",
                rows(1, run.len(), 7)
            );
            let columns = FactColumns::of(run)?;
            let mut query = sqlx::query(&sql);
            for i in 0..run.len() {
                query = query
                    .bind(columns.workspaces[i])
                    .bind(columns.events[i])
                    .bind(columns.profiles[i])
                    .bind(columns.at[i])
                    .bind(columns.revenue[i])
                    .bind(&columns.facts[i])
                    .bind(&columns.payloads[i]);
            }
            query.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Applies a run's merges: the facts moved by one statement per workspace
    /// (and `IN_LIST` ids), the aliases written by another.
    pub(super) async fn write_merges(conn: &mut sqlx::SqliteConnection, moves: &Moves<'_>) -> Result<(), StorageError> {
        for (ws, (to, aliases)) in moves {
            let to: Vec<_> = to.iter().collect();
            for chunk in to.chunks(IN_LIST) {
                let cases: String = (0..chunk.len())
                    .map(|i| format!(" WHEN ${} THEN ${}", 2 + 2 * i, 3 + 2 * i))
                    .collect();
                let ids = (0..chunk.len())
                    .map(|i| format!("${}", 2 + 2 * i))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "UPDATE facts SET profile_id = CASE profile_id{cases} END \
                     WHERE workspace_id = $1 AND profile_id IN ({ids})"
                );
                let mut query = sqlx::query(&sql).bind(*ws);
                for (from, to) in chunk {
                    query = query.bind(**from).bind(**to);
                }
                query.execute(&mut *conn).await?;
            }
            let aliases: Vec<_> = aliases.iter().collect();
            for chunk in aliases.chunks(IN_LIST) {
                let sql = format!(
                    "INSERT INTO aliases (workspace_id, profile_id, survivor_id) VALUES {} \
                     ON CONFLICT (workspace_id, profile_id) DO UPDATE SET survivor_id = excluded.survivor_id",
                    rows(1, chunk.len(), 3)
                );
                let mut query = sqlx::query(&sql);
                for (id, survivor) in chunk {
                    query = query.bind(*ws).bind(**id).bind(**survivor);
                }
                query.execute(&mut *conn).await?;
            }
        }
        Ok(())
    }
}

impl PgScoringStore {
    /// Writes facts, one statement for them all (its arrays bound as one prepared
    /// statement, whatever their number); one already held (by event id) is left as it is.
    pub(super) async fn write_facts(
        conn: &mut sqlx::PgConnection,
        facts: &[&(WorkspaceId, Change)],
    ) -> Result<(), StorageError> {
        let columns = FactColumns::of(facts)?;
        sqlx::query(
            "INSERT INTO facts (workspace_id, event_id, profile_id, at, revenue, fact, event) \
             SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::int8[], $5::float8[], $6::text[], $7::text[]) \
             ON CONFLICT (workspace_id, event_id) DO NOTHING",
        )
        .bind(columns.workspaces)
        .bind(columns.events)
        .bind(columns.profiles)
        .bind(columns.at)
        .bind(columns.revenue)
        .bind(columns.facts)
        .bind(columns.payloads)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Applies a run's merges, one statement a workspace: each merged id's facts moved to
    /// where its chain ends (found by the id's place in the list, through the index on
    /// the profile), and the aliases written.
    pub(super) async fn write_merges(conn: &mut sqlx::PgConnection, moves: &Moves<'_>) -> Result<(), StorageError> {
        for (ws, (to, aliases)) in moves {
            let (from, into): (Vec<_>, Vec<_>) = to.iter().map(|(f, t)| (f.as_uuid(), t.as_uuid())).unzip();
            let (merged, survivors): (Vec<_>, Vec<_>) = aliases.iter().map(|(m, s)| (m.as_uuid(), s.as_uuid())).unzip();
            sqlx::query(
                "WITH moved AS (UPDATE facts SET profile_id = ($3::uuid[])[array_position($2::uuid[], profile_id)] \
                   WHERE workspace_id = $1 AND profile_id = ANY($2)) \
                 INSERT INTO aliases (workspace_id, profile_id, survivor_id) \
                 SELECT $1, * FROM unnest($4::uuid[], $5::uuid[]) \
                 ON CONFLICT (workspace_id, profile_id) DO UPDATE SET survivor_id = excluded.survivor_id",
            )
            .bind(*ws)
            .bind(from)
            .bind(into)
            .bind(merged)
            .bind(survivors)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// The columns of a run of facts, an array each.
#[derive(Default)]
struct FactColumns<'a> {
    workspaces: Vec<&'a str>,
    events: Vec<sqlx::types::Uuid>,
    profiles: Vec<sqlx::types::Uuid>,
    at: Vec<i64>,
    revenue: Vec<Option<f64>>,
    facts: Vec<String>,
    payloads: Vec<String>,
}

impl<'a> FactColumns<'a> {
    fn of(facts: &[&'a (WorkspaceId, Change)]) -> Result<Self, StorageError> {
        let mut columns = Self::default();
        for (ws, c) in facts {
            let Change::Fact {
                event,
                profile,
                at,
                fact,
                payload,
            } = c
            else {
                unreachable!("facts only");
            };
            columns.workspaces.push(ws.as_str());
            columns.events.push(event.as_uuid());
            columns.profiles.push(profile.as_uuid());
            columns.at.push(micros(*at));
            columns.revenue.push(fact.revenue);
            columns
                .facts
                .push(serde_json::to_string(fact).map_err(|e| undecodable("fact", e))?);
            columns
                .payloads
                .push(serde_json::to_string(payload).map_err(|e| undecodable("event", e))?);
        }
        Ok(columns)
    }
}
