//! Computed traits and audiences as the service keeps them: definitions checked and
//! saved, membership evaluated for each profile an entry of identity's log touches,
//! again when a standing comes due with time, and for every profile held when an
//! audience is created (its backfill).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use corvus_proto::{ProfileId, WorkspaceId};
use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::domain::audiences::{Condition, Field, Known, Subject, check_trait, traits_needed};
use crate::domain::traits::{ComputedTrait, EventFilter, Held, Payload, latest_traits};
use crate::service::{MODELS_RECHECK, Scores, Scoring, ScoringError};
use crate::storage::{Change, Definition, Definitions, MembershipChange, Standing};

/// Profiles an estimate evaluates before it samples.
pub const ESTIMATE_SAMPLE: usize = 5_000;

/// Standings looked at per pass of the sweep.
const SWEEP_BATCH: i64 = 500;

/// A saved audience.
#[derive(Debug, Clone)]
pub struct Audience {
    pub name: String,
    pub description: String,
    pub condition: Condition,
    pub created_at: DateTime<Utc>,
    pub built_at: Option<DateTime<Utc>>,
    pub size: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAudience {
    #[serde(default)]
    description: String,
    condition: Condition,
}

/// The size of a definition before it is saved.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub size: u64,
    /// Profiles held in the workspace, and how many were evaluated.
    pub profiles: u64,
    pub evaluated: u64,
    /// 95% interval of the size (the size itself when every profile was evaluated).
    pub low: u64,
    pub high: u64,
}

/// What a workspace's audiences are evaluated with.
struct Workbench {
    traits: HashMap<String, ComputedTrait>,
    audiences: HashMap<String, Condition>,
    /// The fields any audience compares.
    fields: Vec<Field>,
    /// The filters of the audiences' event conditions and of the computed traits they
    /// compare.
    filters: Vec<EventFilter>,
}

impl Workbench {
    fn needs_scores(&self) -> bool {
        self.fields
            .iter()
            .any(|f| matches!(f, Field::Feature(_) | Field::Score(_)))
    }

    /// Whether an event can change any audience's membership: one that features and
    /// scores count (any event, when an audience compares them), an identify when one
    /// compares traits, one that an event condition or a compared computed trait admits.
    /// The passing of time is the upkeep's.
    fn moved_by(&self, payload: &Payload) -> bool {
        self.needs_scores()
            || (payload.kind == "identify" && self.fields.iter().any(|f| matches!(f, Field::Trait(_))))
            || self.filters.iter().any(|f| f.admits(payload))
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T, ScoringError> {
    serde_json::from_str(json).map_err(|e| {
        ScoringError::Storage(corvus_storage::StorageError::Internal(format!(
            "the stored {what}: {e}"
        )))
    })
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("definitions serialise")
}

/// Features and scores by the keys audiences compare them by.
pub fn values_of(scores: &Scores) -> BTreeMap<String, Value> {
    let f = &scores.features;
    let days = |t: Option<DateTime<Utc>>| t.map(|t| (scores.as_of - t).num_milliseconds() as f64 / 86_400_000.0);
    let mut v: BTreeMap<String, Value> = BTreeMap::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            v.insert(key.to_owned(), value);
        }
    };
    put("features.events", Some(f.events.into()));
    put("features.orders", Some(f.orders.into()));
    put("features.revenue", Some(f.revenue.into()));
    put(
        "features.average_order_value",
        (f.orders > 0).then(|| (f.revenue / f.orders as f64).into()),
    );
    put("features.recency_days", f.recency_days(scores.as_of).map(Value::from));
    put("features.days_since_first_seen", days(f.first_seen).map(Value::from));
    put("features.days_since_last_seen", days(f.last_seen).map(Value::from));
    put("features.nps_mean", f.nps.mean().map(Value::from));
    put("features.nps_latest", f.nps.latest.map(Value::from));
    put("features.csat_mean", f.csat.mean().map(Value::from));
    put("features.csat_latest", f.csat.latest.map(Value::from));
    put("features.sentiment_mean", f.sentiment.mean().map(Value::from));
    if let Some((p, _)) = &scores.lifetime_value {
        put("scores.p_alive", Some(p.p_alive.into()));
        put("scores.expected_purchases", Some(p.expected_purchases.into()));
        put("scores.expected_spend", Some(p.expected_spend.into()));
        put("scores.clv", Some(p.clv.into()));
    }
    if let Some((score, _, _)) = &scores.rfm {
        put("scores.rfm_recency", Some(score.recency.into()));
        put("scores.rfm_frequency", Some(score.frequency.into()));
        put("scores.rfm_monetary", Some(score.monetary.into()));
        put("scores.rfm_cell", Some(score.cell.into()));
    }
    if let Some((id, name, _)) = &scores.segment {
        put("scores.segment_id", Some((*id).into()));
        put("scores.segment", Some(name.as_str().into()));
    }
    if let Some((best, _)) = scores.channel_preference.as_ref().and_then(|p| p.best.as_ref()) {
        put("scores.preferred_channel", Some(best.as_str().into()));
    }
    if let Some(t) = &scores.send_time {
        put("scores.best_hour_of_week", Some(t.hour_of_week.into()));
    }
    if let Some((p, _)) = &scores.propensity {
        put("scores.propensity", Some(p.probability.into()));
        put("scores.churn_risk", p.churn_risk.map(Value::from));
    }
    v
}

impl Scoring {
    async fn workbench(&self, ws: &WorkspaceId) -> Result<Workbench, ScoringError> {
        let traits = self
            .store
            .definitions(ws, Definitions::Traits)
            .await?
            .iter()
            .map(|d| Ok((d.name.clone(), decode("computed trait", &d.definition)?)))
            .collect::<Result<HashMap<_, _>, ScoringError>>()?;
        let audiences: HashMap<String, Condition> = self
            .store
            .definitions(ws, Definitions::Audiences)
            .await?
            .iter()
            .map(|d| {
                Ok((
                    d.name.clone(),
                    decode::<StoredAudience>("audience", &d.definition)?.condition,
                ))
            })
            .collect::<Result<_, ScoringError>>()?;
        let fields: Vec<Field> = audiences.values().flat_map(|c| c.fields(&audiences)).collect();
        let filters = audiences
            .values()
            .flat_map(|c| c.event_filters())
            .cloned()
            .chain(traits_needed(&fields, &traits).map(|t| t.filter.clone()))
            .collect();
        Ok(Workbench {
            traits,
            audiences,
            fields,
            filters,
        })
    }

    pub async fn create_trait(&self, ws: &WorkspaceId, t: ComputedTrait) -> Result<DateTime<Utc>, ScoringError> {
        check_trait(&t).map_err(|e| ScoringError::Invalid {
            field: format!("computed_trait.{}", e.path).into(),
            reason: e.reason,
        })?;
        let now = Utc::now();
        if !self
            .store
            .define(ws, Definitions::Traits, &t.name, &encode(&t), now)
            .await?
        {
            return Err(ScoringError::AlreadyExists(format!(
                "a computed trait named {:?} exists",
                t.name
            )));
        }
        self.definitions_changed(ws).await?;
        Ok(now)
    }

    pub async fn computed_traits(&self, ws: &WorkspaceId) -> Result<Vec<(ComputedTrait, DateTime<Utc>)>, ScoringError> {
        self.store
            .definitions(ws, Definitions::Traits)
            .await?
            .iter()
            .map(|d| Ok((decode("computed trait", &d.definition)?, d.created_at)))
            .collect()
    }

    /// Deletes a computed trait no audience compares.
    pub async fn delete_trait(&self, ws: &WorkspaceId, name: &str) -> Result<(), ScoringError> {
        let bench = self.workbench(ws).await?;
        if let Some((audience, _)) = bench
            .audiences
            .iter()
            .find(|(_, c)| c.fields(&HashMap::new()).contains(&Field::Computed(name.to_owned())))
        {
            return Err(ScoringError::Precondition(format!(
                "audience {audience:?} compares computed.{name}; delete it first"
            )));
        }
        if !self.store.undefine(ws, Definitions::Traits, name).await? {
            return Err(ScoringError::NotFound(format!("no computed trait {name:?}")));
        }
        self.definitions_changed(ws).await
    }

    /// Checks an audience's definition against the workspace's traits and audiences.
    async fn check_audience(
        &self,
        ws: &WorkspaceId,
        name: &str,
        condition: &Condition,
    ) -> Result<Workbench, ScoringError> {
        let bench = self.workbench(ws).await?;
        let known = Known {
            traits: &bench.traits,
            audiences: &bench.audiences,
        };
        condition.check(name, &known).map_err(|e| ScoringError::Invalid {
            field: format!("audience.{}", e.path).into(),
            reason: e.reason,
        })?;
        Ok(bench)
    }

    /// Saves an audience; its members are found among the profiles held in the
    /// background (`built_at` is set when done), and kept current from then on.
    pub async fn create_audience(
        &self,
        ws: &WorkspaceId,
        name: &str,
        description: &str,
        condition: Condition,
    ) -> Result<Audience, ScoringError> {
        crate::domain::audiences::check_name("name", name).map_err(|e| ScoringError::Invalid {
            field: "audience.name".into(),
            reason: e.reason,
        })?;
        self.check_audience(ws, name, &condition).await?;
        let stored = StoredAudience {
            description: description.to_owned(),
            condition,
        };
        let now = Utc::now();
        if !self
            .store
            .define(ws, Definitions::Audiences, name, &encode(&stored), now)
            .await?
        {
            return Err(ScoringError::AlreadyExists(format!(
                "an audience named {name:?} exists"
            )));
        }
        self.audiences_changed.send_modify(|n| *n += 1);
        Ok(Audience {
            name: name.to_owned(),
            description: stored.description,
            condition: stored.condition,
            created_at: now,
            built_at: None,
            size: 0,
        })
    }

    pub async fn audiences(&self, ws: &WorkspaceId) -> Result<Vec<Audience>, ScoringError> {
        let mut out = Vec::new();
        for d in self.store.definitions(ws, Definitions::Audiences).await? {
            out.push(self.audience_of(ws, d).await?);
        }
        Ok(out)
    }

    pub async fn audience(&self, ws: &WorkspaceId, name: &str) -> Result<Audience, ScoringError> {
        let d = self
            .store
            .definitions(ws, Definitions::Audiences)
            .await?
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| ScoringError::NotFound(format!("no audience {name:?}")))?;
        self.audience_of(ws, d).await
    }

    async fn audience_of(&self, ws: &WorkspaceId, d: Definition) -> Result<Audience, ScoringError> {
        let stored: StoredAudience = decode("audience", &d.definition)?;
        Ok(Audience {
            size: self.store.member_count(ws, &d.name).await?,
            name: d.name,
            description: stored.description,
            condition: stored.condition,
            created_at: d.created_at,
            built_at: d.built_at,
        })
    }

    /// Deletes an audience no other audience refers to, with its members and history.
    pub async fn delete_audience(&self, ws: &WorkspaceId, name: &str) -> Result<(), ScoringError> {
        let bench = self.workbench(ws).await?;
        if let Some((other, _)) = bench.audiences.iter().find(|(_, c)| c.audiences().contains(&name)) {
            return Err(ScoringError::Precondition(format!(
                "audience {other:?} refers to {name:?}; delete it first"
            )));
        }
        if !self.store.undefine(ws, Definitions::Audiences, name).await? {
            return Err(ScoringError::NotFound(format!("no audience {name:?}")));
        }
        self.definitions_changed(ws).await
    }

    /// How many profiles a definition holds now, without saving it: every profile
    /// evaluated up to `ESTIMATE_SAMPLE`, a uniform sample of that many beyond.
    pub async fn estimate(&self, ws: &WorkspaceId, condition: &Condition) -> Result<Estimate, ScoringError> {
        let mut bench = self.check_audience(ws, "", condition).await?;
        bench.fields = condition.fields(&bench.audiences);
        let mut profiles = self.store.profiles(ws).await?;
        let total = profiles.len();
        if total > ESTIMATE_SAMPLE {
            // A sample that is the same for the same profiles: by a hash of the id.
            profiles.sort_by_key(|p| splitmix(u128::from_be_bytes(*p.as_uuid().as_bytes()) as u64));
            profiles.truncate(ESTIMATE_SAMPLE);
        }
        let now = Utc::now();
        let models = if bench.needs_scores() {
            Some(self.models(ws).await?)
        } else {
            None
        };
        let mut hits = 0u64;
        let mut histories = HashMap::new();
        for chunk in profiles.chunks(SWEEP_BATCH as usize) {
            histories.extend(self.store.histories(ws, chunk).await?);
        }
        for profile in &profiles {
            let Some((facts, held)) = histories.remove(profile) else {
                continue;
            };
            if held.is_empty() {
                continue;
            }
            let values = match &models {
                Some(models) => values_of(&self.scores_from(ws, models, *profile, facts, now, None)?),
                None => BTreeMap::new(),
            };
            if subject_verdict(&bench, &held, &values, now, condition).0 {
                hits += 1;
            }
        }
        let evaluated = profiles.len() as u64;
        let total = total as u64;
        if evaluated == total {
            return Ok(Estimate {
                size: hits,
                profiles: total,
                evaluated,
                low: hits,
                high: hits,
            });
        }
        let (low, high) = wilson(hits, evaluated);
        let scale = |p: f64| (p * total as f64).round() as u64;
        Ok(Estimate {
            size: scale(hits as f64 / evaluated as f64),
            profiles: total,
            evaluated,
            low: scale(low),
            high: scale(high),
        })
    }

    /// Evaluates every audience (or only `only`) for each profile, records the
    /// standings and wakes the streams of the changes.
    pub async fn evaluate(
        &self,
        ws: &WorkspaceId,
        profiles: &[ProfileId],
        reason: &'static str,
        only: Option<&str>,
    ) -> Result<Vec<MembershipChange>, ScoringError> {
        let bench = self.workbench(ws).await?;
        let changes = self.evaluate_with(ws, &bench, profiles, reason, only).await?;
        // (A delivery's own re-evaluation needs none: its cards are computed after it.)
        self.drop_cards(ws, changes.iter().map(|c| c.profile)).await?;
        Ok(changes)
    }

    async fn evaluate_with(
        &self,
        ws: &WorkspaceId,
        bench: &Workbench,
        profiles: &[ProfileId],
        reason: &'static str,
        only: Option<&str>,
    ) -> Result<Vec<MembershipChange>, ScoringError> {
        if bench.audiences.is_empty() || profiles.is_empty() {
            return Ok(Vec::new());
        }
        let models = if bench.needs_scores() {
            Some(self.models(ws).await?)
        } else {
            None
        };
        let now = Utc::now();
        let mut standings = Vec::new();
        let mut histories = self.store.histories(ws, profiles).await?;
        for profile in profiles {
            let (facts, held) = histories.remove(profile).unwrap_or_default();
            let values = match (&models, held.is_empty()) {
                (Some(models), false) => values_of(&self.scores_from(ws, models, *profile, facts, now, None)?),
                _ => BTreeMap::new(),
            };
            // Every audience stays on the bench: one may refer to another.
            for (name, condition) in bench
                .audiences
                .iter()
                .filter(|(n, _)| only.is_none_or(|o| o == n.as_str()))
            {
                // A profile scoring holds nothing of (merged away, erased) is in no audience.
                let (member, recheck_at) = if held.is_empty() {
                    (false, None)
                } else {
                    subject_verdict(bench, &held, &values, now, condition)
                };
                standings.push(Standing {
                    audience: name.clone(),
                    profile: *profile,
                    member,
                    recheck_at,
                    reason,
                });
            }
        }
        let changes = self.store.record(ws, &standings, now).await?;
        if !changes.is_empty() {
            self.audiences_changed.send_modify(|n| *n += 1);
        }
        Ok(changes)
    }

    /// Re-evaluates the profiles a delivery touched: by an event that can move an
    /// audience, a merge or an unmerge.
    pub(crate) async fn reevaluate(&self, changes: &[(WorkspaceId, Change)]) -> Result<(), ScoringError> {
        let mut benches: HashMap<&WorkspaceId, Workbench> = HashMap::new();
        for (ws, _) in changes {
            if !benches.contains_key(ws) {
                benches.insert(ws, self.workbench(ws).await?);
            }
        }
        let mut touched: BTreeMap<&WorkspaceId, (HashSet<ProfileId>, &'static str)> = BTreeMap::new();
        for (ws, change) in changes {
            let bench = &benches[ws];
            if bench.audiences.is_empty() {
                continue;
            }
            let (ids, reason): (Vec<ProfileId>, &'static str) = match change {
                Change::Fact { profile, payload, .. } if bench.moved_by(payload) => (vec![*profile], "event"),
                Change::Fact { .. } => continue,
                Change::Merged { survivor, merged } => (
                    std::iter::once(*survivor).chain(merged.iter().copied()).collect(),
                    "merge",
                ),
                Change::Unmerged { sides } => (sides.iter().map(|(p, _)| *p).collect(), "unmerge"),
                // An erasure deleted the standings with the facts.
                Change::Erased { .. } => continue,
            };
            let entry = touched.entry(ws).or_insert_with(|| (HashSet::new(), reason));
            entry.0.extend(ids);
            if reason != "event" {
                entry.1 = reason;
            }
        }
        for (ws, (profiles, reason)) in touched {
            let mut profiles: Vec<ProfileId> = profiles.into_iter().collect();
            profiles.sort();
            self.evaluate_with(ws, &benches[ws], &profiles, reason, None).await?;
        }
        Ok(())
    }

    /// One pass of audience upkeep: builds the audiences created since the last pass
    /// and re-evaluates the standings that came due. Returns how many profiles it
    /// evaluated.
    pub async fn upkeep(&self) -> Result<usize, ScoringError> {
        let mut evaluated = 0;
        for (ws, audience) in self.store.building().await? {
            let profiles = self.store.profiles(&ws).await?;
            for chunk in profiles.chunks(SWEEP_BATCH as usize) {
                self.evaluate(&ws, chunk, "backfill", Some(&audience)).await?;
            }
            evaluated += profiles.len();
            self.store.mark_built(&ws, &audience, Utc::now()).await?;
        }
        loop {
            let due = self.store.due(Utc::now(), SWEEP_BATCH).await?;
            let mut by_workspace: BTreeMap<WorkspaceId, Vec<ProfileId>> = BTreeMap::new();
            for (ws, profile) in &due {
                by_workspace.entry(ws.clone()).or_default().push(*profile);
            }
            for (ws, profiles) in &by_workspace {
                self.evaluate(ws, profiles, "time", None).await?;
            }
            evaluated += due.len();
            if (due.len() as i64) < SWEEP_BATCH {
                return Ok(evaluated);
            }
        }
    }

    /// Audience upkeep every `interval` (and at once when an audience is created) until
    /// `stop`; every minute, the propensity models' new outcomes and the refits due.
    pub fn spawn_audience_upkeep(&self, interval: Duration, stop: CancellationToken) -> JoinSet<()> {
        let scoring = self.clone();
        let mut news = self.audiences_changed.subscribe();
        let mut set = JoinSet::new();
        set.spawn(async move {
            let mut outcomes_learnt: Option<std::time::Instant> = None;
            let mut refits = crate::refit::Attempts::default();
            loop {
                news.borrow_and_update();
                if let Err(err) = scoring.upkeep().await {
                    tracing::warn!(error = %err, "audience upkeep failed");
                }
                // Propensity models learn the outcomes of windows that closed, looked at
                // every minute.
                if outcomes_learnt.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    outcomes_learnt = Some(std::time::Instant::now());
                    if let Err(err) = scoring.learn_outcomes(Utc::now()).await {
                        tracing::warn!(error = %err, "propensity models could not learn new outcomes");
                    }
                    let every = scoring.config().refit_every;
                    if !every.is_zero()
                        && let Err(err) = scoring.refit_due(Utc::now(), every, &mut refits).await
                    {
                        tracing::warn!(error = %err, "scheduled refits failed");
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                    _ = news.changed() => {}
                }
            }
        });
        set
    }

    /// An audience's entries and exits after `after`, oldest first.
    pub async fn audience_changes(
        &self,
        ws: &WorkspaceId,
        audience: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<MembershipChange>, ScoringError> {
        Ok(self.store.changes(ws, audience, after, limit).await?)
    }

    /// News of changes to audiences or their members: a receiver marks what it has
    /// seen, and `changed()` wakes it on what comes after.
    pub fn audience_news(&self) -> tokio::sync::watch::Receiver<u64> {
        self.audiences_changed.subscribe()
    }

    /// A profile's computed traits now.
    pub async fn trait_values(
        &self,
        ws: &WorkspaceId,
        profile: ProfileId,
        as_of: DateTime<Utc>,
    ) -> Result<BTreeMap<String, Option<Value>>, ScoringError> {
        let traits = self.traits_in_use(ws).await?;
        if traits.is_empty() {
            return Ok(BTreeMap::new());
        }
        let (_, held) = self.store.history(ws, profile).await?;
        Ok(traits
            .iter()
            .map(|t| (t.name.clone(), t.compute(&held, as_of).0))
            .collect())
    }

    /// The workspace's computed traits for a profile's scores: read again once
    /// `MODELS_RECHECK` old, and at once after a change made through this process. A
    /// replica lags one made through another by `MODELS_RECHECK` at most, as it does a
    /// model.
    pub(crate) async fn traits_in_use(&self, ws: &WorkspaceId) -> Result<Arc<Vec<ComputedTrait>>, ScoringError> {
        let changes = {
            let cache = self.traits_cache.lock().expect("traits cache lock");
            if let Some((read, traits)) = cache.held.get(ws)
                && read.elapsed() < MODELS_RECHECK
            {
                return Ok(traits.clone());
            }
            cache.changes
        };
        let traits: Arc<Vec<ComputedTrait>> =
            Arc::new(self.computed_traits(ws).await?.into_iter().map(|(t, _)| t).collect());
        let mut cache = self.traits_cache.lock().expect("traits cache lock");
        if cache.changes == changes {
            cache
                .held
                .insert(ws.clone(), (std::time::Instant::now(), traits.clone()));
        }
        Ok(traits)
    }
}

/// A profile's membership of `condition` and when to look again.
fn subject_verdict(
    bench: &Workbench,
    held: &[Held],
    values: &BTreeMap<String, Value>,
    now: DateTime<Utc>,
    condition: &Condition,
) -> (bool, Option<DateTime<Utc>>) {
    let computed: HashMap<String, _> = traits_needed(&bench.fields, &bench.traits)
        .map(|t| (t.name.clone(), t.compute(held, now)))
        .collect();
    let traits: Map<String, Value> = latest_traits(held, now);
    let v = Subject {
        now,
        events: held,
        traits: &traits,
        computed: &computed,
        values,
        audiences: &bench.audiences,
    }
    .evaluate(condition);
    (v.member, v.recheck_at)
}

/// The Wilson score interval (95%) of a proportion.
fn wilson(hits: u64, n: u64) -> (f64, f64) {
    let (z, n, p) = (1.959_963_984_540_054, n as f64, hits as f64 / n as f64);
    let denominator = 1.0 + z * z / n;
    let centre = p + z * z / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    (
        ((centre - spread) / denominator).max(0.0),
        ((centre + spread) / denominator).min(1.0),
    )
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
