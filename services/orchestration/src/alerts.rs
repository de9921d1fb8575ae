//! Hot alerts: every resolved event and profile change of identity's log held to the
//! workspace's alert rules, alerts raised once per cooldown, streamed and sent to
//! webhooks, then acknowledged and assigned.
//!
//! Evaluating an event costs no store round trip unless a rule matches it: the rules
//! are cached per workspace (read again when their change count moves, looked at at
//! most once a second, and at once on this replica's own changes), and what this
//! replica knows of cooldowns and churn looks spares a repeat even the store's check. A
//! match reads the person (for the summary) and raises through the store, where the
//! cooldown is checked and moved in one statement, so replicas raise one alert
//! together.

mod webhooks;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use corvus_proto::common::v1::{EventType, StoredEvent};
use corvus_proto::{ProfileId, WorkspaceId};
use corvus_storage::StorageError;
use futures::{Stream, TryStreamExt};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::domain::alert::{Condition, Kind, Seen, Summary, churn_jump, judge, may_match};
use crate::people::{Who, channel_name};
use crate::service::{Orchestration, OrchestrationError};
use crate::storage::{Alert, AlertFilter, Merge, NewAlert, Raised, StoredRule};

pub use crate::domain::alert::Rule;
pub use webhooks::WebhookSettings;

/// How long a replica trusts its cached rules before it reads their change count again.
const RULES_FRESH: Duration = Duration::from_secs(1);
/// How often a stream looks for alerts raised on other replicas.
const STREAM_POLL: Duration = Duration::from_millis(250);
const STREAM_BATCH: u32 = 500;
/// People judged at once in a delivery (each may be a read of identity and a write).
const CONCURRENT_SUBJECTS: usize = 16;
/// What a replica remembers of cooldowns and looks, at most, before it forgets the
/// ended ones (and, if still too many, all: the store still knows).
const REMEMBERED: usize = 100_000;

/// A workspace's rules, as of a count of their changes.
pub(crate) struct Rules {
    changed: i64,
    read: Instant,
    rules: Vec<Arc<StoredRule>>,
}

/// What alerting keeps per replica.
pub struct Alerting {
    rules: Mutex<HashMap<WorkspaceId, Arc<Rules>>>,
    /// The ends of cooldowns this replica has seen, by workspace, rule (its name and
    /// when it was made: a rule deleted and made again starts afresh) and person.
    cooling: Mutex<HashMap<(WorkspaceId, RuleKey, ProfileId), chrono::DateTime<Utc>>>,
    /// When each person's churn risk may next be looked at.
    looks: Mutex<HashMap<(WorkspaceId, ProfileId), Instant>>,
    /// Bumped on every alert raised here: streams wake at once.
    raised: watch::Sender<u64>,
    /// Wakes the webhook task when an alert with a webhook is raised here.
    due: Notify,
    settings: WebhookSettings,
}

impl Default for Alerting {
    fn default() -> Self {
        Self::new(WebhookSettings::default())
    }
}

impl Alerting {
    /// Counts an alert raised here, wakes the streams, and the webhook task when it has
    /// a webhook to deliver.
    pub(crate) fn announce(&self, kind: Kind, webhook: crate::storage::WebhookState) {
        metrics::counter!("corvus_orchestration_alerts_raised_total", "kind" => kind.as_str()).increment(1);
        self.raised.send_modify(|n| *n = n.wrapping_add(1));
        if webhook == crate::storage::WebhookState::Pending {
            self.due.notify_one();
        }
    }

    fn new(settings: WebhookSettings) -> Self {
        Self {
            rules: Mutex::default(),
            cooling: Mutex::default(),
            looks: Mutex::default(),
            raised: watch::Sender::new(0),
            due: Notify::new(),
            settings,
        }
    }

    fn is_cooling(&self, ws: &WorkspaceId, rule: &StoredRule, profile: ProfileId, now: chrono::DateTime<Utc>) -> bool {
        let cooling = self.cooling.lock().expect("cooling lock");
        cooling
            .get(&(ws.clone(), RuleKey::of(rule), profile))
            .is_some_and(|until| *until > now)
    }

    fn cool(&self, ws: &WorkspaceId, rule: &StoredRule, profile: ProfileId, until: chrono::DateTime<Utc>) {
        let mut cooling = self.cooling.lock().expect("cooling lock");
        if cooling.len() >= REMEMBERED {
            let now = Utc::now();
            cooling.retain(|_, until| *until > now);
            if cooling.len() >= REMEMBERED {
                cooling.clear();
            }
        }
        cooling.insert((ws.clone(), RuleKey::of(rule), profile), until);
    }

    /// Whether the person's churn risk may be looked at now; if so, not again within
    /// `recheck` here.
    fn may_look(&self, ws: &WorkspaceId, profile: ProfileId, recheck: Duration) -> bool {
        if recheck.is_zero() {
            return true;
        }
        let mut looks = self.looks.lock().expect("looks lock");
        let now = Instant::now();
        if looks.get(&(ws.clone(), profile)).is_some_and(|next| *next > now) {
            return false;
        }
        if looks.len() >= REMEMBERED {
            looks.retain(|_, next| *next > now);
            if looks.len() >= REMEMBERED {
                looks.clear();
            }
        }
        looks.insert((ws.clone(), profile), now + recheck);
        true
    }

    fn forget(&self, ws: &WorkspaceId, profiles: &[ProfileId]) {
        self.cooling
            .lock()
            .expect("cooling lock")
            .retain(|(w, _, p), _| w != ws || !profiles.contains(p));
        self.looks
            .lock()
            .expect("looks lock")
            .retain(|(w, p), _| w != ws || !profiles.contains(p));
    }
}

/// A rule as this replica's memory of cooldowns knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RuleKey {
    name: String,
    created_at: i64,
}

impl RuleKey {
    fn of(rule: &StoredRule) -> Self {
        Self {
            name: rule.rule.name.clone(),
            created_at: rule.created_at.timestamp_micros(),
        }
    }
}

/// An event's (or change's) person with the rules it matched: those with a reason
/// already, and churn-risk rules, judged once the person's scores are read.
struct Subject {
    ws: WorkspaceId,
    profile: ProfileId,
    event_id: String,
    matched: Vec<(Arc<StoredRule>, String)>,
    churn: Vec<Arc<StoredRule>>,
}

/// The alerts a delivery of identity's log may raise, gathered entry by entry and
/// raised together (at the delivery's end, or before an erasure), each about the
/// survivor of the delivery's merges.
#[derive(Default)]
pub(crate) struct AlertPass {
    subjects: Vec<Subject>,
}

impl AlertPass {
    /// Nothing to raise.
    pub(crate) fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }

    /// Each subject about the survivor of `merges` (followed to the end of a chain): a
    /// person merged away after their event is alerted about as the one they became.
    pub(crate) fn follow(&mut self, merges: &[Merge]) {
        if merges.is_empty() {
            return;
        }
        let into: HashMap<(&WorkspaceId, ProfileId), ProfileId> = merges
            .iter()
            .flat_map(|m| m.merged.iter().map(move |id| ((&m.ws, *id), m.survivor)))
            .collect();
        for subject in &mut self.subjects {
            // At most as many steps as merges: a cycle (which identity never writes)
            // cannot hold it.
            for _ in 0..merges.len() {
                match into.get(&(&subject.ws, subject.profile)) {
                    Some(survivor) if *survivor != subject.profile => subject.profile = *survivor,
                    _ => break,
                }
            }
        }
    }
}

pub type AlertStream = Pin<Box<dyn Stream<Item = Result<Alert, OrchestrationError>> + Send>>;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> OrchestrationError {
    OrchestrationError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Orchestration {
    /// The same service with other webhook timings (tests; the defaults suit a server).
    pub fn with_alert_webhooks(mut self, settings: WebhookSettings) -> Self {
        self.alerting = Arc::new(Alerting::new(settings));
        self
    }

    pub async fn create_alert_rule(&self, ws: &WorkspaceId, rule: &Rule) -> Result<StoredRule, OrchestrationError> {
        rule.check().map_err(|(field, reason)| invalid(field, reason))?;
        let at = Utc::now();
        if !self.store.create_rule(ws, rule, at).await? {
            return Err(OrchestrationError::AlreadyExists(format!(
                "an alert rule is already named {:?}",
                rule.name
            )));
        }
        self.alerting.rules.lock().expect("rules lock").remove(ws);
        let created = self
            .store
            .rules(ws)
            .await?
            .into_iter()
            .find(|r| r.rule.name == rule.name);
        Ok(created.unwrap_or(StoredRule {
            rule: rule.clone(),
            created_at: at,
        }))
    }

    pub async fn alert_rules(&self, ws: &WorkspaceId) -> Result<Vec<StoredRule>, OrchestrationError> {
        Ok(self.store.rules(ws).await?)
    }

    pub async fn delete_alert_rule(&self, ws: &WorkspaceId, name: &str) -> Result<(), OrchestrationError> {
        if !self.store.delete_rule(ws, name).await? {
            return Err(OrchestrationError::NotFound(format!("no alert rule is named {name:?}")));
        }
        self.alerting.rules.lock().expect("rules lock").remove(ws);
        self.alerting
            .cooling
            .lock()
            .expect("cooling lock")
            .retain(|(w, rule, _), _| w != ws || rule.name != name);
        Ok(())
    }

    pub async fn acknowledge_alert(&self, ws: &WorkspaceId, id: Uuid) -> Result<Alert, OrchestrationError> {
        self.store
            .acknowledge(ws, id, Utc::now())
            .await?
            .ok_or_else(|| OrchestrationError::NotFound(format!("no alert {id}")))
    }

    pub async fn assign_alert(
        &self,
        ws: &WorkspaceId,
        id: Uuid,
        assignee: &str,
        note: &str,
    ) -> Result<Alert, OrchestrationError> {
        let assignee = assignee.trim();
        if assignee.is_empty() || assignee.chars().count() > 200 {
            return Err(invalid("assignee", "who acts on it: 1 to 200 characters"));
        }
        if note.chars().count() > 5_000 {
            return Err(invalid("note", "5000 characters at most"));
        }
        self.store
            .assign(ws, id, assignee, note, Utc::now())
            .await?
            .ok_or_else(|| OrchestrationError::NotFound(format!("no alert {id}")))
    }

    /// The workspace's alerts after `after` (none: every one kept), then each as it is
    /// raised, on this replica (at once) or another (within `STREAM_POLL`).
    pub fn alert_stream(&self, ws: WorkspaceId, filter: AlertFilter, after: Option<u64>) -> AlertStream {
        let this = self.clone();
        Box::pin(async_stream::try_stream! {
            let mut news = this.alerting.raised.subscribe();
            let mut after = match after {
                Some(after) => after,
                None => this.store.last_alert(&ws).await.map_err(OrchestrationError::from)?,
            };
            loop {
                news.borrow_and_update();
                let batch = this
                    .store
                    .alerts(&ws, &filter, Some(after), STREAM_BATCH, false)
                    .await
                    .map_err(OrchestrationError::from)?;
                let full = batch.len() == STREAM_BATCH as usize;
                for alert in batch {
                    after = alert.sequence;
                    yield alert;
                }
                if !full {
                    let _ = tokio::time::timeout(STREAM_POLL, news.changed()).await;
                }
            }
        })
    }

    /// The workspace's rules, from this replica's cache while it is current.
    pub(crate) async fn rules_of(&self, ws: &WorkspaceId) -> Result<Arc<Rules>, StorageError> {
        let cached = self.alerting.rules.lock().expect("rules lock").get(ws).cloned();
        if let Some(rules) = &cached
            && rules.read.elapsed() < RULES_FRESH
        {
            return Ok(rules.clone());
        }
        let changed = self.store.rules_changed(ws).await?;
        let rules = match cached.filter(|r| r.changed == changed) {
            Some(same) => Rules {
                changed,
                read: Instant::now(),
                rules: same.rules.clone(),
            },
            None => Rules {
                changed,
                read: Instant::now(),
                rules: self.store.rules(ws).await?.into_iter().map(Arc::new).collect(),
            },
        };
        let rules = Arc::new(rules);
        self.alerting
            .rules
            .lock()
            .expect("rules lock")
            .insert(ws.clone(), rules.clone());
        Ok(rules)
    }

    /// Holds a resolved event to the workspace's rules; what matches waits in `pass`.
    pub(crate) async fn alerts_on_event(&self, pass: &mut AlertPass, stored: &StoredEvent) -> Result<(), StorageError> {
        let Some(event) = &stored.event else {
            return Ok(());
        };
        if EventType::try_from(event.r#type) != Ok(EventType::Track) {
            return Ok(());
        }
        let Ok(ws) = stored.workspace_id.parse::<WorkspaceId>() else {
            return Ok(());
        };
        let rules = self.rules_of(&ws).await?;
        if rules.rules.is_empty() {
            return Ok(());
        }
        let Ok(profile) = stored.profile_id.parse::<ProfileId>() else {
            return Ok(());
        };
        let (channel, locale) = match &event.context {
            Some(c) => (channel_name(c.channel), c.locale.as_str()),
            None => (String::new(), ""),
        };
        let raw = event.properties.as_ref().map_or(&[][..], |p| p.as_bytes());
        let mut properties = None;
        let mut subject = Subject {
            ws,
            profile,
            event_id: stored.event_id.clone(),
            matched: Vec::new(),
            churn: Vec::new(),
        };
        for stored_rule in &rules.rules {
            let rule = &stored_rule.rule;
            if !rule.admits(&event.event) {
                continue;
            }
            if rule.kind() == Kind::ChurnRiskJump {
                subject.churn.push(stored_rule.clone());
                continue;
            }
            if !may_match(&rule.condition, &channel, raw) {
                continue;
            }
            // Read once, and only for a rule that may match; unreadable is empty (the
            // outcome pass reports it).
            let properties = properties.get_or_insert_with(|| {
                event
                    .properties
                    .as_ref()
                    .and_then(|p| p.to_json().ok())
                    .unwrap_or_default()
            });
            let seen = Seen {
                name: &event.event,
                channel: &channel,
                locale,
                properties,
            };
            if let Some(reason) = judge(&rule.condition, &seen) {
                subject.matched.push((stored_rule.clone(), reason));
            }
        }
        if !subject.matched.is_empty() || !subject.churn.is_empty() {
            pass.subjects.push(subject);
        }
        Ok(())
    }

    /// After a merge (whose writes, `OrchestrationStore::merge`, the delivery makes): the
    /// survivor's churn risk, with the merged history, is looked at.
    pub(crate) async fn alerts_on_merge(
        &self,
        pass: &mut AlertPass,
        ws: &WorkspaceId,
        survivor: ProfileId,
        change_id: &str,
    ) -> Result<(), StorageError> {
        let rules = self.rules_of(ws).await?;
        let churn: Vec<_> = rules
            .rules
            .iter()
            .filter(|r| r.rule.kind() == Kind::ChurnRiskJump)
            .cloned()
            .collect();
        if !churn.is_empty() {
            pass.subjects.push(Subject {
                ws: ws.clone(),
                profile: survivor,
                event_id: change_id.to_owned(),
                matched: Vec::new(),
                churn,
            });
        }
        Ok(())
    }

    /// After an erasure: the people's alerts, cooldowns and churn risk are deleted
    /// (once what came before it is raised); the rows deleted.
    pub(crate) async fn alerts_on_erasure(
        &self,
        pass: &mut AlertPass,
        ws: &WorkspaceId,
        profiles: &[ProfileId],
    ) -> Result<u64, StorageError> {
        self.raise_alerts(pass).await?;
        let removed = self.store.erase_alerts(ws, profiles).await?;
        self.alerting.forget(ws, profiles);
        Ok(removed)
    }

    /// Raises what the pass gathered, a few people at a time.
    pub(crate) async fn raise_alerts(&self, pass: &mut AlertPass) -> Result<(), StorageError> {
        let subjects = std::mem::take(&mut pass.subjects);
        futures::stream::iter(subjects.into_iter().map(Ok))
            .try_for_each_concurrent(CONCURRENT_SUBJECTS, |s| self.raise_for(s))
            .await
    }

    async fn raise_for(&self, subject: Subject) -> Result<(), StorageError> {
        let Subject {
            ws,
            profile,
            event_id,
            matched,
            churn,
        } = subject;
        let now = Utc::now();
        let cooling = |r: &StoredRule| self.alerting.is_cooling(&ws, r, profile, now);
        let mut raising: Vec<(Arc<StoredRule>, String)> = matched.into_iter().filter(|(r, _)| !cooling(r)).collect();
        let churn: Vec<Arc<StoredRule>> = churn.into_iter().filter(|r| !cooling(r)).collect();
        let recheck = churn
            .iter()
            .filter_map(|r| match r.rule.condition {
                Condition::ChurnRiskJump { recheck_seconds, .. } => Some(recheck_seconds),
                _ => None,
            })
            .min();
        // Some(the risk last seen) when this look is ours to take.
        let mut looking = None;
        if let Some(recheck) = recheck
            && self.alerting.may_look(&ws, profile, Duration::from_secs(recheck))
        {
            looking = self
                .store
                .look_at_churn(&ws, profile, now, chrono::Duration::seconds(recheck as i64))
                .await?;
        }
        if raising.is_empty() && looking.is_none() {
            return Ok(());
        }
        let person = match self
            .directory
            .person(&self.service_caller(&ws), &Who::Profile(profile))
            .await
        {
            Ok(Some(person)) => Some(person),
            // Unknown or erased since: no one to alert about.
            Ok(None) => return Ok(()),
            Err(error) => {
                tracing::warn!(workspace = %ws, profile = %profile, %error, "alert raised without the person's summary");
                None
            }
        };
        let summary = person.as_ref().map(Summary::of).unwrap_or_default();
        if let (Some(before), Some(risk)) = (looking, summary.churn_risk) {
            self.store.saw_churn(&ws, profile, risk).await?;
            if let Some(before) = before {
                for rule in churn {
                    if let Some(reason) = churn_jump(&rule.rule.condition, before, risk, summary.clv) {
                        raising.push((rule, reason));
                    }
                }
            }
        }
        for (stored, reason) in raising {
            let rule = &stored.rule;
            let now = Utc::now();
            let until = now + chrono::Duration::seconds(rule.cooldown_seconds as i64);
            let alert = NewAlert {
                id: Uuid::now_v7(),
                rule: rule.name.clone(),
                kind: rule.kind(),
                profile,
                reason,
                event_id: event_id.clone(),
                raised_at: now,
                summary: summary.clone(),
                webhook: rule.webhook.is_some(),
            };
            match self.store.raise(&ws, &alert, until).await? {
                Raised::Alert(raised) => {
                    self.alerting.cool(&ws, &stored, profile, until);
                    self.alerting.announce(rule.kind(), raised.webhook);
                }
                Raised::Cooling(until) => self.alerting.cool(&ws, &stored, profile, until),
            }
        }
        Ok(())
    }
}
