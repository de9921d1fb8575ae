//! The measurement service: metrics kept and checked; orchestration's decisions and
//! identity's resolved events and profile changes turned into changes of the store.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_log::outbox::{Consumer, EventSink, Failure};
use corvus_proto::WorkspaceId;
use corvus_proto::common::v1::{EventType, StoredEvent};
use corvus_proto::identity::v1::{ErasureAnswer, LogEntry, ProfileChange, log_entry, profile_change};
use corvus_proto::orchestration::v1::DecisionLogEntry;
use corvus_storage::{StorageConfig, StorageError};
use uuid::Uuid;

use crate::config::MeasurementConfig;
use crate::metric::Metric;
use crate::planning::Baseline;
use crate::policy_value::{self, Logged};
use crate::report;
use crate::results::{self, Results, Settings};
use crate::stats::{Invalid, MetricType};
use crate::storage::{
    self, ArmRow, Change, Dimension, Filter, MeasurementStore, NewDecision, NewFeedback, NewOutcome, NewStage,
    NewTraits,
};

/// The name measurement consumes identity's log under, and answers erasures as.
pub const CONSUMER_NAME: &str = "measurement";

/// The name measurement consumes orchestration's decision log under (apart from its
/// name on identity's log, so each consumer's metrics are its own).
pub const DECISIONS_CONSUMER: &str = "measurement-exposures";

#[derive(Debug, thiserror::Error)]
pub enum MeasurementError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What `results` is asked.
#[derive(Debug, Clone)]
pub struct Query {
    pub experiment: String,
    /// Every metric when empty.
    pub metrics: Vec<String>,
    pub baseline: Option<String>,
    pub filter: Filter,
    pub settings: Settings,
}

/// What `report` is asked.
#[derive(Debug, Clone)]
pub struct ReportQuery {
    pub experiment: String,
    pub dimension: Dimension,
    /// The workspace's first binomial metric when `None`.
    pub conversion_metric: Option<String>,
    /// The workspace's first count metric with a value property when `None`.
    pub revenue_metric: Option<String>,
    pub filter: Filter,
    pub alpha: f64,
    pub fatigue_min_people: u64,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub overall: report::Row,
    pub rows: Vec<report::Row>,
    pub conversion_metric: Option<String>,
    pub revenue_metric: Option<String>,
    /// The metric's name and its curve.
    pub fatigue: Option<(String, report::Fatigue)>,
}

#[derive(Clone)]
pub struct Measurement {
    pub store: Arc<dyn MeasurementStore>,
    config: Arc<MeasurementConfig>,
    /// Resolved events received per workspace by this replica, for `StreamMetrics`.
    received: Arc<std::sync::Mutex<std::collections::HashMap<WorkspaceId, u64>>>,
}

fn time_of(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))
}

impl Measurement {
    pub async fn connect(storage: &StorageConfig, config: &MeasurementConfig) -> Result<Self, StorageError> {
        Ok(Self::new(storage::connect(storage).await?, config))
    }

    pub fn new(store: Arc<dyn MeasurementStore>, config: &MeasurementConfig) -> Self {
        Self {
            store,
            config: Arc::new(config.clone()),
            received: Arc::default(),
        }
    }

    /// Resolved events of the workspace this replica has received so far.
    pub fn received(&self, ws: &WorkspaceId) -> u64 {
        self.received
            .lock()
            .expect("not poisoned")
            .get(ws)
            .copied()
            .unwrap_or(0)
    }

    pub fn config(&self) -> &MeasurementConfig {
        &self.config
    }

    /// Measurement as an in-process consumer of identity's log (the outcomes).
    pub fn consumer(&self) -> Consumer<LogEntry> {
        Consumer {
            name: CONSUMER_NAME.to_owned(),
            sink: Arc::new(self.clone()),
            batch_size: Some(self.config.batch_size),
        }
    }

    /// Measurement as an in-process consumer of orchestration's log (the exposures).
    pub fn decisions_consumer(&self) -> Consumer<DecisionLogEntry> {
        Consumer {
            name: DECISIONS_CONSUMER.to_owned(),
            sink: Arc::new(self.clone()),
            batch_size: Some(self.config.batch_size),
        }
    }

    /// Keeps a metric; the same definition again returns it as it stands.
    pub async fn create_metric(
        &self,
        ws: &WorkspaceId,
        metric: &Metric,
    ) -> Result<(Metric, DateTime<Utc>), MeasurementError> {
        metric.check()?;
        let (kept, at) = self.store.create_metric(ws, metric).await?;
        if &kept != metric {
            return Err(MeasurementError::AlreadyExists(format!(
                "metric {:?} exists with another definition; a metric cannot change, define one under a new name",
                metric.name
            )));
        }
        Ok((kept, at))
    }

    /// An experiment's results, from its aggregates within the query's filter.
    pub async fn results(&self, ws: &WorkspaceId, query: &Query) -> Result<Results, MeasurementError> {
        let defined = self.metrics(ws).await?;
        let metrics = match query.metrics.is_empty() {
            true => defined,
            false => query
                .metrics
                .iter()
                .map(|name| {
                    defined
                        .iter()
                        .find(|m| &m.name == name)
                        .cloned()
                        .ok_or_else(|| MeasurementError::NotFound(format!("metric {name:?} is not defined")))
                })
                .collect::<Result<_, _>>()?,
        };
        let designed: Vec<ArmRow> = self
            .store
            .experiments(ws)
            .await?
            .into_iter()
            .filter(|a| a.experiment == query.experiment)
            .collect();
        if designed.is_empty() {
            return Err(MeasurementError::NotFound(format!(
                "experiment {:?} has no exposures",
                query.experiment
            )));
        }
        let aggregates = self.store.aggregates(ws, &query.experiment, &query.filter).await?;
        results::results(
            &metrics,
            &aggregates,
            &designed,
            query.baseline.as_deref(),
            &query.settings,
        )
        .map_err(|reason| {
            MeasurementError::Invalid(Invalid {
                field: "baseline".to_owned(),
                reason,
            })
        })
    }

    /// A campaign's report, overall and per key of the query's dimension.
    pub async fn report(&self, ws: &WorkspaceId, query: &ReportQuery) -> Result<Report, MeasurementError> {
        let experiments = self.store.experiments(ws).await?;
        if !experiments.iter().any(|a| a.experiment == query.experiment) {
            return Err(MeasurementError::NotFound(format!(
                "experiment {:?} has no exposures",
                query.experiment
            )));
        }
        let defined = self.metrics(ws).await?;
        let pick = |field: &str, name: &Option<String>, want: MetricType, default: fn(&Metric) -> bool| match name {
            None => Ok(defined.iter().find(|m| default(m))),
            Some(name) => match defined.iter().find(|m| &m.name == name) {
                None => Err(MeasurementError::NotFound(format!("metric {name:?} is not defined"))),
                Some(m) if m.metric_type != want => Err(MeasurementError::Invalid(Invalid {
                    field: field.to_owned(),
                    reason: format!("{name:?} is not a {want:?} metric"),
                })),
                Some(m) => Ok(Some(m)),
            },
        };
        let metrics = report::Metrics {
            conversion: pick(
                "conversion_metric",
                &query.conversion_metric,
                MetricType::Binomial,
                |m| m.metric_type == MetricType::Binomial,
            )?,
            revenue: pick("revenue_metric", &query.revenue_metric, MetricType::Count, |m| {
                m.metric_type == MetricType::Count && !m.numerator.value.is_empty()
            })?,
        };
        let names: Vec<String> = [metrics.conversion, metrics.revenue]
            .into_iter()
            .flatten()
            .map(|m| m.name.clone())
            .collect();
        let (names, metrics) = (&names, &metrics);
        let rows_of = |dimension| async move {
            let cells = self
                .store
                .report(ws, &query.experiment, &query.filter, dimension, names)
                .await?;
            Ok::<_, StorageError>(report::rows(&cells, dimension, metrics, query.alpha))
        };
        let overall = rows_of(Dimension::Overall).await?.pop().unwrap_or_default();
        let rows = match query.dimension {
            Dimension::Overall => Vec::new(),
            dimension => rows_of(dimension).await?,
        };
        let fatigue = match metrics.conversion.or(metrics.revenue) {
            None => None,
            Some(m) => {
                let points = self.store.fatigue(ws, &query.experiment, &m.name).await?;
                Some((
                    m.name.clone(),
                    report::fatigue(m, &points, query.fatigue_min_people, query.alpha),
                ))
            }
        };
        Ok(Report {
            overall,
            rows,
            conversion_metric: metrics.conversion.map(|m| m.name.clone()),
            revenue_metric: metrics.revenue.map(|m| m.name.clone()),
            fatigue,
        })
    }

    /// A campaign's treated exposures as rounds for off-policy estimates, with `metric`'s
    /// value as the reward.
    pub async fn logged(&self, ws: &WorkspaceId, experiment: &str, metric: &str) -> Result<Logged, MeasurementError> {
        if !self.metrics(ws).await?.iter().any(|m| m.name == metric) {
            return Err(MeasurementError::NotFound(format!("metric {metric:?} is not defined")));
        }
        let rows = self.store.rounds(ws, experiment, metric).await?;
        if rows.is_empty() {
            return Err(MeasurementError::NotFound(format!(
                "experiment {experiment:?} has no exposures"
            )));
        }
        Ok(policy_value::logged(&rows))
    }

    /// The baseline (of the metric in `experiment`'s baseline arm) and the people a day
    /// the experiment exposed, for planning the next one.
    pub async fn observed_baseline(
        &self,
        ws: &WorkspaceId,
        experiment: &str,
        metric: &str,
    ) -> Result<(Baseline, f64), MeasurementError> {
        let query = Query {
            experiment: experiment.to_owned(),
            metrics: vec![metric.to_owned()],
            baseline: None,
            filter: Filter::default(),
            settings: Settings {
                alpha: 0.05,
                sequential_tuning_parameter: 5000.0,
                prior: Default::default(),
            },
        };
        let results = self.results(ws, &query).await?;
        let Some((m, Some(first))) = results.cases.first().map(|(m, case)| (m, case.variants.first())) else {
            return Err(MeasurementError::NotFound(format!(
                "experiment {experiment:?} has no people left to read a baseline off"
            )));
        };
        let baseline = Baseline::observed(m.metric_type, first);
        let days = self
            .store
            .report(ws, experiment, &Filter::default(), Dimension::Day, &[])
            .await?
            .iter()
            .map(|cell| cell.key.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let people: u64 = results.arms.iter().map(|a| a.users).sum();
        Ok((baseline, people as f64 / days.max(1) as f64))
    }

    async fn metrics(&self, ws: &WorkspaceId) -> Result<Vec<Metric>, StorageError> {
        Ok(self.store.metrics(ws).await?.into_iter().map(|(m, _)| m).collect())
    }

    /// Records a delivery of orchestration's log: each decision once.
    pub async fn record_decisions(&self, entries: &[DecisionLogEntry]) -> Result<Vec<Failure>, StorageError> {
        let mut failures = Vec::new();
        let mut by_workspace: Vec<(WorkspaceId, Vec<NewDecision>)> = Vec::new();
        for entry in entries {
            let Some(d) = &entry.decision else { continue };
            let parsed = (
                entry.workspace_id.parse::<WorkspaceId>(),
                d.decision_id.parse::<Uuid>(),
                d.profile_id.parse::<Uuid>(),
                time_of(d.decided_at.as_ref()),
            );
            let (Ok(ws), Ok(id), Ok(profile), Some(at)) = parsed else {
                failures.push(Failure {
                    event_id: d.decision_id.clone(),
                    reason: "workspace_id, decision_id, profile_id or decided_at: not readable".to_owned(),
                });
                continue;
            };
            let decision = NewDecision {
                id,
                profile,
                experiment: d.campaign.clone(),
                arm: d.arm.clone(),
                action: d.action.clone(),
                channel: crate::channel_name(d.channel),
                segment: d.segment.clone(),
                policy: d.policy.clone(),
                propensity: d.propensity,
                arm_share: d.arm_share,
                at,
            };
            match by_workspace.iter_mut().find(|(w, _)| *w == ws) {
                Some((_, decisions)) => decisions.push(decision),
                None => by_workspace.push((ws, vec![decision])),
            }
        }
        for (ws, decisions) in by_workspace {
            let metrics = self.metrics(&ws).await?;
            let change = Change::Record {
                decisions: &decisions,
                stages: &[],
                outcomes: &[],
                feedback: &[],
                traits: &[],
            };
            self.store.apply(&ws, change, &metrics).await?;
        }
        Ok(failures)
    }

    /// Applies a delivery of identity's log in order: the events' outcomes a workspace's
    /// run at a time, each profile change on its own.
    pub async fn deliver(&self, entries: &[LogEntry]) -> Result<(Vec<Failure>, Vec<ErasureAnswer>), StorageError> {
        let mut failures = Vec::new();
        let mut answers = Vec::new();
        let mut pending: Option<Pending> = None;
        for entry in entries {
            match &entry.entry {
                Some(log_entry::Entry::Event(stored)) => {
                    let Ok(ws) = stored.workspace_id.parse::<WorkspaceId>() else {
                        failures.push(Failure {
                            event_id: stored.event_id.clone(),
                            reason: format!("workspace_id: {:?} is not a workspace", stored.workspace_id),
                        });
                        continue;
                    };
                    *self
                        .received
                        .lock()
                        .expect("not poisoned")
                        .entry(ws.clone())
                        .or_default() += 1;
                    if pending.as_ref().is_none_or(|p| p.ws != ws) {
                        self.flush(pending.take()).await?;
                        let metrics = self.metrics(&ws).await?;
                        pending = Some(Pending::new(ws, metrics));
                    }
                    if let Err(reason) = pending.as_mut().expect("set above").read(stored) {
                        failures.push(Failure {
                            event_id: stored.event_id.clone(),
                            reason,
                        });
                    }
                }
                Some(log_entry::Entry::Change(change)) => {
                    self.flush(pending.take()).await?;
                    match self.apply_change(change).await? {
                        Ok(Some(answer)) => answers.push(answer),
                        Ok(None) => {}
                        Err(reason) => failures.push(Failure {
                            event_id: change.change_id.clone(),
                            reason,
                        }),
                    }
                }
                None => {}
            }
        }
        self.flush(pending).await?;
        Ok((failures, answers))
    }

    async fn flush(&self, pending: Option<Pending>) -> Result<(), StorageError> {
        if let Some(p) = pending.filter(|p| !p.is_empty()) {
            let change = Change::Record {
                decisions: &[],
                stages: &p.stages,
                outcomes: &p.outcomes,
                feedback: &p.feedback,
                traits: &p.traits,
            };
            self.store.apply(&p.ws, change, &p.metrics).await?;
        }
        Ok(())
    }

    /// A merge, unmerge or erasure. `Err` for a change that cannot be read.
    async fn apply_change(
        &self,
        change: &ProfileChange,
    ) -> Result<Result<Option<ErasureAnswer>, String>, StorageError> {
        let Ok(ws) = change.workspace_id.parse::<WorkspaceId>() else {
            return Ok(Err(format!(
                "workspace_id: {:?} is not a workspace",
                change.workspace_id
            )));
        };
        let ids = |ids: &[String]| ids.iter().filter_map(|id| id.parse().ok()).collect::<Vec<Uuid>>();
        let metrics = self.metrics(&ws).await?;
        match &change.change {
            Some(profile_change::Change::Merged(m)) => {
                let Ok(survivor) = m.survivor_id.parse() else {
                    return Ok(Err(format!("survivor_id: {:?} is not a profile id", m.survivor_id)));
                };
                let merged = ids(&m.merged_ids);
                self.store
                    .apply(
                        &ws,
                        Change::Merge {
                            survivor,
                            merged: &merged,
                        },
                        &metrics,
                    )
                    .await?;
            }
            Some(profile_change::Change::Unmerged(u)) => {
                let sides: Vec<(Uuid, Vec<Uuid>)> = u
                    .sides
                    .iter()
                    .filter_map(|s| Some((s.profile_id.parse().ok()?, ids(&s.event_ids))))
                    .collect();
                self.store
                    .apply(&ws, Change::Unmerge { sides: &sides }, &metrics)
                    .await?;
            }
            Some(profile_change::Change::Erased(e)) => {
                let profiles = ids(&e.profile_ids);
                let removed = self
                    .store
                    .apply(&ws, Change::Erase { profiles: &profiles }, &metrics)
                    .await?;
                return Ok(Ok(Some(ErasureAnswer {
                    change_id: change.change_id.clone(),
                    removed: [("decisions_outcomes_and_feedback".to_owned(), removed)].into(),
                    store: CONSUMER_NAME.to_owned(),
                })));
            }
            None => {}
        }
        Ok(Ok(None))
    }
}

/// The events that mark how far a decision got (by the id in `properties.decision_id`),
/// with their stage in `units::STAGES`: orchestration's own `Message Sent`, and the
/// receipts providers report, in Segment's names where it has them.
const STAGE_EVENTS: [(&str, u8); 10] = [
    ("Message Sent", 0),
    ("Message Delivered", 1),
    ("Email Delivered", 1),
    ("SMS Delivered", 1),
    ("Push Notification Received", 1),
    ("Message Opened", 2),
    ("Email Opened", 2),
    ("Push Notification Tapped", 2),
    ("Message Clicked", 3),
    ("Email Link Clicked", 3),
];

/// A workspace's run of events in a delivery, read into what they add.
struct Pending {
    ws: WorkspaceId,
    metrics: Vec<Metric>,
    stages: Vec<NewStage>,
    outcomes: Vec<NewOutcome>,
    feedback: Vec<NewFeedback>,
    traits: Vec<NewTraits>,
}

impl Pending {
    fn new(ws: WorkspaceId, metrics: Vec<Metric>) -> Self {
        Self {
            ws,
            metrics,
            stages: Vec::new(),
            outcomes: Vec::new(),
            feedback: Vec::new(),
            traits: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.stages.is_empty() && self.outcomes.is_empty() && self.feedback.is_empty() && self.traits.is_empty()
    }

    /// What a resolved event adds: to each metric that counts it, to the funnel of the
    /// decision it names, and as feedback; and an identify's region. `Err` for an event
    /// that cannot be read.
    fn read(&mut self, stored: &StoredEvent) -> Result<(), String> {
        let Some(event) = &stored.event else {
            return Err("event: missing".to_owned());
        };
        match EventType::try_from(event.r#type) {
            Ok(EventType::Track) => {}
            Ok(EventType::Identify) => return self.read_traits(stored, event),
            _ => return Ok(()),
        }
        let context = event.context.as_ref();
        let channel = crate::channel_name(context.map_or(0, |c| c.channel));
        let locale = context.map_or("", |c| c.locale.as_str());
        let stage = STAGE_EVENTS.iter().find(|(name, _)| *name == event.event).map(|s| s.1);
        let counted: Vec<&Metric> = self
            .metrics
            .iter()
            .filter(|m| {
                m.numerator.event == event.event || m.denominator.as_ref().is_some_and(|d| d.event == event.event)
            })
            .collect();
        // The encoded properties searched for the keys, before decoding them: most events
        // are none of these.
        let listens = |key: &str| {
            let raw = event.properties.as_ref().map_or(&[][..], |p| p.as_bytes());
            raw.windows(key.len()).any(|w| w == key.as_bytes())
        };
        let feedback_possible =
            listens("nps") || listens("csat") || channel == "social" || event.event == crate::feedback::MENTION_EVENT;
        if counted.is_empty() && stage.is_none() && !feedback_possible {
            return Ok(());
        }
        let (Ok(event_id), Ok(profile)) = (stored.event_id.parse::<Uuid>(), stored.profile_id.parse::<Uuid>()) else {
            return Err("event_id or profile_id: not an id".to_owned());
        };
        let properties = match &event.properties {
            Some(p) => p.to_json().map_err(|e| format!("properties: {e}"))?,
            None => Default::default(),
        };
        let at = time_of(event.timestamp.as_ref())
            .or_else(|| time_of(event.received_at.as_ref()))
            .unwrap_or_else(Utc::now);
        let decision = properties
            .get("decision_id")
            .and_then(|v| v.as_str())
            .and_then(|id| id.parse::<Uuid>().ok());
        if let (Some(stage), Some(decision)) = (stage, decision) {
            self.stages.push(NewStage {
                decision,
                stage,
                profile,
                at,
            });
        }
        let text = |key: &str| {
            properties
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        for (kind, value) in crate::feedback::read(&event.event, &channel, locale, &properties) {
            let region = Some(text("region"))
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| text("country"));
            self.feedback.push(NewFeedback {
                event_id,
                kind,
                value,
                profile,
                at,
                channel: channel.clone(),
                region,
                activation: text("activation"),
            });
        }
        for metric in counted {
            if let Some((numerator, denominator)) = metric.contribution(&event.event, &properties) {
                self.outcomes.push(NewOutcome {
                    event_id,
                    metric: metric.name.clone(),
                    profile,
                    at,
                    numerator,
                    denominator,
                });
            }
        }
        Ok(())
    }

    /// An identify's region (`traits.region`, else `traits.country`), which feedback is
    /// counted by.
    fn read_traits(&mut self, stored: &StoredEvent, event: &corvus_proto::common::v1::Event) -> Result<(), String> {
        let Some(traits) = &event.traits else { return Ok(()) };
        let traits = traits.to_json().map_err(|e| format!("traits: {e}"))?;
        let region = ["region", "country"]
            .iter()
            .find_map(|k| traits.get(*k).and_then(|v| v.as_str()).filter(|r| !r.is_empty()));
        if let Some(region) = region {
            let profile = stored
                .profile_id
                .parse::<Uuid>()
                .map_err(|_| "profile_id: not an id".to_owned())?;
            self.traits.push(NewTraits {
                profile,
                region: region.to_owned(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl EventSink<LogEntry> for Measurement {
    async fn deliver(&self, entries: &[LogEntry]) -> Result<Vec<Failure>, String> {
        Ok(self.deliver_answering(entries).await?.0)
    }

    async fn deliver_answering(&self, entries: &[LogEntry]) -> Result<(Vec<Failure>, Vec<ErasureAnswer>), String> {
        Measurement::deliver(self, entries).await.map_err(|e| e.to_string())
    }
}

#[async_trait]
impl EventSink<DecisionLogEntry> for Measurement {
    async fn deliver(&self, entries: &[DecisionLogEntry]) -> Result<Vec<Failure>, String> {
        self.record_decisions(entries).await.map_err(|e| e.to_string())
    }
}
