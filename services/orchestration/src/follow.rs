//! Triggers that follow something other than a person's events: a scoring audience a
//! person enters (`audience_entered`), and the clock (`schedule`, in each person's
//! zone). What they find is queued as triggers (`triggers.rs` decides them) together
//! with a cursor moved in the same transaction, expected where it was read: so of the
//! replicas following the same audience or schedule, one queues each entry and each
//! occurrence.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{Datelike, FixedOffset, NaiveDate, Timelike, Utc};
use corvus_proto::WorkspaceId;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::campaign::Trigger;
use crate::domain::timing::LocalTime;
use crate::service::Orchestration;
use crate::storage::{Pending, Stored, TriggerKind};

/// How often the live campaigns are looked at for audiences to follow and schedules due.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Audience changes taken at a time.
const CHANGES_AT_ONCE: usize = 500;
/// The cause of a scheduled trigger: this, then the occurrence's local date.
const SCHEDULE: &str = "schedule ";

/// The occurrence a scheduled trigger was queued for, from its cause.
pub fn occurrence_of(cause: &str) -> Option<NaiveDate> {
    cause.strip_prefix(SCHEDULE)?.parse().ok()
}

/// The latest local date whose `at` has come somewhere on Earth (in UTC+14, the first
/// zone to reach it), as of `now`.
pub fn latest_occurrence(now: chrono::DateTime<Utc>, at: LocalTime) -> NaiveDate {
    let first = now.with_timezone(&FixedOffset::east_opt(14 * 3600).expect("a valid offset"));
    let date = first.date_naive();
    match first.hour() * 60 + first.minute() >= at.0 {
        true => date,
        false => date.pred_opt().expect("a date after the first"),
    }
}

fn days_since_epoch(date: NaiveDate) -> i64 {
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date")).num_days()
}

impl Orchestration {
    /// Until `stop`: every second, the audiences live campaigns enter on are followed
    /// (a task each, restarted when it ends), and the schedules come due are run.
    pub(crate) async fn follow(self, stop: CancellationToken) {
        let mut following: HashMap<(WorkspaceId, String), CancellationToken> = HashMap::new();
        loop {
            match self.store.live_workspaces().await {
                Ok(workspaces) => {
                    let mut wanted = HashSet::new();
                    for ws in workspaces {
                        let live = match self.live(&ws).await {
                            Ok(live) => live,
                            Err(e) => {
                                tracing::warn!(error = %e, "triggers: cannot read the live campaigns");
                                continue;
                            }
                        };
                        for campaign in &live.campaigns {
                            match &campaign.definition.trigger {
                                Some(Trigger::AudienceEntered(audience)) => {
                                    wanted.insert((ws.clone(), audience.clone()));
                                }
                                Some(Trigger::Schedule { .. }) => {
                                    if let Err(e) = self.run_schedule(&ws, campaign).await {
                                        tracing::warn!(error = %e, campaign = %campaign.definition.name,
                                            "triggers: cannot run a schedule");
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    following.retain(|key, done| {
                        let keep = wanted.contains(key) && !done.is_cancelled();
                        if !keep {
                            done.cancel();
                        }
                        keep
                    });
                    for key in wanted {
                        following.entry(key.clone()).or_insert_with(|| {
                            let done = stop.child_token();
                            tokio::spawn(self.clone().follow_audience(key.0, key.1, done.clone()));
                            done
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "triggers: cannot read the workspaces"),
            }
            if stop.run_until_cancelled(tokio::time::sleep(LOOK_EVERY)).await.is_none() {
                break;
            }
        }
        for done in following.values() {
            done.cancel();
        }
    }

    /// Queues, for each person entering `audience`, a trigger of each live campaign
    /// that waits for it; until `done`, or the stream of changes ends (then `done` is
    /// cancelled, and the next look starts it again from the cursor).
    async fn follow_audience(self, ws: WorkspaceId, audience: String, done: CancellationToken) {
        if let Err(e) = self.follow_changes(&ws, &audience, &done).await {
            tracing::warn!(error = %e, %audience, "triggers: following an audience stopped");
        }
        done.cancel();
    }

    async fn follow_changes(&self, ws: &WorkspaceId, audience: &str, done: &CancellationToken) -> Result<(), String> {
        let key = format!("audience:{audience}");
        let caller = self.service_caller(ws);
        let mut cursor = self.store.trigger_cursor(ws, &key).await.map_err(|e| e.to_string())?;
        // Without a cursor yet, entries from now on: those before the campaign was
        // followed did not happen while it was live.
        let after = cursor.map(|c| c as u64);
        let mut changes = self
            .directory
            .audience_changes(&caller, audience, after)
            .await?
            .ready_chunks(CHANGES_AT_ONCE);
        while let Some(Some(batch)) = done.run_until_cancelled(changes.next()).await {
            let live = self.live(ws).await.map_err(|e| e.to_string())?;
            let campaigns: Vec<&Stored> = live
                .campaigns
                .iter()
                .filter(|c| matches!(&c.definition.trigger, Some(Trigger::AudienceEntered(a)) if a == audience))
                .map(|c| &**c)
                .collect();
            let mut last = cursor;
            let mut queued = Vec::new();
            for change in batch {
                let change = change?;
                last = Some(change.sequence as i64);
                if !change.entered {
                    continue;
                }
                queued.extend(campaigns.iter().map(|c| Pending {
                    id: Uuid::now_v7(),
                    workspace: ws.clone(),
                    campaign: c.definition.name.clone(),
                    profile: change.profile,
                    kind: TriggerKind::Event,
                    due_at: Utc::now(),
                    unless: String::new(),
                    cause: format!("entered {audience}"),
                }));
            }
            let to = last.expect("a batch holds a change");
            let moved = self
                .store
                .advance_trigger_cursor(ws, &key, cursor, to, &queued)
                .await
                .map_err(|e| e.to_string())?;
            if !moved {
                // Another replica queued these: start again from where it got to.
                return Ok(());
            }
            cursor = Some(to);
        }
        Ok(())
    }

    /// Queues a trigger for each member of the scheduled campaign's audience when an
    /// occurrence (a local date) has come somewhere and was not run yet; each is decided
    /// to be sent at the schedule's time on that date in the person's own zone.
    async fn run_schedule(&self, ws: &WorkspaceId, campaign: &Stored) -> Result<(), String> {
        let def = &campaign.definition;
        let Some(Trigger::Schedule { days, at }) = &def.trigger else {
            return Ok(());
        };
        let date = latest_occurrence(Utc::now(), LocalTime::parse(at)?);
        if !days.is_empty() && !days.contains(&date.weekday().number_from_monday()) {
            return Ok(());
        }
        let key = format!("schedule:{}", def.name);
        let day = days_since_epoch(date);
        let cursor = self.store.trigger_cursor(ws, &key).await.map_err(|e| e.to_string())?;
        if cursor.is_some_and(|c| c >= day) {
            return Ok(());
        }
        let members = self
            .directory
            .members(&self.service_caller(ws), &def.audience)
            .await?
            .ok_or_else(|| format!("audience {:?} no longer exists", def.audience))?;
        let queued: Vec<Pending> = members
            .into_iter()
            .map(|profile| Pending {
                id: Uuid::now_v7(),
                workspace: ws.clone(),
                campaign: def.name.clone(),
                profile,
                kind: TriggerKind::Event,
                due_at: Utc::now(),
                unless: String::new(),
                cause: format!("{SCHEDULE}{date}"),
            })
            .collect();
        self.store
            .advance_trigger_cursor(ws, &key, cursor, day, &queued)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_occurrence_comes_first_in_the_first_zone() {
        let nine = LocalTime::parse("09:00").unwrap();
        // 18:59 UTC is 08:59 the next day in UTC+14: that day's 09:00 has come nowhere.
        let before: chrono::DateTime<Utc> = "2026-03-01T18:59:00Z".parse().unwrap();
        assert_eq!(latest_occurrence(before, nine), "2026-03-01".parse().unwrap());
        let after: chrono::DateTime<Utc> = "2026-03-01T19:00:00Z".parse().unwrap();
        assert_eq!(latest_occurrence(after, nine), "2026-03-02".parse().unwrap());
        assert_eq!(occurrence_of("schedule 2026-03-02"), "2026-03-02".parse().ok());
        assert_eq!(occurrence_of("entered vip"), None);
    }
}
