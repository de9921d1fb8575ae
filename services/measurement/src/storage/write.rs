//! The store's writes: every change through `apply`, in one transaction (see the
//! module's documentation).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_proto::WorkspaceId;
use corvus_storage::StorageError;
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::*;
use crate::metric::Metric;
use crate::units::{DecisionRow, Deltas, Exposure, OutcomeRow, PersonState, StageRow, Unit};

/// A record as kept: see `screen`.
struct Screened {
    decisions: Vec<NewDecision>,
    stages: Vec<NewStage>,
    outcomes: Vec<NewOutcome>,
    feedback: Vec<NewFeedback>,
    traits: Vec<NewTraits>,
}

impl Screened {
    fn change(&self) -> Change<'_> {
        Change::Record {
            decisions: &self.decisions,
            stages: &self.stages,
            outcomes: &self.outcomes,
            feedback: &self.feedback,
            traits: &self.traits,
        }
    }
}

/// A stage's key: the decision id in the workspace's own space, so that an event of
/// another workspace naming the same id keys a row of its own.
fn stage_key(ws: &WorkspaceId, decision: Uuid) -> Uuid {
    Uuid::new_v5(&decision, ws.as_str().as_bytes())
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
                    "SELECT profile_id, experiment, arm, channel, segment, action, day, exposed_at, touches, reached, \
                     propensity FROM exposures",
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
                type Decided = (Uuid, Uuid, String, String, String, String, String, f64, i64);
                let decisions: Vec<Decided> = of_people!(
                    $Db,
                    "SELECT profile_id, decision_id, experiment, arm, channel, segment, action, propensity, decided_at \
                     FROM decisions",
                    ws,
                    people
                )
                .build_query_as()
                .fetch_all(&mut **tx)
                .await?;
                let stages: Vec<(Uuid, Uuid, i32)> =
                    of_people!($Db, "SELECT profile_id, decision_id, stage FROM stages", ws, people)
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
                type Kept = (Vec<DecisionRow>, Vec<StageRow>, Vec<OutcomeRow>);
                let mut rows: HashMap<Uuid, Kept> = HashMap::new();
                for (profile, id, experiment, arm, channel, segment, action, propensity, at) in decisions {
                    rows.entry(profile).or_default().0.push(DecisionRow {
                        id,
                        experiment,
                        arm,
                        channel,
                        segment,
                        action,
                        propensity,
                        at,
                    });
                }
                for (profile, decision, stage) in stages {
                    rows.entry(profile).or_default().1.push(StageRow {
                        decision,
                        stage: stage as u8,
                    });
                }
                for (profile, metric, at, numerator, denominator) in outcomes {
                    rows.entry(profile).or_default().2.push(OutcomeRow {
                        metric,
                        at,
                        numerator,
                        denominator,
                    });
                }
                Ok(rows
                    .into_iter()
                    .map(|(profile, (d, s, o))| (profile, PersonState::of(metrics, &d, &s, &o)))
                    .collect())
            }

            async fn record(
                tx: &mut sqlx::Transaction<'_, $Db>,
                ws: &WorkspaceId,
                decisions: &[NewDecision],
                stages: &[NewStage],
                outcomes: &[NewOutcome],
            ) -> Result<(), StorageError> {
                for chunk in stages.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO stages (stage_key, decision_id, stage, workspace_id, profile_id, at) ",
                    );
                    q.push_values(chunk, |mut row, s| {
                        row.push_bind(stage_key(ws, s.decision))
                            .push_bind(s.decision)
                            .push_bind(i32::from(s.stage))
                            .push_bind(ws.as_str())
                            .push_bind(s.profile)
                            .push_bind(micros(s.at));
                    });
                    q.push(" ON CONFLICT (stage_key, stage) DO NOTHING");
                    q.build().execute(&mut **tx).await?;
                }
                for chunk in decisions.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO decisions (workspace_id, decision_id, profile_id, decided_for, experiment, arm, \
                         action, channel, segment, policy, propensity, decided_at) ",
                    );
                    q.push_values(chunk, |mut row, d| {
                        row.push_bind(ws.as_str())
                            .push_bind(d.id)
                            .push_bind(d.profile)
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

            /// What a record keeps: nothing of an erased person (a decision or an event of
            /// theirs can still come down a log after the erasure did), and each stage
            /// with the person its decision was made for, when the decision is known.
            #[allow(clippy::too_many_arguments)]
            async fn screen(
                tx: &mut sqlx::Transaction<'_, $Db>,
                ws: &WorkspaceId,
                decisions: &[NewDecision],
                stages: &[NewStage],
                outcomes: &[NewOutcome],
                feedback: &[NewFeedback],
                traits: &[NewTraits],
            ) -> Result<Screened, StorageError> {
                let mut named: Vec<Uuid> = decisions
                    .iter()
                    .map(|d| d.profile)
                    .chain(stages.iter().map(|s| s.profile))
                    .chain(outcomes.iter().map(|o| o.profile))
                    .chain(feedback.iter().map(|f| f.profile))
                    .chain(traits.iter().map(|t| t.profile))
                    .collect();
                named.sort_unstable();
                named.dedup();
                let erased: std::collections::HashSet<Uuid> = match named.is_empty() {
                    true => Default::default(),
                    false => of_people!($Db, "SELECT profile_id FROM erased", ws, &named)
                        .build_query_as::<(Uuid,)>()
                        .fetch_all(&mut **tx)
                        .await?
                        .into_iter()
                        .map(|(p,)| p)
                        .collect(),
                };
                let mut owners: HashMap<Uuid, Uuid> = decisions.iter().map(|d| (d.id, d.profile)).collect();
                let unknown: Vec<Uuid> = stages
                    .iter()
                    .map(|s| s.decision)
                    .filter(|d| !owners.contains_key(d))
                    .collect();
                if !unknown.is_empty() {
                    let mut q = QueryBuilder::<$Db>::new("SELECT decision_id, profile_id FROM decisions WHERE decision_id IN (");
                    let mut list = q.separated(", ");
                    for d in &unknown {
                        list.push_bind(*d);
                    }
                    q.push(") AND workspace_id = ").push_bind(ws.as_str());
                    owners.extend(q.build_query_as::<(Uuid, Uuid)>().fetch_all(&mut **tx).await?);
                }
                let kept = |p: &Uuid| !erased.contains(p);
                Ok(Screened {
                    decisions: decisions.iter().filter(|d| kept(&d.profile)).cloned().collect(),
                    stages: stages
                        .iter()
                        .map(|s| NewStage {
                            profile: owners.get(&s.decision).copied().unwrap_or(s.profile),
                            ..s.clone()
                        })
                        .filter(|s| kept(&s.profile))
                        .collect(),
                    outcomes: outcomes.iter().filter(|o| kept(&o.profile)).cloned().collect(),
                    feedback: feedback.iter().filter(|f| kept(&f.profile)).cloned().collect(),
                    traits: traits.iter().filter(|t| kept(&t.profile)).cloned().collect(),
                })
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
                        "INSERT INTO exposures (workspace_id, profile_id, experiment, arm, channel, segment, action, \
                         day, exposed_at, touches, reached, propensity) ",
                    );
                    q.push_values(chunk, |mut row, (p, x, e)| {
                        row.push_bind(ws.as_str())
                            .push_bind(**p)
                            .push_bind(x.to_string())
                            .push_bind(e.bucket.arm.clone())
                            .push_bind(e.bucket.channel.clone())
                            .push_bind(e.bucket.segment.clone())
                            .push_bind(e.bucket.action.clone())
                            .push_bind(e.bucket.day)
                            .push_bind(e.exposed_at)
                            .push_bind(e.touches as i32)
                            .push_bind(i32::from(e.reached))
                            .push_bind(e.propensity);
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
                        "INSERT INTO exposure_counts (workspace_id, experiment, arm, channel, segment, action, day, \
                         users, touches, sent, delivered, opened, clicked) ",
                    );
                    q.push_values(chunk, |mut row, ((x, b), counts)| {
                        row.push_bind(ws.as_str())
                            .push_bind(x.clone())
                            .push_bind(b.arm.clone())
                            .push_bind(b.channel.clone())
                            .push_bind(b.segment.clone())
                            .push_bind(b.action.clone())
                            .push_bind(b.day);
                        for n in counts {
                            row.push_bind(*n);
                        }
                    });
                    q.push(
                        " ON CONFLICT (workspace_id, experiment, arm, channel, segment, action, day) DO UPDATE SET \
                         users = exposure_counts.users + excluded.users, \
                         touches = exposure_counts.touches + excluded.touches, \
                         sent = exposure_counts.sent + excluded.sent, \
                         delivered = exposure_counts.delivered + excluded.delivered, \
                         opened = exposure_counts.opened + excluded.opened, \
                         clicked = exposure_counts.clicked + excluded.clicked",
                    );
                    q.build().execute(&mut **tx).await?;
                }
                let sums: Vec<_> = deltas.sums.into_iter().collect();
                for chunk in sums.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO sums (workspace_id, experiment, metric, arm, channel, segment, action, day, sum, \
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
                            .push_bind(b.action.clone())
                            .push_bind(b.day);
                        for v in s {
                            row.push_bind(*v);
                        }
                    });
                    q.push(
                        " ON CONFLICT (workspace_id, experiment, metric, arm, channel, segment, action, day) \
                         DO UPDATE SET \
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
                let fatigue: Vec<_> = deltas.fatigue_users.into_iter().collect();
                for chunk in fatigue.chunks(ROWS_PER_STATEMENT) {
                    let mut q =
                        QueryBuilder::<$Db>::new("INSERT INTO fatigue_counts (workspace_id, experiment, touches, users) ");
                    q.push_values(chunk, |mut row, ((x, touches), n)| {
                        row.push_bind(ws.as_str())
                            .push_bind(x.clone())
                            .push_bind(*touches as i32)
                            .push_bind(*n);
                    });
                    q.push(
                        " ON CONFLICT (workspace_id, experiment, touches) \
                         DO UPDATE SET users = fatigue_counts.users + excluded.users",
                    );
                    q.build().execute(&mut **tx).await?;
                }
                let fatigue: Vec<_> = deltas.fatigue_sums.into_iter().collect();
                for chunk in fatigue.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO fatigue_sums (workspace_id, experiment, metric, touches, sum, sum_squares) ",
                    );
                    q.push_values(chunk, |mut row, ((x, m, touches), s)| {
                        row.push_bind(ws.as_str())
                            .push_bind(x.clone())
                            .push_bind(m.clone())
                            .push_bind(*touches as i32)
                            .push_bind(s[0])
                            .push_bind(s[1]);
                    });
                    q.push(
                        " ON CONFLICT (workspace_id, experiment, metric, touches) DO UPDATE SET \
                         sum = fatigue_sums.sum + excluded.sum, \
                         sum_squares = fatigue_sums.sum_squares + excluded.sum_squares",
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

            async fn apply(&self, ws: &WorkspaceId, change: Change<'_>, metrics: &[Metric]) -> Result<u64, StorageError> {
                if change.is_empty() {
                    return Ok(0);
                }
                let (_guard, mut tx) = self.begin().await?;
                let screened;
                let change = match change {
                    Change::Record {
                        decisions,
                        stages,
                        outcomes,
                        feedback,
                        traits,
                    } => {
                        screened = Self::screen(&mut tx, ws, decisions, stages, outcomes, feedback, traits).await?;
                        screened.change()
                    }
                    other => other,
                };
                let people = change.people();
                let old = match people.is_empty() {
                    true => HashMap::new(),
                    false => Self::read_states(&mut tx, ws, &people).await?,
                };
                let mut deleted = 0;
                match change {
                    Change::Record {
                        decisions,
                        stages,
                        outcomes,
                        feedback,
                        traits,
                    } => {
                        Self::record(&mut tx, ws, decisions, stages, outcomes).await?;
                        Self::record_people(&mut tx, ws, traits, decisions).await?;
                        Self::record_feedback(&mut tx, ws, feedback).await?;
                    }
                    Change::Merge { merged, .. } if merged.is_empty() => {}
                    Change::Merge { survivor, merged } => {
                        delete_people!($Db, &mut tx, "people", ws, merged);
                        for table in ["decisions", "stages", "outcomes", "feedback"] {
                            move_rows!($Db, &mut tx, table, "profile_id", survivor, ws, merged);
                        }
                    }
                    Change::Unmerge { sides } => {
                        for (side, events) in sides {
                            // Decisions go back to the person they were made for.
                            sqlx::query(
                                "UPDATE decisions SET profile_id = $1 WHERE decided_for = $1 AND workspace_id = $2",
                            )
                            .bind(*side)
                            .bind(ws.as_str())
                            .execute(&mut *tx)
                            .await?;
                            for table in ["outcomes", "feedback"] {
                                move_rows!($Db, &mut tx, table, "event_id", *side, ws, events);
                            }
                        }
                    }
                    Change::Erase { profiles } => {
                        for table in ["decisions", "stages", "outcomes"] {
                            deleted += delete_people!($Db, &mut tx, table, ws, profiles);
                        }
                        deleted += Self::erase_feedback(&mut tx, ws, profiles).await?;
                        let mut q = QueryBuilder::<$Db>::new("INSERT INTO erased (profile_id, workspace_id, erased_at) ");
                        q.push_values(profiles.iter(), |mut row, p| {
                            row.push_bind(*p).push_bind(ws.as_str()).push_bind(micros(Utc::now()));
                        });
                        q.push(" ON CONFLICT (profile_id) DO NOTHING");
                        q.build().execute(&mut *tx).await?;
                    }
                }
                if !people.is_empty() {
                    let new = Self::compute_states(&mut tx, ws, &people, metrics).await?;
                    Self::write_states(&mut tx, ws, &old, &new, &people).await?;
                }
                tx.commit().await?;
                Ok(deleted)
            }
        }
    };
}

measurement_store!(PgMeasurementStore, sqlx::Postgres);
measurement_store!(SqliteMeasurementStore, sqlx::Sqlite);
