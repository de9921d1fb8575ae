//! The identity graph and the profile store: one trait, a Postgres and a SQLite
//! implementation generated from the same code (`store/`), held to one conformance
//! suite (`tests/identity/store.rs`). Only the batch writes and the locking differ.

#[macro_use]
mod store;
mod hints;
mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_log::store::{EventLog, PgEventLog, SqliteEventLog};
use corvus_proto::WorkspaceId;
use corvus_storage::{Database, Migrators, StorageConfig, StorageError};

use crate::domain::batch::{ConsentChange, ConsentRow, IncomingEvent, TraitRow};
use crate::domain::resolution::{Dropped, EventId, Identifier, IdentifierKind, IdentityRules, ProfileId, Rule};

use hints::Hints;
pub use postgres::PgIdentityStore;
pub use sqlite::SqliteIdentityStore;

static MIGRATE_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static MIGRATE_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The schema (Postgres) or file (SQLite) of the identity service.
pub const SCHEMA: &str = "identity";

pub fn migrators() -> Migrators {
    Migrators {
        postgres: &MIGRATE_POSTGRES,
        sqlite: &MIGRATE_SQLITE,
    }
}

/// The end of an upsert of traits that keeps the newest value of each: by the time of
/// the event that set it, then by event id, so that the order of arrival never matters.
pub(crate) const NEWER_TRAIT: &str = "ON CONFLICT (workspace_id, profile_id, name) DO UPDATE \
     SET value = excluded.value, set_at = excluded.set_at, event_id = excluded.event_id \
     WHERE excluded.set_at > traits.set_at \
        OR (excluded.set_at = traits.set_at AND excluded.event_id > traits.event_id)";

/// The same for consents, per purpose and channel.
pub(crate) const NEWER_CONSENT: &str = "ON CONFLICT (workspace_id, profile_id, purpose, channel) DO UPDATE \
     SET granted = excluded.granted, set_at = excluded.set_at, event_id = excluded.event_id \
     WHERE excluded.set_at > consents.set_at \
        OR (excluded.set_at = consents.set_at AND excluded.event_id > consents.event_id)";

/// Identity's statements all find rows by key: a batch's identifiers, events and
/// profiles, each looked up through an index. With statistics Postgres plans them so;
/// without (a table grown from empty and not analyzed yet) it can reckon a batch's keys
/// to be most of the table and read all of it by a sequential or bitmap scan into a hash
/// join. Taking those plan shapes away keeps the index probes while the store's own
/// `ANALYZE` (see `postgres.rs`) catches up. With no other shape left to choose, each
/// statement is planned once per connection (a generic plan) rather than again for every
/// batch: under 5,000 events/s a delivery of 50 events then takes 6.7 ms instead of
/// 7.8–11.8 (docs/benchmarks-identity-rounds.md, "Third round").
const PLANNER: &[(&str, &str)] = &[
    ("enable_seqscan", "off"),
    ("enable_bitmapscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
    ("plan_cache_mode", "force_generic_plan"),
];

/// Connects the store the configuration names and runs its migrations.
pub async fn connect(config: &StorageConfig) -> Result<Arc<dyn IdentityStore>, StorageError> {
    Ok(connect_with_log(config).await?.0)
}

/// The store, and identity's log over the same database (the store writes the log's
/// entries in its own transactions).
pub async fn connect_with_log(
    config: &StorageConfig,
) -> Result<(Arc<dyn IdentityStore>, Arc<dyn EventLog>), StorageError> {
    Ok(
        match Database::connect_with(config, SCHEMA, &migrators(), PLANNER).await? {
            Database::Postgres(pool) => (
                Arc::new(PgIdentityStore::new(pool.clone())),
                Arc::new(PgEventLog::new(pool, crate::log::CHANNEL)),
            ),
            Database::Sqlite(pool) => (
                Arc::new(SqliteIdentityStore::new(pool.clone())),
                Arc::new(SqliteEventLog::new(pool)),
            ),
        },
    )
}

/// A batch written: where each event went, and the new version of every changed profile.
#[derive(Debug, Default)]
pub struct Applied {
    /// Per input event, in order: its profile (none when no identifier was left), and
    /// the identifiers left out of it.
    pub outcomes: Vec<(EventId, Option<ProfileId>, Vec<Dropped>)>,
    pub versions: Vec<(ProfileId, i64)>,
}

/// A profile as the store holds it, for the read model.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileData {
    pub profile: ProfileId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub event_count: i64,
    pub version: i64,
    /// Profiles merged into this one.
    pub absorbed: Vec<ProfileId>,
    /// With when each was first seen, strongest first.
    pub identifiers: Vec<(Identifier, DateTime<Utc>)>,
    pub traits: Vec<TraitRow>,
    pub consents: Vec<ConsentRow>,
    /// `(channel, event type, count)`.
    pub counts: Vec<(i16, i16, i64)>,
    /// Newest first.
    pub recent: Vec<RecentEvent>,
    /// Newest first.
    pub merges: Vec<MergeRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecentEvent {
    pub event: EventId,
    pub at: DateTime<Utc>,
    pub event_type: i16,
    pub channel: i16,
    pub name: String,
}

/// A recorded merge.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeRecord {
    pub id: i64,
    pub survivor: ProfileId,
    pub merged: ProfileId,
    pub event: Option<EventId>,
    pub rule: Rule,
    pub confidence: f64,
    pub survivor_via: Identifier,
    pub merged_via: Identifier,
    pub at: DateTime<Utc>,
    pub undone_at: Option<DateTime<Utc>>,
}

/// What a profile id names.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Live(Box<ProfileData>),
    /// Merged into `into`, which is live (merges are flattened: never a chain).
    Merged {
        into: ProfileId,
        version: i64,
    },
    Erased {
        version: i64,
    },
    Missing,
}

/// A profile after an unmerge.
#[derive(Debug, Clone, PartialEq)]
pub struct SideSummary {
    pub profile: ProfileId,
    pub identifiers: Vec<(Identifier, DateTime<Utc>)>,
    pub events: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnmergeRefused {
    #[error("no merge {0} in this workspace")]
    NotFound(i64),
    #[error("merge {0} was already undone")]
    AlreadyUndone(i64),
    #[error("the profiles of merge {0} were erased")]
    Erased(i64),
    #[error("{0}")]
    Graph(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Unmerged {
    pub sides: Vec<SideSummary>,
    pub versions: Vec<(ProfileId, i64)>,
}

/// An erasure, as recorded. `pending` lists the message ids still to erase from the
/// event log; empty once that is done.
#[derive(Debug, Clone, PartialEq)]
pub struct Erasure {
    /// A `corvus.identity.v1.ErasureReceipt`, encoded.
    pub receipt: Vec<u8>,
    /// The identifiers the person held (none when erased before).
    pub identifiers: Vec<Identifier>,
    pub pending: Vec<String>,
    pub already_erased: bool,
    pub versions: Vec<(ProfileId, i64)>,
}

/// What the identity store removed for an erasure, by table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Removed {
    pub profile: ProfileId,
    pub absorbed: Vec<ProfileId>,
    pub rows: Vec<(&'static str, u64)>,
    pub identifiers: Vec<Identifier>,
    pub message_ids: Vec<String>,
}

/// A merge proposed by matching or accepted in review.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchMerge {
    pub a: ProfileId,
    pub b: ProfileId,
    pub rule: Rule,
    pub probability: f64,
}

/// A pair waiting for review (status 1), or one that was reviewed.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateRecord {
    pub id: uuid::Uuid,
    pub a: ProfileId,
    pub b: ProfileId,
    pub probability: f64,
    /// Agreement level per field, as JSON `{"field": level}`.
    pub levels: String,
    pub status: i16,
    pub proposed_at: DateTime<Utc>,
}

pub const CANDIDATE_PENDING: i16 = 1;
pub const CANDIDATE_ACCEPTED: i16 = 2;
pub const CANDIDATE_REJECTED: i16 = 3;
pub const CANDIDATE_OBSOLETE: i16 = 4;

#[derive(Debug, thiserror::Error)]
pub enum ReviewRefused {
    #[error("no match candidate {0} in this workspace")]
    NotFound(uuid::Uuid),
    #[error("match candidate {0} was already reviewed or is obsolete")]
    NotPending(uuid::Uuid),
}

#[async_trait]
pub trait IdentityStore: Send + Sync + std::fmt::Debug {
    async fn ping(&self) -> Result<(), StorageError>;

    /// Resolves a batch of one workspace's events in one transaction, in order. A
    /// redelivered event keeps the profile it got; concurrent batches on other replicas
    /// serialise on the profiles and identifiers they share.
    async fn resolve(
        &self,
        workspace: &WorkspaceId,
        events: &[IncomingEvent],
        rules: &IdentityRules,
    ) -> Result<Applied, StorageError>;

    /// Removes what is left of deleted rows after an erasure (`corvus_storage::scrub`):
    /// at once on SQLite, in the background on Postgres.
    async fn scrub(&self) -> Result<(), StorageError>;

    async fn lookup(&self, workspace: &WorkspaceId, profile: ProfileId) -> Result<Lookup, StorageError>;

    /// The profile holding a (normalised) identifier.
    async fn holder(&self, workspace: &WorkspaceId, identifier: &Identifier)
    -> Result<Option<ProfileId>, StorageError>;

    /// The profiles that stand (not merged into another, not erased), in id order,
    /// after `after`, at most `limit`.
    async fn profile_ids(
        &self,
        workspace: &WorkspaceId,
        after: Option<ProfileId>,
        limit: u32,
    ) -> Result<Vec<ProfileId>, StorageError>;

    /// Merges recorded on the profile and those it absorbed, newest first, ids below `before`.
    async fn merges(
        &self,
        workspace: &WorkspaceId,
        profile: ProfileId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<MergeRecord>, StorageError>;

    async fn unmerge(
        &self,
        workspace: &WorkspaceId,
        merge: i64,
        rules: &IdentityRules,
    ) -> Result<Result<Unmerged, UnmergeRefused>, StorageError>;

    /// Erases the profile a live or merged id names, with everything merged into it.
    /// `receipt` turns what was removed into the encoded receipt to keep. `None` when
    /// no profile has the id.
    async fn forget(
        &self,
        workspace: &WorkspaceId,
        profile: ProfileId,
        block_identifiers: bool,
        receipt: &(dyn for<'r> Fn(&'r Removed) -> Vec<u8> + Sync),
    ) -> Result<Option<Erasure>, StorageError>;

    /// The receipt kept for the erasure of the profile (or of the one it was merged
    /// into), encoded, and what consumers of identity's log answered for it:
    /// `(consumer, store, removed as JSON)`.
    async fn erasure_receipt(
        &self,
        workspace: &WorkspaceId,
        profile: ProfileId,
    ) -> Result<Option<(Vec<u8>, Vec<(String, String, String)>)>, StorageError>;

    /// Notes that `consumer` received the erasure of `profile` and what it deleted; a
    /// repeat (a redelivery) changes nothing.
    async fn erasure_answered(
        &self,
        workspace: &WorkspaceId,
        profile: ProfileId,
        consumer: &str,
        store: &str,
        removed: &str,
    ) -> Result<(), StorageError>;

    /// Records that the event log erased the pending events, with the final receipt.
    async fn erasure_done(
        &self,
        workspace: &WorkspaceId,
        profile: ProfileId,
        receipt: &[u8],
    ) -> Result<(), StorageError>;

    /// Each live profile with the value of each named trait (as text).
    async fn trait_records(
        &self,
        workspace: &WorkspaceId,
        traits: &[String],
    ) -> Result<Vec<(ProfileId, Vec<Option<String>>)>, StorageError>;

    /// Applies merges made by matching or review, in order, in one transaction. A pair
    /// whose profiles are already one, or which a unique kind keeps apart, is skipped.
    /// Returns the merges made and the changed profiles' versions.
    async fn merge_matches(
        &self,
        workspace: &WorkspaceId,
        merges: &[MatchMerge],
        rules: &IdentityRules,
    ) -> Result<(Vec<MergeRecord>, Vec<(ProfileId, i64)>), StorageError>;

    /// Replaces the pending candidates of the workspace with `candidates` (pairs rejected
    /// before are left out).
    async fn propose(&self, workspace: &WorkspaceId, candidates: &[CandidateRecord]) -> Result<u64, StorageError>;

    async fn candidates(
        &self,
        workspace: &WorkspaceId,
        status: i16,
        after: Option<(f64, uuid::Uuid)>,
        limit: u32,
    ) -> Result<Vec<CandidateRecord>, StorageError>;

    async fn candidate(&self, workspace: &WorkspaceId, id: uuid::Uuid)
    -> Result<Option<CandidateRecord>, StorageError>;

    /// Marks a pending candidate reviewed.
    async fn set_candidate_status(
        &self,
        workspace: &WorkspaceId,
        id: uuid::Uuid,
        status: i16,
    ) -> Result<Result<CandidateRecord, ReviewRefused>, StorageError>;
}

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// An event's identifiers as stored with it: `kind\x1fvalue`, joined by `\x1e`.
pub(crate) fn encode_identifiers(identifiers: &[Identifier]) -> String {
    let mut out = String::new();
    for (i, identifier) in identifiers.iter().enumerate() {
        if i > 0 {
            out.push('\x1e');
        }
        out.push_str(identifier.kind.as_str());
        out.push('\x1f');
        out.push_str(&identifier.value);
    }
    out
}

pub(crate) fn decode_identifiers(text: &str) -> Vec<Identifier> {
    text.split('\x1e')
        .filter_map(|pair| {
            let (kind, value) = pair.split_once('\x1f')?;
            Some(Identifier::new(IdentifierKind::parse(kind).ok()?, value))
        })
        .collect()
}

/// An event's traits as stored with it, for an unmerge to replay.
pub(crate) fn traits_json(traits: Option<&serde_json::Map<String, serde_json::Value>>) -> Option<String> {
    traits
        .filter(|t| !t.is_empty())
        .map(|t| serde_json::Value::Object(t.clone()).to_string())
}

pub(crate) fn consents_json(consents: &[ConsentChange]) -> Option<String> {
    (!consents.is_empty()).then(|| serde_json::to_string(consents).unwrap_or_default())
}

pub(crate) fn identifier(kind: String, value: String) -> Result<Identifier, StorageError> {
    let kind = IdentifierKind::parse(&kind).map_err(|e| StorageError::Internal(e.to_string()))?;
    Ok(Identifier::new(kind, value))
}

pub(crate) fn rule_code(rule: Rule) -> i16 {
    match rule {
        Rule::Deterministic => 1,
        Rule::Probabilistic => 2,
        Rule::Review => 3,
    }
}

pub(crate) fn rule_of(code: i16) -> Rule {
    match code {
        2 => Rule::Probabilistic,
        3 => Rule::Review,
        _ => Rule::Deterministic,
    }
}

/// SHA-256 of `kind\0value`: what is kept of an erased identifier.
pub(crate) fn digest(identifier: &Identifier) -> Vec<u8> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(identifier.kind.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(identifier.value.as_bytes());
    hasher.finalize().to_vec()
}

/// A failure another writer caused (a deadlock, a serialisation failure, an identifier
/// inserted first by another transaction): the batch is run again.
pub(crate) fn is_contention(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001" | "23505")))
}
