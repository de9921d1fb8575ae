//! Refits on a schedule: each workspace model older than `[scoring] refit_every` is
//! fitted again as of now, with the settings it was fitted with, so the models follow
//! the data without anyone asking. The propensity model is not refitted here: it learns
//! each window of outcomes as it closes (`propensity::learn_outcomes`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use corvus_proto::WorkspaceId;

use crate::domain::segments;
use crate::models::{AFFINITY, CLV, ClvFit, ENGAGEMENT, Fitted, RFM, SEGMENTS};
use crate::service::{Scoring, ScoringError};

/// A refit that failed (too little data, say) is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(3600);

/// When each (workspace, kind) refit was last tried, so a failing one is not retried
/// at every pass.
#[derive(Default)]
pub struct Attempts(HashMap<(WorkspaceId, &'static str), Instant>);

fn fitted_at(model: &Fitted) -> DateTime<Utc> {
    match model {
        Fitted::Clv(m) => m.fitted_at,
        Fitted::Rfm(f) => f.fitted_at,
        Fitted::Engagement(f) => f.fitted_at,
        Fitted::Affinity(f) => f.fitted_at,
        Fitted::Segments(f) => f.fitted_at,
        Fitted::Propensity(f) => f.fitted_at,
    }
}

impl Scoring {
    /// Refits every model fitted more than `every` ago; returns how many it refitted.
    pub async fn refit_due(
        &self,
        now: DateTime<Utc>,
        every: Duration,
        attempts: &mut Attempts,
    ) -> Result<usize, ScoringError> {
        let every = chrono::TimeDelta::from_std(every).unwrap_or(chrono::TimeDelta::MAX);
        let mut refitted = 0;
        for kind in [CLV, RFM, ENGAGEMENT, AFFINITY, SEGMENTS] {
            for ws in self.store.workspaces_with_model(kind).await? {
                let Some(model) = self.model(&ws, kind).await? else {
                    continue;
                };
                if fitted_at(&model) + every > now {
                    continue;
                }
                let key = (ws.clone(), kind);
                if attempts.0.get(&key).is_some_and(|at| at.elapsed() < RETRY_AFTER) {
                    continue;
                }
                attempts.0.insert(key, Instant::now());
                let quiet = |_: &str, _: f64| {};
                let result = match model {
                    Fitted::Clv(m) => {
                        let fit = ClvFit {
                            as_of: now,
                            unit: m.unit,
                            clv_months: m.clv_months,
                            discount_rate: m.discount_rate,
                        };
                        self.fit_clv(&ws, fit, quiet).await.map(drop)
                    }
                    Fitted::Rfm(_) => self.fit_rfm(&ws, now, quiet).await.map(drop),
                    Fitted::Engagement(_) => self.fit_engagement(&ws, now, quiet).await.map(drop),
                    Fitted::Affinity(f) => self
                        .fit_affinity(&ws, now, f.min_support, f.min_confidence, quiet)
                        .await
                        .map(drop),
                    Fitted::Segments(f) => {
                        // k as it was asked for: chosen again by silhouette if it was.
                        let s = &f.segmentation;
                        let k = (s.tried.len() <= 1).then_some(s.segments.len());
                        self.fit_segments(&ws, now, k, segments::DEFAULT_RESTARTS, quiet)
                            .await
                            .map(drop)
                    }
                    Fitted::Propensity(_) => Ok(()),
                };
                match result {
                    Ok(()) => refitted += 1,
                    Err(err) => tracing::warn!(workspace = %ws, kind, error = %err, "a scheduled refit failed"),
                }
            }
        }
        Ok(refitted)
    }
}
