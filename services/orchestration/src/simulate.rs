//! SimulateCampaign: Decide, run for every person a campaign targets (its audience's
//! members, its segment's, or everyone) as things stand, with the campaign as if it
//! were live, sending and logging nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use corvus_proto::ProfileId;
use futures::StreamExt as _;
use uuid::Uuid;

use corvus_proto::measurement::v1::{ActionProbability, EstimatePolicyValueRequest, EstimatePolicyValueResponse};

use crate::decide::{DecideInput, Evidence, Open, Planning, earliest_counted};
use crate::people::{Caller, Who};
use crate::service::{Orchestration, OrchestrationError};
use crate::storage::{Explanation, Ledger, Reason, State, Stored};

/// People simulated at once.
const AT_ONCE: usize = 16;

/// What a simulation found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Simulation {
    pub audience: u64,
    pub unknown: u64,
    pub would_send: u64,
    /// (action, channel) → people.
    pub sends: BTreeMap<(String, String), u64>,
    /// (segment, action) → people: the campaign's policy as the simulation ran it, for
    /// an off-policy estimate over its log.
    pub by_segment: BTreeMap<(String, String), u64>,
    /// Hours from the time decided for until the send → people.
    pub hours: BTreeMap<u32, u64>,
    pub blocked: BTreeMap<Reason, u64>,
    pub expected_conversions: f64,
    pub from_propensity: u64,
    pub from_policy: u64,
}

/// One person's answer.
enum Outcome {
    /// Not in the segment the campaign targets.
    Outside,
    Unknown,
    Sends {
        action: String,
        channel: String,
        segment: String,
        send_at: DateTime<Utc>,
        /// The conversion to expect, and whether scoring's propensity gave it.
        expected: (f64, bool),
    },
    Blocked(Reason),
}

impl Orchestration {
    pub async fn simulate(
        &self,
        caller: &Caller,
        name: &str,
        version: Option<u32>,
        at: DateTime<Utc>,
    ) -> Result<Simulation, OrchestrationError> {
        let ws = &caller.principal.workspace;
        let stored = self
            .store
            .campaign(ws, name, version)
            .await?
            .ok_or_else(|| OrchestrationError::NotFound(format!("no campaign {name:?} at that version")))?;
        let def = &stored.definition;
        // An audience's members; for a segment, or everyone, every person of the
        // workspace (those outside the segment are left out as they come).
        let members = match def.audience.is_empty() {
            true => self
                .directory
                .population(caller)
                .await
                .map_err(OrchestrationError::Unavailable)?,
            false => self
                .directory
                .members(caller, &def.audience)
                .await
                .map_err(OrchestrationError::Unavailable)?
                .ok_or_else(|| {
                    OrchestrationError::Precondition(format!("audience {:?} no longer exists", def.audience))
                })?,
        };
        let live = self.live(ws).await?;
        // The campaign as if live, beside the live others.
        let simulated = Arc::new(Stored {
            state: State::Live,
            ..stored.clone()
        });
        // The others that would compete: live, and not waiting for a trigger of their own.
        let mut campaigns: Vec<Arc<Stored>> = live
            .campaigns
            .iter()
            .filter(|c| c.definition.name != def.name && c.definition.trigger.is_none())
            .cloned()
            .collect();
        campaigns.push(simulated.clone());
        let mut states: HashMap<String, (State, u32)> = live
            .all
            .iter()
            .map(|c| (c.definition.name.clone(), (c.state, c.version)))
            .collect();
        states.insert(def.name.clone(), (State::Live, stored.version));
        let evidence = self.evidence(ws).await?;
        let spent = AtomicU64::new(match def.budget {
            0 => 0,
            _ => self.store.spent(ws, &def.name).await?,
        });
        let context = Context {
            campaigns: &campaigns,
            simulated: &def.name,
            segment: &def.segment,
            states: &states,
            evidence: &evidence,
            control_share: live.control_share,
            spent: &spent,
            budget: def.budget,
            at,
        };
        let outcomes: Vec<Result<Outcome, OrchestrationError>> = futures::stream::iter(members.iter().copied())
            .map(|profile| self.simulate_one(caller, profile, &context))
            .buffer_unordered(AT_ONCE)
            .collect()
            .await;
        let mut sim = Simulation {
            audience: members.len() as u64,
            ..Default::default()
        };
        for outcome in outcomes {
            match outcome? {
                Outcome::Outside => sim.audience -= 1,
                Outcome::Unknown => sim.unknown += 1,
                Outcome::Blocked(reason) => *sim.blocked.entry(reason).or_default() += 1,
                Outcome::Sends {
                    action,
                    channel,
                    segment,
                    send_at,
                    expected: (expected, from_propensity),
                } => {
                    sim.would_send += 1;
                    *sim.by_segment.entry((segment, action.clone())).or_default() += 1;
                    *sim.sends.entry((action, channel)).or_default() += 1;
                    let hours = (send_at - at).num_hours().max(0) as u32;
                    *sim.hours.entry(hours).or_default() += 1;
                    sim.expected_conversions += expected;
                    match from_propensity {
                        true => sim.from_propensity += 1,
                        false => sim.from_policy += 1,
                    }
                }
            }
        }
        Ok(sim)
    }

    /// The off-policy estimate of `metric` under the campaign's policy as `sim` ran it
    /// (each segment's share of each action), over the campaign's logged decisions.
    pub async fn estimate_simulated(
        &self,
        caller: &Caller,
        campaign: &str,
        metric: &str,
        sim: &Simulation,
    ) -> Result<EstimatePolicyValueResponse, String> {
        let Some(source) = &self.feedback else {
            return Err(
                "measurement is not reachable from orchestration (orchestration.measurement_endpoint)".to_owned(),
            );
        };
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for ((segment, _), people) in &sim.by_segment {
            *totals.entry(segment.as_str()).or_default() += people;
        }
        if totals.is_empty() {
            return Err("the simulation sends to no one: there is no policy to estimate".to_owned());
        }
        let candidate = sim
            .by_segment
            .iter()
            .map(|((segment, action), people)| ActionProbability {
                action: action.clone(),
                segment: segment.clone(),
                probability: *people as f64 / totals[segment.as_str()] as f64,
            })
            .collect();
        let request = EstimatePolicyValueRequest {
            experiment: campaign.to_owned(),
            metric: metric.to_owned(),
            candidate,
            alpha: 0.0,
        };
        source.estimate(caller, request).await
    }

    async fn simulate_one(
        &self,
        caller: &Caller,
        profile: ProfileId,
        cx: &Context<'_>,
    ) -> Result<Outcome, OrchestrationError> {
        let ws = &caller.principal.workspace;
        let Some(person) = self
            .directory
            .person(caller, &Who::Profile(profile))
            .await
            .map_err(OrchestrationError::Unavailable)?
        else {
            return Ok(Outcome::Unknown);
        };
        if !cx.segment.is_empty() && person.segment.as_deref() != Some(cx.segment) {
            return Ok(Outcome::Outside);
        }
        let input = DecideInput {
            who: Who::Profile(profile),
            placement: String::new(),
            channels: Vec::new(),
            campaigns: Vec::new(),
            at: cx.at,
            occurrence: None,
        };
        let mut explanation = Explanation::default();
        let mut open: Vec<Open> = Vec::new();
        for campaign in cx.campaigns {
            match Self::open(ws, campaign, &person, &input) {
                Ok(o) => open.push(o),
                Err(blocked) => explanation.blocked.push(blocked),
            }
        }
        let since = earliest_counted(&open, cx.at);
        let touches = match open.is_empty() {
            true => Vec::new(),
            false => self.store.touches(ws, profile, since).await?,
        };
        let ledger = Ledger {
            touches,
            spent: [(cx.simulated.to_owned(), cx.spent.load(Ordering::SeqCst))].into(),
            states: cx.states.clone(),
        };
        let control = self.in_control_group(ws, profile, cx.control_share);
        let person = Arc::new(person);
        let planned = Planning {
            open,
            person: person.clone(),
            input: Arc::new(input),
            evidence: cx.evidence.clone(),
            control,
            control_share: cx.control_share,
            exhausted: Vec::new(),
            explanation,
            ws: ws.clone(),
            epsilon: self.config().epsilon,
            draws: 0,
            drawn: None,
            propensities: self.propensities.clone(),
        }
        .plan(Uuid::now_v7(), &ledger);
        let blocked_reason = |e: &Explanation| {
            e.blocked
                .iter()
                .find(|b| b.campaign == cx.simulated)
                .map_or(Reason::Priority, |b| b.reason)
        };
        let writes = match planned {
            Err(e) => return Ok(Outcome::Blocked(blocked_reason(&e))),
            Ok(w) if w.decision.campaign != cx.simulated => return Ok(Outcome::Blocked(Reason::Priority)),
            Ok(w) if !w.decision.sends() => return Ok(Outcome::Blocked(blocked_reason(&w.decision.explanation))),
            Ok(w) => w,
        };
        // The budget is spent in the order people come; those past it are blocked.
        if cx.budget > 0 && cx.spent.fetch_add(1, Ordering::SeqCst) >= cx.budget {
            return Ok(Outcome::Blocked(Reason::Budget));
        }
        let d = &writes.decision;
        let expected = match person.scores.get("propensity") {
            Some(p) => (*p, true),
            None => {
                let chosen = d
                    .explanation
                    .eligible
                    .iter()
                    .find(|c| c.campaign == d.campaign && c.action == d.action);
                (chosen.map_or(0.5, |c| c.expected_value / c.value), false)
            }
        };
        Ok(Outcome::Sends {
            action: d.action.clone(),
            channel: d.channel.clone(),
            segment: d.segment.clone(),
            send_at: d.send_at,
            expected,
        })
    }
}

struct Context<'a> {
    campaigns: &'a [Arc<Stored>],
    simulated: &'a str,
    /// The segment the simulated campaign targets, if any.
    segment: &'a str,
    states: &'a HashMap<String, (State, u32)>,
    evidence: &'a Arc<Evidence>,
    control_share: f64,
    spent: &'a AtomicU64,
    budget: u64,
    at: DateTime<Utc>,
}
