//! An experiment's results from its aggregates: the arms (baseline first), the split the
//! campaign was designed with, and a case per metric for the statistics (`stats`).

use std::collections::BTreeMap;

use crate::metric::Metric;
use crate::stats::{self, Case, MetricType, Prior, Variant};
use crate::storage::{Aggregates, ArmRow};
use crate::units::Sums;

/// The arms, in the order the statistics take them: the baseline, then by name.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmExposure {
    pub name: String,
    pub users: u64,
    /// As designed, normalised over the arms shown.
    pub share: f64,
}

/// The settings every metric's case is analysed under.
#[derive(Debug, Clone)]
pub struct Settings {
    pub alpha: f64,
    pub sequential_tuning_parameter: f64,
    pub prior: Prior,
}

#[derive(Debug, Clone)]
pub struct Results {
    pub baseline: String,
    pub arms: Vec<ArmExposure>,
    pub srm_p: f64,
    /// Per metric, its case: analysed with two arms or more.
    pub cases: Vec<(Metric, Case)>,
}

/// The baseline when none is asked: the holdout, else the control group, else the
/// first arm by name.
fn default_baseline(arms: &BTreeMap<String, u64>) -> Option<&str> {
    ["holdout", "control"]
        .into_iter()
        .find(|b| arms.contains_key(*b))
        .or_else(|| arms.keys().next().map(String::as_str))
}

/// The results' cases. `Err` names a baseline asked for that has no people.
pub fn results(
    metrics: &[Metric],
    aggregates: &Aggregates,
    designed: &[ArmRow],
    baseline: Option<&str>,
    settings: &Settings,
) -> Result<Results, String> {
    let baseline = match baseline {
        Some(b) if aggregates.users.contains_key(b) => b.to_owned(),
        Some(b) => return Err(format!("no arm {b:?} with people in the experiment (as filtered)")),
        None => default_baseline(&aggregates.users).unwrap_or_default().to_owned(),
    };
    let mut names: Vec<&String> = aggregates.users.keys().filter(|a| **a != baseline).collect();
    names.insert(0, &baseline);
    let names: Vec<&String> = names
        .into_iter()
        .filter(|a| aggregates.users.contains_key(*a))
        .collect();
    let users: Vec<f64> = names.iter().map(|a| aggregates.users[*a] as f64).collect();
    let shares: Vec<f64> = names
        .iter()
        .map(|a| designed.iter().find(|d| &d.arm == *a).map_or(0.0, |d| d.share))
        .collect();
    // Decisions logged without a share (before shares were logged) count equally.
    let weights: Vec<f64> = match shares.iter().all(|s| *s > 0.0) {
        true => {
            let total: f64 = shares.iter().sum();
            shares.iter().map(|s| s / total).collect()
        }
        false => vec![1.0 / names.len().max(1) as f64; names.len()],
    };
    let arms: Vec<ArmExposure> = names
        .iter()
        .zip(&users)
        .zip(&weights)
        .map(|((name, users), share)| ArmExposure {
            name: (*name).clone(),
            users: *users as u64,
            share: *share,
        })
        .collect();
    let srm_p = match names.len() {
        0 | 1 => 1.0,
        _ => stats::srm_p(&users, &weights),
    };
    let cases = metrics
        .iter()
        .map(|m| (m.clone(), case_of(m, &names, &users, &weights, aggregates, settings)))
        .collect();
    Ok(Results {
        baseline,
        arms,
        srm_p,
        cases,
    })
}

/// An arm's aggregates from its sums, as the statistics read them: a binomial's count
/// within its people, sums of squares not below zero (sums moved by differences may land
/// a hair below), a ratio's denominator, and the covariate when `cuped`.
pub fn variant(metric_type: MetricType, name: &str, users: f64, s: &Sums, cuped: bool) -> Variant {
    let ratio = metric_type == MetricType::Ratio;
    let square = |x: f64| x.max(0.0);
    Variant {
        name: name.to_owned(),
        users,
        sum: match metric_type {
            MetricType::Binomial => s[0].clamp(0.0, users),
            _ => s[0],
        },
        sum_squares: square(s[1]),
        denominator_sum: ratio.then_some(s[2]),
        denominator_sum_squares: ratio.then_some(square(s[3])),
        sum_products: ratio.then_some(s[4]),
        covariate_sum: cuped.then_some(s[5]),
        covariate_sum_squares: cuped.then_some(square(s[6])),
        covariate_sum_products: cuped.then_some(s[7]),
    }
}

fn case_of(
    metric: &Metric,
    names: &[&String],
    users: &[f64],
    weights: &[f64],
    aggregates: &Aggregates,
    settings: &Settings,
) -> Case {
    let sums: Vec<[f64; 8]> = names
        .iter()
        .map(|a| {
            aggregates
                .sums
                .get(&(metric.name.clone(), (*a).clone()))
                .copied()
                .unwrap_or_default()
        })
        .collect();
    // CUPED when some arm's people had a value before exposure: a covariate that is zero
    // everywhere explains nothing (and sums moved by differences may keep a trace of a
    // value taken away).
    let cuped = metric.cuped() && sums.iter().any(|s| s[6] > 1e-9);
    let variants = names
        .iter()
        .zip(users)
        .zip(&sums)
        .map(|((name, users), s)| variant(metric.metric_type, name, *users, s, cuped))
        .collect();
    Case {
        metric_type: metric.metric_type,
        weights: weights.to_vec(),
        variants,
        alpha: settings.alpha,
        sequential_tuning_parameter: settings.sequential_tuning_parameter,
        prior: settings.prior.clone(),
        inverse: metric.inverse,
    }
}
