//! Measurement's store: metrics, the decisions and outcomes kept of each person, what
//! they add to the aggregates (`exposures`, `units`), and the aggregates results are
//! computed from (`exposure_counts`, `sums`). One trait, written once for Postgres and
//! SQLite (`measurement_store!` expands it per backend) and held to one conformance
//! suite (`tests/measurement/store.rs`).
//!
//! Every change goes through `apply`, in one transaction: read what the people it names
//! add now, change the kept decisions and outcomes, compute what they add after
//! (`units::PersonState`), and move the aggregates by the difference. Writers take one
//! lock (an advisory lock on Postgres, the file's on SQLite), so two consumers' changes
//! to one person never interleave.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_proto::WorkspaceId;
use corvus_storage::{Database, Migrators, StorageConfig, StorageError};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::feedback::{Kind, Tally};
use crate::metric::Metric;
use crate::units::{Bucket, Exposure, PersonState, Unit, day_of};

static MIGRATE_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static MIGRATE_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The schema (Postgres) or file (SQLite) of the measurement service.
pub const SCHEMA: &str = "measurement";

/// Rows per multi-row statement: well under either backend's limit on parameters.
const ROWS_PER_STATEMENT: usize = 200;

pub fn migrators() -> Migrators {
    Migrators {
        postgres: &MIGRATE_POSTGRES,
        sqlite: &MIGRATE_SQLITE,
    }
}

/// A decision of orchestration's log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDecision {
    pub id: Uuid,
    pub profile: Uuid,
    pub experiment: String,
    pub arm: String,
    pub action: String,
    pub channel: String,
    pub segment: String,
    pub policy: String,
    pub propensity: f64,
    pub arm_share: f64,
    pub at: DateTime<Utc>,
}

/// An event's contribution to a metric.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOutcome {
    pub event_id: Uuid,
    pub metric: String,
    pub profile: Uuid,
    pub at: DateTime<Utc>,
    pub numerator: f64,
    pub denominator: f64,
}

/// A stage of the funnel a decision reached (an index into `units::STAGES`), from an
/// event carrying its id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewStage {
    pub decision: Uuid,
    pub stage: u8,
    pub profile: Uuid,
    pub at: DateTime<Utc>,
}

/// A piece of feedback an event gave: its kind and value, and what it is counted by
/// (the region the event names, if any; else the person's).
#[derive(Debug, Clone, PartialEq)]
pub struct NewFeedback {
    pub event_id: Uuid,
    pub kind: Kind,
    pub value: f64,
    pub profile: Uuid,
    pub at: DateTime<Utc>,
    pub channel: String,
    pub region: String,
    pub activation: String,
}

/// A person's region, from their traits.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTraits {
    pub profile: Uuid,
    pub region: String,
}

/// What changes the people it names.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Decisions, stages, outcomes and feedback, each kept once however often it is
    /// recorded; people's regions.
    Record {
        decisions: &'a [NewDecision],
        stages: &'a [NewStage],
        outcomes: &'a [NewOutcome],
        feedback: &'a [NewFeedback],
        traits: &'a [NewTraits],
    },
    /// The merged profiles' decisions and outcomes are the survivor's now.
    Merge { survivor: Uuid, merged: &'a [Uuid] },
    /// Each side's events (by id) are its own again; decisions stay where they are.
    Unmerge { sides: &'a [(Uuid, Vec<Uuid>)] },
    /// Everything kept of the profiles goes, and with it what they added.
    Erase { profiles: &'a [Uuid] },
}

impl Change<'_> {
    /// Whether it changes nothing at all.
    fn is_empty(&self) -> bool {
        match self {
            Change::Record {
                decisions,
                stages,
                outcomes,
                feedback,
                traits,
            } => {
                decisions.is_empty()
                    && stages.is_empty()
                    && outcomes.is_empty()
                    && feedback.is_empty()
                    && traits.is_empty()
            }
            Change::Merge { merged, .. } => merged.is_empty(),
            Change::Unmerge { sides } => sides.is_empty(),
            Change::Erase { profiles } => profiles.is_empty(),
        }
    }

    /// The people whose part in the aggregates it may change.
    fn people(&self) -> Vec<Uuid> {
        let mut people: Vec<Uuid> = match self {
            // Feedback and traits are not part of a person's state: only what is counted
            // per person is.
            Change::Record {
                decisions,
                stages,
                outcomes,
                ..
            } => decisions
                .iter()
                .map(|d| d.profile)
                .chain(stages.iter().map(|s| s.profile))
                .chain(outcomes.iter().map(|o| o.profile))
                .collect(),
            Change::Merge { survivor, merged } => std::iter::once(*survivor).chain(merged.iter().copied()).collect(),
            Change::Unmerge { sides } => sides.iter().map(|s| s.0).collect(),
            Change::Erase { profiles } => profiles.to_vec(),
        };
        people.sort_unstable();
        people.dedup();
        people
    }
}

/// An arm of an experiment, as `ListExperiments` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmRow {
    pub experiment: String,
    pub arm: String,
    pub users: u64,
    pub share: f64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

/// Which of an experiment's aggregates to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub channel: Option<String>,
    pub segment: Option<String>,
    /// UTC days since the epoch, inclusive.
    pub from_day: Option<i32>,
    pub to_day: Option<i32>,
}

impl Filter {
    /// Whether it narrows the experiment's people at all.
    pub fn is_empty(&self) -> bool {
        self.channel.is_none() && self.segment.is_none() && self.from_day.is_none() && self.to_day.is_none()
    }
}

/// An experiment's aggregates over the buckets a filter leaves: people per arm, and
/// each metric's sums per arm.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregates {
    pub users: BTreeMap<String, u64>,
    pub sums: BTreeMap<(String, String), crate::units::Sums>,
}

#[async_trait]
pub trait MeasurementStore: Reads + Send + Sync {
    async fn ping(&self) -> Result<(), StorageError>;

    /// Keeps a metric unless its name is taken; returns the metric kept under the name
    /// (the caller compares) and when it was created.
    async fn create_metric(&self, ws: &WorkspaceId, metric: &Metric) -> Result<(Metric, DateTime<Utc>), StorageError>;

    /// Applies a change and moves the aggregates by what it changed, in one transaction.
    /// Returns the decisions, stages and outcomes an erasure deleted (0 otherwise).
    async fn apply(&self, ws: &WorkspaceId, change: Change<'_>, metrics: &[Metric]) -> Result<u64, StorageError>;
}

/// What results and reports read.
#[async_trait]
pub trait Reads: Send + Sync {
    /// The workspace's metrics by name.
    async fn metrics(&self, ws: &WorkspaceId) -> Result<Vec<(Metric, DateTime<Utc>)>, StorageError>;

    /// Every experiment's arms, by experiment and arm.
    async fn experiments(&self, ws: &WorkspaceId) -> Result<Vec<ArmRow>, StorageError>;

    /// An experiment's aggregates within `filter`.
    async fn aggregates(&self, ws: &WorkspaceId, experiment: &str, filter: &Filter)
    -> Result<Aggregates, StorageError>;

    /// An experiment's aggregates within `filter`, per key of `dimension` and arm, with
    /// the funnel's counts and `metrics`' sums.
    async fn report(
        &self,
        ws: &WorkspaceId,
        experiment: &str,
        filter: &Filter,
        dimension: Dimension,
        metrics: &[String],
    ) -> Result<Vec<ReportCell>, StorageError>;

    /// The fatigue curve of a metric: per number of touches, the people and the sum of
    /// the metric's value and of its square.
    async fn fatigue(&self, ws: &WorkspaceId, experiment: &str, metric: &str) -> Result<Vec<FatigueRow>, StorageError>;

    /// Every exposure of the experiment, with its first decision's arm, action, segment
    /// and propensity, and the person's value of the metric (the reward), in the order of
    /// exposure. A read of every exposure: its cost grows with them.
    async fn rounds(&self, ws: &WorkspaceId, experiment: &str, metric: &str) -> Result<Vec<LoggedRound>, StorageError>;

    /// A kind of feedback's tallies within `filter`, per key of `by` (per day for days
    /// and weeks).
    async fn satisfaction(
        &self,
        ws: &WorkspaceId,
        kind: Kind,
        by: FeedbackBy,
        filter: &FeedbackFilter,
    ) -> Result<Vec<(String, Tally)>, StorageError>;
}

/// What feedback is broken down by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackBy {
    Overall,
    Day,
    Channel,
    Region,
    Segment,
    Activation,
}

impl FeedbackBy {
    /// The key's expression (text), and what to group by.
    fn key(self) -> (&'static str, &'static str) {
        match self {
            FeedbackBy::Overall => ("''", ""),
            FeedbackBy::Day => ("CAST(day AS TEXT)", " GROUP BY day"),
            FeedbackBy::Channel => ("channel", " GROUP BY channel"),
            FeedbackBy::Region => ("region", " GROUP BY region"),
            FeedbackBy::Segment => ("segment", " GROUP BY segment"),
            FeedbackBy::Activation => ("activation", " GROUP BY activation"),
        }
    }
}

/// Which feedback to read: each field narrows it.
#[derive(Debug, Clone, Default)]
pub struct FeedbackFilter {
    pub channel: Option<String>,
    pub region: Option<String>,
    pub segment: Option<String>,
    pub activation: Option<String>,
    /// UTC days since the epoch, inclusive.
    pub from_day: Option<i32>,
    pub to_day: Option<i32>,
}

/// An exposure as off-policy estimates read it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRound {
    pub arm: String,
    pub action: String,
    pub segment: String,
    pub propensity: f64,
    pub reward: f64,
}

/// What a report breaks an experiment down by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Overall,
    Channel,
    Segment,
    Action,
    Day,
}

impl Dimension {
    /// The key's expression in the aggregates' tables (text), and what to group by
    /// besides the arm.
    fn key(self) -> (&'static str, &'static str) {
        match self {
            Dimension::Overall => ("''", ""),
            Dimension::Channel => ("channel", "channel, "),
            Dimension::Segment => ("segment", "segment, "),
            Dimension::Action => ("action", "action, "),
            Dimension::Day => ("CAST(day AS TEXT)", "day, "),
        }
    }
}

/// One key and arm of a report: people, touches and the funnel's stages (as
/// `units::Counts`), and each metric's sums.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportCell {
    pub key: String,
    pub arm: String,
    pub counts: crate::units::Counts,
    pub sums: BTreeMap<String, crate::units::Sums>,
}

/// A point of a fatigue curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FatigueRow {
    pub touches: u32,
    pub users: u64,
    pub sum: f64,
    pub sum_squares: f64,
}

pub async fn connect(config: &StorageConfig) -> Result<Arc<dyn MeasurementStore>, StorageError> {
    Ok(match Database::connect(config, SCHEMA, &migrators()).await? {
        Database::Postgres(pool) => Arc::new(PgMeasurementStore { pool }),
        Database::Sqlite(pool) => Arc::new(SqliteMeasurementStore {
            pool,
            writer: Mutex::new(()),
        }),
    })
}

pub struct PgMeasurementStore {
    pool: PgPool,
}

pub struct SqliteMeasurementStore {
    pool: SqlitePool,
    /// SQLite takes one writer at a time: writers queue here rather than on the file.
    writer: Mutex<()>,
}

type Guard<'a> = Option<tokio::sync::MutexGuard<'a, ()>>;

impl PgMeasurementStore {
    /// Every writer of measurement's aggregates takes this transaction-scoped lock first.
    /// Its statements find people's rows by key, many people at a time: without seq and
    /// bitmap scans, a planner without statistics (a young table, autovacuum off) cannot
    /// trade a thousand index lookups for a scan of the whole table.
    async fn begin(&self) -> Result<(Guard<'_>, sqlx::Transaction<'_, sqlx::Postgres>), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true), \
             pg_advisory_xact_lock(hashtext('corvus.measurement.aggregates'))",
        )
        .execute(&mut *tx)
        .await?;
        Ok((None, tx))
    }
}

impl SqliteMeasurementStore {
    /// `BEGIN IMMEDIATE` takes the file's write lock at once, so another process on the
    /// same file waits for this transaction as a second writer here waits on `writer`.
    async fn begin(&self) -> Result<(Guard<'_>, sqlx::Transaction<'_, sqlx::Sqlite>), sqlx::Error> {
        let guard = self.writer.lock().await;
        Ok((Some(guard), self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

type ExposureRow = (Uuid, String, String, String, String, String, i32, i64, i32, i32, f64);
type UnitRow = (Uuid, String, String, f64, f64, f64);
type SumsRow = (String, String, f64, f64, f64, f64, f64, f64, f64, f64);

/// What the people add now, as the derived tables hold it.
fn states_of(exposures: Vec<ExposureRow>, units: Vec<UnitRow>) -> HashMap<Uuid, PersonState> {
    let mut states: HashMap<Uuid, PersonState> = HashMap::new();
    for (profile, experiment, arm, channel, segment, action, day, exposed_at, touches, reached, propensity) in exposures
    {
        let exposure = Exposure {
            bucket: Bucket {
                arm,
                channel,
                segment,
                action,
                day,
            },
            exposed_at,
            touches: touches as u32,
            reached: reached as u8,
            propensity,
            decision: Uuid::nil(),
        };
        states
            .entry(profile)
            .or_default()
            .exposures
            .insert(experiment, exposure);
    }
    for (profile, experiment, metric, value, denominator, covariate) in units {
        let unit = Unit {
            value,
            denominator,
            covariate,
        };
        states
            .entry(profile)
            .or_default()
            .units
            .insert((experiment, metric), unit);
    }
    states
}

/// Builds `SELECT … WHERE workspace_id = ws AND profile_id IN (people)`.
macro_rules! of_people {
    ($Db:ty, $select:expr, $ws:expr, $people:expr) => {{
        let mut q = QueryBuilder::<$Db>::new($select);
        q.push(" WHERE workspace_id = ")
            .push_bind($ws.as_str())
            .push(" AND profile_id IN (");
        let mut list = q.separated(", ");
        for p in $people {
            list.push_bind(*p);
        }
        q.push(")");
        q
    }};
}

/// Builds `DELETE FROM table WHERE workspace_id = ws AND profile_id IN (people)`.
macro_rules! delete_people {
    ($Db:ty, $tx:expr, $table:expr, $ws:expr, $people:expr) => {{
        let mut q = of_people!($Db, format!("DELETE FROM {}", $table), $ws, $people);
        q.build().execute(&mut **$tx).await?.rows_affected()
    }};
}

/// Gives `$to` the rows of `$table` whose `$column` is one of `$ids`, in the workspace,
/// a few hundred ids a statement.
macro_rules! move_rows {
    ($Db:ty, $tx:expr, $table:expr, $column:expr, $to:expr, $ws:expr, $ids:expr) => {{
        for chunk in $ids.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<$Db>::new(format!("UPDATE {} SET profile_id = ", $table));
            q.push_bind($to)
                .push(" WHERE workspace_id = ")
                .push_bind($ws.as_str())
                .push(format!(" AND {} IN (", $column));
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            q.push(")");
            q.build().execute(&mut **$tx).await?;
        }
    }};
}

/// Adds `$filter` to an aggregates query's `WHERE`.
macro_rules! push_filter {
    ($q:expr, $filter:expr) => {{
        if let Some(channel) = &$filter.channel {
            $q.push(" AND channel = ").push_bind(channel.clone());
        }
        if let Some(segment) = &$filter.segment {
            $q.push(" AND segment = ").push_bind(segment.clone());
        }
        if let Some(day) = $filter.from_day {
            $q.push(" AND day >= ").push_bind(day);
        }
        if let Some(day) = $filter.to_day {
            $q.push(" AND day <= ").push_bind(day);
        }
    }};
}

fn metric_of(definition: &str) -> Result<Metric, StorageError> {
    serde_json::from_str(definition).map_err(|e| StorageError::Internal(format!("metric: {e}")))
}

mod feedback;
mod read;
mod write;

/// The UTC day of a time, as filters count days.
pub fn day(t: DateTime<Utc>) -> i32 {
    day_of(micros(t))
}
