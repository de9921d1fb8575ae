//! The identity store in Postgres: batch reads and writes as arrays (`ANY`, `UNNEST`),
//! candidate profiles locked `FOR UPDATE` in id order, and a batch run again when a
//! concurrent writer got there first (a deadlock, or an identifier it inserted).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_log::store::{EntryColumns, NewEvent, PgEventLog};
use corvus_proto::WorkspaceId;
use corvus_storage::{Statistics, StorageError};
use sqlx::{PgConnection, PgPool, Postgres, Row as _, Transaction};
use uuid::Uuid;

use super::{consents_json, encode_identifiers, traits_json};
use crate::domain::batch::{NewProfile, Plan, Touched};

#[derive(Debug, Clone)]
pub struct PgIdentityStore {
    pool: PgPool,
    /// Identity's tables analyzed as they grow (counted in events resolved).
    statistics: Arc<Statistics>,
    hints: Arc<Hints>,
    vacuum: corvus_storage::Vacuum,
}

/// Early: until its first `ANALYZE` a table is estimated at a few rows a workspace, and
/// a batch's `UPDATE … FROM UNNEST` planned so compares every row of the workspace with
/// every key of the batch (250–300 ms a 2,000-event part early in the bench's mix, against
/// about 10 ms probed by key).
const ANALYZE_FIRST: u64 = 1_000;
/// The key columns the planner estimates identity's lookups by, table by table: enough
/// for it to see how many rows a workspace has, at a small part of a full `ANALYZE`.
const ANALYZE: &str = "ANALYZE profiles (workspace_id, profile_id, merged_into), \
     identifiers (workspace_id, kind, value, profile_id), profile_events (workspace_id, event_id, profile_id), \
     traits (workspace_id, profile_id), \
     consents (workspace_id, profile_id), evidence (workspace_id, profile_id, other_id)";

impl PgIdentityStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            statistics: Statistics::new("identity", ANALYZE_FIRST, ANALYZE),
            hints: Arc::default(),
            vacuum: Default::default(),
        }
    }

    fn hints(&self) -> Option<&Hints> {
        Some(&self.hints)
    }

    /// Counts resolved events, and analyzes the tables when they have grown enough.
    fn resolved(&self, events: usize) {
        self.statistics.wrote(&self.pool, events);
    }

    /// Adds entries to identity's log, as the last thing before the commit: the lock
    /// taken with them (`LOG_LOCK`), held to the commit, makes the log's order the order
    /// of commits (see the migration `0004_log.sql`). A batch's entries go with its
    /// writes (`WRITE_PLAN`).
    async fn log_in(conn: &mut PgConnection, ws: &WorkspaceId, entries: &[NewEvent]) -> Result<(), sqlx::Error> {
        if entries.is_empty() {
            return Ok(());
        }
        EntryColumns::of(entries)
            .bind_arrays(sqlx::query(&LOG_IN).bind(ws).bind(LOG_LOCK))
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Deletes the log's entries of the profile's events, queueing their positions for
    /// the relay to a stream while there is one.
    async fn erase_log_in(conn: &mut PgConnection, ws: &WorkspaceId, profile: ProfileId) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "WITH gone AS (DELETE FROM events WHERE workspace_id = $1 AND event_id IN \
               (SELECT event_id FROM profile_events WHERE workspace_id = $1 AND profile_id = $2) RETURNING tx_id, seq), \
             queued AS (INSERT INTO stream_erasures (tx_id, seq) SELECT tx_id, seq FROM gone \
                        WHERE EXISTS (SELECT 1 FROM consumers WHERE name = $3) ON CONFLICT DO NOTHING) \
             SELECT 1 FROM gone",
        )
        .bind(ws)
        .bind(profile)
        .bind(corvus_log::store::RELAY)
        .execute(conn)
        .await?
        .rows_affected())
    }

    /// The tables an erasure deletes from, vacuumed in the background.
    async fn scrub_deleted(&self) -> Result<(), StorageError> {
        self.vacuum.soon(
            &self.pool,
            "identifiers, profile_events, traits, consents, evidence, match_candidates, events, dead_letters, stream_batches",
        );
        Ok(())
    }

    async fn begin(&self) -> Result<((), Transaction<'static, Postgres>), sqlx::Error> {
        Ok(((), self.pool.begin().await?))
    }

    fn retries(&self) -> u32 {
        50
    }

    async fn lock_profiles(
        conn: &mut PgConnection,
        ws: &WorkspaceId,
        profiles: &[ProfileId],
    ) -> Result<Vec<ProfileRow>, sqlx::Error> {
        if profiles.is_empty() {
            return Ok(Vec::new());
        }
        // One order for every locker, so that two batches sharing profiles queue rather
        // than deadlock.
        sqlx::query_as(
            "SELECT profile_id, created_at, merged_into, erased_at FROM profiles \
             WHERE workspace_id = $1 AND profile_id = ANY($2) ORDER BY profile_id FOR UPDATE",
        )
        .bind(ws)
        .bind(uuids(profiles.iter().copied()))
        .fetch_all(conn)
        .await
    }

    /// The locked profiles with everything they hold, in one query.
    async fn candidates_of(
        conn: &mut PgConnection,
        ws: &WorkspaceId,
        rows: &[ProfileRow],
    ) -> Result<Vec<Candidate>, StorageError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let held: Vec<(ProfileId, String, String, i64)> = sqlx::query_as(
            "SELECT profile_id, kind, value, first_seen FROM identifiers \
             WHERE workspace_id = $1 AND profile_id = ANY($2)",
        )
        .bind(ws)
        .bind(uuids(rows.iter().map(|r| r.0)))
        .fetch_all(conn)
        .await?;
        let mut candidates: FastMap<ProfileId, Candidate> = rows
            .iter()
            .map(|r| {
                let candidate = Candidate {
                    profile: r.0,
                    created_at: time(r.1),
                    identifiers: Vec::new(),
                };
                (r.0, candidate)
            })
            .collect();
        for (profile, kind, value, first_seen) in held {
            if let Some(c) = candidates.get_mut(&profile) {
                c.identifiers.push(HeldIdentifier {
                    identifier: identifier(kind, value)?,
                    first_seen: time(first_seen),
                });
            }
        }
        Ok(rows.iter().filter_map(|r| candidates.remove(&r.0)).collect())
    }

    async fn seen_events(
        conn: &mut PgConnection,
        ws: &WorkspaceId,
        events: &[EventId],
    ) -> Result<HashMap<EventId, ProfileId>, sqlx::Error> {
        let rows: Vec<(EventId, ProfileId)> = sqlx::query_as(
            "SELECT event_id, profile_id FROM profile_events WHERE workspace_id = $1 AND event_id = ANY($2)",
        )
        .bind(ws)
        .bind(events.iter().map(EventId::as_uuid).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn erased_among(
        conn: &mut PgConnection,
        ws: &WorkspaceId,
        identifiers: &[&Identifier],
    ) -> Result<HashSet<Identifier>, sqlx::Error> {
        let digests: Vec<Vec<u8>> = identifiers.iter().map(|i| digest(i)).collect();
        let rows: Vec<(Vec<u8>,)> =
            sqlx::query_as("SELECT digest FROM erased_identifiers WHERE workspace_id = $1 AND digest = ANY($2)")
                .bind(ws)
                .bind(&digests)
                .fetch_all(conn)
                .await?;
        let erased: HashSet<Vec<u8>> = rows.into_iter().map(|r| r.0).collect();
        Ok(identifiers
            .iter()
            .zip(&digests)
            .filter(|(_, d)| erased.contains(*d))
            .map(|(i, _)| (*i).clone())
            .collect())
    }

    /// The profiles holding any of `identifiers`, one index probe per identifier, and
    /// whether the workspace has erased anyone's identifiers (a row without a profile).
    async fn holders(
        conn: &mut PgConnection,
        ws: &WorkspaceId,
        identifiers: &[&Identifier],
    ) -> Result<(Vec<ProfileId>, bool), StorageError> {
        let rows: Vec<(Option<ProfileId>,)> = sqlx::query_as(
            // OFFSET 0 keeps the lookup a probe per identifier, whatever the estimates.
            "SELECT i.profile_id FROM UNNEST($2::text[], $3::text[]) AS w(kind, value) \
             CROSS JOIN LATERAL (SELECT profile_id FROM identifiers \
               WHERE workspace_id = $1 AND kind = w.kind AND value = w.value OFFSET 0) i \
             UNION ALL SELECT NULL WHERE EXISTS (SELECT 1 FROM erased_identifiers WHERE workspace_id = $1)",
        )
        .bind(ws)
        .bind(identifiers.iter().map(|i| i.kind.as_str()).collect::<Vec<_>>())
        .bind(identifiers.iter().map(|i| i.value.as_str()).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
        let any_erased = rows.iter().any(|r| r.0.is_none());
        Ok((rows.into_iter().filter_map(|r| r.0).collect(), any_erased))
    }

    async fn write_plan(
        &self,
        conn: &mut PgConnection,
        ws: &WorkspaceId,
        plan: &Plan<'_>,
        entries: &[NewEvent],
    ) -> Result<Vec<(ProfileId, i64)>, ResolveError> {
        let now = micros(Utc::now());
        let mut versions = Vec::new();
        // A merge can fold a profile into one the batch makes: the new rows are written
        // with the merges' moves then, before the survivors' rows take what they absorb.
        let mut new_profiles = plan.new_profiles.as_slice();
        if !plan.merges.is_empty() {
            versions.extend(move_profiles(conn, ws, &plan.merges, new_profiles, now).await?);
            new_profiles = &[];
        }
        let e = &plan.events;
        let t = &plan.traits;
        let c = &plan.consents;
        let g = &plan.touched;
        let mut evidence = EvidenceColumns::default();
        for record in &plan.evidence {
            evidence.push(record);
        }
        let logged = EntryColumns::of(entries);
        let query = bind_new_profiles(sqlx::query(WRITE_PLAN.as_str()).bind(ws), new_profiles)
            // The identifiers.
            .bind(plan.identifiers.iter().map(|i| i.0.kind.as_str()).collect::<Vec<_>>())
            .bind(plan.identifiers.iter().map(|i| i.0.value.as_str()).collect::<Vec<_>>())
            .bind(uuids(plan.identifiers.iter().map(|i| i.1)))
            .bind(plan.identifiers.iter().map(|i| micros(i.2)).collect::<Vec<_>>())
            // The events.
            .bind(e.iter().map(|r| r.event.identity.event.as_uuid()).collect::<Vec<_>>())
            .bind(uuids(e.iter().map(|r| r.profile)))
            .bind(e.iter().map(|r| micros(r.event.identity.at)).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.event_type).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.channel).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.name.as_str()).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.message_id.as_str()).collect::<Vec<_>>())
            .bind(
                e.iter()
                    .map(|r| encode_identifiers(&r.event.identity.identifiers))
                    .collect::<Vec<_>>(),
            )
            .bind(
                e.iter()
                    .map(|r| traits_json(r.event.traits.as_ref()))
                    .collect::<Vec<_>>(),
            )
            .bind(e.iter().map(|r| consents_json(&r.event.consents)).collect::<Vec<_>>())
            // The traits.
            .bind(uuids(t.iter().map(|r| r.profile)))
            .bind(t.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.value.to_string()).collect::<Vec<_>>())
            .bind(t.iter().map(|r| micros(r.set_at)).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.event.as_uuid()).collect::<Vec<_>>())
            // The consents.
            .bind(uuids(c.iter().map(|r| r.profile)))
            .bind(c.iter().map(|r| r.change.purpose.as_str()).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.change.channel).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.change.granted).collect::<Vec<_>>())
            .bind(c.iter().map(|r| micros(r.set_at)).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.event.as_uuid()).collect::<Vec<_>>())
            // The evidence.
            .bind(evidence.kind)
            .bind(evidence.profile)
            .bind(evidence.other)
            .bind(evidence.ikind)
            .bind(evidence.ivalue)
            .bind(evidence.vkind)
            .bind(evidence.vvalue)
            .bind(evidence.event)
            .bind(evidence.rule)
            .bind(evidence.confidence)
            .bind(evidence.at)
            // The profiles that grew.
            .bind(uuids(g.iter().map(|r| r.profile)))
            .bind(g.iter().map(|r| micros(r.first_seen)).collect::<Vec<_>>())
            .bind(g.iter().map(|r| micros(r.last_seen)).collect::<Vec<_>>())
            .bind(g.iter().map(|r| r.events).collect::<Vec<_>>())
            .bind(now)
            .bind(LOG_LOCK);
        for row in logged.bind_arrays(query).fetch_all(&mut *conn).await? {
            versions.push((row.try_get(0)?, row.try_get(1)?));
        }
        Ok(versions)
    }
}

/// The profiles a batch makes, each written whole (the workspace $1, the six arrays
/// from `$first` on).
fn new_profiles_insert(first: usize) -> String {
    let [id, created, merged, f, l, n] = std::array::from_fn(|i| first + i);
    format!(
        "INSERT INTO profiles (workspace_id, profile_id, created_at, updated_at, \
           first_seen, last_seen, event_count, merged_into) \
         SELECT $1, id, created, created, COALESCE(f, 9223372036854775807), \
           COALESCE(l, -9223372036854775808), COALESCE(n, 0), merged \
         FROM UNNEST(${id}::uuid[], ${created}::int8[], ${merged}::uuid[], ${f}::int8[], ${l}::int8[], \
           ${n}::int8[]) AS r(id, created, merged, f, l, n)"
    )
}

/// The advisory lock every writer of identity's log takes (see `log_in`).
const LOG_LOCK: &str = "corvus.identity.log";

/// Entries added to identity's log, once the transaction holds `LOG_LOCK` ($2).
static LOG_IN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("WITH {} SELECT 1", PgEventLog::insert_after_lock_steps(1, 2, 3)));

/// What a batch writes after its merges, in one statement (a round trip, not eight):
/// the new profiles ($2 to $7; none here when the batch merges: they went with the
/// merges' moves, as a merge can fold a profile into one the batch makes), the
/// identifiers new to the graph ($8 to $11), the events ($12 to $21), the newest traits
/// ($22 to $26) and consents ($27 to $32), the evidence ($33 to $43, its ids in the
/// order the records were made), the profiles that grew ($44 to $48), whose new versions
/// it returns, and its entries in identity's log ($50 to $55) after the log's lock
/// ($49). The parts touch different rows (a new profile's row is written whole, never
/// grown), so none needs to see another's. The lock can be taken before the statement's
/// inserts are done, and no insert waits on a transaction that waits for it: the
/// transactions writing at once are a delivery's parts, whose identifiers and events
/// are apart (`domain::partition`), and changes through the API, which insert neither
/// (the profiles updated here are locked already). Taking it only once the identifiers
/// and events were in (their counts read before it) was tried: the identity section's
/// freshness p99 under load went from 39–54 ms to 175–228 ms.
/// The identifiers and events are inserted plainly, not `ON CONFLICT DO NOTHING` (a
/// speculative insertion, about half as dear again a row): one another writer got to
/// first (an identifier given to a profile, an event resolved by a redelivery) breaks
/// the primary key, and the batch runs again (`is_contention`).
static WRITE_PLAN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH new_profiles AS ({}), \
         new_identifiers AS (INSERT INTO identifiers (workspace_id, kind, value, profile_id, first_seen) \
           SELECT $1, * FROM UNNEST($8::text[], $9::text[], $10::uuid[], $11::int8[])), \
         resolved AS (INSERT INTO profile_events (workspace_id, event_id, profile_id, at, event_type, channel, \
           name, message_id, identifiers, traits, consents) \
           SELECT $1, * FROM UNNEST($12::uuid[], $13::uuid[], $14::int8[], $15::int2[], $16::int2[], \
             $17::text[], $18::text[], $19::text[], $20::text[], $21::text[])), \
         newest_traits AS (INSERT INTO traits (workspace_id, profile_id, name, value, set_at, event_id) \
           SELECT $1, * FROM UNNEST($22::uuid[], $23::text[], $24::text[], $25::int8[], $26::uuid[]) \
           {NEWER_TRAIT}), \
         newest_consents AS (INSERT INTO consents (workspace_id, profile_id, purpose, channel, granted, \
           set_at, event_id) \
           SELECT $1, * FROM UNNEST($27::uuid[], $28::text[], $29::int2[], $30::bool[], $31::int8[], \
             $32::uuid[]) {NEWER_CONSENT}), \
         new_evidence AS (INSERT INTO evidence (workspace_id, kind, profile_id, other_id, identifier_kind, \
           identifier_value, via_kind, via_value, event_id, rule, confidence, at) \
           SELECT $1, kind, profile, other, ikind, ivalue, vkind, vvalue, event, rule, confidence, at \
           FROM UNNEST($33::int2[], $34::uuid[], $35::uuid[], $36::text[], $37::text[], $38::text[], \
             $39::text[], $40::uuid[], $41::int2[], $42::float8[], $43::int8[]) WITH ORDINALITY \
             AS e(kind, profile, other, ikind, ivalue, vkind, vvalue, event, rule, confidence, at, n) \
           ORDER BY n), \
         {} \
         UPDATE profiles p SET first_seen = LEAST(p.first_seen, t.f), last_seen = GREATEST(p.last_seen, t.l), \
           event_count = p.event_count + t.n, version = p.version + 1, updated_at = $48 \
         FROM UNNEST($44::uuid[], $45::int8[], $46::int8[], $47::int8[]) AS t(id, f, l, n) \
         WHERE p.workspace_id = $1 AND p.profile_id = t.id RETURNING p.profile_id, p.version",
        new_profiles_insert(2),
        PgEventLog::insert_after_lock_steps(1, 49, 50)
    )
});

/// Where a merged id's rows go: its survivor, by the id's place in the list of merged
/// ids ($2) among the survivors ($3).
const INTO: &str = "($3::uuid[])[array_position($2::uuid[], profile_id)]";

/// A batch's merges' moves, one statement (each part writes a table of its own): the
/// identifiers, events, traits and consents of each merged id ($2) go to its survivor
/// ($3, by the id's place in the list), the newest trait and consent of each kind kept;
/// and the profiles the batch makes are written ($4 to $9), so that a survivor among
/// them is there for its row to take what it absorbs.
static MOVES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH new_profiles AS ({}), \
         moved_identifiers AS (UPDATE identifiers SET profile_id = {INTO} \
           WHERE workspace_id = $1 AND profile_id = ANY($2)), \
         moved_events AS (UPDATE profile_events SET profile_id = {INTO} \
           WHERE workspace_id = $1 AND profile_id = ANY($2)), \
         moved_traits AS (DELETE FROM traits WHERE workspace_id = $1 AND profile_id = ANY($2) \
           RETURNING {INTO} AS into_id, name, value, set_at, event_id), \
         kept_traits AS (INSERT INTO traits (workspace_id, profile_id, name, value, set_at, event_id) \
           SELECT $1, * FROM (SELECT DISTINCT ON (into_id, name) into_id, name, value, set_at, event_id \
             FROM moved_traits ORDER BY into_id, name, set_at DESC, event_id DESC) newest \
           {NEWER_TRAIT}), \
         moved_consents AS (DELETE FROM consents WHERE workspace_id = $1 AND profile_id = ANY($2) \
           RETURNING {INTO} AS into_id, purpose, channel, granted, set_at, event_id) \
         INSERT INTO consents (workspace_id, profile_id, purpose, channel, granted, set_at, event_id) \
         SELECT $1, * FROM (SELECT DISTINCT ON (into_id, purpose, channel) \
           into_id, purpose, channel, granted, set_at, event_id FROM moved_consents \
           ORDER BY into_id, purpose, channel, set_at DESC, event_id DESC) newest \
         {NEWER_CONSENT}",
        new_profiles_insert(4)
    )
});

/// Folds every `(from, into)` of a batch at once, two statements (`MOVES`, then the
/// profile rows) rather than a dozen per merge: what `move_profile` does for one. Each
/// `from` is found by its key (`= ANY`) and mapped to its `into` by its place in the
/// list, so no statement joins.
async fn move_profiles(
    conn: &mut PgConnection,
    ws: &WorkspaceId,
    merges: &[(ProfileId, ProfileId)],
    new_profiles: &[NewProfile],
    now: i64,
) -> Result<Vec<(ProfileId, i64)>, sqlx::Error> {
    let from = uuids(merges.iter().map(|m| m.0));
    let into = uuids(merges.iter().map(|m| m.1));
    bind_new_profiles(sqlx::query(&MOVES).bind(ws).bind(&from).bind(&into), new_profiles)
        .execute(&mut *conn)
        .await?;
    // The profile rows, which the three parts touch apart: each survivor takes the seen
    // times and count of what it absorbs; each merged profile, and whatever had been
    // merged into it, now redirects to its survivor.
    sqlx::query_as(&format!(
        "WITH absorbed AS (SELECT {INTO} AS into_id, \
             min(first_seen) FILTER (WHERE event_count > 0) AS f, \
             max(last_seen) FILTER (WHERE event_count > 0) AS l, sum(event_count) AS n \
           FROM profiles WHERE workspace_id = $1 AND profile_id = ANY($2) GROUP BY 1), \
         survivors AS (UPDATE profiles p SET first_seen = LEAST(p.first_seen, a.f), \
             last_seen = GREATEST(p.last_seen, a.l), event_count = p.event_count + a.n, \
             version = p.version + 1, updated_at = $4 \
           FROM absorbed a WHERE p.workspace_id = $1 AND p.profile_id = a.into_id \
           RETURNING p.profile_id, p.version), \
         merged AS (UPDATE profiles SET merged_into = {INTO}, version = version + 1, updated_at = $4 \
           WHERE workspace_id = $1 AND profile_id = ANY($2) RETURNING profile_id, version), \
         earlier AS (UPDATE profiles \
           SET merged_into = ($3::uuid[])[array_position($2::uuid[], merged_into)], \
               version = version + 1, updated_at = $4 \
           WHERE workspace_id = $1 AND merged_into = ANY($2) RETURNING profile_id, version) \
         SELECT * FROM survivors UNION ALL SELECT * FROM merged UNION ALL SELECT * FROM earlier"
    ))
    .bind(ws)
    .bind(&from)
    .bind(&into)
    .bind(now)
    .fetch_all(conn)
    .await
}

#[derive(Default)]
struct EvidenceColumns {
    kind: Vec<i16>,
    profile: Vec<Uuid>,
    other: Vec<Option<Uuid>>,
    ikind: Vec<String>,
    ivalue: Vec<String>,
    vkind: Vec<Option<String>>,
    vvalue: Vec<Option<String>>,
    event: Vec<Option<Uuid>>,
    rule: Vec<i16>,
    confidence: Vec<f64>,
    at: Vec<i64>,
}

impl EvidenceColumns {
    fn push(&mut self, e: &Evidence) {
        let (kind, profile, other, identifier, via) = match &e.kind {
            EvidenceKind::Link {
                profile,
                identifier,
                via,
            } => (1, *profile, None, identifier, via.as_ref()),
            EvidenceKind::Merge {
                survivor,
                merged,
                survivor_via,
                merged_via,
            } => (2, *survivor, Some(*merged), survivor_via, Some(merged_via)),
        };
        self.kind.push(kind);
        self.profile.push(profile.as_uuid());
        self.other.push(other.map(|o| o.as_uuid()));
        self.ikind.push(identifier.kind.as_str().to_owned());
        self.ivalue.push(identifier.value.clone());
        self.vkind.push(via.map(|v| v.kind.as_str().to_owned()));
        self.vvalue.push(via.map(|v| v.value.clone()));
        self.event.push(e.event.map(|id| id.as_uuid()));
        self.rule.push(rule_code(e.rule));
        self.confidence.push(e.confidence);
        self.at.push(micros(e.at));
    }
}

/// One column of the new profiles' seen times and counts.
/// Binds the new profiles' six arrays (`new_profiles_insert`'s).
fn bind_new_profiles<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    profiles: &[NewProfile],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    let seen = |column: fn(&Touched) -> i64| -> Vec<Option<i64>> {
        profiles.iter().map(|p| p.seen.as_ref().map(column)).collect()
    };
    query
        .bind(uuids(profiles.iter().map(|p| p.profile)))
        .bind(profiles.iter().map(|p| micros(p.created_at)).collect::<Vec<_>>())
        .bind(
            profiles
                .iter()
                .map(|p| p.merged_into.map(|m| m.as_uuid()))
                .collect::<Vec<_>>(),
        )
        .bind(seen(|t| micros(t.first_seen)))
        .bind(seen(|t| micros(t.last_seen)))
        .bind(seen(|t| t.events))
}

fn uuids(ids: impl Iterator<Item = ProfileId>) -> Vec<Uuid> {
    ids.map(|id| id.as_uuid()).collect()
}

identity_store!(PgIdentityStore, Postgres);
