//! The scoring service: identity's log read into facts, features and predictions read
//! from them, models fitted per workspace.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use corvus_log::outbox::Failure;
use corvus_proto::common::v1::{Channel, EventType, StoredEvent};
use corvus_proto::identity::v1::{ErasureAnswer, LogEntry, log_entry, profile_change};
use corvus_proto::{EventId, ProfileId, WorkspaceId};
use corvus_storage::{StorageConfig, StorageError};

use crate::config::ScoringConfig;
use crate::domain::clv::{self, Customer};
use crate::domain::engagement::{self, Preference, SendTime};
use crate::domain::facts::{self, EventView, Kind};
use crate::domain::features::{Dated, Features, summary};
use crate::domain::rfm::{Rfm, RfmModel, RfmScore};
use crate::domain::segments;
use crate::domain::traits::{ComputedTrait, Payload};
use crate::models::{ClvModel, Models};
use crate::propensity::{Propensity, PropensityFit, propensity_of};
use crate::storage::{self, Change, ScoringStore};

/// The name scoring consumes identity's log under, and answers erasures as.
pub const CONSUMER_NAME: &str = "scoring";

#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    #[error("{field}: {reason}")]
    Invalid {
        field: std::borrow::Cow<'static, str>,
        reason: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Clone)]
pub struct Scoring {
    pub store: Arc<dyn ScoringStore>,
    config: Arc<ScoringConfig>,
    /// Counts changes of audiences or their members: their streams and upkeep wait on it.
    pub(crate) audiences_changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Each workspace's models as last decoded, with the versions they were read at.
    pub(crate) models_cache: Arc<std::sync::Mutex<ModelsCache>>,
    /// Each person's scores as of now, kept as events arrive (`cards`); none without a
    /// cache.
    pub(crate) cards: Option<Arc<crate::cards::Cards>>,
    /// Each workspace's computed traits as GetScores last read them.
    pub(crate) traits_cache: Arc<std::sync::Mutex<TraitsCache>>,
}

/// Each workspace's computed traits as this process last read them, and when.
#[derive(Default)]
pub(crate) struct TraitsCache {
    pub held: std::collections::HashMap<WorkspaceId, (std::time::Instant, Arc<Vec<ComputedTrait>>)>,
    /// Changes of definitions through this process so far: traits read across one are
    /// not kept.
    pub changes: u64,
}

/// Each workspace's models as this process last decoded them.
#[derive(Default)]
pub(crate) struct ModelsCache {
    pub held: std::collections::HashMap<WorkspaceId, HeldModels>,
    /// Saves through this process so far: models read across one are not kept.
    pub saves: u64,
}

/// A workspace's models as this process last decoded them.
pub(crate) struct HeldModels {
    /// Each kind's version when they were read.
    pub versions: Vec<(String, i64)>,
    pub models: Arc<Models>,
    /// When the versions were last found unchanged.
    pub checked: std::time::Instant,
}

/// How long models are used before their versions are asked of the store again: the
/// most a replica lags behind a model saved through another.
pub(crate) const MODELS_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// A profile's CLV predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub customer: Customer,
    pub p_alive: f64,
    pub expected_purchases: f64,
    pub horizon: f64,
    pub expected_spend: f64,
    pub clv: f64,
}

/// A profile's features and predictions.
#[derive(Debug, Clone)]
pub struct Scores {
    pub profile: ProfileId,
    pub as_of: DateTime<Utc>,
    pub features: Features,
    pub lifetime_value: Option<(Prediction, ClvModel)>,
    pub rfm: Option<(RfmScore, Rfm, RfmModel)>,
    pub channel_preference: Option<Preference>,
    pub send_time: Option<SendTime>,
    /// The segment's id and name, and the distance to its centre.
    pub segment: Option<(u32, String, f64)>,
    pub propensity: Option<(Propensity, PropensityFit)>,
}

/// A profile's recency, frequency and monetary value as of `as_of`, if it bought.
pub fn rfm_of(features: &Features, as_of: DateTime<Utc>) -> Option<Rfm> {
    Some(Rfm {
        recency_days: features.recency_days(as_of)?,
        frequency: features.orders as f64,
        monetary: features.revenue,
    })
}

impl Scoring {
    pub async fn connect(storage: &StorageConfig, config: &ScoringConfig) -> anyhow::Result<Self> {
        let scoring = Self::new(storage::connect(storage).await?, config);
        if config.scores_max_age.is_zero() {
            return Ok(scoring);
        }
        let cache = <dyn corvus_storage::Cache>::connect(storage).await?;
        Ok(scoring.with_cards(cache, config.scores_max_age))
    }

    pub fn new(store: Arc<dyn ScoringStore>, config: &ScoringConfig) -> Self {
        Self {
            store,
            config: Arc::new(config.clone()),
            audiences_changed: Arc::new(tokio::sync::watch::Sender::new(0)),
            models_cache: Arc::default(),
            traits_cache: Arc::default(),
            cards: None,
        }
    }

    pub fn config(&self) -> &ScoringConfig {
        &self.config
    }

    /// Applies a delivery of identity's log: each resolved event kept as a fact, each
    /// profile change applied to the facts, in log order. An event whose properties
    /// cannot be read as its name says fails alone, with the field and why.
    pub async fn deliver(&self, entries: &[LogEntry]) -> Result<(Vec<Failure>, Vec<ErasureAnswer>), StorageError> {
        let mut changes = Vec::with_capacity(entries.len());
        let mut failures = Vec::new();
        let mut erasures = Vec::new();
        for entry in entries {
            match self.change_of(entry) {
                Ok(Some((ws, change))) => {
                    if let (Change::Erased { .. }, Some(log_entry::Entry::Change(c))) = (&change, &entry.entry) {
                        erasures.push(c.change_id.clone());
                    }
                    changes.push((ws, change));
                }
                Ok(None) => {}
                Err((id, reason)) => failures.push(Failure { event_id: id, reason }),
            }
        }
        let removed = self.store.apply(&changes).await?;
        let answers = erasures
            .into_iter()
            .zip(removed)
            .map(|(change_id, (facts, standings))| ErasureAnswer {
                change_id,
                removed: [
                    ("facts".to_owned(), facts),
                    ("audience_standings".to_owned(), standings),
                ]
                .into(),
                store: CONSUMER_NAME.to_owned(),
            })
            .collect();
        let failed = |e| match e {
            ScoringError::Storage(e) => e,
            other => StorageError::Internal(other.to_string()),
        };
        self.reevaluate(&changes).await.map_err(failed)?;
        self.keep_cards(&changes).await.map_err(failed)?;
        Ok((failures, answers))
    }

    /// The change an entry makes, `None` for one scoring keeps nothing of, or the
    /// entry's id and why it cannot be read.
    fn change_of(&self, entry: &LogEntry) -> Result<Option<(WorkspaceId, Change)>, (String, String)> {
        match &entry.entry {
            Some(log_entry::Entry::Event(stored)) => self.fact_of(stored),
            Some(log_entry::Entry::Change(change)) => {
                let fail = |reason: String| (change.change_id.clone(), reason);
                let ws: WorkspaceId = change
                    .workspace_id
                    .parse()
                    .map_err(|e| fail(format!("workspace_id: {e}")))?;
                let ids = |ids: &[String], field: &str| -> Result<Vec<ProfileId>, (String, String)> {
                    ids.iter()
                        .map(|id| {
                            id.parse()
                                .map_err(|_| fail(format!("{field}: {id:?} is not a profile id")))
                        })
                        .collect()
                };
                let change = match &change.change {
                    Some(profile_change::Change::Merged(m)) => Change::Merged {
                        survivor: m.survivor_id.parse().map_err(|_| {
                            fail(format!("merged.survivor_id: {:?} is not a profile id", m.survivor_id))
                        })?,
                        merged: ids(&m.merged_ids, "merged.merged_ids")?,
                    },
                    Some(profile_change::Change::Unmerged(u)) => Change::Unmerged {
                        sides: u
                            .sides
                            .iter()
                            .map(|side| {
                                let profile = side.profile_id.parse().map_err(|_| {
                                    fail(format!(
                                        "unmerged.sides.profile_id: {:?} is not a profile id",
                                        side.profile_id
                                    ))
                                })?;
                                let events = side
                                    .event_ids
                                    .iter()
                                    .map(|e| {
                                        e.parse::<EventId>()
                                            .map_err(|_| fail(format!("unmerged.sides.event_ids: {e:?}")))
                                    })
                                    .collect::<Result<Vec<_>, _>>()?;
                                Ok((profile, events))
                            })
                            .collect::<Result<Vec<_>, (String, String)>>()?,
                    },
                    Some(profile_change::Change::Erased(e)) => Change::Erased {
                        profiles: ids(&e.profile_ids, "erased.profile_ids")?,
                    },
                    None => return Ok(None),
                };
                Ok(Some((ws, change)))
            }
            None => Ok(None),
        }
    }

    fn fact_of(&self, stored: &StoredEvent) -> Result<Option<(WorkspaceId, Change)>, (String, String)> {
        let fail = |reason: String| (stored.event_id.clone(), reason);
        let ws: WorkspaceId = stored
            .workspace_id
            .parse()
            .map_err(|e| fail(format!("workspace_id: {e}")))?;
        let event_id: EventId = stored
            .event_id
            .parse()
            .map_err(|_| fail(format!("event_id: {:?} is not an event id", stored.event_id)))?;
        let profile: ProfileId = stored
            .profile_id
            .parse()
            .map_err(|_| fail(format!("profile_id: {:?} is not a profile id", stored.profile_id)))?;
        let Some(event) = &stored.event else {
            return Err(fail("event: missing".to_owned()));
        };
        let event_type = EventType::try_from(event.r#type).unwrap_or(EventType::Unspecified);
        let kind = match event_type {
            EventType::Track => Kind::Track,
            EventType::Page | EventType::Screen => Kind::View,
            _ => Kind::Other,
        };
        let properties = match &event.properties {
            Some(p) => p.to_json().map_err(|e| fail(format!("properties: {e}")))?,
            None => serde_json::Map::new(),
        };
        let traits = match &event.traits {
            Some(t) => t.to_json().map_err(|e| fail(format!("traits: {e}")))?,
            None => serde_json::Map::new(),
        };
        let context = event.context.as_ref();
        let channel = context
            .and_then(|c| Channel::try_from(c.channel).ok())
            .filter(|c| *c != Channel::Unspecified)
            .map(channel_name);
        let at = event
            .timestamp
            .as_ref()
            .or(event.received_at.as_ref())
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
            .ok_or_else(|| fail("event.timestamp: missing".to_owned()))?;
        let view = EventView {
            kind,
            name: &event.event,
            properties: &properties,
            channel,
            timezone: context.map(|c| c.timezone.as_str()).filter(|t| !t.is_empty()),
            locale: context.map(|c| c.locale.as_str()).filter(|l| !l.is_empty()),
            at,
        };
        let fact =
            facts::read(&view, |name| self.config.is_purchase(ws.as_str(), name)).map_err(|e| fail(e.to_string()))?;
        let payload = Payload {
            kind: event_type_name(event_type).to_owned(),
            name: if kind == Kind::Track { &event.event } else { &event.name }.clone(),
            properties,
            traits,
        };
        Ok(Some((
            ws,
            Change::Fact {
                event: event_id,
                profile,
                at,
                fact: Box::new(fact),
                payload: Box::new(payload),
            },
        )))
    }

    /// A profile's features, and its predictions from the workspace's CLV model, from
    /// its events up to `as_of`.
    pub async fn scores(
        &self,
        ws: &WorkspaceId,
        profile: ProfileId,
        as_of: DateTime<Utc>,
        horizon: Option<f64>,
    ) -> Result<Scores, ScoringError> {
        let (profile, facts) = self.store.survivor_facts(ws, profile).await?;
        if facts.is_empty() {
            return Err(ScoringError::NotFound(format!(
                "scoring holds no events of profile {profile}"
            )));
        }
        let models = self.models(ws).await?;
        self.scores_from(ws, &models, profile, facts, as_of, horizon)
    }

    /// A profile's features and predictions from its facts and the workspace's models.
    pub fn scores_from(
        &self,
        _ws: &WorkspaceId,
        models: &Models,
        profile: ProfileId,
        facts: Vec<Dated>,
        as_of: DateTime<Utc>,
        horizon: Option<f64>,
    ) -> Result<Scores, ScoringError> {
        let features = Features::compute(&facts, as_of);
        if let (Some(h), Some(model)) = (horizon, &models.clv)
            && h > 100.0 * model.unit.year()
        {
            return Err(ScoringError::Invalid {
                field: "horizon".into(),
                reason: format!("{h} {}s is more than a century", model.unit.as_str()),
            });
        }
        let lifetime_value = models.clv.clone().and_then(|model| {
            let customer = summary(&features.purchase_days, as_of.date_naive(), model.unit.days())?;
            let horizon = horizon.unwrap_or(model.unit.year());
            Some((predict(&model, customer, horizon), model))
        });
        let rfm = models.rfm.as_ref().and_then(|fit| {
            let rfm = rfm_of(&features, as_of)?;
            Some((fit.model.score(&rfm), rfm, fit.model.clone()))
        });
        let (channel_preference, send_time) = match &models.engagement {
            Some(fit) => (
                Some(engagement::preference(&features.channels, &fit.priors)),
                engagement::send_time(&features.hour_of_week, &fit.hours),
            ),
            None => (None, None),
        };
        let segment = models.segments.as_ref().and_then(|fit| {
            let (s, distance) = fit.segmentation.assign(&segments::vector(&features, as_of))?;
            Some((s.id, s.name.clone(), distance))
        });
        let propensity = models
            .propensity
            .as_ref()
            .map(|fit| (propensity_of(fit, &features, as_of), fit.clone()));
        Ok(Scores {
            propensity,
            profile,
            as_of,
            features,
            lifetime_value,
            rfm,
            channel_preference,
            send_time,
            segment,
        })
    }
}

/// A customer's predictions from a model.
pub fn predict(model: &ClvModel, customer: Customer, horizon: f64) -> Prediction {
    let (bg, gg) = (&model.bg_nbd, &model.gamma_gamma);
    Prediction {
        p_alive: bg.p_alive(&customer),
        expected_purchases: bg.expected_purchases(horizon, &customer),
        horizon,
        expected_spend: gg.expected_spend(&customer),
        clv: clv::lifetime_value(
            bg,
            gg,
            &customer,
            model.clv_months,
            model.discount_rate,
            model.unit.per_month(),
        ),
        customer,
    }
}

fn event_type_name(t: EventType) -> &'static str {
    match t {
        EventType::Unspecified => "",
        EventType::Track => "track",
        EventType::Identify => "identify",
        EventType::Page => "page",
        EventType::Screen => "screen",
        EventType::Group => "group",
        EventType::Alias => "alias",
    }
}

fn channel_name(channel: Channel) -> &'static str {
    match channel {
        Channel::Unspecified => "",
        Channel::Web => "web",
        Channel::App => "app",
        Channel::Email => "email",
        Channel::Sms => "sms",
        Channel::Push => "push",
        Channel::CallCenter => "call_center",
        Channel::Chat => "chat",
        Channel::Store => "store",
        Channel::Survey => "survey",
        Channel::Social => "social",
        Channel::Server => "server",
    }
}
