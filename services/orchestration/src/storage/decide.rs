//! Decisions recorded in batches: one transaction, one commit for every decision of a
//! batch. On Postgres each step is one statement for the whole batch (arrays unnested);
//! on SQLite, in this process, a statement a decision costs no round trip.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use corvus_log::store::NewEvent;
use sqlx::Row as _;
use uuid::Uuid;

use super::{
    DecideRequest, Ledger, PgOrchestrationStore, Recorded, SqliteOrchestrationStore, State, StorageError, Touch,
    Writes, micros, touch_of,
};

/// Every campaign's state and version, by workspace.
type States = HashMap<String, HashMap<String, (State, u32)>>;

fn states_of(rows: Vec<(String, String, String, i32)>) -> Result<States, StorageError> {
    let mut states = States::new();
    for (ws, name, state, version) in rows {
        states
            .entry(ws)
            .or_default()
            .insert(name, (State::parse(&state)?, version as u32));
    }
    Ok(states)
}

/// The plans of a batch, in order, against the ledgers read under the people's locks:
/// each decision's touch and spend are in the ledger of those after it.
fn plan_all(
    requests: &[DecideRequest],
    mut touches: HashMap<(String, Uuid), Vec<Touch>>,
    mut spent: HashMap<(String, String), u64>,
    states: &States,
) -> Vec<Recorded> {
    requests
        .iter()
        .map(|r| {
            let person = (r.ws.as_str().to_owned(), r.profile.as_uuid());
            let ledger = Ledger {
                touches: touches.get(&person).cloned().unwrap_or_default(),
                spent: r
                    .budgeted
                    .iter()
                    .map(|c| {
                        let key = (person.0.clone(), c.clone());
                        (c.clone(), spent.get(&key).copied().unwrap_or_default())
                    })
                    .collect(),
                states: states.get(r.ws.as_str()).cloned().unwrap_or_default(),
            };
            let writes = match (r.plan)(&ledger) {
                Ok(writes) => writes,
                Err(explanation) => return Recorded::Nothing(explanation),
            };
            if let Some(budget) = writes.spend {
                let spent = spent
                    .entry((person.0.clone(), writes.decision.campaign.clone()))
                    .or_default();
                if *spent >= budget {
                    return Recorded::BudgetSpent(writes.decision.campaign.clone());
                }
                *spent += 1;
            }
            if let Some(touch) = &writes.touch {
                touches.entry(person).or_default().push(touch.clone());
            }
            Recorded::Written(Box::new(writes))
        })
        .collect()
}

/// The log's entries of the written decisions, by workspace.
fn entries(requests: &[DecideRequest], recorded: &[Recorded]) -> BTreeMap<String, (usize, Vec<NewEvent>)> {
    let mut by_ws: BTreeMap<String, (usize, Vec<NewEvent>)> = BTreeMap::new();
    for (i, (r, rec)) in requests.iter().zip(recorded).enumerate() {
        if let Recorded::Written(w) = rec {
            by_ws
                .entry(r.ws.as_str().to_owned())
                .or_insert((i, Vec::new()))
                .1
                .push(crate::log::entry(&r.ws, &w.decision));
        }
    }
    by_ws
}

const DECISION_COLUMNS: &str = "decision_id, workspace_id, profile_id, campaign, campaign_version, arm, action, \
     channel, segment, send_at, decided_at, detail";

impl PgOrchestrationStore {
    pub(super) async fn decide_batch(&self, requests: &[DecideRequest]) -> Result<Vec<Recorded>, StorageError> {
        // Every read here is by key; without statistics (a young table) Postgres can
        // reckon a batch's people most of `touches` and read all of it.
        let mut tx = self
            .pool
            .begin_with("BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
            .await?;
        // The people's locks, in key order: a second decision for one of them, here or
        // on another replica, waits for this commit and then counts its touches.
        let mut people: BTreeMap<(&str, Uuid), (i64, i64)> = BTreeMap::new();
        for r in requests {
            let p = people
                .entry((r.ws.as_str(), r.profile.as_uuid()))
                .or_insert((0, i64::MAX));
            p.0 += 1;
            p.1 = p.1.min(micros(r.since));
        }
        let wss: Vec<&str> = people.keys().map(|k| k.0).collect();
        let ids: Vec<Uuid> = people.keys().map(|k| k.1).collect();
        let counts: Vec<i64> = people.values().map(|v| v.0).collect();
        let sinces: Vec<i64> = people.values().map(|v| v.1).collect();
        // With them, every campaign's state as of this statement: one paused before it
        // began is seen paused.
        let workspaces: Vec<&str> = wss.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
        let states = states_of(
            sqlx::query_as(
                "WITH locked AS (INSERT INTO people (workspace_id, profile_id, decisions) \
                   SELECT * FROM unnest($1::text[], $2::uuid[], $3::int8[]) \
                   ON CONFLICT (workspace_id, profile_id) DO UPDATE SET decisions = people.decisions + excluded.decisions) \
                 SELECT workspace_id, name, state, version FROM campaigns WHERE workspace_id = ANY($4)",
            )
            .bind(&wss)
            .bind(&ids)
            .bind(&counts)
            .bind(&workspaces)
            .fetch_all(&mut *tx)
            .await?,
        )?;
        // Each person's touches through their own range of the index (a lateral join
        // keeps the planner from scanning the workspace's).
        let rows = sqlx::query(
            "SELECT p.n, t.campaign, t.channel, t.at, t.local_day \
             FROM unnest($1::text[], $2::uuid[], $3::int8[]) WITH ORDINALITY AS p(ws, id, since, n) \
             CROSS JOIN LATERAL (SELECT campaign, channel, at, local_day FROM touches \
               WHERE workspace_id = p.ws AND profile_id = p.id AND at >= p.since) t",
        )
        .bind(&wss)
        .bind(&ids)
        .bind(&sinces)
        .fetch_all(&mut *tx)
        .await?;
        let keys: Vec<(String, Uuid)> = people.keys().map(|(w, id)| ((*w).to_owned(), *id)).collect();
        let mut touches: HashMap<(String, Uuid), Vec<Touch>> = HashMap::new();
        for row in rows {
            let n: i64 = row.try_get(0)?;
            let touch = touch_of((row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?));
            touches.entry(keys[n as usize - 1].clone()).or_default().push(touch);
        }
        // The budgets asked about, locked in key order: what they have spent is then
        // what this batch spends from.
        let budgets: BTreeSet<(&str, &str)> = requests
            .iter()
            .flat_map(|r| r.budgeted.iter().map(|c| (r.ws.as_str(), c.as_str())))
            .collect();
        let mut spent = HashMap::new();
        if !budgets.is_empty() {
            let (bws, bcs): (Vec<&str>, Vec<&str>) = budgets.iter().copied().unzip();
            sqlx::query(
                "INSERT INTO budgets (workspace_id, campaign, spent) \
                 SELECT w, c, 0 FROM unnest($1::text[], $2::text[]) AS b(w, c) ON CONFLICT DO NOTHING",
            )
            .bind(&bws)
            .bind(&bcs)
            .execute(&mut *tx)
            .await?;
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT workspace_id, campaign, spent FROM budgets \
                 WHERE (workspace_id, campaign) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
                 ORDER BY workspace_id, campaign FOR UPDATE",
            )
            .bind(&bws)
            .bind(&bcs)
            .fetch_all(&mut *tx)
            .await?;
            spent = rows.into_iter().map(|(w, c, s)| ((w, c), s as u64)).collect();
        }
        let recorded = plan_all(requests, touches, spent, &states);
        let mut spends: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for (r, w) in requests.iter().zip(&recorded) {
            if let Recorded::Written(w) = w
                && w.spend.is_some()
            {
                *spends.entry((r.ws.as_str(), w.decision.campaign.as_str())).or_default() += 1;
            }
        }
        if !spends.is_empty() {
            let (keys, ns): (Vec<_>, Vec<i64>) = spends.into_iter().unzip();
            let (bws, bcs): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
            sqlx::query(
                "UPDATE budgets SET spent = budgets.spent + b.n \
                 FROM unnest($1::text[], $2::text[], $3::int8[]) AS b(w, c, n) \
                 WHERE budgets.workspace_id = b.w AND budgets.campaign = b.c",
            )
            .bind(&bws)
            .bind(&bcs)
            .bind(&ns)
            .execute(&mut *tx)
            .await?;
        }
        Self::write_all(&mut tx, requests, &recorded).await?;
        for (_, (i, entries)) in entries(requests, &recorded) {
            Self::log_in(&mut tx, &requests[i].ws, &entries).await?;
        }
        tx.commit().await?;
        self.log.wake();
        self.decisions_statistics.wrote(&self.pool, requests.len());
        Ok(recorded)
    }

    /// The decisions, touches and sends of a batch, in one statement.
    async fn write_all(
        conn: &mut sqlx::PgConnection,
        requests: &[DecideRequest],
        recorded: &[Recorded],
    ) -> Result<(), StorageError> {
        let decisions: Vec<(&DecideRequest, &Writes)> = requests
            .iter()
            .zip(recorded)
            .filter_map(|(r, rec)| match rec {
                Recorded::Written(w) => Some((r, w.as_ref())),
                _ => None,
            })
            .collect();
        if decisions.is_empty() {
            return Ok(());
        }
        let column = |f: &dyn Fn(&DecideRequest, &Writes) -> String| -> Vec<String> {
            decisions.iter().map(|(r, w)| f(r, w)).collect()
        };
        let d_ids: Vec<Uuid> = decisions.iter().map(|(_, w)| w.decision.id).collect();
        let d_ws = column(&|r, _| r.ws.as_str().to_owned());
        let d_people: Vec<Uuid> = decisions.iter().map(|(_, w)| w.decision.profile.as_uuid()).collect();
        let d_campaigns = column(&|_, w| w.decision.campaign.clone());
        let d_versions: Vec<i32> = decisions
            .iter()
            .map(|(_, w)| w.decision.campaign_version as i32)
            .collect();
        let d_arms = column(&|_, w| w.decision.arm.clone());
        let d_actions = column(&|_, w| w.decision.action.clone());
        let d_channels = column(&|_, w| w.decision.channel.clone());
        let d_segments = column(&|_, w| w.decision.segment.clone());
        let d_send_at: Vec<i64> = decisions.iter().map(|(_, w)| micros(w.decision.send_at)).collect();
        let d_decided_at: Vec<i64> = decisions.iter().map(|(_, w)| micros(w.decision.decided_at)).collect();
        let d_details = column(&|_, w| serde_json::to_string(&w.decision).expect("a decision serialises"));
        let touched: Vec<(&DecideRequest, &Writes, &Touch)> = decisions
            .iter()
            .filter_map(|(r, w)| Some((*r, *w, w.touch.as_ref()?)))
            .collect();
        let sent: Vec<(&DecideRequest, &Writes, &super::Outbound)> = decisions
            .iter()
            .filter_map(|(r, w)| Some((*r, *w, w.send.as_ref()?)))
            .collect();
        sqlx::query(&format!(
            "WITH d AS (INSERT INTO decisions ({DECISION_COLUMNS}) SELECT * FROM unnest($1::uuid[], $2::text[], \
               $3::uuid[], $4::text[], $5::int4[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[], \
               $11::int8[], $12::text[])), \
             t AS (INSERT INTO touches (workspace_id, profile_id, campaign, channel, at, local_day, decision_id) \
               SELECT * FROM unnest($13::text[], $14::uuid[], $15::text[], $16::text[], $17::int8[], $18::int4[], \
               $19::uuid[])) \
             INSERT INTO sends (decision_id, workspace_id, profile_id, campaign, channel, state, send_at, \
               next_attempt_at, recipient, payload) \
             SELECT s.id, s.w, s.p, s.c, s.ch, 'pending', s.at, s.at, s.r, s.pl FROM unnest($20::uuid[], \
               $21::text[], $22::uuid[], $23::text[], $24::text[], $25::int8[], $26::text[], $27::text[]) \
               AS s(id, w, p, c, ch, at, r, pl)"
        ))
        .bind(&d_ids)
        .bind(&d_ws)
        .bind(&d_people)
        .bind(&d_campaigns)
        .bind(&d_versions)
        .bind(&d_arms)
        .bind(&d_actions)
        .bind(&d_channels)
        .bind(&d_segments)
        .bind(&d_send_at)
        .bind(&d_decided_at)
        .bind(&d_details)
        .bind(touched.iter().map(|(r, _, _)| r.ws.as_str()).collect::<Vec<_>>())
        .bind(touched.iter().map(|(r, _, _)| r.profile.as_uuid()).collect::<Vec<_>>())
        .bind(touched.iter().map(|(_, _, t)| t.campaign.as_str()).collect::<Vec<_>>())
        .bind(touched.iter().map(|(_, _, t)| t.channel.as_str()).collect::<Vec<_>>())
        .bind(touched.iter().map(|(_, _, t)| micros(t.at)).collect::<Vec<_>>())
        .bind(touched.iter().map(|(_, _, t)| t.local_day).collect::<Vec<_>>())
        .bind(touched.iter().map(|(_, w, _)| w.decision.id).collect::<Vec<_>>())
        .bind(sent.iter().map(|(_, w, _)| w.decision.id).collect::<Vec<_>>())
        .bind(sent.iter().map(|(r, _, _)| r.ws.as_str()).collect::<Vec<_>>())
        .bind(sent.iter().map(|(r, _, _)| r.profile.as_uuid()).collect::<Vec<_>>())
        .bind(
            sent.iter()
                .map(|(_, w, _)| w.decision.campaign.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            sent.iter()
                .map(|(_, w, _)| w.decision.channel.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            sent.iter()
                .map(|(_, w, _)| micros(w.decision.send_at))
                .collect::<Vec<_>>(),
        )
        .bind(sent.iter().map(|(_, _, s)| s.recipient.as_str()).collect::<Vec<_>>())
        .bind(sent.iter().map(|(_, _, s)| s.payload.as_str()).collect::<Vec<_>>())
        .execute(conn)
        .await?;
        Ok(())
    }
}

impl SqliteOrchestrationStore {
    pub(super) async fn decide_batch(&self, requests: &[DecideRequest]) -> Result<Vec<Recorded>, StorageError> {
        // BEGIN IMMEDIATE holds the file's write lock from the start: every person's
        // ledger read here is as it stands until the commit.
        let (_guard, mut tx) = self.begin().await?;
        let mut touches = HashMap::new();
        let mut spent = HashMap::new();
        let mut workspaces = BTreeSet::new();
        for r in requests {
            workspaces.insert(r.ws.as_str());
            let person = (r.ws.as_str().to_owned(), r.profile.as_uuid());
            if let std::collections::hash_map::Entry::Vacant(vacant) = touches.entry(person) {
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
        let recorded = plan_all(requests, touches, spent, &states_of(rows)?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Decision, Explanation};
    use chrono::Utc;
    use corvus_proto::ProfileId;

    fn request(profile: ProfileId, budgeted: &[&str]) -> DecideRequest {
        DecideRequest {
            ws: "acme".parse().unwrap(),
            profile,
            since: Utc::now(),
            budgeted: budgeted.iter().map(|c| (*c).to_owned()).collect(),
            // Sends once while the person has no touch and the budget is not spent.
            plan: Box::new(move |ledger: &Ledger| {
                if !ledger.touches.is_empty() || ledger.spent.get("c").copied().unwrap_or_default() >= 1 {
                    return Err(Explanation::default());
                }
                let decision = Decision {
                    id: Uuid::now_v7(),
                    profile,
                    campaign: "c".to_owned(),
                    campaign_version: 1,
                    arm: "a".to_owned(),
                    action: "x".to_owned(),
                    products: Vec::new(),
                    subject: String::new(),
                    body: String::new(),
                    channel: "email".to_owned(),
                    send_at: Utc::now(),
                    policy: "only".to_owned(),
                    propensity: 1.0,
                    propensity_draws: 0,
                    placement: String::new(),
                    decided_at: Utc::now(),
                    segment: String::new(),
                    arm_share: 1.0,
                    explanation: Explanation::default(),
                    outcome: None,
                };
                Ok(Writes {
                    touch: Some(Touch {
                        campaign: "c".to_owned(),
                        channel: "email".to_owned(),
                        at: Utc::now(),
                        local_day: 0,
                    }),
                    spend: Some(1).filter(|_| !ledger.spent.is_empty()),
                    send: None,
                    decision,
                })
            }),
        }
    }

    #[test]
    fn later_decisions_of_a_batch_see_the_earlier_ones_touches_and_spend() {
        let (a, b) = (ProfileId::new(), ProfileId::new());
        // a twice: the second finds the first's touch. b with a budget of 1, twice: the
        // second finds it spent; then c, also budgeted, finds it spent too.
        let c = ProfileId::new();
        let requests = [request(a, &[]), request(a, &[]), request(b, &["c"]), request(c, &["c"])];
        let recorded = plan_all(&requests, HashMap::new(), HashMap::new(), &States::new());
        let kinds: Vec<&str> = recorded
            .iter()
            .map(|r| match r {
                Recorded::Written(_) => "written",
                Recorded::Nothing(_) => "nothing",
                Recorded::BudgetSpent(_) => "spent",
            })
            .collect();
        assert_eq!(kinds, ["written", "nothing", "written", "nothing"]);
    }
}
