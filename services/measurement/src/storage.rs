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
use sqlx::{PgPool, QueryBuilder, SqlitePool};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::metric::Metric;
use crate::units::{Bucket, DecisionRow, Deltas, Exposure, OutcomeRow, PersonState, Unit, day_of};

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

/// What changes the people it names.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Decisions and outcomes, each kept once however often it is recorded.
    Record {
        decisions: &'a [NewDecision],
        outcomes: &'a [NewOutcome],
    },
    /// The merged profiles' decisions and outcomes are the survivor's now.
    Merge { survivor: Uuid, merged: &'a [Uuid] },
    /// Each side's events (by id) are its own again; decisions stay where they are.
    Unmerge { sides: &'a [(Uuid, Vec<Uuid>)] },
    /// Everything kept of the profiles goes, and with it what they added.
    Erase { profiles: &'a [Uuid] },
}

impl Change<'_> {
    fn people(&self) -> Vec<Uuid> {
        let mut people: Vec<Uuid> = match self {
            Change::Record { decisions, outcomes } => decisions
                .iter()
                .map(|d| d.profile)
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

/// An experiment's aggregates over the buckets a filter leaves: people per arm, and
/// each metric's sums per arm.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregates {
    pub users: BTreeMap<String, u64>,
    pub sums: BTreeMap<(String, String), crate::units::Sums>,
}

#[async_trait]
pub trait MeasurementStore: Send + Sync {
    async fn ping(&self) -> Result<(), StorageError>;

    /// Keeps a metric unless its name is taken; returns the metric kept under the name
    /// (the caller compares) and when it was created.
    async fn create_metric(&self, ws: &WorkspaceId, metric: &Metric) -> Result<(Metric, DateTime<Utc>), StorageError>;

    /// The workspace's metrics by name.
    async fn metrics(&self, ws: &WorkspaceId) -> Result<Vec<(Metric, DateTime<Utc>)>, StorageError>;

    /// Applies a change and moves the aggregates by what it changed, in one transaction.
    /// Returns the decisions and outcomes an erasure deleted (0 otherwise).
    async fn apply(&self, ws: &WorkspaceId, change: Change<'_>, metrics: &[Metric]) -> Result<u64, StorageError>;

    /// Every experiment's arms, by experiment and arm.
    async fn experiments(&self, ws: &WorkspaceId) -> Result<Vec<ArmRow>, StorageError>;

    /// An experiment's aggregates within `filter`.
    async fn aggregates(&self, ws: &WorkspaceId, experiment: &str, filter: &Filter)
    -> Result<Aggregates, StorageError>;
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

type ExposureRow = (Uuid, String, String, String, String, i32, i64, i32);
type UnitRow = (Uuid, String, String, f64, f64, f64);
type SumsRow = (String, String, f64, f64, f64, f64, f64, f64, f64, f64);

/// What the people add now, as the derived tables hold it.
fn states_of(exposures: Vec<ExposureRow>, units: Vec<UnitRow>) -> HashMap<Uuid, PersonState> {
    let mut states: HashMap<Uuid, PersonState> = HashMap::new();
    for (profile, experiment, arm, channel, segment, day, exposed_at, touches) in exposures {
        let exposure = Exposure {
            bucket: Bucket {
                arm,
                channel,
                segment,
                day,
            },
            exposed_at,
            touches: touches as u32,
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

macro_rules! measurement_store {
    ($Store:ident, $Db:ty) => {
        impl $Store {
            /// What the people add now, from the derived tables.
            async fn read_states(
                tx: &mut sqlx::Transaction<'_, $Db>,
                ws: &WorkspaceId,
                people: &[Uuid],
            ) -> Result<HashMap<Uuid, PersonState>, StorageError> {
                let exposures: Vec<ExposureRow> = of_people!(
                    $Db,
                    "SELECT profile_id, experiment, arm, channel, segment, day, exposed_at, touches FROM exposures",
                    ws,
                    people
                )
                .build_query_as()
                .fetch_all(&mut **tx)
                .await?;
                let units: Vec<UnitRow> = of_people!(
                    $Db,
                    "SELECT profile_id, experiment, metric, value, denominator, covariate FROM units",
                    ws,
                    people
                )
                .build_query_as()
                .fetch_all(&mut **tx)
                .await?;
                Ok(states_of(exposures, units))
            }

            /// What the people add after the change, from their decisions and outcomes.
            async fn compute_states(
                tx: &mut sqlx::Transaction<'_, $Db>,
                ws: &WorkspaceId,
                people: &[Uuid],
                metrics: &[Metric],
            ) -> Result<HashMap<Uuid, PersonState>, StorageError> {
                let decisions: Vec<(Uuid, String, String, String, String, i64)> = of_people!(
                    $Db,
                    "SELECT profile_id, experiment, arm, channel, segment, decided_at FROM decisions",
                    ws,
                    people
                )
                .build_query_as()
                .fetch_all(&mut **tx)
                .await?;
                let outcomes: Vec<(Uuid, String, i64, f64, f64)> = of_people!(
                    $Db,
                    "SELECT profile_id, metric, at, numerator, denominator FROM outcomes",
                    ws,
                    people
                )
                .build_query_as()
                .fetch_all(&mut **tx)
                .await?;
                let mut rows: HashMap<Uuid, (Vec<DecisionRow>, Vec<OutcomeRow>)> = HashMap::new();
                for (profile, experiment, arm, channel, segment, at) in decisions {
                    rows.entry(profile).or_default().0.push(DecisionRow {
                        experiment,
                        arm,
                        channel,
                        segment,
                        at,
                    });
                }
                for (profile, metric, at, numerator, denominator) in outcomes {
                    rows.entry(profile).or_default().1.push(OutcomeRow {
                        metric,
                        at,
                        numerator,
                        denominator,
                    });
                }
                Ok(rows
                    .into_iter()
                    .map(|(profile, (d, o))| (profile, PersonState::of(metrics, &d, &o)))
                    .collect())
            }

            async fn record(
                tx: &mut sqlx::Transaction<'_, $Db>,
                ws: &WorkspaceId,
                decisions: &[NewDecision],
                outcomes: &[NewOutcome],
            ) -> Result<(), StorageError> {
                for chunk in decisions.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO decisions (workspace_id, decision_id, profile_id, experiment, arm, action, \
                         channel, segment, policy, propensity, decided_at) ",
                    );
                    q.push_values(chunk, |mut row, d| {
                        row.push_bind(ws.as_str())
                            .push_bind(d.id)
                            .push_bind(d.profile)
                            .push_bind(d.experiment.clone())
                            .push_bind(d.arm.clone())
                            .push_bind(d.action.clone())
                            .push_bind(d.channel.clone())
                            .push_bind(d.segment.clone())
                            .push_bind(d.policy.clone())
                            .push_bind(d.propensity)
                            .push_bind(micros(d.at));
                    });
                    q.push(" ON CONFLICT (decision_id) DO NOTHING");
                    q.build().execute(&mut **tx).await?;
                }
                // Each arm's designed share, as its latest decision gives it.
                let mut arms: BTreeMap<(&str, &str), (f64, i64, i64)> = BTreeMap::new();
                for d in decisions {
                    let at = micros(d.at);
                    let arm = arms.entry((&d.experiment, &d.arm)).or_insert((d.arm_share, at, at));
                    if at >= arm.2 {
                        (arm.0, arm.2) = (d.arm_share, at);
                    }
                    arm.1 = arm.1.min(at);
                }
                let arms: Vec<_> = arms.into_iter().collect();
                for chunk in arms.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO arms (workspace_id, experiment, arm, share, first_at, last_at) ",
                    );
                    q.push_values(chunk, |mut row, ((experiment, arm), (share, first, last))| {
                        row.push_bind(ws.as_str())
                            .push_bind(experiment.to_string())
                            .push_bind(arm.to_string())
                            .push_bind(*share)
                            .push_bind(*first)
                            .push_bind(*last);
                    });
                    q.push(
                        " ON CONFLICT (workspace_id, experiment, arm) DO UPDATE SET \
                         share = CASE WHEN excluded.last_at >= arms.last_at THEN excluded.share ELSE arms.share END, \
                         first_at = CASE WHEN excluded.first_at < arms.first_at THEN excluded.first_at ELSE arms.first_at END, \
                         last_at = CASE WHEN excluded.last_at > arms.last_at THEN excluded.last_at ELSE arms.last_at END",
                    );
                    q.build().execute(&mut **tx).await?;
                }
                for chunk in outcomes.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO outcomes (workspace_id, event_id, metric, profile_id, at, numerator, denominator) ",
                    );
                    q.push_values(chunk, |mut row, o| {
                        row.push_bind(ws.as_str())
                            .push_bind(o.event_id)
                            .push_bind(o.metric.clone())
                            .push_bind(o.profile)
                            .push_bind(micros(o.at))
                            .push_bind(o.numerator)
                            .push_bind(o.denominator);
                    });
                    q.push(" ON CONFLICT (event_id, metric) DO NOTHING");
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Rewrites the derived rows of the people whose state changed, and moves the
            /// aggregates.
            async fn write_states(
                tx: &mut sqlx::Transaction<'_, $Db>,
                ws: &WorkspaceId,
                old: &HashMap<Uuid, PersonState>,
                new: &HashMap<Uuid, PersonState>,
                people: &[Uuid],
            ) -> Result<(), StorageError> {
                let empty = PersonState::default();
                let mut deltas = Deltas::default();
                let mut changed = Vec::new();
                for p in people {
                    let (o, n) = (old.get(p).unwrap_or(&empty), new.get(p).unwrap_or(&empty));
                    if o != n {
                        deltas.add(o, n);
                        changed.push(*p);
                    }
                }
                if changed.is_empty() {
                    return Ok(());
                }
                delete_people!($Db, tx, "exposures", ws, &changed);
                delete_people!($Db, tx, "units", ws, &changed);
                let exposures: Vec<(&Uuid, &String, &Exposure)> = changed
                    .iter()
                    .filter_map(|p| new.get(p).map(|s| (p, s)))
                    .flat_map(|(p, s)| s.exposures.iter().map(move |(x, e)| (p, x, e)))
                    .collect();
                for chunk in exposures.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO exposures (workspace_id, profile_id, experiment, arm, channel, segment, day, \
                         exposed_at, touches) ",
                    );
                    q.push_values(chunk, |mut row, (p, x, e)| {
                        row.push_bind(ws.as_str())
                            .push_bind(**p)
                            .push_bind(x.to_string())
                            .push_bind(e.bucket.arm.clone())
                            .push_bind(e.bucket.channel.clone())
                            .push_bind(e.bucket.segment.clone())
                            .push_bind(e.bucket.day)
                            .push_bind(e.exposed_at)
                            .push_bind(e.touches as i32);
                    });
                    q.build().execute(&mut **tx).await?;
                }
                let units: Vec<(&Uuid, &(String, String), &Unit)> = changed
                    .iter()
                    .filter_map(|p| new.get(p).map(|s| (p, s)))
                    .flat_map(|(p, s)| s.units.iter().map(move |(k, u)| (p, k, u)))
                    .collect();
                for chunk in units.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO units (workspace_id, profile_id, experiment, metric, value, denominator, covariate) ",
                    );
                    q.push_values(chunk, |mut row, (p, (x, m), u)| {
                        row.push_bind(ws.as_str())
                            .push_bind(**p)
                            .push_bind(x.clone())
                            .push_bind(m.clone())
                            .push_bind(u.value)
                            .push_bind(u.denominator)
                            .push_bind(u.covariate);
                    });
                    q.build().execute(&mut **tx).await?;
                }
                deltas.settle();
                let users: Vec<_> = deltas.users.into_iter().collect();
                for chunk in users.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO exposure_counts (workspace_id, experiment, arm, channel, segment, day, users) ",
                    );
                    q.push_values(chunk, |mut row, ((x, b), n)| {
                        row.push_bind(ws.as_str())
                            .push_bind(x.clone())
                            .push_bind(b.arm.clone())
                            .push_bind(b.channel.clone())
                            .push_bind(b.segment.clone())
                            .push_bind(b.day)
                            .push_bind(*n);
                    });
                    q.push(
                        " ON CONFLICT (workspace_id, experiment, arm, channel, segment, day) \
                         DO UPDATE SET users = exposure_counts.users + excluded.users",
                    );
                    q.build().execute(&mut **tx).await?;
                }
                let sums: Vec<_> = deltas.sums.into_iter().collect();
                for chunk in sums.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO sums (workspace_id, experiment, metric, arm, channel, segment, day, sum, \
                         sum_squares, den_sum, den_sum_squares, sum_products, cov_sum, cov_sum_squares, \
                         cov_sum_products) ",
                    );
                    q.push_values(chunk, |mut row, ((x, m, b), s)| {
                        row.push_bind(ws.as_str())
                            .push_bind(x.clone())
                            .push_bind(m.clone())
                            .push_bind(b.arm.clone())
                            .push_bind(b.channel.clone())
                            .push_bind(b.segment.clone())
                            .push_bind(b.day);
                        for v in s {
                            row.push_bind(*v);
                        }
                    });
                    q.push(
                        " ON CONFLICT (workspace_id, experiment, metric, arm, channel, segment, day) DO UPDATE SET \
                         sum = sums.sum + excluded.sum, \
                         sum_squares = sums.sum_squares + excluded.sum_squares, \
                         den_sum = sums.den_sum + excluded.den_sum, \
                         den_sum_squares = sums.den_sum_squares + excluded.den_sum_squares, \
                         sum_products = sums.sum_products + excluded.sum_products, \
                         cov_sum = sums.cov_sum + excluded.cov_sum, \
                         cov_sum_squares = sums.cov_sum_squares + excluded.cov_sum_squares, \
                         cov_sum_products = sums.cov_sum_products + excluded.cov_sum_products",
                    );
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }
        }

        #[async_trait]
        impl MeasurementStore for $Store {
            async fn ping(&self) -> Result<(), StorageError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn create_metric(
                &self,
                ws: &WorkspaceId,
                metric: &Metric,
            ) -> Result<(Metric, DateTime<Utc>), StorageError> {
                sqlx::query(
                    "INSERT INTO metrics (workspace_id, name, definition, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (workspace_id, name) DO NOTHING",
                )
                .bind(ws.as_str())
                .bind(&metric.name)
                .bind(serde_json::to_string(metric).expect("a metric serialises"))
                .bind(micros(Utc::now()))
                .execute(&self.pool)
                .await?;
                let (definition, created_at): (String, i64) =
                    sqlx::query_as("SELECT definition, created_at FROM metrics WHERE workspace_id = $1 AND name = $2")
                        .bind(ws.as_str())
                        .bind(&metric.name)
                        .fetch_one(&self.pool)
                        .await?;
                Ok((metric_of(&definition)?, time(created_at)))
            }

            async fn metrics(&self, ws: &WorkspaceId) -> Result<Vec<(Metric, DateTime<Utc>)>, StorageError> {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT definition, created_at FROM metrics WHERE workspace_id = $1 ORDER BY name",
                )
                .bind(ws.as_str())
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(definition, at)| Ok((metric_of(&definition)?, time(at))))
                    .collect()
            }

            async fn apply(&self, ws: &WorkspaceId, change: Change<'_>, metrics: &[Metric]) -> Result<u64, StorageError> {
                let people = change.people();
                if people.is_empty() {
                    return Ok(0);
                }
                let (_guard, mut tx) = self.begin().await?;
                let old = Self::read_states(&mut tx, ws, &people).await?;
                let mut deleted = 0;
                match change {
                    Change::Record { decisions, outcomes } => Self::record(&mut tx, ws, decisions, outcomes).await?,
                    Change::Merge { survivor, merged } => {
                        for table in ["decisions", "outcomes"] {
                            let mut q = QueryBuilder::<$Db>::new(format!("UPDATE {table} SET profile_id = "));
                            q.push_bind(survivor)
                                .push(" WHERE workspace_id = ")
                                .push_bind(ws.as_str())
                                .push(" AND profile_id IN (");
                            let mut list = q.separated(", ");
                            for p in merged {
                                list.push_bind(*p);
                            }
                            q.push(")");
                            q.build().execute(&mut *tx).await?;
                        }
                    }
                    Change::Unmerge { sides } => {
                        for (side, events) in sides {
                            for chunk in events.chunks(ROWS_PER_STATEMENT) {
                                let mut q = QueryBuilder::<$Db>::new("UPDATE outcomes SET profile_id = ");
                                q.push_bind(*side)
                                    .push(" WHERE workspace_id = ")
                                    .push_bind(ws.as_str())
                                    .push(" AND event_id IN (");
                                let mut list = q.separated(", ");
                                for e in chunk {
                                    list.push_bind(*e);
                                }
                                q.push(")");
                                q.build().execute(&mut *tx).await?;
                            }
                        }
                    }
                    Change::Erase { profiles } => {
                        deleted += delete_people!($Db, &mut tx, "decisions", ws, profiles);
                        deleted += delete_people!($Db, &mut tx, "outcomes", ws, profiles);
                    }
                }
                let new = Self::compute_states(&mut tx, ws, &people, metrics).await?;
                Self::write_states(&mut tx, ws, &old, &new, &people).await?;
                tx.commit().await?;
                Ok(deleted)
            }

            async fn experiments(&self, ws: &WorkspaceId) -> Result<Vec<ArmRow>, StorageError> {
                let rows: Vec<(String, String, f64, i64, i64, Option<i64>)> = sqlx::query_as(
                    "SELECT a.experiment, a.arm, a.share, a.first_at, a.last_at, \
                     (SELECT CAST(SUM(c.users) AS BIGINT) FROM exposure_counts c \
                      WHERE c.workspace_id = a.workspace_id AND c.experiment = a.experiment AND c.arm = a.arm) \
                     FROM arms a WHERE a.workspace_id = $1 ORDER BY a.experiment, a.arm",
                )
                .bind(ws.as_str())
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(experiment, arm, share, first, last, users)| ArmRow {
                        experiment,
                        arm,
                        users: users.unwrap_or(0).max(0) as u64,
                        share,
                        first_at: time(first),
                        last_at: time(last),
                    })
                    .collect())
            }

            async fn aggregates(
                &self,
                ws: &WorkspaceId,
                experiment: &str,
                filter: &Filter,
            ) -> Result<Aggregates, StorageError> {
                let mut q = QueryBuilder::<$Db>::new(
                    "SELECT arm, CAST(SUM(users) AS BIGINT) FROM exposure_counts WHERE workspace_id = ",
                );
                q.push_bind(ws.as_str()).push(" AND experiment = ").push_bind(experiment);
                push_filter!(q, filter);
                q.push(" GROUP BY arm");
                let users: Vec<(String, i64)> = q.build_query_as().fetch_all(&self.pool).await?;
                let mut q = QueryBuilder::<$Db>::new(
                    "SELECT metric, arm, SUM(sum), SUM(sum_squares), SUM(den_sum), SUM(den_sum_squares), \
                     SUM(sum_products), SUM(cov_sum), SUM(cov_sum_squares), SUM(cov_sum_products) \
                     FROM sums WHERE workspace_id = ",
                );
                q.push_bind(ws.as_str()).push(" AND experiment = ").push_bind(experiment);
                push_filter!(q, filter);
                q.push(" GROUP BY metric, arm");
                let sums: Vec<SumsRow> = q.build_query_as().fetch_all(&self.pool).await?;
                Ok(Aggregates {
                    users: users
                        .into_iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|(arm, n)| (arm, n as u64))
                        .collect(),
                    sums: sums
                        .into_iter()
                        .map(|(metric, arm, a, b, c, d, e, f, g, h)| ((metric, arm), [a, b, c, d, e, f, g, h]))
                        .collect(),
                })
            }
        }
    };
}

fn metric_of(definition: &str) -> Result<Metric, StorageError> {
    serde_json::from_str(definition).map_err(|e| StorageError::Internal(format!("metric: {e}")))
}

measurement_store!(PgMeasurementStore, sqlx::Postgres);
measurement_store!(SqliteMeasurementStore, sqlx::Sqlite);

/// The UTC day of a time, as filters count days.
pub fn day(t: DateTime<Utc>) -> i32 {
    day_of(micros(t))
}
