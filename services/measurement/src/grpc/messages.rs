//! The API's messages: requests read into the crate's types (errors naming the
//! request's fields), and results, reports and metrics written back.

use chrono::{DateTime, NaiveDate, Utc};
use corvus_platform::error::invalid_argument;
use corvus_proto::measurement::v1 as pb;
use prost_types::{Duration as PbDuration, Timestamp};
use tonic::Status;

use crate::feedback::{self, Kind, Tally};
use crate::metric::{DEFAULT_LOOKBACK_SECONDS, EventFilter, Metric};
use crate::results::{Results, Settings};
use crate::stats::{self, Analysis, Case, Correction, MetricType, Prior, Setting, Variant};
use crate::storage::ArmRow;

/// A request's alpha: 0.05 when 0, else in (0, 1).
pub(super) fn alpha_of(alpha: f64) -> Result<f64, Status> {
    match alpha {
        0.0 => Ok(0.05),
        a if a > 0.0 && a < 1.0 => Ok(a),
        _ => Err(invalid_argument("alpha", "between 0 and 1")),
    }
}

/// The settings of a request, defaults in place of zeros.
pub(super) fn settings_of(alpha: f64, tuning: f64, prior: Option<&pb::Prior>) -> Settings {
    Settings {
        alpha: if alpha == 0.0 { 0.05 } else { alpha },
        sequential_tuning_parameter: if tuning == 0.0 { 5000.0 } else { tuning },
        prior: prior.map_or_else(Prior::default, |p| Prior {
            proper: p.proper,
            mean: p.mean,
            stddev: p.stddev,
        }),
    }
}

pub(super) fn correction_of(correction: i32) -> Result<Option<Correction>, Status> {
    match pb::Correction::try_from(correction) {
        Ok(pb::Correction::Unspecified) => Ok(None),
        Ok(pb::Correction::Holm) => Ok(Some(Correction::Holm)),
        Ok(pb::Correction::BenjaminiHochberg) => Ok(Some(Correction::BenjaminiHochberg)),
        Err(_) => Err(invalid_argument("correction", "holm or benjamini_hochberg")),
    }
}

/// A metric of the request as a case, checked; errors name the request's fields.
pub(super) fn case_of(req: &pb::AnalyzeAggregatesRequest, i: usize, m: &pb::MetricAggregates) -> Result<Case, Status> {
    let at = format!("metrics[{i}]");
    let metric_type = match pb::MetricType::try_from(m.metric_type) {
        Ok(pb::MetricType::Binomial) => MetricType::Binomial,
        Ok(pb::MetricType::Count) => MetricType::Count,
        Ok(pb::MetricType::Ratio) => MetricType::Ratio,
        _ => {
            return Err(invalid_argument(
                format!("{at}.metric_type"),
                "binomial, count or ratio",
            ));
        }
    };
    let settings = settings_of(req.alpha, req.sequential_tuning_parameter, req.prior.as_ref());
    let case = Case {
        metric_type,
        weights: req.weights.clone(),
        variants: m
            .arms
            .iter()
            .map(|a| Variant {
                name: a.name.clone(),
                users: a.users as f64,
                sum: a.sum,
                sum_squares: a.sum_squares,
                denominator_sum: a.denominator_sum,
                denominator_sum_squares: a.denominator_sum_squares,
                sum_products: a.sum_products,
                covariate_sum: a.covariate_sum,
                covariate_sum_squares: a.covariate_sum_squares,
                covariate_sum_products: a.covariate_sum_products,
            })
            .collect(),
        alpha: settings.alpha,
        sequential_tuning_parameter: settings.sequential_tuning_parameter,
        prior: settings.prior,
        inverse: m.inverse,
    };
    case.check().map_err(|e| {
        // The case's fields, as the request names them.
        let field = match e.field.strip_prefix("variants") {
            Some(rest) => format!("{at}.arms{rest}"),
            None if matches!(e.field.as_str(), "weights" | "alpha" | "sequential_tuning_parameter")
                || e.field.starts_with("weights[")
                || e.field.starts_with("prior.") =>
            {
                e.field.clone()
            }
            None => format!("{at}.{}", e.field),
        };
        invalid_argument(field, e.reason)
    })?;
    Ok(case)
}

pub(super) fn setting_message(s: Setting) -> pb::Setting {
    match s {
        Setting::FrequentistRelative => pb::Setting::FrequentistRelative,
        Setting::FrequentistAbsolute => pb::Setting::FrequentistAbsolute,
        Setting::FrequentistSequentialRelative => pb::Setting::FrequentistSequentialRelative,
        Setting::BayesianRelative => pb::Setting::BayesianRelative,
        Setting::BayesianAbsolute => pb::Setting::BayesianAbsolute,
    }
}

pub(super) fn setting_result(setting: Setting, analysis: Analysis) -> pb::SettingResult {
    pb::SettingResult {
        setting: setting_message(setting) as i32,
        srm_p: analysis.srm_p,
        arms: analysis.variations.into_iter().map(arm_result).collect(),
    }
}

pub(super) fn arm_result(v: stats::Variation) -> pb::ArmResult {
    pb::ArmResult {
        name: v.name,
        users: v.users as u64,
        mean: v.mean,
        stddev: v.stddev,
        comparison: v.comparison.map(|c| pb::Comparison {
            expected: c.expected,
            ci_lower: c.ci[0],
            ci_upper: c.ci[1],
            uplift_mean: c.uplift_mean,
            uplift_stddev: c.uplift_stddev,
            error: c.error.unwrap_or_default(),
            p_value: c.p_value,
            adjusted_p_value: None,
            chance_to_win: c.chance_to_win,
            risk_baseline: c.risk.map(|r| r[0]),
            risk_arm: c.risk.map(|r| r[1]),
            cuped_variance_reduction: c.cuped_variance_reduction,
        }),
    }
}

/// Adjusts, per setting, the p-values of every metric's arms together.
pub(super) fn correct(metrics: &mut [pb::MetricResult], correction: Correction) {
    for s in 0..Setting::ALL.len() {
        let comparisons: Vec<&mut pb::Comparison> = metrics
            .iter_mut()
            .filter_map(|m| m.settings.get_mut(s))
            .flat_map(|setting| setting.arms.iter_mut().filter_map(|a| a.comparison.as_mut()))
            .filter(|c| c.p_value.is_some())
            .collect();
        let p: Vec<f64> = comparisons.iter().filter_map(|c| c.p_value).collect();
        for (c, adjusted) in comparisons.into_iter().zip(stats::adjust(correction, &p)) {
            c.adjusted_p_value = Some(adjusted);
        }
    }
}

pub(super) fn lift_message(c: stats::Comparison) -> pb::Lift {
    pb::Lift {
        expected: c.expected,
        ci_lower: c.ci[0],
        ci_upper: c.ci[1],
        p_value: c.p_value.unwrap_or(1.0),
        error: c.error.unwrap_or_default(),
    }
}

/// A UTC day since the epoch as "YYYY-MM-DD".
pub(super) fn day_name(day: i32) -> String {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
    (epoch + chrono::Days::new(day.max(0) as u64)).to_string()
}

pub(super) fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Whole seconds of a duration (a part of a second counts as one); `None` when absent.
pub(super) fn seconds(field: &str, d: Option<&PbDuration>) -> Result<Option<u64>, Status> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(invalid_argument(field, "a duration is not negative")),
        Some(d) => Ok(Some(d.seconds as u64 + u64::from(d.nanos > 0))),
    }
}

/// A UTC day, "YYYY-MM-DD", as days since the epoch; `None` when empty.
pub(super) fn day_of(field: &str, day: &str) -> Result<Option<i32>, Status> {
    if day.is_empty() {
        return Ok(None);
    }
    let date = NaiveDate::parse_from_str(day, "%Y-%m-%d").map_err(|_| invalid_argument(field, "a day, YYYY-MM-DD"))?;
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
    Ok(Some((date - epoch).num_days() as i32))
}

pub(super) fn filter_of(f: &pb::MetricEvent) -> EventFilter {
    EventFilter {
        event: f.event.trim().to_owned(),
        properties: f.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        value: f.value.clone(),
    }
}

pub(super) fn filter_message(f: &EventFilter) -> pb::MetricEvent {
    pb::MetricEvent {
        event: f.event.clone(),
        properties: f.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        value: f.value.clone(),
    }
}

/// A metric as asked for, before its checks (`Metric::check`).
pub(super) fn metric_of(m: Option<&pb::Metric>) -> Result<Metric, Status> {
    let Some(m) = m else {
        return Err(invalid_argument("metric", "the metric to define"));
    };
    let metric_type = match pb::MetricType::try_from(m.r#type) {
        Ok(pb::MetricType::Binomial) => MetricType::Binomial,
        Ok(pb::MetricType::Count) => MetricType::Count,
        Ok(pb::MetricType::Ratio) => MetricType::Ratio,
        _ => return Err(invalid_argument("metric.type", "binomial, count or ratio")),
    };
    let Some(numerator) = &m.numerator else {
        return Err(invalid_argument("metric.numerator", "the events the metric counts"));
    };
    let lookback = seconds("metric.lookback", m.lookback.as_ref())?;
    Ok(Metric {
        name: m.name.clone(),
        metric_type,
        numerator: filter_of(numerator),
        denominator: m.denominator.as_ref().map(filter_of),
        window_seconds: seconds("metric.window", m.window.as_ref())?.unwrap_or(0),
        lookback_seconds: match (lookback, metric_type) {
            (Some(s), _) => s,
            (None, MetricType::Ratio) => 0,
            (None, _) => DEFAULT_LOOKBACK_SECONDS,
        },
        inverse: m.inverse,
        guardrail: m.guardrail,
        description: m.description.clone(),
    })
}

pub(super) fn metric_message(m: &Metric, created_at: DateTime<Utc>) -> pb::Metric {
    let duration = |s: u64| PbDuration {
        seconds: s as i64,
        nanos: 0,
    };
    pb::Metric {
        name: m.name.clone(),
        r#type: match m.metric_type {
            MetricType::Binomial => pb::MetricType::Binomial,
            MetricType::Count => pb::MetricType::Count,
            MetricType::Ratio => pb::MetricType::Ratio,
        } as i32,
        numerator: Some(filter_message(&m.numerator)),
        denominator: m.denominator.as_ref().map(filter_message),
        window: Some(duration(m.window_seconds)),
        lookback: Some(duration(m.lookback_seconds)),
        inverse: m.inverse,
        guardrail: m.guardrail,
        description: m.description.clone(),
        created_at: Some(timestamp(created_at)),
    }
}

pub(super) fn results_message(
    experiment: &str,
    results: Results,
    correction: Option<Correction>,
) -> Result<pb::GetExperimentResultsResponse, Status> {
    let mut metrics = Vec::new();
    for (metric, case) in results.cases {
        let settings = match case.variants.len() {
            0 | 1 => Vec::new(),
            _ => {
                case.check()
                    .map_err(|e| Status::internal(format!("metric {:?}: aggregates unfit: {e}", metric.name)))?;
                stats::analyze(&case)
                    .into_iter()
                    .map(|(setting, analysis)| setting_result(setting, analysis))
                    .collect()
            }
        };
        metrics.push(pb::MetricResult {
            metric: metric.name.clone(),
            settings,
            guardrail: metric.guardrail,
            observed: stats::observed(case.metric_type, &case.variants)
                .into_iter()
                .map(arm_result)
                .collect(),
        });
    }
    if let Some(correction) = correction {
        correct(&mut metrics, correction);
    }
    Ok(pb::GetExperimentResultsResponse {
        experiment: experiment.to_owned(),
        baseline: results.baseline,
        arms: results
            .arms
            .into_iter()
            .map(|a| pb::ArmExposure {
                name: a.name,
                users: a.users,
                designed_share: a.share,
            })
            .collect(),
        srm_p: results.srm_p,
        metrics,
    })
}

/// Experiments as listed, from their arms (by experiment and arm).
pub(super) fn experiment_messages(arms: Vec<ArmRow>) -> Vec<pb::Experiment> {
    let mut experiments: Vec<pb::Experiment> = Vec::new();
    let earlier = |a: &Timestamp, b: &Timestamp| (a.seconds, a.nanos) < (b.seconds, b.nanos);
    for arm in arms {
        if experiments.last().is_none_or(|e| e.name != arm.experiment) {
            experiments.push(pb::Experiment {
                name: arm.experiment.clone(),
                ..Default::default()
            });
        }
        let e = experiments.last_mut().expect("pushed above");
        let (first, last) = (timestamp(arm.first_at), timestamp(arm.last_at));
        if e.first_exposure.as_ref().is_none_or(|t| earlier(&first, t)) {
            e.first_exposure = Some(first);
        }
        if e.last_exposure.as_ref().is_none_or(|t| earlier(t, &last)) {
            e.last_exposure = Some(last);
        }
        e.arms.push(pb::ArmExposure {
            name: arm.arm,
            users: arm.users,
            designed_share: arm.share,
        });
    }
    experiments
}

pub(super) fn satisfaction_row(kind: Kind, key: String, t: &Tally, alpha: f64) -> pb::SatisfactionRow {
    let f = feedback::figure(kind, t, alpha);
    pb::SatisfactionRow {
        key,
        responses: t.responses,
        score: f.score,
        ci_lower: f.ci[0],
        ci_upper: f.ci[1],
        top: t.top,
        bottom: t.bottom,
        stderr: f.stderr,
    }
}

/// A duration to the nanosecond; `None` when absent.
pub(super) fn seconds_and_nanos(field: &str, d: Option<&PbDuration>) -> Result<Option<std::time::Duration>, Status> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(invalid_argument(field, "a duration is not negative")),
        Some(d) => Ok(Some(std::time::Duration::new(d.seconds as u64, d.nanos as u32))),
    }
}
