//! Triggered campaigns: a live campaign whose trigger an event of identity's log
//! matches is decided for the person, at once or after its wait unless the person did
//! the `unless` event meanwhile; one triggered by a score is decided when the person's
//! score, looked at after their next event, crosses its threshold upwards. What waits
//! is kept in the store (`triggers`), so a restart loses none, and a worker on each
//! replica decides what comes due, leasing it so that no two decide the same.

use std::time::Duration;

use chrono::{DateTime, Utc};
use corvus_proto::common::v1::{EventType, StoredEvent};
use corvus_proto::{ProfileId, WorkspaceId};
use corvus_storage::StorageError;
use futures::StreamExt as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::decide::DecideInput;
use crate::domain::campaign::Trigger;
use crate::people::Who;
use crate::service::{Live, Orchestration, OrchestrationError};
use crate::storage::{Pending, TriggerKind};

/// How often due triggers are looked for.
const POLL: Duration = Duration::from_millis(200);
/// How long after a person's event their score is looked at: scoring applies the same
/// event meanwhile.
const SCORE_DELAY: chrono::Duration = chrono::Duration::seconds(2);
/// Triggers taken at a time, and decided at once.
const BATCH: u32 = 100;
const AT_ONCE: usize = 8;

/// A property's value as a trigger compares it: strings as they are, others as JSON.
fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Orchestration {
    /// On a resolved event: cancels the person's waits it answers and queues the
    /// triggers it starts.
    pub(crate) async fn triggers_on(&self, stored: &StoredEvent, live: &Live) -> Result<(), StorageError> {
        let Some(event) = stored.event.as_ref().filter(|e| e.r#type == EventType::Track as i32) else {
            return Ok(());
        };
        let triggered: Vec<_> = live
            .campaigns
            .iter()
            .filter_map(|c| c.definition.trigger.as_ref().map(|t| (c, t)))
            .collect();
        if triggered.is_empty() {
            return Ok(());
        }
        let (Ok(ws), Ok(profile)) = (
            stored.workspace_id.parse::<WorkspaceId>(),
            stored.profile_id.parse::<ProfileId>(),
        ) else {
            return Ok(());
        };
        let at = event
            .timestamp
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
            .unwrap_or_else(Utc::now);
        let answers_a_wait = triggered
            .iter()
            .any(|(_, t)| matches!(t, Trigger::Event { unless, .. } if *unless == event.event));
        if answers_a_wait {
            self.store.cancel_triggers(&ws, profile, &event.event, at).await?;
        }
        let mut properties = None;
        let mut queued = Vec::new();
        for (campaign, trigger) in triggered {
            let pending = |kind, due_at, unless: &str| Pending {
                id: Uuid::now_v7(),
                workspace: ws.clone(),
                campaign: campaign.definition.name.clone(),
                profile,
                kind,
                due_at,
                unless: unless.to_owned(),
                cause: event.event.clone(),
            };
            match trigger {
                Trigger::Event {
                    event: name,
                    properties: wanted,
                    wait_seconds,
                    unless,
                } if *name == event.event => {
                    if !wanted.is_empty() {
                        if properties.is_none() {
                            properties = Some(match &event.properties {
                                Some(p) => p.to_json().unwrap_or_default(),
                                None => serde_json::Map::new(),
                            });
                        }
                        let held = properties.as_ref().expect("read above");
                        if !wanted
                            .iter()
                            .all(|(k, v)| held.get(k).map(text).as_deref() == Some(v.as_str()))
                        {
                            continue;
                        }
                    }
                    let wait = chrono::Duration::seconds(wait_seconds.unwrap_or(0) as i64);
                    queued.push(pending(TriggerKind::Event, at + wait, unless));
                }
                Trigger::Score { .. } => queued.push(pending(TriggerKind::Score, Utc::now() + SCORE_DELAY, "")),
                _ => {}
            }
        }
        self.store.add_triggers(&queued).await
    }

    /// The worker that decides the triggers come due, and the one that follows
    /// audiences and schedules.
    pub fn spawn_triggers(&self, stop: CancellationToken) -> JoinSet<()> {
        let mut set = JoinSet::new();
        set.spawn(self.clone().follow(stop.clone()));
        let this = self.clone();
        set.spawn(async move {
            loop {
                let now = Utc::now();
                let lease = now + chrono::Duration::seconds(60);
                match this.store.claim_triggers(now, lease, BATCH).await {
                    Ok(due) if !due.is_empty() => {
                        let full = due.len() == BATCH as usize;
                        futures::stream::iter(due)
                            .for_each_concurrent(AT_ONCE, |t| this.fire(t))
                            .await;
                        if full {
                            continue;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "triggers: cannot take due triggers"),
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        });
        set
    }

    /// Decides a trigger come due; it is removed unless identity or scoring could not
    /// be asked (then its lease runs out and it is tried again).
    async fn fire(&self, t: Pending) {
        let caller = self.service_caller(&t.workspace);
        if t.kind == TriggerKind::Score {
            match self.crossed(&caller, &t).await {
                Ok(true) => {}
                Ok(false) => return self.done(&t).await,
                Err(e) => {
                    tracing::warn!(error = %e, campaign = %t.campaign, "triggers: cannot look at a score");
                    return;
                }
            }
        }
        let input = DecideInput {
            who: Who::Profile(t.profile),
            placement: format!("trigger: {}", t.cause),
            channels: Vec::new(),
            campaigns: vec![t.campaign.clone()],
            at: Utc::now(),
            occurrence: crate::follow::occurrence_of(&t.cause),
        };
        match self.decide(&caller, &input).await {
            Ok((decision, _)) => {
                metrics::counter!("corvus_orchestration_triggered_total",
                    "decided" => if decision.is_some() { "yes" } else { "no" })
                .increment(1);
                self.done(&t).await;
            }
            // Erased, or the campaign gone: nothing to decide.
            Err(OrchestrationError::NotFound(_) | OrchestrationError::Invalid { .. }) => self.done(&t).await,
            Err(e) => tracing::warn!(error = %e, campaign = %t.campaign, "triggers: cannot decide"),
        }
    }

    async fn done(&self, t: &Pending) {
        if let Err(e) = self.store.remove_trigger(t.id).await {
            tracing::warn!(error = %e, "triggers: cannot remove a decided trigger");
        }
    }

    /// Whether the person's score crossed the campaign's threshold upwards since last
    /// looked at (the first look only notes it).
    async fn crossed(&self, caller: &crate::people::Caller, t: &Pending) -> Result<bool, String> {
        let live = self.live(&t.workspace).await.map_err(|e| e.to_string())?;
        let Some(Trigger::Score { score, above }) = live
            .campaigns
            .iter()
            .find(|c| c.definition.name == t.campaign)
            .and_then(|c| c.definition.trigger.clone())
        else {
            return Ok(false);
        };
        let Some(person) = self.directory.person(caller, &Who::Profile(t.profile)).await? else {
            return Ok(false);
        };
        let Some(&now) = person.scores.get(&score) else {
            return Ok(false);
        };
        let before = self
            .store
            .swap_score(&t.workspace, &t.campaign, t.profile, now)
            .await
            .map_err(|e| e.to_string())?;
        Ok(before.is_some_and(|b| b <= above) && now > above)
    }
}
