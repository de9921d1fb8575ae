//! Decisions on SQLite: a batch under the file's write lock, a statement a decision (in
//! process, no round trip).

use std::collections::{BTreeSet, HashMap, HashSet};

use super::super::{DecideRequest, Recorded, SqliteOrchestrationStore, StorageError, micros, touch_of};
use super::{DECISION_COLUMNS, entries, plan_all, states_of};

impl SqliteOrchestrationStore {
    pub(in crate::storage) async fn decide_batch(
        &self,
        requests: &[DecideRequest],
    ) -> Result<Vec<Recorded>, StorageError> {
        let requests: &[&DecideRequest] = &requests.iter().collect::<Vec<_>>();
        // BEGIN IMMEDIATE holds the file's write lock from the start: every person's
        // ledger read here is as it stands until the commit.
        let (_guard, mut tx) = self.begin().await?;
        let mut touches = HashMap::new();
        let mut erased = HashSet::new();
        let mut spent = HashMap::new();
        let mut workspaces = BTreeSet::new();
        for r in requests {
            workspaces.insert(r.ws.as_str());
            let person = (r.ws.as_str().to_owned(), r.profile.as_uuid());
            if let std::collections::hash_map::Entry::Vacant(vacant) = touches.entry(person.clone()) {
                let mark: Option<(bool,)> =
                    sqlx::query_as("SELECT erased FROM people WHERE workspace_id = $1 AND profile_id = $2")
                        .bind(r.ws.as_str())
                        .bind(r.profile.as_uuid())
                        .fetch_optional(&mut *tx)
                        .await?;
                if mark.is_some_and(|m| m.0) {
                    erased.insert(person);
                }
                let since = requests
                    .iter()
                    .filter(|o| o.ws == r.ws && o.profile == r.profile)
                    .map(|o| micros(o.since))
                    .min()
                    .unwrap_or(i64::MAX);
                let rows: Vec<(String, String, i64, i32)> = sqlx::query_as(
                    "SELECT campaign, channel, at, local_day FROM touches \
                     WHERE workspace_id = $1 AND profile_id = $2 AND at >= $3",
                )
                .bind(r.ws.as_str())
                .bind(r.profile.as_uuid())
                .bind(since)
                .fetch_all(&mut *tx)
                .await?;
                vacant.insert(rows.into_iter().map(touch_of).collect::<Vec<_>>());
            }
            for campaign in &r.budgeted {
                let row: Option<(i64,)> =
                    sqlx::query_as("SELECT spent FROM budgets WHERE workspace_id = $1 AND campaign = $2")
                        .bind(r.ws.as_str())
                        .bind(campaign)
                        .fetch_optional(&mut *tx)
                        .await?;
                spent.insert(
                    (r.ws.as_str().to_owned(), campaign.clone()),
                    row.map_or(0, |s| s.0 as u64),
                );
            }
        }
        let mut rows = Vec::new();
        for ws in workspaces {
            let of_ws: Vec<(String, String, String, i32)> =
                sqlx::query_as("SELECT workspace_id, name, state, version FROM campaigns WHERE workspace_id = $1")
                    .bind(ws)
                    .fetch_all(&mut *tx)
                    .await?;
            rows.extend(of_ws);
        }
        let recorded = plan_all(requests, touches, spent, &states_of(rows)?, &erased);
        for r in requests {
            sqlx::query(
                "INSERT INTO people (workspace_id, profile_id, decisions) VALUES ($1, $2, 1) \
                 ON CONFLICT (workspace_id, profile_id) DO UPDATE SET decisions = people.decisions + 1",
            )
            .bind(r.ws.as_str())
            .bind(r.profile.as_uuid())
            .execute(&mut *tx)
            .await?;
        }
        for (r, w) in requests.iter().zip(&recorded) {
            let Recorded::Written(w) = w else { continue };
            let d = &w.decision;
            if w.spend.is_some() {
                sqlx::query(
                    "INSERT INTO budgets (workspace_id, campaign, spent) VALUES ($1, $2, 1) \
                     ON CONFLICT (workspace_id, campaign) DO UPDATE SET spent = budgets.spent + 1",
                )
                .bind(r.ws.as_str())
                .bind(&d.campaign)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(&format!(
                "INSERT INTO decisions ({DECISION_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ))
            .bind(d.id)
            .bind(r.ws.as_str())
            .bind(d.profile.as_uuid())
            .bind(&d.campaign)
            .bind(d.campaign_version as i32)
            .bind(&d.arm)
            .bind(&d.action)
            .bind(&d.channel)
            .bind(&d.segment)
            .bind(micros(d.send_at))
            .bind(micros(d.decided_at))
            .bind(serde_json::to_string(d).expect("a decision serialises"))
            .execute(&mut *tx)
            .await?;
            if let Some(touch) = &w.touch {
                sqlx::query(
                    "INSERT INTO touches (workspace_id, profile_id, campaign, channel, at, local_day, decision_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(r.ws.as_str())
                .bind(r.profile.as_uuid())
                .bind(&touch.campaign)
                .bind(&touch.channel)
                .bind(micros(touch.at))
                .bind(touch.local_day)
                .bind(d.id)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(send) = &w.send {
                sqlx::query(
                    "INSERT INTO sends (decision_id, workspace_id, profile_id, campaign, channel, state, \
                     send_at, next_attempt_at, recipient, payload) \
                     VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6, $7, $8)",
                )
                .bind(d.id)
                .bind(r.ws.as_str())
                .bind(r.profile.as_uuid())
                .bind(&d.campaign)
                .bind(&d.channel)
                .bind(micros(d.send_at))
                .bind(&send.recipient)
                .bind(&send.payload)
                .execute(&mut *tx)
                .await?;
            }
        }
        for (_, (i, entries)) in entries(requests, &recorded) {
            Self::log_in(&mut tx, &requests[i].ws, &entries).await?;
        }
        tx.commit().await?;
        self.log.wake();
        Ok(recorded)
    }
}
