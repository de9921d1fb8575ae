//! Decisions recorded in batches. On Postgres, each person's first decision of a batch
//! that spends no budget is planned from their ledger read without a lock and written by
//! one statement that writes it only if no decision, merge or pause came between (the
//! person's count of decisions and the campaign's state and version unchanged); the
//! others, and any such write that finds a change, are decided in one transaction under
//! the people's locks, each step one statement for the whole batch (arrays unnested). On
//! SQLite, in this process, a transaction holds the file's write lock and a statement a
//! decision costs no round trip.
//!
//! The planning and the log's entries are shared here; each store's reads and writes
//! are in `postgres.rs` and `sqlite.rs`.

mod postgres;
mod sqlite;

use std::collections::{BTreeMap, HashMap, HashSet};

use corvus_log::store::NewEvent;
use uuid::Uuid;

use super::{DecideRequest, Ledger, Recorded, State, StorageError, Touch};

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
/// each decision's touch and spend are in the ledger of those after it. The people
/// `erased` meanwhile get none.
fn plan_all(
    requests: &[&DecideRequest],
    mut touches: HashMap<(String, Uuid), Vec<Touch>>,
    mut spent: HashMap<(String, String), u64>,
    states: &States,
    erased: &HashSet<(String, Uuid)>,
) -> Vec<Recorded> {
    requests
        .iter()
        .map(|r| {
            let person = (r.ws.as_str().to_owned(), r.profile.as_uuid());
            if erased.contains(&person) {
                return Recorded::Erased;
            }
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
fn entries(requests: &[&DecideRequest], recorded: &[Recorded]) -> BTreeMap<String, (usize, Vec<NewEvent>)> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::storage::{Decision, Explanation, Writes};
    use chrono::Utc;
    use corvus_proto::ProfileId;

    pub(crate) fn request(profile: ProfileId, budgeted: &[&str]) -> DecideRequest {
        DecideRequest {
            ws: "acme".parse().unwrap(),
            profile,
            since: Utc::now(),
            budgeted: budgeted.iter().map(|c| (*c).to_owned()).collect(),
            assumed: vec![("c".to_owned(), 1)],
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
        // a twice: the second finds the first's touch. e, erased, gets nothing and
        // spends nothing; b, with a budget of 1, spends it; c, also budgeted, is planned
        // with it spent (and chooses nothing).
        let (c, e) = (ProfileId::new(), ProfileId::new());
        let requests = [
            request(a, &[]),
            request(a, &[]),
            request(e, &["c"]),
            request(b, &["c"]),
            request(c, &["c"]),
        ];
        let erased = HashSet::from([("acme".to_owned(), e.as_uuid())]);
        let recorded = plan_all(
            &requests.each_ref(),
            HashMap::new(),
            HashMap::new(),
            &States::new(),
            &erased,
        );
        let kinds: Vec<&str> = recorded
            .iter()
            .map(|r| match r {
                Recorded::Written(_) => "written",
                Recorded::Nothing(_) => "nothing",
                Recorded::BudgetSpent(_) => "spent",
                Recorded::Erased => "erased",
            })
            .collect();
        assert_eq!(kinds, ["written", "nothing", "erased", "written", "nothing"]);
    }
}
