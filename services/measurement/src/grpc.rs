//! gRPC handlers: check the role, turn the request into cases, analyse, map the results.

use corvus_platform::Role;
use corvus_platform::error::invalid_argument;
use corvus_platform::server::authorise;
use corvus_proto::measurement::v1 as pb;
use corvus_proto::measurement::v1::measurement_service_server::{MeasurementService, MeasurementServiceServer};
use tonic::{Request, Response, Status};

use crate::stats::{self, Analysis, Case, Correction, MetricType, Prior, Setting, Variant};

/// `MeasurementService`: stateless so far, so any replica answers alike.
#[derive(Debug, Clone, Default)]
pub struct MeasurementApi;

impl MeasurementApi {
    pub fn service(self) -> MeasurementServiceServer<Self> {
        MeasurementServiceServer::new(self)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
    }
}

/// A metric of the request as a case, checked; errors name the request's fields.
fn case_of(req: &pb::AnalyzeAggregatesRequest, i: usize, m: &pb::MetricAggregates) -> Result<Case, Status> {
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
    let prior = req.prior.as_ref().map_or_else(Prior::default, |p| Prior {
        proper: p.proper,
        mean: p.mean,
        stddev: p.stddev,
    });
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
        alpha: if req.alpha == 0.0 { 0.05 } else { req.alpha },
        sequential_tuning_parameter: match req.sequential_tuning_parameter {
            0.0 => 5000.0,
            n => n,
        },
        prior,
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

fn setting_message(s: Setting) -> pb::Setting {
    match s {
        Setting::FrequentistRelative => pb::Setting::FrequentistRelative,
        Setting::FrequentistAbsolute => pb::Setting::FrequentistAbsolute,
        Setting::FrequentistSequentialRelative => pb::Setting::FrequentistSequentialRelative,
        Setting::BayesianRelative => pb::Setting::BayesianRelative,
        Setting::BayesianAbsolute => pb::Setting::BayesianAbsolute,
    }
}

fn setting_result(setting: Setting, analysis: Analysis) -> pb::SettingResult {
    pb::SettingResult {
        setting: setting_message(setting) as i32,
        srm_p: analysis.srm_p,
        arms: analysis
            .variations
            .into_iter()
            .map(|v| pb::ArmResult {
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
            })
            .collect(),
    }
}

/// Adjusts, per setting, the p-values of every metric's arms together.
fn correct(metrics: &mut [pb::MetricResult], correction: Correction) {
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

#[tonic::async_trait]
impl MeasurementService for MeasurementApi {
    async fn analyze_aggregates(
        &self,
        request: Request<pb::AnalyzeAggregatesRequest>,
    ) -> Result<Response<pb::AnalyzeAggregatesResponse>, Status> {
        authorise(&request, Role::Read, "analyse aggregates")?;
        let req = request.get_ref();
        if req.metrics.is_empty() {
            return Err(invalid_argument("metrics", "at least one metric"));
        }
        let correction = match pb::Correction::try_from(req.correction) {
            Ok(pb::Correction::Unspecified) => None,
            Ok(pb::Correction::Holm) => Some(Correction::Holm),
            Ok(pb::Correction::BenjaminiHochberg) => Some(Correction::BenjaminiHochberg),
            Err(_) => return Err(invalid_argument("correction", "holm or benjamini_hochberg")),
        };
        let cases = req
            .metrics
            .iter()
            .enumerate()
            .map(|(i, m)| case_of(req, i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut metrics: Vec<pb::MetricResult> = req
            .metrics
            .iter()
            .zip(&cases)
            .map(|(m, case)| pb::MetricResult {
                metric: m.metric.clone(),
                settings: stats::analyze(case)
                    .into_iter()
                    .map(|(setting, analysis)| setting_result(setting, analysis))
                    .collect(),
            })
            .collect();
        if let Some(correction) = correction {
            correct(&mut metrics, correction);
        }
        Ok(Response::new(pb::AnalyzeAggregatesResponse { metrics }))
    }
}
