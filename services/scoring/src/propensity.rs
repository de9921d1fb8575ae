//! The workspace's purchase propensity model as the service keeps it: examples made of
//! each profile's features at a snapshot and whether it bought in the N days after,
//! learnt online (FTRL-Proximal) in time order, calibrated, checked on a time-split
//! holdout against a batch logistic regression on the same features, then kept learning
//! as each window of outcomes closes.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use corvus_proto::{ProfileId, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::domain::features::{Dated, Features};
use crate::domain::propensity::{
    Evaluation, Example, FeatureHasher, FtrlParams, PropensityModel, Split, fit_and_evaluate, hash64,
};
use crate::service::{Scoring, ScoringError};

pub const PROPENSITY: &str = "propensity";

/// Hashed coordinates: 2^18.
const BITS: u32 = 18;
/// The batch model's L2 penalty (on the mean log-loss), as in the reference check.
const BATCH_L2: f64 = 1e-3;
/// Snapshots the online model trains on before the calibration and holdout ones.
const TRAINING_SNAPSHOTS: usize = 6;
/// The least examples, and of each outcome, a split needs.
const MIN_EXAMPLES: usize = 50;
const MIN_EACH: usize = 5;

/// A workspace's propensity model, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropensityFit {
    pub model: PropensityModel,
    pub horizon_days: u32,
    pub as_of: DateTime<Utc>,
    pub fitted_at: DateTime<Utc>,
    /// The latest snapshot whose outcomes the model has learnt: the next is due when
    /// the window after it has closed.
    pub trained_until: DateTime<Utc>,
    pub training_examples: u64,
    pub holdout_examples: u64,
    /// Snapshots learnt online since the fit.
    pub updates: u64,
    /// The holdout's figures: the online model, calibrated, and the batch one.
    pub online: Evaluation,
    pub calibrated: Evaluation,
    pub batch: Evaluation,
}

/// A profile's propensity.
#[derive(Debug, Clone, PartialEq)]
pub struct Propensity {
    pub probability: f64,
    /// 1 − probability, for a customer (someone who bought before); absent otherwise.
    pub churn_risk: Option<f64>,
    /// The features that moved the score most, with their contribution to its logit.
    pub drivers: Vec<(String, f64)>,
}

/// A profile's features at `t` as the model takes them: numbers by name, categories as
/// `name=value` with value 1. Counts and money are on a log scale; the buckets let the
/// per-coordinate rates of FTRL fit curved effects.
pub fn named(f: &Features, t: DateTime<Utc>, horizon_days: u32) -> Vec<(String, f64)> {
    let days = |from: Option<DateTime<Utc>>| from.map(|a| (t - a).num_seconds() as f64 / 86_400.0);
    let window = t - TimeDelta::days(i64::from(horizon_days));
    let recent = f.purchase_days.keys().filter(|d| **d > window.date_naive()).count();
    let bucket = |v: f64, step: f64, cap: f64| format!("{}", (v / step).floor().clamp(0.0, cap));
    let mut out = vec![
        ("log_events".to_owned(), (f.events as f64).ln_1p()),
        ("log_orders".to_owned(), (f.orders as f64).ln_1p()),
        ("log_revenue".to_owned(), f.revenue.max(0.0).ln_1p()),
        (format!("recent_purchases={}", recent.min(5)), 1.0),
        (format!("purchase_days={}", f.purchase_days.len().min(8)), 1.0),
        (
            format!("monetary_band={}", bucket(2.0 * f.revenue.max(0.0).ln_1p(), 1.0, 14.0)),
            1.0,
        ),
    ];
    if let Some(r) = f.recency_days(t) {
        out.push(("recency_years".to_owned(), r / 365.0));
        out.push((format!("recency_15d={}", bucket(r, 15.0, 12.0)), 1.0));
    } else {
        out.push(("never_bought=1".to_owned(), 1.0));
    }
    if let Some(tenure) = days(f.first_seen) {
        out.push(("tenure_years".to_owned(), tenure / 365.0));
        out.push((format!("tenure_30d={}", bucket(tenure, 30.0, 12.0)), 1.0));
    }
    if let Some(idle) = days(f.last_seen) {
        out.push((format!("idle_15d={}", bucket(idle, 15.0, 12.0)), 1.0));
    }
    for (channel, e) in &f.channels {
        out.push((format!("{channel}_opened"), (e.opened as f64).ln_1p()));
        out.push((format!("{channel}_clicked"), (e.clicked as f64).ln_1p()));
        if e.unsubscribed > 0 {
            out.push((format!("{channel}_unsubscribed=1"), 1.0));
        }
    }
    if let Some(category) = f
        .categories
        .iter()
        .max_by(|a, b| a.1.orders.cmp(&b.1.orders).then(b.0.cmp(a.0)))
    {
        out.push((format!("top_category={}", category.0), 1.0));
    }
    if let Some(nps) = f.nps.mean() {
        out.push(("nps".to_owned(), nps / 10.0));
    }
    if let Some(s) = f.sentiment.mean() {
        out.push(("sentiment".to_owned(), s));
    }
    out.retain(|(_, v)| *v != 0.0 && v.is_finite());
    out
}

fn example(hasher: &FeatureHasher, named: &[(String, f64)]) -> Example {
    named
        .iter()
        .fold(hasher.example(), |b, (name, v)| b.numeric(name, *v))
        .build()
}

/// The examples of every profile seen by `t`, labelled by a purchase in the `horizon`
/// after it, in an order fixed by a hash of the snapshot and the example itself (its
/// features and label): the same events give the same order, and so the same model,
/// whatever ids identity gave the profiles; equal examples are interchangeable.
fn snapshot(
    hasher: &FeatureHasher,
    profiles: &[(ProfileId, Vec<Dated>)],
    t: DateTime<Utc>,
    horizon_days: u32,
) -> (Vec<Example>, Vec<bool>) {
    let end = t + TimeDelta::days(i64::from(horizon_days));
    let mut rows: Vec<(u64, Example, bool)> = profiles
        .iter()
        .filter(|(_, facts)| facts.first().is_some_and(|d| d.at <= t))
        .map(|(_, facts)| {
            let features = Features::compute(facts, t);
            let bought = facts
                .iter()
                .any(|d| d.at > t && d.at <= end && d.fact.revenue.is_some());
            let named = named(&features, t, horizon_days);
            let order = hash64(&format!("{}/{named:?}/{bought}", t.timestamp()), 0);
            (order, example(hasher, &named), bought)
        })
        .collect();
    rows.sort_by_key(|(order, _, _)| *order);
    rows.into_iter().map(|(_, x, y)| (x, y)).unzip()
}

fn enough(what: &str, labels: &[bool]) -> Result<(), ScoringError> {
    let buyers = labels.iter().filter(|y| **y).count();
    if labels.len() < MIN_EXAMPLES || buyers < MIN_EACH || labels.len() - buyers < MIN_EACH {
        return Err(ScoringError::Precondition(format!(
            "propensity needs at least {MIN_EXAMPLES} profiles in its {what} snapshot with {MIN_EACH} who bought in \
             the window after it and {MIN_EACH} who did not; it holds {} with {buyers} who bought",
            labels.len()
        )));
    }
    Ok(())
}

impl Scoring {
    /// Every profile's facts up to `until`, by profile.
    async fn profiles_facts(
        &self,
        ws: &WorkspaceId,
        until: DateTime<Utc>,
    ) -> Result<Vec<(ProfileId, Vec<Dated>)>, ScoringError> {
        let mut out: Vec<(ProfileId, Vec<Dated>)> = Vec::new();
        for (profile, dated) in self.store.workspace_facts(ws, until, false).await? {
            match out.last_mut() {
                Some((p, facts)) if *p == profile => facts.push(dated),
                _ => out.push((profile, vec![dated])),
            }
        }
        Ok(out)
    }

    /// Fits the workspace's propensity model from its events up to `as_of`: snapshots
    /// every `horizon_days` back from `as_of − horizon` (the holdout), the one before it
    /// to calibrate, up to six before that to learn from; then the model learns the
    /// calibration and holdout outcomes too, so that it has seen everything up to
    /// `as_of`.
    pub async fn fit_propensity(
        &self,
        ws: &WorkspaceId,
        as_of: DateTime<Utc>,
        horizon_days: u32,
        mut progress: impl FnMut(&str, f64),
    ) -> Result<PropensityFit, ScoringError> {
        progress("reading every profile's events", 0.0);
        let profiles = self.profiles_facts(ws, as_of).await?;
        let step = TimeDelta::days(i64::from(horizon_days));
        let hasher = FeatureHasher::new(BITS, 0);
        progress("making the snapshots", 0.2);
        let holdout_at = as_of - step;
        let holdout = snapshot(&hasher, &profiles, holdout_at, horizon_days);
        let calibration = snapshot(&hasher, &profiles, holdout_at - step, horizon_days);
        let (mut train_x, mut train_y) = (Vec::new(), Vec::new());
        for k in (2..2 + TRAINING_SNAPSHOTS).rev() {
            let (x, y) = snapshot(&hasher, &profiles, holdout_at - step * k as i32, horizon_days);
            train_x.extend(x);
            train_y.extend(y);
        }
        enough("training", &train_y)?;
        enough("calibration", &calibration.1)?;
        enough("holdout", &holdout.1)?;
        progress("learning online, calibrating, fitting the batch model", 0.5);
        let report = fit_and_evaluate(
            hasher,
            FtrlParams::default(),
            BATCH_L2,
            Split {
                examples: &train_x,
                labels: &train_y,
            },
            Split {
                examples: &calibration.0,
                labels: &calibration.1,
            },
            Split {
                examples: &holdout.0,
                labels: &holdout.1,
            },
        );
        let mut model = report.model;
        for (x, y) in calibration
            .0
            .iter()
            .zip(&calibration.1)
            .chain(holdout.0.iter().zip(&holdout.1))
        {
            model.ftrl.update(x, *y);
        }
        let fit = PropensityFit {
            model,
            horizon_days,
            as_of,
            fitted_at: Utc::now(),
            trained_until: holdout_at,
            training_examples: train_y.len() as u64,
            holdout_examples: holdout.1.len() as u64,
            updates: 0,
            online: report.ftrl,
            calibrated: report.calibrated,
            batch: report.batch,
        };
        progress("saving the model", 0.9);
        self.save_propensity(ws, &fit).await?;
        Ok(fit)
    }

    async fn save_propensity(&self, ws: &WorkspaceId, fit: &PropensityFit) -> Result<(), ScoringError> {
        let json = serde_json::to_string(fit).map_err(|e| corvus_storage::StorageError::Internal(e.to_string()))?;
        self.save_model(ws, PROPENSITY, &json, fit.fitted_at).await
    }

    /// Online learning as outcomes arrive: for each workspace's model, every snapshot
    /// whose window of outcomes has closed since the model last learnt is learnt now.
    /// Returns the snapshots learnt.
    pub async fn learn_outcomes(&self, now: DateTime<Utc>) -> Result<u64, ScoringError> {
        let mut learnt = 0;
        for ws in self.store.workspaces_with_model(PROPENSITY).await? {
            let Some(crate::models::Fitted::Propensity(mut fit)) = self.model(&ws, PROPENSITY).await? else {
                continue;
            };
            let step = TimeDelta::days(i64::from(fit.horizon_days));
            if fit.trained_until + step + step > now {
                continue;
            }
            let profiles = self.profiles_facts(&ws, now).await?;
            while fit.trained_until + step + step <= now {
                let t = fit.trained_until + step;
                let (x, y) = snapshot(&fit.model.hasher, &profiles, t, fit.horizon_days);
                for (x, y) in x.iter().zip(&y) {
                    fit.model.ftrl.update(x, *y);
                }
                fit.trained_until = t;
                fit.updates += 1;
                learnt += 1;
            }
            self.save_propensity(&ws, &fit).await?;
        }
        Ok(learnt)
    }
}

/// A profile's propensity from the model, with the features that moved it most.
pub fn propensity_of(fit: &PropensityFit, features: &Features, as_of: DateTime<Utc>) -> Propensity {
    let named = named(features, as_of, fit.horizon_days);
    let probability = fit.model.predict(&example(&fit.model.hasher, &named));
    let mut drivers: Vec<(String, f64)> = named
        .into_iter()
        .map(|(name, v)| {
            let (index, sign) = fit.model.hasher.slot(&name);
            let contribution = fit.model.ftrl.weight(index) * sign * v;
            (name, contribution)
        })
        .filter(|(_, c)| *c != 0.0)
        .collect();
    drivers.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    drivers.truncate(3);
    Propensity {
        probability,
        churn_risk: (features.orders > 0).then_some(1.0 - probability),
        drivers,
    }
}

/// The holdout figures by name, as `GetModel` shows them.
pub fn diagnostics(fit: &PropensityFit) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (model, e) in [
        ("online", &fit.online),
        ("calibrated", &fit.calibrated),
        ("batch", &fit.batch),
    ] {
        out.insert(format!("holdout_auc_{model}"), e.auc);
        out.insert(format!("holdout_log_loss_{model}"), e.log_loss);
        out.insert(format!("holdout_brier_{model}"), e.brier);
        out.insert(format!("holdout_ece_{model}"), e.reliability.ece);
    }
    out.insert("updates".to_owned(), fit.updates as f64);
    out
}
