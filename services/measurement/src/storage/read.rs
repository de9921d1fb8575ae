//! The store's reads: metrics, experiments, and the aggregates results and reports are
//! computed from.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_proto::WorkspaceId;
use corvus_storage::StorageError;
use sqlx::QueryBuilder;

use super::*;
use crate::feedback::{Kind, Tally};
use crate::metric::Metric;

macro_rules! reads {
    ($Store:ident, $Db:ty) => {
        #[async_trait]
        impl Reads for $Store {
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

            async fn report(
                &self,
                ws: &WorkspaceId,
                experiment: &str,
                filter: &Filter,
                dimension: Dimension,
                metrics: &[String],
            ) -> Result<Vec<ReportCell>, StorageError> {
                let (key, group) = dimension.key();
                let mut q = QueryBuilder::<$Db>::new(format!(
                    "SELECT {key}, arm, CAST(SUM(users) AS BIGINT), CAST(SUM(touches) AS BIGINT), \
                     CAST(SUM(sent) AS BIGINT), CAST(SUM(delivered) AS BIGINT), CAST(SUM(opened) AS BIGINT), \
                     CAST(SUM(clicked) AS BIGINT) FROM exposure_counts WHERE workspace_id = "
                ));
                q.push_bind(ws.as_str()).push(" AND experiment = ").push_bind(experiment);
                push_filter!(q, filter);
                q.push(format!(" GROUP BY {group}arm"));
                type CountsRow = (String, String, i64, i64, i64, i64, i64, i64);
                let counts: Vec<CountsRow> = q.build_query_as().fetch_all(&self.pool).await?;
                let mut cells: BTreeMap<(String, String), ReportCell> = counts
                    .into_iter()
                    .filter(|row| row.2 > 0)
                    .map(|(key, arm, users, touches, sent, delivered, opened, clicked)| {
                        let cell = ReportCell {
                            key: key.clone(),
                            arm: arm.clone(),
                            counts: [users, touches, sent, delivered, opened, clicked],
                            sums: BTreeMap::new(),
                        };
                        ((key, arm), cell)
                    })
                    .collect();
                if !metrics.is_empty() {
                    let mut q = QueryBuilder::<$Db>::new(format!(
                        "SELECT {key}, arm, metric, SUM(sum), SUM(sum_squares), SUM(den_sum), SUM(den_sum_squares), \
                         SUM(sum_products), SUM(cov_sum), SUM(cov_sum_squares), SUM(cov_sum_products) \
                         FROM sums WHERE workspace_id = "
                    ));
                    q.push_bind(ws.as_str()).push(" AND experiment = ").push_bind(experiment);
                    push_filter!(q, filter);
                    q.push(" AND metric IN (");
                    let mut list = q.separated(", ");
                    for m in metrics {
                        list.push_bind(m.clone());
                    }
                    q.push(format!(") GROUP BY {group}arm, metric"));
                    type SumsByKey = (String, String, String, f64, f64, f64, f64, f64, f64, f64, f64);
                    let sums: Vec<SumsByKey> = q.build_query_as().fetch_all(&self.pool).await?;
                    for (key, arm, metric, a, b, c, d, e, f, g, h) in sums {
                        if let Some(cell) = cells.get_mut(&(key, arm)) {
                            cell.sums.insert(metric, [a, b, c, d, e, f, g, h]);
                        }
                    }
                }
                Ok(cells.into_values().collect())
            }

            async fn fatigue(
                &self,
                ws: &WorkspaceId,
                experiment: &str,
                metric: &str,
            ) -> Result<Vec<FatigueRow>, StorageError> {
                let rows: Vec<(i32, i64, Option<f64>, Option<f64>)> = sqlx::query_as(
                    "SELECT c.touches, c.users, s.sum, s.sum_squares FROM fatigue_counts c \
                     LEFT JOIN fatigue_sums s ON s.workspace_id = c.workspace_id AND s.experiment = c.experiment \
                       AND s.touches = c.touches AND s.metric = $3 \
                     WHERE c.workspace_id = $1 AND c.experiment = $2 AND c.users > 0 ORDER BY c.touches",
                )
                .bind(ws.as_str())
                .bind(experiment)
                .bind(metric)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(touches, users, sum, sum_squares)| FatigueRow {
                        touches: touches as u32,
                        users: users as u64,
                        sum: sum.unwrap_or(0.0),
                        sum_squares: sum_squares.unwrap_or(0.0).max(0.0),
                    })
                    .collect())
            }

            async fn rounds(
                &self,
                ws: &WorkspaceId,
                experiment: &str,
                metric: &str,
            ) -> Result<Vec<LoggedRound>, StorageError> {
                let rows: Vec<(String, String, String, f64, Option<f64>)> = sqlx::query_as(
                    "SELECT e.arm, e.action, e.segment, e.propensity, u.value FROM exposures e \
                     LEFT JOIN units u ON u.profile_id = e.profile_id AND u.experiment = e.experiment \
                       AND u.metric = $3 AND u.workspace_id = e.workspace_id \
                     WHERE e.experiment = $2 AND e.workspace_id = $1 ORDER BY e.exposed_at, e.profile_id",
                )
                .bind(ws.as_str())
                .bind(experiment)
                .bind(metric)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(arm, action, segment, propensity, reward)| LoggedRound {
                        arm,
                        action,
                        segment,
                        propensity,
                        reward: reward.unwrap_or(0.0),
                    })
                    .collect())
            }

            async fn satisfaction(
                &self,
                ws: &WorkspaceId,
                kind: Kind,
                by: FeedbackBy,
                filter: &FeedbackFilter,
            ) -> Result<Vec<(String, Tally)>, StorageError> {
                let (key, group) = by.key();
                let mut q = QueryBuilder::<$Db>::new(format!(
                    "SELECT {key}, CAST(SUM(responses) AS BIGINT), SUM(sum), SUM(sum_squares), \
                     CAST(SUM(top) AS BIGINT), CAST(SUM(bottom) AS BIGINT) FROM feedback_counts WHERE workspace_id = "
                ));
                q.push_bind(ws.as_str()).push(" AND kind = ").push_bind(kind.as_str());
                for (column, value) in [
                    ("channel", &filter.channel),
                    ("region", &filter.region),
                    ("segment", &filter.segment),
                    ("activation", &filter.activation),
                ] {
                    if let Some(value) = value {
                        q.push(format!(" AND {column} = ")).push_bind(value.clone());
                    }
                }
                if let Some(day) = filter.from_day {
                    q.push(" AND day >= ").push_bind(day);
                }
                if let Some(day) = filter.to_day {
                    q.push(" AND day <= ").push_bind(day);
                }
                q.push(group);
                type TallyRow = (String, Option<i64>, Option<f64>, Option<f64>, Option<i64>, Option<i64>);
                let rows: Vec<TallyRow> = q.build_query_as().fetch_all(&self.pool).await?;
                let mut tallies: Vec<(String, Tally)> = rows
                    .into_iter()
                    .map(|(key, responses, sum, sum_squares, top, bottom)| {
                        let tally = Tally {
                            responses: responses.unwrap_or(0).max(0) as u64,
                            sum: sum.unwrap_or(0.0),
                            sum_squares: sum_squares.unwrap_or(0.0).max(0.0),
                            top: top.unwrap_or(0).max(0) as u64,
                            bottom: bottom.unwrap_or(0).max(0) as u64,
                        };
                        (key, tally)
                    })
                    .filter(|(_, t)| t.responses > 0)
                    .collect();
                // Days in order of time, not of text.
                tallies.sort_by_key(|(key, _)| (key.parse::<i64>().ok(), key.clone()));
                Ok(tallies)
            }
        }
    };
}

reads!(PgMeasurementStore, sqlx::Postgres);
reads!(SqliteMeasurementStore, sqlx::Sqlite);
