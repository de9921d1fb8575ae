//! gRPC handlers: check the role, read the request (`messages.rs`), ask the service or
//! the statistics, write the answer.

use corvus_platform::Role;
use corvus_platform::error::{invalid_argument, storage_status};
use corvus_platform::server::authorise;
use corvus_proto::ingestion::v1::event_consumer_service_server::EventConsumerService;
use corvus_proto::ingestion::v1::{DeliverRequest, DeliverResponse, DeliveryFailure};
use corvus_proto::measurement::v1 as pb;
use corvus_proto::measurement::v1::measurement_service_server::MeasurementService;
use tonic::{Request, Response, Status};

use crate::feedback::{Kind, Tally};
use crate::ope;
use crate::planning::{self, Baseline, Budget, Plan};
use crate::policy_value::{self, Candidate};
use crate::report;
use crate::service::{Measurement, MeasurementError, Query, ReportQuery};
use crate::stats::{self, MetricType};
use crate::storage::{Dimension, FeedbackBy, FeedbackFilter, Filter};

mod messages;

use messages::*;

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
        Ok(Response::new(pb::ListExperimentsResponse {
            experiments: experiment_messages(arms),
        }))
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
        let alpha = alpha_of(req.alpha)?;
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
            alpha,
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
        let alpha = alpha_of(req.alpha)?;
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

    async fn plan_experiment(
        &self,
        request: Request<pb::PlanExperimentRequest>,
    ) -> Result<Response<pb::PlanExperimentResponse>, Status> {
        let principal = authorise(&request, Role::Read, "plan an experiment")?;
        let req = request.get_ref();
        if req.metric.is_empty() {
            return Err(invalid_argument("metric", "the metric to detect a change of"));
        }
        let metric_type = self
            .measurement
            .store
            .metrics(&principal.workspace)
            .await
            .map_err(storage_status)?
            .into_iter()
            .find(|(m, _)| m.name == req.metric)
            .map(|(m, _)| m.metric_type)
            .ok_or_else(|| Status::not_found(format!("metric {:?} is not defined", req.metric)))?;
        let given = match (metric_type, req.baseline_rate, req.baseline_mean, req.baseline_stddev) {
            (MetricType::Binomial, Some(rate), _, _) => Some(Baseline::Binomial { rate }),
            (MetricType::Count | MetricType::Ratio, _, Some(mean), Some(stddev)) => {
                Some(Baseline::Count { mean, stddev })
            }
            _ => None,
        };
        let (baseline, traffic) = match (given, req.daily_traffic, req.from_experiment.is_empty()) {
            (Some(b), Some(t), _) => (b, t),
            (_, _, true) => {
                return Err(invalid_argument(
                    "from_experiment",
                    "an earlier experiment to read the baseline and traffic off, or both given \
                     (baseline_rate for a binomial metric, baseline_mean and baseline_stddev otherwise; \
                     daily_traffic)",
                ));
            }
            (given, traffic, false) => {
                let (seen, per_day) = self
                    .measurement
                    .observed_baseline(&principal.workspace, &req.from_experiment, &req.metric)
                    .await?;
                (given.unwrap_or(seen), traffic.unwrap_or(per_day))
            }
        };
        let plan = Plan {
            metric: baseline,
            weights: match req.weights.is_empty() {
                true => vec![0.5, 0.5],
                false => req.weights.clone(),
            },
            absolute: req.absolute,
            alpha: alpha_of(req.alpha)?,
            power: if req.power == 0.0 { 0.8 } else { req.power },
            bonferroni: req.bonferroni,
            daily_traffic: Some(traffic),
        };
        let planned = |e: stats::Invalid| {
            let field = match e.field.as_str() {
                "metric.rate" => "baseline_rate".to_owned(),
                "metric.mean" => "baseline_mean".to_owned(),
                "metric.stddev" => "baseline_stddev".to_owned(),
                other => other.to_owned(),
            };
            invalid_argument(field, e.reason)
        };
        let sizing = planning::size(&plan, req.mde).map_err(planned)?;
        let detectable = |days| planning::detectable(&plan, Budget::Days(days)).map_err(planned);
        let (mean, stddev) = match baseline {
            Baseline::Binomial { rate } => (rate, (rate * (1.0 - rate)).sqrt()),
            Baseline::Count { mean, stddev } => (mean, stddev),
        };
        Ok(Response::new(pb::PlanExperimentResponse {
            baseline_mean: mean,
            baseline_stddev: stddev,
            daily_traffic: traffic,
            people: sizing.people,
            total: sizing.total,
            days: sizing.days.unwrap_or_default(),
            effect: sizing.effect,
            detectable_in_7_days: detectable(7)?,
            detectable_in_14_days: detectable(14)?,
            detectable_in_28_days: detectable(28)?,
        }))
    }

    async fn get_satisfaction(
        &self,
        request: Request<pb::GetSatisfactionRequest>,
    ) -> Result<Response<pb::GetSatisfactionResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read satisfaction")?;
        let req = request.get_ref();
        let kind = match pb::FeedbackKind::try_from(req.kind) {
            Ok(pb::FeedbackKind::Nps) => Kind::Nps,
            Ok(pb::FeedbackKind::Csat) => Kind::Csat,
            Ok(pb::FeedbackKind::Mentions) => Kind::Mention,
            _ => return Err(invalid_argument("kind", "nps, csat or mentions")),
        };
        let (by, weeks) = match pb::FeedbackBreakdown::try_from(req.breakdown) {
            Ok(pb::FeedbackBreakdown::Unspecified) => (FeedbackBy::Overall, false),
            Ok(pb::FeedbackBreakdown::Day) => (FeedbackBy::Day, false),
            Ok(pb::FeedbackBreakdown::Week) => (FeedbackBy::Day, true),
            Ok(pb::FeedbackBreakdown::Channel) => (FeedbackBy::Channel, false),
            Ok(pb::FeedbackBreakdown::Region) => (FeedbackBy::Region, false),
            Ok(pb::FeedbackBreakdown::Segment) => (FeedbackBy::Segment, false),
            Ok(pb::FeedbackBreakdown::Activation) => (FeedbackBy::Activation, false),
            Err(_) => {
                return Err(invalid_argument(
                    "breakdown",
                    "day, week, channel, region, segment or activation",
                ));
            }
        };
        let alpha = alpha_of(req.alpha)?;
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let filter = FeedbackFilter {
            channel: nonempty(&req.channel),
            region: nonempty(&req.region),
            segment: nonempty(&req.segment),
            activation: nonempty(&req.activation),
            from_day: day_of("from_day", &req.from_day)?,
            to_day: day_of("to_day", &req.to_day)?,
        };
        let store = &self.measurement.store;
        let ws = &principal.workspace;
        let overall = store
            .satisfaction(ws, kind, FeedbackBy::Overall, &filter)
            .await
            .map_err(storage_status)?
            .pop()
            .map(|(_, t)| t)
            .unwrap_or_default();
        let mut rows = match by {
            FeedbackBy::Overall => Vec::new(),
            by => store
                .satisfaction(ws, kind, by, &filter)
                .await
                .map_err(storage_status)?,
        };
        if by == FeedbackBy::Day {
            for (key, _) in &mut rows {
                let day: i32 = key.parse().unwrap_or_default();
                *key = day_name(if weeks { day - (day + 3).rem_euclid(7) } else { day });
            }
        }
        if weeks {
            // Days folded into their weeks, in order.
            let mut folded: Vec<(String, Tally)> = Vec::new();
            for (key, t) in rows {
                match folded.last_mut().filter(|(k, _)| *k == key) {
                    Some((_, sum)) => {
                        sum.responses += t.responses;
                        sum.sum += t.sum;
                        sum.sum_squares += t.sum_squares;
                        sum.top += t.top;
                        sum.bottom += t.bottom;
                    }
                    None => folded.push((key, t)),
                }
            }
            rows = folded;
        }
        Ok(Response::new(pb::GetSatisfactionResponse {
            overall: Some(satisfaction_row(kind, String::new(), &overall, alpha)),
            rows: rows
                .iter()
                .map(|(key, t)| satisfaction_row(kind, key.clone(), t, alpha))
                .collect(),
        }))
    }

    type StreamMetricsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::StreamMetricsResponse, Status>> + Send>>;

    async fn stream_metrics(
        &self,
        request: Request<pb::StreamMetricsRequest>,
    ) -> Result<Response<Self::StreamMetricsStream>, Status> {
        let principal = authorise(&request, Role::Read, "stream metrics")?;
        let req = request.into_inner();
        let interval = match seconds_and_nanos("interval", req.interval.as_ref())? {
            None => std::time::Duration::from_secs(1),
            Some(d) if d < std::time::Duration::from_millis(100) => {
                return Err(invalid_argument("interval", "at least 100 ms"));
            }
            Some(d) => d,
        };
        let measurement = self.measurement.clone();
        let ws = principal.workspace;
        let stream = async_stream::try_stream! {
            let mut last: Option<(std::time::Instant, u64)> = None;
            loop {
                let received = measurement.received(&ws);
                let now = std::time::Instant::now();
                let events_per_second = match last {
                    Some((at, n)) => (received - n) as f64 / (now - at).as_secs_f64().max(1e-9),
                    None => 0.0,
                };
                last = Some((now, received));
                yield snapshot(&measurement, &ws, &req.experiments, events_per_second).await?;
                tokio::time::sleep(interval).await;
            }
        };
        Ok(Response::new(Box::pin(stream)))
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

/// A snapshot of the workspace's live figures.
async fn snapshot(
    measurement: &Measurement,
    ws: &corvus_proto::WorkspaceId,
    experiments: &[String],
    events_per_second: f64,
) -> Result<pb::StreamMetricsResponse, Status> {
    let arms = measurement.store.experiments(ws).await.map_err(storage_status)?;
    let arms: Vec<_> = arms
        .into_iter()
        .filter(|a| experiments.is_empty() || experiments.contains(&a.experiment))
        .collect();
    let now = chrono::Utc::now();
    let today = FeedbackFilter {
        from_day: Some(crate::storage::day(now)),
        to_day: Some(crate::storage::day(now)),
        ..Default::default()
    };
    let mut figures = Vec::new();
    for kind in [Kind::Nps, Kind::Csat, Kind::Mention] {
        let tally = measurement
            .store
            .satisfaction(ws, kind, FeedbackBy::Overall, &today)
            .await
            .map_err(storage_status)?
            .pop()
            .map(|(_, t)| t)
            .unwrap_or_default();
        figures.push(satisfaction_row(kind, String::new(), &tally, 0.05));
    }
    let [nps, csat, mentions] = <[pb::SatisfactionRow; 3]>::try_from(figures).expect("three kinds");
    Ok(pb::StreamMetricsResponse {
        at: Some(timestamp(now)),
        experiments: experiment_messages(arms),
        nps_today: Some(nps),
        csat_today: Some(csat),
        mentions_today: Some(mentions),
        events_per_second,
    })
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
