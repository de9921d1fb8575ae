//! What a delivery of identity's log writes and reads for many people at once: the
//! merges (what a merged profile's id held now stands for its survivor) and the open
//! decisions its goal events are attributed to. On SQLite, in this process, a
//! statement a person costs no round trip; on Postgres each step is one statement over
//! arrays, whatever the number of people (a delivery under load holds dozens of
//! merges), each person read through their own range of an index.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use corvus_proto::{ProfileId, WorkspaceId};
use corvus_storage::sql::placeholders;
use uuid::Uuid;

use super::{Merge, PgOrchestrationStore, SqliteOrchestrationStore, StorageError, micros};

/// People's open decisions since $2: under their own ids ($LIST, from $3), and under
/// each id merged into them, each part ranges of the index on (workspace, profile,
/// decided_at); the first column the person asked about. (One `profile_id IN (…) OR
/// profile_id IN (SELECT … FROM aliases …)` keeps the profiles out of the index
/// condition, and reads every decision of the workspace.)
const OPEN_DECISIONS: &str = "SELECT profile_id, detail, outcome_event, outcome_at FROM decisions \
     WHERE workspace_id = $1 AND profile_id IN ($LIST) AND decided_at >= $2 AND outcome_at IS NULL \
     UNION ALL \
     SELECT a.survivor_id, d.detail, d.outcome_event, d.outcome_at FROM aliases a JOIN decisions d \
       ON d.workspace_id = a.workspace_id AND d.profile_id = a.profile_id \
     WHERE a.workspace_id = $1 AND a.survivor_id IN ($LIST) AND d.decided_at >= $2 AND d.outcome_at IS NULL";

/// The same for each person of the array $3, a lateral join each (so the planner reads
/// their ranges, not the workspace's).
const OPEN_DECISIONS_OF_ALL: &str = "SELECT p.id, d.detail, d.outcome_event, d.outcome_at \
     FROM unnest($3::uuid[]) AS p(id) CROSS JOIN LATERAL ( \
       SELECT detail, outcome_event, outcome_at FROM decisions \
       WHERE workspace_id = $1 AND profile_id = p.id AND decided_at >= $2 AND outcome_at IS NULL \
       UNION ALL \
       SELECT d.detail, d.outcome_event, d.outcome_at FROM aliases a JOIN decisions d \
         ON d.workspace_id = a.workspace_id AND d.profile_id = a.profile_id \
       WHERE a.workspace_id = $1 AND a.survivor_id = p.id AND d.decided_at >= $2 AND d.outcome_at IS NULL) d";

/// People a statement of `OPEN_DECISIONS` asks about at most.
const OPEN_DECISIONS_AT_ONCE: usize = 500;

/// A person asked about, and one of their open decisions (`decision_of`'s row).
pub(super) type OpenRow = (Uuid, String, Option<String>, Option<i64>);

/// What a merge moves, for each merged id ($2) of the survivor ($3) in the workspace
/// ($1): ids merged into it earlier now stand for the survivor too, as it does; its
/// sends count against the survivor's caps, its triggers wait for the survivor (one look
/// at a score a campaign waits for a person: the merged id's goes where the survivor
/// has one), its alerts are the survivor's, and its cooldowns too (the later end of two
/// kept; `AND true` lets SQLite read the ON CONFLICT as the upsert's). Its own
/// cooldowns and churn looks are then deleted. The survivor's count of decisions moves
/// on with its touches: a decision planned from the touches before cannot be written.
const MERGE_STATEMENTS: [&str; 10] = [
    "UPDATE aliases SET survivor_id = $3 WHERE workspace_id = $1 AND survivor_id = $2",
    "INSERT INTO aliases (workspace_id, profile_id, survivor_id) VALUES ($1, $2, $3) \
     ON CONFLICT (workspace_id, profile_id) DO UPDATE SET survivor_id = $3",
    "UPDATE touches SET profile_id = $3 WHERE workspace_id = $1 AND profile_id = $2",
    "INSERT INTO people (workspace_id, profile_id, decisions) VALUES ($1, $3, 1) \
     ON CONFLICT (workspace_id, profile_id) DO UPDATE SET decisions = people.decisions + 1",
    "DELETE FROM triggers WHERE workspace_id = $1 AND profile_id = $2 AND kind = 'score' AND campaign IN \
     (SELECT campaign FROM triggers WHERE workspace_id = $1 AND profile_id = $3 AND kind = 'score')",
    "UPDATE triggers SET profile_id = $3 WHERE workspace_id = $1 AND profile_id = $2",
    "UPDATE alerts SET profile_id = $3 WHERE workspace_id = $1 AND profile_id = $2",
    "INSERT INTO cooldowns (workspace_id, rule, profile_id, until_at) \
     SELECT workspace_id, rule, $3, until_at FROM cooldowns \
     WHERE workspace_id = $1 AND profile_id = $2 AND true \
     ON CONFLICT (workspace_id, rule, profile_id) DO UPDATE SET until_at = \
     CASE WHEN excluded.until_at > cooldowns.until_at THEN excluded.until_at \
     ELSE cooldowns.until_at END",
    "DELETE FROM cooldowns WHERE workspace_id = $1 AND profile_id = $2 AND profile_id <> $3",
    "DELETE FROM churn_seen WHERE workspace_id = $1 AND profile_id = $2 AND profile_id <> $3",
];

/// The same steps for every (workspace, merged id, survivor) of the arrays $1, $2, $3,
/// each merged id given the survivor it ends with (`flatten`). Of the score looks of a
/// campaign that would wait for one survivor, the survivor's own is kept, else the
/// first of its merged ids'.
const MERGE_ALL: [&str; 10] = [
    "UPDATE aliases a SET survivor_id = m.survivor FROM unnest($1::text[], $2::uuid[], $3::uuid[]) \
     AS m(ws, id, survivor) WHERE a.workspace_id = m.ws AND a.survivor_id = m.id",
    "INSERT INTO aliases (workspace_id, profile_id, survivor_id) \
     SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[]) \
     ON CONFLICT (workspace_id, profile_id) DO UPDATE SET survivor_id = excluded.survivor_id",
    "UPDATE touches t SET profile_id = m.survivor FROM unnest($1::text[], $2::uuid[], $3::uuid[]) \
     AS m(ws, id, survivor) WHERE t.workspace_id = m.ws AND t.profile_id = m.id",
    "INSERT INTO people (workspace_id, profile_id, decisions) \
     SELECT DISTINCT m.ws, m.survivor, 1::int8 FROM unnest($1::text[], $2::uuid[], $3::uuid[]) AS m(ws, id, survivor) \
     ON CONFLICT (workspace_id, profile_id) DO UPDATE SET decisions = people.decisions + 1",
    "DELETE FROM triggers t USING unnest($1::text[], $2::uuid[], $3::uuid[]) AS m(ws, id, survivor) \
     WHERE t.workspace_id = m.ws AND t.profile_id = m.id AND t.kind = 'score' AND EXISTS ( \
       SELECT 1 FROM triggers o WHERE o.workspace_id = m.ws AND o.kind = 'score' AND o.campaign = t.campaign \
       AND (o.profile_id = m.survivor OR (o.id < t.id AND o.profile_id IN ( \
         SELECT n.id FROM unnest($1::text[], $2::uuid[], $3::uuid[]) AS n(ws, id, survivor) \
         WHERE n.ws = m.ws AND n.survivor = m.survivor))))",
    "UPDATE triggers t SET profile_id = m.survivor FROM unnest($1::text[], $2::uuid[], $3::uuid[]) \
     AS m(ws, id, survivor) WHERE t.workspace_id = m.ws AND t.profile_id = m.id",
    "UPDATE alerts t SET profile_id = m.survivor FROM unnest($1::text[], $2::uuid[], $3::uuid[]) \
     AS m(ws, id, survivor) WHERE t.workspace_id = m.ws AND t.profile_id = m.id",
    "INSERT INTO cooldowns (workspace_id, rule, profile_id, until_at) \
     SELECT c.workspace_id, c.rule, m.survivor, max(c.until_at) \
     FROM unnest($1::text[], $2::uuid[], $3::uuid[]) AS m(ws, id, survivor) \
     JOIN cooldowns c ON c.workspace_id = m.ws AND c.profile_id = m.id \
     GROUP BY c.workspace_id, c.rule, m.survivor \
     ON CONFLICT (workspace_id, rule, profile_id) DO UPDATE SET \
     until_at = GREATEST(cooldowns.until_at, excluded.until_at)",
    "DELETE FROM cooldowns c USING unnest($1::text[], $2::uuid[], $3::uuid[]) AS m(ws, id, survivor) \
     WHERE c.workspace_id = m.ws AND c.profile_id = m.id",
    "DELETE FROM churn_seen c USING unnest($1::text[], $2::uuid[], $3::uuid[]) AS m(ws, id, survivor) \
     WHERE c.workspace_id = m.ws AND c.profile_id = m.id",
];

/// `MERGE_ALL` in two statements (two round trips, not ten): the steps that each write a
/// table of their own together, then those that write a table again (the aliases
/// inserted after those pointing at the merged ids moved; the triggers moved after the
/// score looks of a campaign the survivor has were deleted), so that no row is written
/// twice by one statement. Each statement's steps see the rows as they stood before it,
/// which is all any of them reads (the cooldowns are read from the merged ids' rows and
/// written to the survivors').
static MERGE_ALL_STATEMENTS: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
    let together = |steps: &[usize]| {
        let (last, first) = steps.split_last().expect("steps");
        let ctes: Vec<String> = first
            .iter()
            .map(|&i| format!("step{i} AS ({})", MERGE_ALL[i]))
            .collect();
        format!("WITH {} {}", ctes.join(", "), MERGE_ALL[*last])
    };
    [together(&[0, 2, 3, 4, 6, 7, 8, 9]), together(&[1, 5])]
});

/// The merges as (workspace, merged id, survivor) rows, each merged id with the
/// survivor it ends with: a survivor merged later passes on what was merged into it.
/// Written in one step they leave what writing them in turn leaves. `None` when a
/// profile is merged twice or a merged profile survives a later merge (only after an
/// unmerge between them): those are written in turn.
fn flatten(merges: &[Merge]) -> Option<Vec<(&WorkspaceId, ProfileId, ProfileId)>> {
    let mut rows: Vec<(&WorkspaceId, ProfileId, ProfileId)> = Vec::new();
    let mut merged: HashSet<(&WorkspaceId, ProfileId)> = HashSet::new();
    for Merge {
        ws,
        survivor,
        merged: ids,
    } in merges
    {
        if merged.contains(&(ws, *survivor)) {
            return None;
        }
        for row in rows.iter_mut().filter(|r| r.0 == ws && ids.contains(&r.2)) {
            row.2 = *survivor;
        }
        for id in ids {
            if id == survivor || !merged.insert((ws, *id)) {
                return None;
            }
            rows.push((ws, *id, *survivor));
        }
    }
    Some(rows)
}

/// Writes the merges in turn, a statement a step and merged id, in the transaction.
macro_rules! merge_in_turn {
    ($tx:expr, $merges:expr) => {
        for Merge { ws, survivor, merged } in $merges {
            for id in merged {
                for sql in MERGE_STATEMENTS {
                    sqlx::query(sql)
                        .bind(ws.as_str())
                        .bind(id.as_uuid())
                        .bind(survivor.as_uuid())
                        .execute(&mut *$tx)
                        .await?;
                }
            }
        }
    };
}

impl PgOrchestrationStore {
    pub(super) async fn open_rows(
        &self,
        ws: &WorkspaceId,
        profiles: &[ProfileId],
        since: DateTime<Utc>,
    ) -> Result<Vec<OpenRow>, StorageError> {
        let ids: Vec<Uuid> = profiles.iter().map(|p| p.as_uuid()).collect();
        Ok(sqlx::query_as(OPEN_DECISIONS_OF_ALL)
            .bind(ws.as_str())
            .bind(micros(since))
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?)
    }

    pub(super) async fn merge_all(&self, merges: &[Merge]) -> Result<(), StorageError> {
        let Some(rows) = flatten(merges) else {
            let mut tx = self.pool.begin().await?;
            merge_in_turn!(tx, merges);
            tx.commit().await?;
            return Ok(());
        };
        if rows.is_empty() {
            return Ok(());
        }
        let wss: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        let ids: Vec<Uuid> = rows.iter().map(|r| r.1.as_uuid()).collect();
        let survivors: Vec<Uuid> = rows.iter().map(|r| r.2.as_uuid()).collect();
        // Every step goes by key; without statistics (young tables) Postgres could
        // reckon the arrays most of a table and read all of it.
        let mut tx = self
            .pool
            .begin_with(
                "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; \
                 SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off",
            )
            .await?;
        for sql in MERGE_ALL_STATEMENTS.iter() {
            sqlx::query(sql)
                .bind(&wss)
                .bind(&ids)
                .bind(&survivors)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.aliases_statistics.wrote(&self.pool, rows.len());
        Ok(())
    }
}

impl SqliteOrchestrationStore {
    pub(super) async fn open_rows(
        &self,
        ws: &WorkspaceId,
        profiles: &[ProfileId],
        since: DateTime<Utc>,
    ) -> Result<Vec<OpenRow>, StorageError> {
        let mut rows = Vec::new();
        for chunk in profiles.chunks(OPEN_DECISIONS_AT_ONCE) {
            let sql = OPEN_DECISIONS.replace("$LIST", &placeholders(3, chunk.len()));
            let mut query = sqlx::query_as::<_, OpenRow>(&sql).bind(ws.as_str()).bind(micros(since));
            for profile in chunk {
                query = query.bind(profile.as_uuid());
            }
            rows.extend(query.fetch_all(&self.pool).await?);
        }
        Ok(rows)
    }

    pub(super) async fn merge_all(&self, merges: &[Merge]) -> Result<(), StorageError> {
        let (_guard, mut tx) = self.begin().await?;
        merge_in_turn!(tx, merges);
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u128) -> ProfileId {
        ProfileId::from(Uuid::from_u128(n))
    }

    fn merge(ws: &WorkspaceId, survivor: u128, merged: &[u128]) -> Merge {
        Merge {
            ws: ws.clone(),
            survivor: p(survivor),
            merged: merged.iter().map(|n| p(*n)).collect(),
        }
    }

    #[test]
    fn a_chain_of_merges_ends_with_its_last_survivor() {
        let (acme, beta): (WorkspaceId, WorkspaceId) = ("acme".parse().unwrap(), "beta".parse().unwrap());
        // 1 into 2, then 2 (and 3) into 4; in another workspace, 2 into 5.
        let merges = [merge(&acme, 2, &[1]), merge(&acme, 4, &[2, 3]), merge(&beta, 5, &[2])];
        let rows: Vec<_> = flatten(&merges)
            .unwrap()
            .into_iter()
            .map(|(ws, id, s)| (ws.clone(), id, s))
            .collect();
        assert_eq!(
            rows,
            [
                (acme.clone(), p(1), p(4)),
                (acme.clone(), p(2), p(4)),
                (acme, p(3), p(4)),
                (beta, p(2), p(5)),
            ]
        );
    }

    #[test]
    fn a_profile_merged_twice_or_surviving_after_its_merge_is_written_in_turn() {
        let acme: WorkspaceId = "acme".parse().unwrap();
        assert_eq!(flatten(&[merge(&acme, 2, &[1]), merge(&acme, 3, &[1])]), None);
        assert_eq!(flatten(&[merge(&acme, 2, &[1]), merge(&acme, 1, &[3])]), None);
        assert_eq!(flatten(&[merge(&acme, 1, &[1])]), None);
    }
}
