//! Identity's log, read for what the policy learns from: a goal event attributed to
//! the decision it carries the id of (`properties.decision_id`), or else to the
//! person's latest decision of a campaign with that goal within its window; and the
//! merges and erasures that change whose decisions are whose.

use chrono::{DateTime, Duration, Utc};
use corvus_log::outbox::Failure;
use corvus_proto::common::v1::{EventType, StoredEvent};
use corvus_proto::identity::v1::{ErasureAnswer, LogEntry, ProfileChange, log_entry, profile_change};
use corvus_proto::{ProfileId, WorkspaceId};
use corvus_storage::StorageError;

use std::collections::HashMap;
use std::sync::Arc;

use crate::alerts::AlertPass;
use crate::service::{CONSUMER_NAME, Live, Orchestration};
use crate::storage::{Decision, Merge};

/// A goal event of some campaigns, to attribute.
struct Goal {
    ws: WorkspaceId,
    profile: ProfileId,
    event: String,
    at: DateTime<Utc>,
    /// Each campaign it is a goal of, with its attribution window.
    windows: Vec<(String, Duration)>,
}

/// What a delivery of identity's log gathers as it goes.
#[derive(Default)]
struct Pass {
    alerts: AlertPass,
    /// Merges not yet written: written together, before anything that reads whose
    /// decisions, touches, triggers or alerts are whose (goals attributed, an event of a
    /// workspace with triggered campaigns, alerts raised, an erasure), and at the end.
    merges: Vec<Merge>,
    /// Goal events not yet attributed: attributed together, after the merges before
    /// them, before an erasure and at the end.
    goals: Vec<Goal>,
    /// The workspaces' campaigns, read once a delivery.
    campaigns: HashMap<WorkspaceId, Arc<Live>>,
    failures: Vec<Failure>,
    answers: Vec<ErasureAnswer>,
}

impl Orchestration {
    /// Applies a delivery of identity's log in order. Its alerts are raised together at
    /// its end (before an erasure too), first: none waits for the outcomes' writes.
    pub async fn deliver(&self, entries: &[LogEntry]) -> Result<(Vec<Failure>, Vec<ErasureAnswer>), StorageError> {
        let mut pass = Pass::default();
        for entry in entries {
            match &entry.entry {
                Some(log_entry::Entry::Event(stored)) => {
                    self.alerts_on_event(&mut pass.alerts, stored).await?;
                    if let Err(reason) = self.outcome_of(stored, &mut pass).await? {
                        pass.failures.push(Failure {
                            event_id: stored.event_id.clone(),
                            reason,
                        });
                    }
                }
                Some(log_entry::Entry::Change(change)) => self.settle_change(change, &mut pass).await?,
                None => {}
            }
        }
        self.raise(&mut pass).await?;
        self.attribute(&mut pass).await?;
        self.write_merges(&mut pass).await?;
        Ok((pass.failures, pass.answers))
    }

    /// The goals gathered, each the outcome of the person's latest open decision of a
    /// campaign with that goal whose send it followed within the window: the people's
    /// open decisions read in one statement a workspace (after the merges gathered, so
    /// that a survivor's goal finds the decisions of those merged into it), then
    /// attributed in order, a decision to one goal at most.
    async fn attribute(&self, pass: &mut Pass) -> Result<(), StorageError> {
        if pass.goals.is_empty() {
            return Ok(());
        }
        self.write_merges(pass).await?;
        let goals = std::mem::take(&mut pass.goals);
        let mut asked: HashMap<&WorkspaceId, (Vec<ProfileId>, DateTime<Utc>)> = HashMap::new();
        for g in &goals {
            let longest = g.windows.iter().map(|(_, w)| *w).max().unwrap_or_default();
            // A send goes out at most a week after its decision.
            let since = g.at - longest - Duration::days(7);
            let (profiles, earliest) = asked.entry(&g.ws).or_insert((Vec::new(), since));
            profiles.push(g.profile);
            *earliest = (*earliest).min(since);
        }
        let mut open: HashMap<(&WorkspaceId, ProfileId), Vec<Decision>> = HashMap::new();
        for (ws, (mut profiles, since)) in asked {
            profiles.sort_unstable();
            profiles.dedup();
            for (profile, decisions) in self.store.open_decisions(ws, &profiles, since).await? {
                open.insert((ws, profile), decisions);
            }
        }
        for g in &goals {
            let Some(decisions) = open.get_mut(&(&g.ws, g.profile)) else {
                continue;
            };
            let follows = |d: &Decision| {
                g.windows.iter().any(|(campaign, window)| {
                    *campaign == d.campaign && d.send_at <= g.at && g.at - d.send_at <= *window
                })
            };
            if let Some(i) = decisions.iter().position(follows) {
                let decision = decisions.remove(i);
                self.store.record_outcome(&g.ws, &decision, &g.event, g.at).await?;
            }
        }
        Ok(())
    }

    /// Raises the alerts gathered, each about the survivor of the merges gathered, after
    /// those merges (which move cooldowns) are written.
    async fn raise(&self, pass: &mut Pass) -> Result<(), StorageError> {
        if pass.alerts.is_empty() {
            return Ok(());
        }
        pass.alerts.follow(&pass.merges);
        self.write_merges(pass).await?;
        self.raise_alerts(&mut pass.alerts).await
    }

    /// The merges gathered, in order, in one transaction however many there are.
    async fn write_merges(&self, pass: &mut Pass) -> Result<(), StorageError> {
        if pass.merges.is_empty() {
            return Ok(());
        }
        let merges = std::mem::take(&mut pass.merges);
        self.store.merge(&merges).await
    }

    /// A profile change: a merge gathered, an erasure applied after all that came
    /// before it.
    async fn settle_change(&self, change: &ProfileChange, pass: &mut Pass) -> Result<(), StorageError> {
        let Ok(ws) = change.workspace_id.parse::<WorkspaceId>() else {
            pass.failures.push(Failure {
                event_id: change.change_id.clone(),
                reason: format!("workspace_id: {:?} is not a workspace", change.workspace_id),
            });
            return Ok(());
        };
        let ids = |ids: &[String]| ids.iter().filter_map(|id| id.parse().ok()).collect::<Vec<ProfileId>>();
        match &change.change {
            Some(profile_change::Change::Merged(m)) => {
                if let Ok(survivor) = m.survivor_id.parse() {
                    pass.merges.push(Merge {
                        ws: ws.clone(),
                        survivor,
                        merged: ids(&m.merged_ids),
                    });
                    self.alerts_on_merge(&mut pass.alerts, &ws, survivor, &change.change_id)
                        .await?;
                }
            }
            Some(profile_change::Change::Erased(e)) => {
                self.raise(pass).await?;
                self.attribute(pass).await?;
                self.write_merges(pass).await?;
                let removed = self.store.erase(&ws, &ids(&e.profile_ids)).await?;
                let alerts_removed = self
                    .alerts_on_erasure(&mut pass.alerts, &ws, &ids(&e.profile_ids))
                    .await?;
                pass.answers.push(ErasureAnswer {
                    change_id: change.change_id.clone(),
                    removed: [
                        ("decisions_and_sends".to_owned(), removed),
                        ("alerts".to_owned(), alerts_removed),
                    ]
                    .into(),
                    store: CONSUMER_NAME.to_owned(),
                });
            }
            // Decisions stay with the survivor: they are not events, and an unmerge
            // splits events.
            Some(profile_change::Change::Unmerged(_)) | None => {}
        }
        Ok(())
    }

    /// Records the outcome an event is, if it is one. `Err` for an event that cannot be
    /// read.
    async fn outcome_of(&self, stored: &StoredEvent, pass: &mut Pass) -> Result<Result<(), String>, StorageError> {
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
        let live = match pass.campaigns.get(&ws) {
            Some(live) => live.clone(),
            None => {
                let live = self.live(&ws).await?;
                pass.campaigns.insert(ws.clone(), live.clone());
                live
            }
        };
        // Only a goal of some campaign can be an outcome.
        let goals: Vec<_> = live
            .all
            .iter()
            .filter(|c| c.definition.goal.events.contains(&event.event))
            .collect();
        if live.campaigns.iter().any(|c| c.definition.trigger.is_some()) {
            // Triggers wait for the survivor of a merge: the merges before go first.
            self.write_merges(pass).await?;
            self.triggers_on(stored, &live).await?;
        }
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
        pass.goals.push(Goal {
            ws,
            profile,
            event: event.event.clone(),
            at,
            windows: goals
                .iter()
                .map(|c| {
                    let window = Duration::seconds(c.definition.goal.window_seconds as i64);
                    (c.definition.name.clone(), window)
                })
                .collect(),
        });
        Ok(Ok(()))
    }
}
