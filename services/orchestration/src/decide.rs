//! Decide: for one person, the live campaigns open to them (audience, consent, channel,
//! time), then under their lock the caps, budgets and states as they stand, and the
//! policy's choice among the actions of the highest priority's campaigns.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use corvus_proto::WorkspaceId;
use uuid::Uuid;

use crate::domain::campaign::{CONTROL, Definition, HOLDOUT, Trigger, Window};
use crate::domain::policy::{self, bucket, pick_weighted};
use crate::domain::template::{self, Fill};
use crate::domain::timing::{self, LocalTime};
use crate::people::{Caller, Person, Who};
use crate::service::{Orchestration, OrchestrationError, invalid};
use crate::storage::{
    Blocked, Candidate, Cell, DecideRequest, Decision, Explanation, Ledger, Outbound, Reason, Recorded, State, Stored,
    Touch, Writes,
};

/// The policy's evidence: (successes, trials) of each cell.
pub(crate) type Evidence = HashMap<Cell, (u64, u64)>;

/// What a Decide call asks.
#[derive(Debug, Clone)]
pub struct DecideInput {
    pub who: Who,
    pub placement: String,
    pub channels: Vec<String>,
    pub campaigns: Vec<String>,
    pub at: DateTime<Utc>,
    /// For a scheduled campaign: the local date of the occurrence decided for, sent at
    /// the schedule's time on that date in the person's zone.
    pub occurrence: Option<chrono::NaiveDate>,
}

/// Channels that reach out to the person, where quiet hours and the best hour apply;
/// the others answer the person where they are (a page, the app, a call).
const OUTBOUND: [&str; 3] = ["email", "sms", "push"];
/// Decide's answer for a person it cannot decide for.
const ERASED: &str = "no such person (unknown, or erased)";

/// A campaign that passed every check that needs no lock, with its channel and time.
#[derive(Clone)]
pub(crate) struct Open {
    pub(crate) campaign: Arc<Stored>,
    pub(crate) channel: String,
    pub(crate) send_at: DateTime<Utc>,
    pub(crate) zone: Tz,
    pub(crate) arm: String,
    pub(crate) timing: String,
    pub(crate) channel_why: String,
}

impl Orchestration {
    pub async fn decide(
        &self,
        caller: &Caller,
        input: &DecideInput,
    ) -> Result<(Option<Decision>, Explanation), OrchestrationError> {
        let ws = &caller.principal.workspace;
        let started = std::time::Instant::now();
        // The person, the live campaigns and the policy's evidence, at once.
        let (person, live, evidence) = tokio::join!(
            self.directory.person(caller, &input.who),
            self.live(ws),
            self.evidence(ws)
        );
        let person = person
            .map_err(OrchestrationError::Unavailable)?
            .ok_or_else(|| OrchestrationError::NotFound(ERASED.to_owned()))?;
        let profile = person
            .profile
            .ok_or_else(|| OrchestrationError::Unavailable("identity answered a profile without an id".to_owned()))?;
        let live = live?;
        metrics::histogram!("corvus_orchestration_decide_seconds", "step" => "read")
            .record(started.elapsed().as_secs_f64());
        if !input.campaigns.is_empty() {
            for (i, name) in input.campaigns.iter().enumerate() {
                if !live.all.iter().any(|c| &c.definition.name == name) {
                    return Err(invalid(
                        format!("campaigns[{i}]"),
                        format!("no campaign is named {name:?}"),
                    ));
                }
            }
        }
        let mut explanation = Explanation::default();
        let mut open = Vec::new();
        for campaign in &live.campaigns {
            let named = input.campaigns.contains(&campaign.definition.name);
            if !input.campaigns.is_empty() && !named {
                continue;
            }
            // A triggered campaign is decided when its trigger fires (the trigger worker
            // names it), never by a call that names no campaign.
            if campaign.definition.trigger.is_some() && !named {
                continue;
            }
            match Self::open(ws, campaign, &person, input) {
                Ok(o) => open.push(o),
                Err(blocked) => explanation.blocked.push(blocked),
            }
        }
        // Nothing open to the person: no lock to take, nothing to log.
        if open.is_empty() {
            return Ok((None, explanation));
        }
        let evidence = evidence?;
        let control = self.in_control_group(ws, profile, live.control_share);
        let id = Uuid::now_v7();
        // The policy's choice, made before the person's lock is taken: under it, it is
        // used as it is when caps, budgets and states leave every open campaign
        // eligible, as they mostly do, and made again over those left otherwise.
        let segment = person.segment.clone().unwrap_or_default();
        let (epsilon, draws) = (self.config().epsilon, self.config().propensity_draws);
        let drawn = {
            let all: Vec<&Open> = open.iter().collect();
            let (_, candidates) = candidates(&all, &segment, &evidence);
            let arms: Vec<policy::Arm> = candidates.iter().map(|c| c.2).collect();
            self.propensities.thompson(&arms, epsilon, draws, &id.to_string())
        };
        let (person, input) = (Arc::new(person), Arc::new(input.clone()));
        let mut exhausted: Vec<String> = Vec::new();
        for _ in 0..4 {
            let since = earliest_counted(&open, input.at);
            let budgeted: Vec<String> = open
                .iter()
                .filter(|o| o.campaign.definition.budget > 0)
                .map(|o| o.campaign.definition.name.clone())
                .collect();
            let planning = Planning {
                open: open.clone(),
                person: person.clone(),
                input: input.clone(),
                evidence: evidence.clone(),
                control,
                control_share: live.control_share,
                exhausted: exhausted.clone(),
                explanation: explanation.clone(),
                ws: ws.clone(),
                epsilon,
                draws,
                drawn: Some(drawn.clone()),
                propensities: self.propensities.clone(),
            };
            let request = DecideRequest {
                ws: ws.clone(),
                profile,
                since,
                budgeted,
                assumed: open
                    .iter()
                    .map(|o| (o.campaign.definition.name.clone(), o.campaign.version))
                    .collect(),
                plan: Box::new(move |ledger| planning.plan(id, ledger)),
            };
            let writing = std::time::Instant::now();
            let recorded = self.decider.decide(request).await?;
            metrics::histogram!("corvus_orchestration_decide_seconds", "step" => "write")
                .record(writing.elapsed().as_secs_f64());
            // A campaign found paused or changed since it was read: read them again.
            let explained = match &recorded {
                Recorded::Nothing(explanation) => Some(explanation),
                Recorded::Written(writes) => Some(&writes.decision.explanation),
                Recorded::BudgetSpent(_) | Recorded::Erased => None,
            };
            if explained.is_some_and(|e| e.blocked.iter().any(|b| b.reason == Reason::State)) {
                self.forget_live(ws);
            }
            match recorded {
                Recorded::Nothing(explanation) => return Ok((None, explanation)),
                Recorded::BudgetSpent(campaign) => exhausted.push(campaign),
                Recorded::Erased => return Err(OrchestrationError::NotFound(ERASED.to_owned())),
                Recorded::Written(writes) => {
                    let Writes { decision, .. } = *writes;
                    metrics::counter!("corvus_orchestration_decisions_total", "arm_kind" => arm_kind(&decision.arm))
                        .increment(1);
                    let explanation = decision.explanation.clone();
                    return Ok((Some(decision), explanation));
                }
            }
        }
        Err(OrchestrationError::Unavailable(
            "budgets kept running out while deciding; try again".to_owned(),
        ))
    }

    /// A live campaign for the person, with its channel and send time; or why not.
    pub(crate) fn open(
        ws: &WorkspaceId,
        campaign: &Arc<Stored>,
        person: &Person,
        input: &DecideInput,
    ) -> Result<Open, Blocked> {
        let def = &campaign.definition;
        let block = |reason, detail: String| Blocked {
            campaign: def.name.clone(),
            reason,
            detail,
        };
        if !def.audience.is_empty() && !person.audiences.contains(&def.audience) {
            return Err(block(Reason::Audience, format!("not in audience {:?}", def.audience)));
        }
        if !def.segment.is_empty() && person.segment.as_deref() != Some(def.segment.as_str()) {
            return Err(block(Reason::Audience, format!("not in segment {:?}", def.segment)));
        }
        let channels: Vec<&String> = def
            .channels
            .iter()
            .filter(|c| input.channels.is_empty() || input.channels.contains(c))
            .collect();
        if channels.is_empty() {
            return Err(block(Reason::Channel, "none of its channels was asked for".to_owned()));
        }
        let mut refused = Vec::new();
        let consented: Vec<&String> = channels
            .into_iter()
            .filter(|c| match person.consents_to(&def.consent_purposes, c) {
                Ok(()) => true,
                Err(why) => {
                    refused.push(why);
                    false
                }
            })
            .collect();
        if consented.is_empty() {
            return Err(block(Reason::Consent, refused.join("; ")));
        }
        let (channel, channel_why) = match person.preferred_channel.as_ref().filter(|p| consented.contains(p)) {
            Some(p) => (p.clone(), format!("{p}: the person's preferred channel")),
            None => (
                consented[0].clone(),
                format!("{}: the campaign's first allowed channel with consent", consented[0]),
            ),
        };
        let zone = person
            .time_zone
            .as_deref()
            .or(Some(def.default_time_zone.as_str()).filter(|z| !z.is_empty()))
            .and_then(|z| timing::zone(z).ok())
            .unwrap_or(Tz::UTC);
        let (mut send_at, mut timing) = (input.at, String::from("now"));
        if let Some(Trigger::Schedule { at, .. }) = &def.trigger {
            // A scheduled campaign sends at its time in the person's zone: on the
            // occurrence's date, or next.
            let minute = LocalTime::parse(at).expect("checked");
            send_at = match input.occurrence {
                Some(date) => {
                    let due = timing::local_instant(date, minute.0, zone);
                    if due < input.at - Duration::hours(1) {
                        return Err(block(
                            Reason::Schedule,
                            format!("{at} on {date} had passed in {zone} when it was decided"),
                        ));
                    }
                    due.max(input.at)
                }
                None => timing::next_local(input.at, minute.0, zone),
            };
            timing = format!("at {at} {zone}, the campaign's schedule");
        } else if OUTBOUND.contains(&channel.as_str())
            && let Some(hour) = person.best_hour_of_week
        {
            send_at = timing::next_hour(input.at, hour % 24, zone);
            timing = format!("at {:02}:00 {zone}, the person's best hour", hour % 24);
        }
        if OUTBOUND.contains(&channel.as_str())
            && let Some(quiet) = &def.quiet_hours
        {
            let (start, end) = (
                LocalTime::parse(&quiet.start).expect("checked"),
                LocalTime::parse(&quiet.end).expect("checked"),
            );
            let after = timing::after_quiet_hours(send_at, start, end, zone);
            if after != send_at {
                send_at = after;
                timing = format!("deferred to {} {zone}, the end of quiet hours", quiet.end);
            }
        }
        let profile = person.profile.map(|p| p.to_string()).unwrap_or_default();
        let arm = arm_of(ws, def, &profile);
        Ok(Open {
            campaign: campaign.clone(),
            channel,
            send_at,
            zone,
            arm,
            timing,
            channel_why,
        })
    }
}

/// What a connector sends of a decision: everything a provider needs to deliver the
/// message, as JSON.
fn outbound(d: &Decision, to: Option<(String, String)>, ws: &WorkspaceId) -> Outbound {
    let payload = serde_json::json!({
        "decision_id": d.id.to_string(),
        "workspace_id": ws.as_str(),
        "profile_id": d.profile.to_string(),
        "to": to.as_ref().map(|(kind, value)| serde_json::json!({"kind": kind, "value": value})),
        "channel": d.channel,
        "campaign": d.campaign,
        "campaign_version": d.campaign_version,
        "arm": d.arm,
        "action": d.action,
        "subject": d.subject,
        "body": d.body,
        "products": d.products,
        "send_at": d.send_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "placement": d.placement,
    });
    Outbound {
        recipient: to.map(|(kind, value)| format!("{kind}:{value}")).unwrap_or_default(),
        payload: payload.to_string(),
    }
}

/// What a decision is planned from, owned: the plan runs under the person's lock, in a
/// batch with others (see `decider`).
pub(crate) struct Planning {
    pub open: Vec<Open>,
    pub person: Arc<Person>,
    pub input: Arc<DecideInput>,
    pub evidence: Arc<Evidence>,
    /// The person is in the workspace's control group, which holds this share.
    pub control: bool,
    pub control_share: f64,
    pub exhausted: Vec<String>,
    pub explanation: Explanation,
    pub ws: WorkspaceId,
    pub epsilon: f64,
    /// Draws the propensities are estimated from (0: not wanted).
    pub draws: u32,
    /// The policy's choice over the candidates of every open campaign, drawn beforehand.
    pub drawn: Option<policy::Choice>,
    pub propensities: Arc<policy::Propensities>,
}

impl Planning {
    /// Under the person's lock: caps, budgets and states as they are now, then the
    /// policy's choice among the actions of the highest priority's campaigns.
    pub(crate) fn plan(&self, id: Uuid, ledger: &Ledger) -> Result<Writes, Explanation> {
        let p = self;
        let mut explanation = p.explanation.clone();
        let mut eligible: Vec<&Open> = Vec::new();
        for o in &p.open {
            let def = &o.campaign.definition;
            let block = |reason, detail: String| Blocked {
                campaign: def.name.clone(),
                reason,
                detail,
            };
            match ledger.states.get(&def.name) {
                Some((State::Live, v)) if *v == o.campaign.version => {}
                Some((state, _)) if *state != State::Live => {
                    explanation
                        .blocked
                        .push(block(Reason::State, format!("it is {} now", state.as_str())));
                    continue;
                }
                _ => {
                    explanation
                        .blocked
                        .push(block(Reason::State, "it changed while deciding".to_owned()));
                    continue;
                }
            }
            if let Some(detail) = capped(o, ledger) {
                explanation.blocked.push(block(Reason::Cap, detail));
                continue;
            }
            let spent = ledger.spent.get(&def.name).copied().unwrap_or_default();
            if def.budget > 0 && (spent >= def.budget || p.exhausted.contains(&def.name)) {
                explanation.blocked.push(block(
                    Reason::Budget,
                    format!("its budget of {} sends is spent", def.budget),
                ));
                continue;
            }
            eligible.push(o);
        }
        let Some(top) = eligible.iter().map(|o| o.campaign.definition.priority).max() else {
            return Err(explanation);
        };
        for o in eligible.iter().filter(|o| o.campaign.definition.priority < top) {
            explanation.blocked.push(Blocked {
                campaign: o.campaign.definition.name.clone(),
                reason: Reason::Priority,
                detail: format!("priority {} is below {top}", o.campaign.definition.priority),
            });
        }
        let segment = p.person.segment.clone().unwrap_or_default();
        let (_, choices) = candidates(&eligible, &segment, &p.evidence);
        let choice = match &p.drawn {
            // Every open campaign is eligible: the candidates are those drawn over.
            Some(drawn) if eligible.len() == p.open.len() => drawn.clone(),
            _ => {
                let arms: Vec<policy::Arm> = choices.iter().map(|c| c.2).collect();
                p.propensities.thompson(&arms, p.epsilon, p.draws, &id.to_string())
            }
        };
        explanation.eligible = choices
            .iter()
            .zip(&choice.propensities)
            .map(|((o, action, arm), &propensity)| Candidate {
                campaign: o.campaign.definition.name.clone(),
                action: action.name.clone(),
                priority: top,
                expected_value: arm.expected_value(),
                propensity,
                successes: arm.successes,
                trials: arm.trials,
                value: arm.value,
            })
            .collect();
        let (o, action, _) = choices[choice.index];
        let def = &o.campaign.definition;
        explanation.timing = o.timing.clone();
        explanation.channel = o.channel_why.clone();
        let held = match (p.control, o.arm == HOLDOUT) {
            (true, _) => Some((
                CONTROL,
                Reason::Control,
                "the person is in the workspace's control group",
            )),
            (false, true) => Some((HOLDOUT, Reason::Holdout, "the person is in the campaign's holdout")),
            (false, false) => None,
        };
        let profile = p.person.profile.expect("a person with an id");
        let products: Vec<String> = p
            .person
            .products
            .iter()
            .take(action.products as usize)
            .cloned()
            .collect();
        let fill = Fill {
            traits: &p.person.traits,
            products: &products,
            profile_id: &profile.to_string(),
            campaign: &def.name,
            action: &action.name,
        };
        let mut decision = Decision {
            id,
            profile,
            campaign: def.name.clone(),
            campaign_version: o.campaign.version,
            arm: o.arm.clone(),
            action: action.name.clone(),
            subject: template::render(&action.subject, &fill),
            body: template::render(&action.body, &fill),
            products,
            channel: o.channel.clone(),
            send_at: o.send_at,
            policy: match choice.propensities.len() {
                1 => "only".to_owned(),
                _ => "thompson".to_owned(),
            },
            propensity: choice.propensities[choice.index],
            propensity_draws: choice.draws,
            placement: p.input.placement.clone(),
            decided_at: p.input.at,
            segment,
            arm_share: def.arm_share(&o.arm, p.control_share),
            explanation: Explanation::default(),
            outcome: None,
        };
        if let Some((arm, reason, detail)) = held {
            explanation.blocked.push(Blocked {
                campaign: def.name.clone(),
                reason,
                detail: detail.to_owned(),
            });
            decision.arm = arm.to_owned();
            decision.arm_share = def.arm_share(arm, p.control_share);
            decision.channel.clear();
            decision.subject.clear();
            decision.body.clear();
            decision.products.clear();
            decision.explanation = explanation;
            return Ok(Writes {
                decision,
                touch: None,
                spend: None,
                send: None,
            });
        }
        decision.explanation = explanation;
        let touch = Touch {
            campaign: def.name.clone(),
            channel: o.channel.clone(),
            at: o.send_at,
            local_day: local_day(o.send_at, o.zone),
        };
        let send = outbound(&decision, p.person.address(&decision.channel), &p.ws);
        Ok(Writes {
            decision,
            touch: Some(touch),
            spend: (def.budget > 0).then_some(def.budget),
            send: Some(send),
        })
    }
}

/// The policy's candidates among `eligible`: each action the person's arm may send, of
/// each campaign at the top priority (returned first), with its evidence in its cell.
fn candidates<'o>(
    eligible: &[&'o Open],
    segment: &str,
    evidence: &Evidence,
) -> (i32, Vec<(&'o Open, &'o crate::domain::campaign::Action, policy::Arm)>) {
    let top = eligible
        .iter()
        .map(|o| o.campaign.definition.priority)
        .max()
        .unwrap_or_default();
    let mut choices = Vec::new();
    for o in eligible.iter().filter(|o| o.campaign.definition.priority == top) {
        let def = &o.campaign.definition;
        for action in def.actions_of(&o.arm) {
            let cell = Cell {
                campaign: def.name.clone(),
                segment: segment.to_owned(),
                action: action.name.clone(),
                channel: o.channel.clone(),
            };
            let (successes, trials) = evidence.get(&cell).copied().unwrap_or_default();
            choices.push((
                *o,
                action,
                policy::Arm {
                    successes: successes as f64,
                    trials: trials as f64,
                    value: action.value,
                },
            ));
        }
    }
    (top, choices)
}

fn arm_kind(arm: &str) -> &'static str {
    match arm {
        HOLDOUT => "holdout",
        CONTROL => "control",
        _ => "treated",
    }
}

/// The arm a person is in: the holdout below its share, else an arm by weight over the
/// rest, from a hash of the campaign and the profile id.
pub fn arm_of(ws: &WorkspaceId, def: &Definition, profile: &str) -> String {
    let point = bucket(&[ws.as_str(), &def.name, "arm", profile]);
    if point < def.holdout {
        return HOLDOUT.to_owned();
    }
    let arms = def.arms();
    let weights: Vec<f64> = arms.iter().map(|a| a.weight).collect();
    let rest = (point - def.holdout) / (1.0 - def.holdout);
    arms[pick_weighted(rest, &weights)].name.clone()
}

fn local_day(at: DateTime<Utc>, zone: Tz) -> i32 {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
    (timing::local_date(at, zone) - epoch).num_days() as i32
}

/// The earliest send any of the campaigns' caps counts (`at` when none has a cap).
pub(crate) fn earliest_counted(open: &[Open], at: DateTime<Utc>) -> DateTime<Utc> {
    open.iter()
        .flat_map(|o| {
            o.campaign
                .definition
                .caps
                .iter()
                .map(|c| window_start(c.window(), o.send_at))
        })
        .min()
        .unwrap_or(at)
}

/// The earliest send a cap's window around `at` can reach.
fn window_start(window: Window, at: DateTime<Utc>) -> DateTime<Utc> {
    match window {
        Window::Rolling(w) => at - w,
        // A local day starts at most 14 hours before its UTC day.
        Window::CalendarDays(days) => at - Duration::days(i64::from(days) + 1),
    }
}

/// The first of the campaign's caps the send would exceed, described. A rolling window
/// counts the sends within its length either side of this one, and calendar days the
/// sends on the days any window of that many days holding this send's day spans: so no
/// window, wherever it falls, holds more sends than the limit.
pub(crate) fn capped(o: &Open, ledger: &Ledger) -> Option<String> {
    let def = &o.campaign.definition;
    for cap in &def.caps {
        if !cap.channel.is_empty() && cap.channel != o.channel {
            continue;
        }
        let counts = |t: &&Touch| {
            (cap.all_campaigns || t.campaign == def.name) && (cap.channel.is_empty() || t.channel == cap.channel)
        };
        let (n, window) = match cap.window() {
            Window::Rolling(w) => (
                ledger
                    .touches
                    .iter()
                    .filter(counts)
                    .filter(|t| t.at > o.send_at - w && t.at < o.send_at + w)
                    .count(),
                format!("{} s", w.num_seconds()),
            ),
            Window::CalendarDays(days) => {
                let day = local_day(o.send_at, o.zone);
                let span = days as i32 - 1;
                (
                    ledger
                        .touches
                        .iter()
                        .filter(counts)
                        .filter(|t| (day - span..=day + span).contains(&t.local_day))
                        .count(),
                    format!("{days} calendar day(s)"),
                )
            }
        };
        if n >= cap.limit as usize {
            let scope = match (cap.all_campaigns, cap.channel.is_empty()) {
                (true, true) => "from every campaign".to_owned(),
                (true, false) => format!("on {} from every campaign", cap.channel),
                (false, true) => "from this campaign".to_owned(),
                (false, false) => format!("on {} from this campaign", cap.channel),
            };
            return Some(format!("{n} send(s) {scope} within {window}: the cap is {}", cap.limit));
        }
    }
    None
}
