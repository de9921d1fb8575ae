//! Identity's log, read for what the policy learns from: a goal event attributed to
//! the decision it carries the id of (`properties.decision_id`), or else to the
//! person's latest decision of a campaign with that goal within its window; and the
//! merges and erasures that change whose decisions are whose.

use chrono::{DateTime, Duration, Utc};
use corvus_log::outbox::Failure;
use corvus_proto::common::v1::{EventType, StoredEvent};
use corvus_proto::identity::v1::{ErasureAnswer, LogEntry, log_entry, profile_change};
use corvus_proto::{ProfileId, WorkspaceId};
use corvus_storage::StorageError;

use std::collections::HashMap;
use std::sync::Arc;

use crate::alerts::AlertPass;
use crate::service::{CONSUMER_NAME, Live, Orchestration};

impl Orchestration {
    /// Applies a delivery of identity's log in order.
    pub async fn deliver(&self, entries: &[LogEntry]) -> Result<(Vec<Failure>, Vec<ErasureAnswer>), StorageError> {
        let mut failures = Vec::new();
        let mut answers = Vec::new();
        let mut campaigns = std::collections::HashMap::new();
        let mut alerts = AlertPass::default();
        // Runs of events up to a profile change (or the end): the run's alerts are raised
        // first, so that none waits for the outcomes' and triggers' writes.
        let changes = |e: &LogEntry| matches!(e.entry, Some(log_entry::Entry::Change(_)));
        for run in entries.split_inclusive(changes) {
            for entry in run {
                if let Some(log_entry::Entry::Event(stored)) = &entry.entry {
                    self.alerts_on_event(&mut alerts, stored).await?;
                }
            }
            self.raise_alerts(&mut alerts).await?;
            self.settle_run(run, &mut alerts, &mut campaigns, &mut failures, &mut answers)
                .await?;
        }
        self.raise_alerts(&mut alerts).await?;
        Ok((failures, answers))
    }

    /// A run's outcomes and triggers, then the profile change that ends it.
    async fn settle_run(
        &self,
        run: &[LogEntry],
        alerts: &mut AlertPass,
        campaigns: &mut HashMap<WorkspaceId, Arc<Live>>,
        failures: &mut Vec<Failure>,
        answers: &mut Vec<ErasureAnswer>,
    ) -> Result<(), StorageError> {
        for entry in run {
            match &entry.entry {
                Some(log_entry::Entry::Event(stored)) => {
                    if let Err(reason) = self.outcome_of(stored, campaigns).await? {
                        failures.push(Failure {
                            event_id: stored.event_id.clone(),
                            reason,
                        });
                    }
                }
                Some(log_entry::Entry::Change(change)) => {
                    let Ok(ws) = change.workspace_id.parse::<WorkspaceId>() else {
                        failures.push(Failure {
                            event_id: change.change_id.clone(),
                            reason: format!("workspace_id: {:?} is not a workspace", change.workspace_id),
                        });
                        continue;
                    };
                    let ids = |ids: &[String]| ids.iter().filter_map(|id| id.parse().ok()).collect::<Vec<ProfileId>>();
                    match &change.change {
                        Some(profile_change::Change::Merged(m)) => {
                            if let Ok(survivor) = m.survivor_id.parse() {
                                self.store.merge(&ws, survivor, &ids(&m.merged_ids)).await?;
                                self.alerts_on_merge(alerts, &ws, survivor, &ids(&m.merged_ids), &change.change_id)
                                    .await?;
                            }
                        }
                        Some(profile_change::Change::Erased(e)) => {
                            let removed = self.store.erase(&ws, &ids(&e.profile_ids)).await?;
                            let alerts_removed = self.alerts_on_erasure(alerts, &ws, &ids(&e.profile_ids)).await?;
                            answers.push(ErasureAnswer {
                                change_id: change.change_id.clone(),
                                removed: [
                                    ("decisions_and_sends".to_owned(), removed),
                                    ("alerts".to_owned(), alerts_removed),
                                ]
                                .into(),
                                store: CONSUMER_NAME.to_owned(),
                            });
                        }
                        // Decisions stay with the survivor: they are not events, and an
                        // unmerge splits events.
                        Some(profile_change::Change::Unmerged(_)) | None => {}
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Records the outcome an event is, if it is one. `Err` for an event that cannot be
    /// read.
    async fn outcome_of(
        &self,
        stored: &StoredEvent,
        campaigns: &mut HashMap<WorkspaceId, Arc<Live>>,
    ) -> Result<Result<(), String>, StorageError> {
        let Some(event) = &stored.event else {
            return Ok(Err("event: missing".to_owned()));
        };
        if EventType::try_from(event.r#type) != Ok(EventType::Track) {
            return Ok(Ok(()));
        }
        let (Ok(ws), Ok(profile)) = (
            stored.workspace_id.parse::<WorkspaceId>(),
            stored.profile_id.parse::<ProfileId>(),
        ) else {
            return Ok(Err("workspace_id or profile_id: not an id".to_owned()));
        };
        // The workspace's campaigns, read once a delivery.
        let live = match campaigns.get(&ws) {
            Some(live) => live.clone(),
            None => {
                let live = self.live(&ws).await?;
                campaigns.insert(ws.clone(), live.clone());
                live
            }
        };
        self.triggers_on(stored, &live).await?;
        // Only a goal of some campaign can be an outcome.
        let goals: Vec<_> = live
            .all
            .iter()
            .filter(|c| c.definition.goal.events.contains(&event.event))
            .collect();
        if goals.is_empty() {
            return Ok(Ok(()));
        }
        let at = event
            .timestamp
            .as_ref()
            .or(event.received_at.as_ref())
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
            .unwrap_or_else(Utc::now);
        let carried = match &event.properties {
            Some(p) => match p.to_json() {
                Ok(props) => props
                    .get("decision_id")
                    .and_then(|v| v.as_str())
                    .and_then(|id| id.parse::<uuid::Uuid>().ok()),
                Err(e) => return Ok(Err(format!("properties: {e}"))),
            },
            None => None,
        };
        let named = match carried {
            Some(id) => self.store.decision(&ws, id).await?,
            None => None,
        };
        if let Some(decision) = named.filter(|d| goals.iter().any(|c| c.definition.name == d.campaign)) {
            self.store.record_outcome(&ws, &decision, &event.event, at).await?;
            return Ok(Ok(()));
        }
        let longest = goals
            .iter()
            .map(|c| c.definition.goal.window_seconds)
            .max()
            .unwrap_or(0);
        let open = self
            .store
            .open_decisions(&ws, profile, at - Duration::seconds(longest as i64) - Duration::days(7))
            .await?;
        let attributed = open.into_iter().find(|d| {
            goals.iter().any(|c| {
                c.definition.name == d.campaign
                    && d.send_at <= at
                    && at - d.send_at <= Duration::seconds(c.definition.goal.window_seconds as i64)
            })
        });
        if let Some(decision) = attributed {
            self.store.record_outcome(&ws, &decision, &event.event, at).await?;
        }
        Ok(Ok(()))
    }
}
