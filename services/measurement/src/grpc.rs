//! gRPC handlers: check the role, turn the request into cases, analyse, map the results.

use chrono::{DateTime, NaiveDate, Utc};
use corvus_platform::Role;
use corvus_platform::error::{invalid_argument, storage_status};
use corvus_platform::server::authorise;
use corvus_proto::ingestion::v1::event_consumer_service_server::EventConsumerService;
use corvus_proto::ingestion::v1::{DeliverRequest, DeliverResponse, DeliveryFailure};
use corvus_proto::measurement::v1 as pb;
use corvus_proto::measurement::v1::measurement_service_server::MeasurementService;
use prost_types::{Duration as PbDuration, Timestamp};
use tonic::{Request, Response, Status};

use crate::metric::{DEFAULT_LOOKBACK_SECONDS, EventFilter, Metric};
use crate::ope;
use crate::policy_value::{self, Candidate};
use crate::report;
use crate::results::{Results, Settings};
use crate::service::{Measurement, MeasurementError, Query, ReportQuery};
use crate::stats::{self, Analysis, Case, Correction, MetricType, Prior, Setting, Variant};
use crate::storage::{Dimension, Filter};

/// `MeasurementService`.
#[derive(Clone)]
pub struct MeasurementApi {
    pub measurement: Measurement,
}

/// Measurement as a consumer of identity's log (`entries`) and orchestration's
/// (`decisions`) over gRPC.
#[derive(Clone)]
pub struct LogConsumer {
    pub measurement: Measurement,
}

impl From<MeasurementError> for Status {
    fn from(err: MeasurementError) -> Self {
        match err {
            MeasurementError::Invalid(e) => invalid_argument(e.field, e.reason),
            MeasurementError::NotFound(message) => Status::not_found(message),
            MeasurementError::AlreadyExists(message) => Status::already_exists(message),
            MeasurementError::Storage(e) => storage_status(e),
        }
    }
}

/// The settings of a request, defaults in place of zeros.
fn settings_of(alpha: f64, tuning: f64, prior: Option<&pb::Prior>) -> Settings {
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

fn correction_of(correction: i32) -> Result<Option<Correction>, Status> {
    match pb::Correction::try_from(correction) {
        Ok(pb::Correction::Unspecified) => Ok(None),
        Ok(pb::Correction::Holm) => Ok(Some(Correction::Holm)),
        Ok(pb::Correction::BenjaminiHochberg) => Ok(Some(Correction::BenjaminiHochberg)),
        Err(_) => Err(invalid_argument("correction", "holm or benjamini_hochberg")),
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
        arms: analysis.variations.into_iter().map(arm_result).collect(),
    }
}

fn arm_result(v: stats::Variation) -> pb::ArmResult {
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
        let correction = correction_of(req.correction)?;
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
                guardrail: false,
                observed: Vec::new(),
            })
            .collect();
        if let Some(correction) = correction {
            correct(&mut metrics, correction);
        }
        Ok(Response::new(pb::AnalyzeAggregatesResponse { metrics }))
    }

    async fn create_metric(
        &self,
        request: Request<pb::CreateMetricRequest>,
    ) -> Result<Response<pb::CreateMetricResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "define metrics")?;
        let metric = metric_of(request.get_ref().metric.as_ref())?;
        let (metric, at) = self.measurement.create_metric(&principal.workspace, &metric).await?;
        Ok(Response::new(pb::CreateMetricResponse {
            metric: Some(metric_message(&metric, at)),
        }))
    }

    async fn list_metrics(
        &self,
        request: Request<pb::ListMetricsRequest>,
    ) -> Result<Response<pb::ListMetricsResponse>, Status> {
        let principal = authorise(&request, Role::Read, "list metrics")?;
        let metrics = self
            .measurement
            .store
            .metrics(&principal.workspace)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::ListMetricsResponse {
            metrics: metrics.iter().map(|(m, at)| metric_message(m, *at)).collect(),
        }))
    }

    async fn list_experiments(
        &self,
        request: Request<pb::ListExperimentsRequest>,
    ) -> Result<Response<pb::ListExperimentsResponse>, Status> {
        let principal = authorise(&request, Role::Read, "list experiments")?;
        let arms = self
            .measurement
            .store
            .experiments(&principal.workspace)
            .await
            .map_err(storage_status)?;
        let mut experiments: Vec<pb::Experiment> = Vec::new();
        for arm in arms {
            if experiments.last().is_none_or(|e| e.name != arm.experiment) {
                experiments.push(pb::Experiment {
                    name: arm.experiment.clone(),
                    ..Default::default()
                });
            }
            let e = experiments.last_mut().expect("pushed above");
            let (first, last) = (timestamp(arm.first_at), timestamp(arm.last_at));
            if e.first_exposure
                .as_ref()
                .is_none_or(|t| (t.seconds, t.nanos) > (first.seconds, first.nanos))
            {
                e.first_exposure = Some(first);
            }
            if e.last_exposure
                .as_ref()
                .is_none_or(|t| (t.seconds, t.nanos) < (last.seconds, last.nanos))
            {
                e.last_exposure = Some(last);
            }
            e.arms.push(pb::ArmExposure {
                name: arm.arm,
                users: arm.users,
                designed_share: arm.share,
            });
        }
        Ok(Response::new(pb::ListExperimentsResponse { experiments }))
    }

    async fn get_experiment_results(
        &self,
        request: Request<pb::GetExperimentResultsRequest>,
    ) -> Result<Response<pb::GetExperimentResultsResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read experiment results")?;
        let req = request.get_ref();
        if req.experiment.is_empty() {
            return Err(invalid_argument("experiment", "the experiment (campaign) to report"));
        }
        let correction = correction_of(req.correction)?;
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let query = Query {
            experiment: req.experiment.clone(),
            metrics: req.metrics.clone(),
            baseline: nonempty(&req.baseline),
            filter: Filter {
                channel: nonempty(&req.channel),
                segment: nonempty(&req.segment),
                from_day: day_of("from_day", &req.from_day)?,
                to_day: day_of("to_day", &req.to_day)?,
            },
            settings: settings_of(req.alpha, req.sequential_tuning_parameter, req.prior.as_ref()),
        };
        let results = self.measurement.results(&principal.workspace, &query).await?;
        Ok(Response::new(results_message(&req.experiment, results, correction)?))
    }

    async fn get_campaign_report(
        &self,
        request: Request<pb::GetCampaignReportRequest>,
    ) -> Result<Response<pb::GetCampaignReportResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read campaign reports")?;
        let req = request.get_ref();
        if req.experiment.is_empty() {
            return Err(invalid_argument("experiment", "the campaign to report"));
        }
        let dimension = match pb::Breakdown::try_from(req.breakdown) {
            Ok(pb::Breakdown::Unspecified) => Dimension::Overall,
            Ok(pb::Breakdown::Channel) => Dimension::Channel,
            Ok(pb::Breakdown::Segment) => Dimension::Segment,
            Ok(pb::Breakdown::Action) => Dimension::Action,
            Ok(pb::Breakdown::Day) => Dimension::Day,
            Err(_) => return Err(invalid_argument("breakdown", "channel, segment, action or day")),
        };
        if !(req.alpha == 0.0 || (req.alpha > 0.0 && req.alpha < 1.0)) {
            return Err(invalid_argument("alpha", "between 0 and 1"));
        }
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let query = ReportQuery {
            experiment: req.experiment.clone(),
            dimension,
            conversion_metric: nonempty(&req.conversion_metric),
            revenue_metric: nonempty(&req.revenue_metric),
            filter: Filter {
                channel: nonempty(&req.channel),
                segment: nonempty(&req.segment),
                from_day: day_of("from_day", &req.from_day)?,
                to_day: day_of("to_day", &req.to_day)?,
            },
            alpha: if req.alpha == 0.0 { 0.05 } else { req.alpha },
            fatigue_min_people: if req.fatigue_min_people == 0 {
                30
            } else {
                req.fatigue_min_people
            },
        };
        let report = self.measurement.report(&principal.workspace, &query).await?;
        let row = |r: report::Row| {
            let [people, touches, sent, delivered, opened, clicked] = r.counts.map(|n| n.max(0) as u64);
            pb::ReportRow {
                key: match dimension {
                    Dimension::Day => r.key.parse::<i32>().map_or(r.key.clone(), day_name),
                    _ => r.key,
                },
                people,
                held_out: r.held_out,
                touches,
                sent,
                delivered,
                opened,
                clicked,
                converted: r.converted,
                conversion_rate: r.conversion_rate,
                revenue: r.revenue,
                revenue_per_person: r.revenue_per_person,
                conversion_lift: r.conversion_lift.map(lift_message),
                revenue_lift: r.revenue_lift.map(lift_message),
            }
        };
        Ok(Response::new(pb::GetCampaignReportResponse {
            experiment: req.experiment.clone(),
            overall: Some(row(report.overall)),
            rows: report.rows.into_iter().map(row).collect(),
            conversion_metric: report.conversion_metric.unwrap_or_default(),
            revenue_metric: report.revenue_metric.unwrap_or_default(),
            fatigue: report.fatigue.map(|(metric, f)| pb::FatigueCurve {
                metric,
                points: f
                    .points
                    .iter()
                    .map(|p| pb::FatiguePoint {
                        touches: p.touches,
                        people: p.people,
                        response: p.response,
                        ci_lower: p.ci[0],
                        ci_upper: p.ci[1],
                    })
                    .collect(),
                peak_touches: f.peak,
                drops_at: f.drops_at,
            }),
        }))
    }

    async fn estimate_policy_value(
        &self,
        request: Request<pb::EstimatePolicyValueRequest>,
    ) -> Result<Response<pb::EstimatePolicyValueResponse>, Status> {
        let principal = authorise(&request, Role::Read, "estimate a policy's value")?;
        let req = request.get_ref();
        let (experiment, metric) = experiment_and_metric(&req.experiment, &req.metric)?;
        if !(req.alpha == 0.0 || (req.alpha > 0.0 && req.alpha < 1.0)) {
            return Err(invalid_argument("alpha", "between 0 and 1"));
        }
        let candidate: Vec<Candidate> = req
            .candidate
            .iter()
            .enumerate()
            .map(
                |(i, c)| match c.probability.is_finite() && (0.0..=1.0).contains(&c.probability) {
                    true => Ok(Candidate {
                        action: c.action.clone(),
                        segment: c.segment.clone(),
                        probability: c.probability,
                    }),
                    false => Err(invalid_argument(
                        format!("candidate[{i}].probability"),
                        "between 0 and 1",
                    )),
                },
            )
            .collect::<Result<_, _>>()?;
        let logged = self
            .measurement
            .logged(&principal.workspace, experiment, metric)
            .await?;
        let alpha = if req.alpha == 0.0 { 0.05 } else { req.alpha };
        let (estimates, own) = policy_value::estimate(&logged, &candidate, alpha).map_err(MeasurementError::from)?;
        let message = |e: ope::Estimate| pb::Estimate {
            value: e.value,
            ci_lower: e.ci[0],
            ci_upper: e.ci[1],
            stderr: e.stderr,
        };
        Ok(Response::new(pb::EstimatePolicyValueResponse {
            ips: Some(message(estimates.ipw)),
            snips: Some(message(estimates.snipw)),
            dm: estimates.dm.map(message),
            dr: estimates.dr.map(message),
            effective_sample_size: estimates.effective_sample_size,
            rounds: logged.rounds.len() as u64,
            skipped: logged.skipped as u64,
            logged: Some(message(own)),
        }))
    }

    type ExportDecisionLogStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ExportDecisionLogResponse, Status>> + Send>>;

    async fn export_decision_log(
        &self,
        request: Request<pb::ExportDecisionLogRequest>,
    ) -> Result<Response<Self::ExportDecisionLogStream>, Status> {
        let principal = authorise(&request, Role::Read, "export the decision log")?;
        let req = request.get_ref();
        let (experiment, metric) = experiment_and_metric(&req.experiment, &req.metric)?;
        let logged = self
            .measurement
            .logged(&principal.workspace, experiment, metric)
            .await?;
        let mut messages = vec![pb::ExportDecisionLogResponse {
            actions: logged.actions,
            segments: logged.segments,
            skipped: logged.skipped as u64,
            rounds: Vec::new(),
        }];
        for (n, chunk) in logged.rounds.chunks(EXPORT_CHUNK).enumerate() {
            messages.push(pb::ExportDecisionLogResponse {
                rounds: chunk
                    .iter()
                    .enumerate()
                    .map(|(i, r)| pb::LoggedRound {
                        round: (n * EXPORT_CHUNK + i) as u64,
                        action: r.action,
                        position: r.position,
                        reward: r.reward,
                        pscore: r.pscore,
                    })
                    .collect(),
                ..Default::default()
            });
        }
        Ok(Response::new(Box::pin(futures::stream::iter(
            messages.into_iter().map(Ok),
        ))))
    }
}

/// Rounds a message of `ExportDecisionLog` carries at most.
const EXPORT_CHUNK: usize = 10_000;

fn experiment_and_metric<'a>(experiment: &'a str, metric: &'a str) -> Result<(&'a str, &'a str), Status> {
    if experiment.is_empty() {
        return Err(invalid_argument(
            "experiment",
            "the experiment (campaign) whose decisions to read",
        ));
    }
    if metric.is_empty() {
        return Err(invalid_argument("metric", "the metric whose value is the reward"));
    }
    Ok((experiment, metric))
}

fn lift_message(c: stats::Comparison) -> pb::Lift {
    pb::Lift {
        expected: c.expected,
        ci_lower: c.ci[0],
        ci_upper: c.ci[1],
        p_value: c.p_value.unwrap_or(1.0),
        error: c.error.unwrap_or_default(),
    }
}

/// A UTC day since the epoch as "YYYY-MM-DD".
fn day_name(day: i32) -> String {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
    (epoch + chrono::Days::new(day.max(0) as u64)).to_string()
}

#[tonic::async_trait]
impl EventConsumerService for LogConsumer {
    async fn deliver(&self, request: Request<DeliverRequest>) -> Result<Response<DeliverResponse>, Status> {
        authorise(&request, Role::Service, "deliver a log's entries")?;
        let request = request.into_inner();
        if !request.events.is_empty() {
            return Err(invalid_argument(
                "events",
                "measurement consumes identity's log (entries) and orchestration's (decisions), not the event log",
            ));
        }
        let (mut failures, erasures) = self
            .measurement
            .deliver(&request.entries)
            .await
            .map_err(storage_status)?;
        failures.extend(
            self.measurement
                .record_decisions(&request.decisions)
                .await
                .map_err(storage_status)?,
        );
        Ok(Response::new(DeliverResponse {
            failures: failures
                .into_iter()
                .map(|f| DeliveryFailure {
                    event_id: f.event_id,
                    reason: f.reason,
                })
                .collect(),
            erasures,
        }))
    }
}

fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Whole seconds of a duration (a part of a second counts as one); `None` when absent.
fn seconds(field: &str, d: Option<&PbDuration>) -> Result<Option<u64>, Status> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(invalid_argument(field, "a duration is not negative")),
        Some(d) => Ok(Some(d.seconds as u64 + u64::from(d.nanos > 0))),
    }
}

/// A UTC day, "YYYY-MM-DD", as days since the epoch; `None` when empty.
fn day_of(field: &str, day: &str) -> Result<Option<i32>, Status> {
    if day.is_empty() {
        return Ok(None);
    }
    let date = NaiveDate::parse_from_str(day, "%Y-%m-%d").map_err(|_| invalid_argument(field, "a day, YYYY-MM-DD"))?;
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
    Ok(Some((date - epoch).num_days() as i32))
}

fn filter_of(f: &pb::MetricEvent) -> EventFilter {
    EventFilter {
        event: f.event.trim().to_owned(),
        properties: f.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        value: f.value.clone(),
    }
}

fn filter_message(f: &EventFilter) -> pb::MetricEvent {
    pb::MetricEvent {
        event: f.event.clone(),
        properties: f.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        value: f.value.clone(),
    }
}

/// A metric as asked for, before its checks (`Metric::check`).
fn metric_of(m: Option<&pb::Metric>) -> Result<Metric, Status> {
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

fn metric_message(m: &Metric, created_at: DateTime<Utc>) -> pb::Metric {
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

fn results_message(
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
