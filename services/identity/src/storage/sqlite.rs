//! The embedded identity store: SQLite admits one writer at a time, so writers queue on
//! a lock in this process and a batch never meets a concurrent one; its rows are written
//! with prepared statements in a loop, which in process costs microseconds each.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_log::store::{NewEvent, SqliteEventLog};
use corvus_proto::WorkspaceId;
use corvus_storage::StorageError;
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use super::{consents_json, encode_identifiers, traits_json};
use crate::domain::batch::{EventRow, Plan};

#[derive(Debug)]
pub struct SqliteIdentityStore {
    pool: SqlitePool,
    writer: Mutex<()>,
}

impl SqliteIdentityStore {
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            writer: Mutex::new(()),
        }
    }

    /// A write transaction. `IMMEDIATE` takes the file's write lock at once: the log's
    /// dispatchers write to the same file (cursors, dead letters), and a transaction
    /// that read first and wrote later would fail at once (SQLITE_BUSY) had one of them
    /// written meanwhile, where this one waits for the lock (the busy timeout).
    async fn begin(&self) -> Result<(MutexGuard<'_, ()>, Transaction<'static, Sqlite>), sqlx::Error> {
        let guard = self.writer.lock().await;
        Ok((guard, self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }

    /// Lookups in process cost microseconds: nothing to spare them.
    fn hints(&self) -> Option<&Hints> {
        None
    }

    /// SQLite plans by index without statistics: nothing to keep up.
    fn resolved(&self, _events: usize) {}

    async fn scrub_deleted(&self) -> Result<(), StorageError> {
        corvus_storage::checkpoint_sqlite(&self.pool).await
    }

    /// Deletes the log's entries of the profile's events, queueing their positions for
    /// the relay to a stream while there is one (the transaction holds the file's write
    /// lock).
    async fn erase_log_in(
        conn: &mut SqliteConnection,
        ws: &WorkspaceId,
        profile: ProfileId,
    ) -> Result<u64, sqlx::Error> {
        let of_profile = "workspace_id = $1 AND event_id IN \
             (SELECT event_id FROM profile_events WHERE workspace_id = $1 AND profile_id = $2)";
        sqlx::query(&format!(
            "INSERT OR IGNORE INTO stream_erasures (tx_id, seq) SELECT tx_id, seq FROM events \
             WHERE {of_profile} AND EXISTS (SELECT 1 FROM consumers WHERE name = $3)"
        ))
        .bind(ws)
        .bind(profile)
        .bind(corvus_log::store::RELAY)
        .execute(&mut *conn)
        .await?;
        Ok(sqlx::query(&format!("DELETE FROM events WHERE {of_profile}"))
            .bind(ws)
            .bind(profile)
            .execute(conn)
            .await?
            .rows_affected())
    }

    async fn log_in(conn: &mut SqliteConnection, ws: &WorkspaceId, entries: &[NewEvent]) -> Result<(), sqlx::Error> {
        SqliteEventLog::insert_in(conn, ws, entries).await
    }

    fn retries(&self) -> u32 {
        0
    }

    async fn lock_profiles(
        conn: &mut SqliteConnection,
        ws: &WorkspaceId,
        profiles: &[ProfileId],
    ) -> Result<Vec<ProfileRow>, sqlx::Error> {
        let mut rows = Vec::with_capacity(profiles.len());
        for profile in profiles {
            let row: Option<ProfileRow> = sqlx::query_as(
                "SELECT profile_id, created_at, merged_into, erased_at FROM profiles \
                 WHERE workspace_id = $1 AND profile_id = $2",
            )
            .bind(ws)
            .bind(*profile)
            .fetch_optional(&mut *conn)
            .await?;
            rows.extend(row);
        }
        Ok(rows)
    }

    async fn candidates_of(
        conn: &mut SqliteConnection,
        ws: &WorkspaceId,
        rows: &[ProfileRow],
    ) -> Result<Vec<Candidate>, StorageError> {
        let mut candidates = Vec::with_capacity(rows.len());
        for row in rows {
            candidates.push(candidate(conn, ws, row).await?);
        }
        Ok(candidates)
    }

    async fn seen_events(
        conn: &mut SqliteConnection,
        ws: &WorkspaceId,
        events: &[EventId],
    ) -> Result<HashMap<EventId, ProfileId>, sqlx::Error> {
        let mut seen = HashMap::new();
        for event in events {
            let row: Option<(ProfileId,)> =
                sqlx::query_as("SELECT profile_id FROM profile_events WHERE workspace_id = $1 AND event_id = $2")
                    .bind(ws)
                    .bind(*event)
                    .fetch_optional(&mut *conn)
                    .await?;
            if let Some((profile,)) = row {
                seen.insert(*event, profile);
            }
        }
        Ok(seen)
    }

    async fn erased_among(
        conn: &mut SqliteConnection,
        ws: &WorkspaceId,
        identifiers: &[&Identifier],
    ) -> Result<HashSet<Identifier>, sqlx::Error> {
        let mut erased = HashSet::new();
        for identifier in identifiers {
            let row: Option<(i64,)> =
                sqlx::query_as("SELECT 1 FROM erased_identifiers WHERE workspace_id = $1 AND digest = $2")
                    .bind(ws)
                    .bind(digest(identifier))
                    .fetch_optional(&mut *conn)
                    .await?;
            if row.is_some() {
                erased.insert((*identifier).clone());
            }
        }
        Ok(erased)
    }

    async fn holders(
        conn: &mut SqliteConnection,
        ws: &WorkspaceId,
        identifiers: &[&Identifier],
    ) -> Result<(Vec<ProfileId>, bool), StorageError> {
        let mut holders = Vec::new();
        for identifier in identifiers {
            let row: Option<(ProfileId,)> = sqlx::query_as(
                "SELECT profile_id FROM identifiers WHERE workspace_id = $1 AND kind = $2 AND value = $3",
            )
            .bind(ws)
            .bind(identifier.kind.as_str())
            .bind(&identifier.value)
            .fetch_optional(&mut *conn)
            .await?;
            holders.extend(row.map(|r| r.0));
        }
        Ok((holders, Self::any_erased(conn, ws).await?))
    }

    async fn write_plan(
        &self,
        conn: &mut SqliteConnection,
        ws: &WorkspaceId,
        plan: &Plan<'_>,
        entries: &[NewEvent],
    ) -> Result<Vec<(ProfileId, i64)>, ResolveError> {
        let now = micros(Utc::now());
        for new in &plan.new_profiles {
            sqlx::query(
                "INSERT INTO profiles (workspace_id, profile_id, created_at, updated_at, first_seen, last_seen, \
                 event_count, merged_into) \
                 VALUES ($1, $2, $3, $3, COALESCE($4, 9223372036854775807), COALESCE($5, -9223372036854775808), \
                 COALESCE($6, 0), $7)",
            )
            .bind(ws)
            .bind(new.profile)
            .bind(micros(new.created_at))
            .bind(new.seen.as_ref().map(|t| micros(t.first_seen)))
            .bind(new.seen.as_ref().map(|t| micros(t.last_seen)))
            .bind(new.seen.as_ref().map(|t| t.events))
            .bind(new.merged_into)
            .execute(&mut *conn)
            .await?;
        }
        let mut versions = Vec::new();
        for (from, into) in &plan.merges {
            versions.extend(move_profile(conn, ws, *from, *into, now).await?);
        }
        for (identifier, profile, first_seen) in &plan.identifiers {
            sqlx::query(
                "INSERT INTO identifiers (workspace_id, kind, value, profile_id, first_seen) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(ws)
            .bind(identifier.kind.as_str())
            .bind(&identifier.value)
            .bind(*profile)
            .bind(micros(*first_seen))
            .execute(&mut *conn)
            .await?;
        }
        for &EventRow { event: e, profile } in &plan.events {
            sqlx::query(
                "INSERT INTO profile_events (workspace_id, event_id, profile_id, at, event_type, channel, name, \
                 message_id, identifiers, traits, consents) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(ws)
            .bind(e.identity.event)
            .bind(profile)
            .bind(micros(e.identity.at))
            .bind(e.event_type)
            .bind(e.channel)
            .bind(&e.name)
            .bind(&e.message_id)
            .bind(encode_identifiers(&e.identity.identifiers))
            .bind(traits_json(e.traits.as_ref()))
            .bind(consents_json(&e.consents))
            .execute(&mut *conn)
            .await?;
        }
        for t in &plan.traits {
            sqlx::query(&format!(
                "INSERT INTO traits (workspace_id, profile_id, name, value, set_at, event_id) \
                 VALUES ($1, $2, $3, $4, $5, $6) {NEWER_TRAIT}"
            ))
            .bind(ws)
            .bind(t.profile)
            .bind(&t.name)
            .bind(t.value.to_string())
            .bind(micros(t.set_at))
            .bind(t.event)
            .execute(&mut *conn)
            .await?;
        }
        for c in &plan.consents {
            sqlx::query(&format!(
                "INSERT INTO consents (workspace_id, profile_id, purpose, channel, granted, set_at, event_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) {NEWER_CONSENT}"
            ))
            .bind(ws)
            .bind(c.profile)
            .bind(&c.change.purpose)
            .bind(c.change.channel)
            .bind(c.change.granted)
            .bind(micros(c.set_at))
            .bind(c.event)
            .execute(&mut *conn)
            .await?;
        }
        for evidence in &plan.evidence {
            insert_evidence(conn, ws, evidence).await?;
        }
        for t in &plan.touched {
            let (version,): (i64,) = sqlx::query_as(
                "UPDATE profiles SET first_seen = MIN(first_seen, $3), last_seen = MAX(last_seen, $4), \
                 event_count = event_count + $5, version = version + 1, updated_at = $6 \
                 WHERE workspace_id = $1 AND profile_id = $2 RETURNING version",
            )
            .bind(ws)
            .bind(t.profile)
            .bind(micros(t.first_seen))
            .bind(micros(t.last_seen))
            .bind(t.events)
            .bind(now)
            .fetch_one(&mut *conn)
            .await?;
            versions.push((t.profile, version));
        }
        Self::log_in(conn, ws, entries).await?;
        Ok(versions)
    }
}

identity_store!(SqliteIdentityStore, Sqlite);
