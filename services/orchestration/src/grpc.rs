//! gRPC handlers: check the role, parse, call the service, map the error. No SQL here.

mod alerts;
mod log;

use chrono::{DateTime, Utc};
use corvus_platform::Role;
use corvus_platform::error::{invalid_argument, storage_status};
use corvus_platform::paging::{next_page, page};
use corvus_platform::server::authorise;
use corvus_proto::ingestion::v1::event_consumer_service_server::EventConsumerService;
use corvus_proto::ingestion::v1::{DeliverRequest, DeliverResponse, DeliveryFailure};
use corvus_proto::orchestration::v1 as pb;
use corvus_proto::orchestration::v1::orchestration_service_server::OrchestrationService;
use prost_types::{Duration as PbDuration, Timestamp};
use tonic::{Request, Response, Status};

use crate::decide::DecideInput;
use crate::domain::campaign::{Action, Arm, Cap, Definition, Goal, QuietHours, Trigger};
use crate::people::{Caller, Who, channel_name, channel_of};
use crate::service::{Orchestration, OrchestrationError};
use crate::storage::{Decision, Explanation, Reason, State, Stored};

pub struct OrchestrationApi {
    pub orchestration: Orchestration,
}

pub struct LogConsumer {
    pub orchestration: Orchestration,
}

impl From<OrchestrationError> for Status {
    fn from(err: OrchestrationError) -> Self {
        match err {
            OrchestrationError::Invalid { field, reason } => invalid_argument(field, reason),
            OrchestrationError::NotFound(message) => Status::not_found(message),
            OrchestrationError::AlreadyExists(message) => Status::already_exists(message),
            OrchestrationError::Precondition(message) => Status::failed_precondition(message),
            OrchestrationError::Unavailable(message) => Status::unavailable(message),
            OrchestrationError::Storage(e) => storage_status(e),
        }
    }
}

fn caller<T>(request: &Request<T>, role: Role, action: &'static str) -> Result<Caller, Status> {
    let principal = authorise(request, role, action)?;
    Ok(Caller {
        principal,
        metadata: request.metadata().clone(),
    })
}

pub(crate) fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn time_of(field: &'static str, t: Option<&Timestamp>) -> Result<DateTime<Utc>, Status> {
    match t {
        None => Ok(Utc::now()),
        Some(t) => u32::try_from(t.nanos)
            .ok()
            .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
            .ok_or_else(|| invalid_argument(field, "not a valid time")),
    }
}

/// Whole seconds of a duration; an absent one is `None`.
fn seconds(field: String, d: Option<&PbDuration>) -> Result<Option<u64>, Status> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(invalid_argument(field, "a duration is not negative")),
        Some(d) => Ok(Some(d.seconds as u64 + u64::from(d.nanos > 0))),
    }
}

fn duration(seconds: u64) -> PbDuration {
    PbDuration {
        seconds: seconds as i64,
        nanos: 0,
    }
}

fn channel_field(field: String, channel: i32) -> Result<String, Status> {
    match channel_name(channel) {
        name if name.is_empty() => Err(invalid_argument(field, "a channel (not CHANNEL_UNSPECIFIED)")),
        name => Ok(name),
    }
}

/// The definition a message describes; fields the definition checks are checked there.
pub fn definition_of(c: &pb::Campaign) -> Result<Definition, Status> {
    let trigger = match c.trigger.as_ref().and_then(|t| t.trigger.as_ref()) {
        None => None,
        Some(pb::trigger::Trigger::Event(e)) => Some(Trigger::Event {
            event: e.event.clone(),
            properties: e.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            wait_seconds: seconds("campaign.trigger.event.wait".to_owned(), e.wait.as_ref())?,
            unless: e.unless.clone(),
        }),
        Some(pb::trigger::Trigger::Score(s)) => Some(Trigger::Score {
            score: s.score.clone(),
            above: s.above,
        }),
        Some(pb::trigger::Trigger::AudienceEntered(a)) => Some(Trigger::AudienceEntered(a.clone())),
        Some(pb::trigger::Trigger::Schedule(s)) => Some(Trigger::Schedule {
            days: s.days.clone(),
            at: s.at.clone(),
        }),
    };
    let caps = c
        .caps
        .iter()
        .enumerate()
        .map(|(i, cap)| {
            Ok(Cap {
                limit: cap.limit,
                channel: channel_name(cap.channel),
                all_campaigns: cap.all_campaigns,
                rolling_seconds: seconds(format!("campaign.caps[{i}].rolling"), cap.rolling.as_ref())?,
                calendar_days: (cap.calendar_days > 0).then_some(cap.calendar_days),
            })
        })
        .collect::<Result<_, Status>>()?;
    let goal = match &c.goal {
        None => Goal::default(),
        Some(g) => Goal {
            events: match g.events.is_empty() {
                true => Goal::default().events,
                false => g.events.clone(),
            },
            window_seconds: seconds("campaign.goal.window".to_owned(), g.window.as_ref())?
                .unwrap_or(Goal::default().window_seconds),
        },
    };
    Ok(Definition {
        name: c.name.clone(),
        description: c.description.clone(),
        tags: c.tags.clone(),
        audience: c.audience.clone(),
        segment: c.segment.clone(),
        trigger,
        actions: c
            .actions
            .iter()
            .map(|a| Action {
                name: a.name.clone(),
                kind: match a.kind.is_empty() {
                    true => "message".to_owned(),
                    false => a.kind.clone(),
                },
                subject: a.subject.clone(),
                body: a.body.clone(),
                products: a.products,
                value: if a.value == 0.0 { 1.0 } else { a.value },
            })
            .collect(),
        channels: c
            .channels
            .iter()
            .enumerate()
            .map(|(i, ch)| channel_field(format!("campaign.channels[{i}]"), *ch))
            .collect::<Result<_, _>>()?,
        consent_purposes: c.consent_purposes.clone(),
        caps,
        quiet_hours: c.quiet_hours.as_ref().map(|q| QuietHours {
            start: q.start.clone(),
            end: q.end.clone(),
        }),
        priority: c.priority,
        budget: c.budget,
        arms: c
            .arms
            .iter()
            .map(|a| Arm {
                name: a.name.clone(),
                weight: a.weight,
                actions: a.actions.clone(),
            })
            .collect(),
        holdout: c.holdout,
        goal,
        default_time_zone: c.default_time_zone.clone(),
    })
}

fn state_message(state: State) -> pb::CampaignState {
    match state {
        State::Draft => pb::CampaignState::Draft,
        State::Live => pb::CampaignState::Live,
        State::Paused => pb::CampaignState::Paused,
        State::Ended => pb::CampaignState::Ended,
    }
}

fn state_of(field: &'static str, state: i32) -> Result<Option<State>, Status> {
    match pb::CampaignState::try_from(state) {
        Ok(pb::CampaignState::Unspecified) => Ok(None),
        Ok(pb::CampaignState::Draft) => Ok(Some(State::Draft)),
        Ok(pb::CampaignState::Live) => Ok(Some(State::Live)),
        Ok(pb::CampaignState::Paused) => Ok(Some(State::Paused)),
        Ok(pb::CampaignState::Ended) => Ok(Some(State::Ended)),
        Err(_) => Err(invalid_argument(field, format!("{state} is not a campaign state"))),
    }
}

/// A definition as the API shows it; the output-only fields (version, state, times)
/// are left empty.
pub fn campaign_of(d: &Definition) -> pb::Campaign {
    pb::Campaign {
        name: d.name.clone(),
        description: d.description.clone(),
        tags: d.tags.clone(),
        audience: d.audience.clone(),
        segment: d.segment.clone(),
        trigger: d.trigger.as_ref().map(|t| pb::Trigger {
            trigger: Some(match t {
                Trigger::Event {
                    event,
                    properties,
                    wait_seconds,
                    unless,
                } => pb::trigger::Trigger::Event(pb::EventTrigger {
                    event: event.clone(),
                    properties: properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    wait: wait_seconds.map(duration),
                    unless: unless.clone(),
                }),
                Trigger::Score { score, above } => pb::trigger::Trigger::Score(pb::ScoreTrigger {
                    score: score.clone(),
                    above: *above,
                }),
                Trigger::AudienceEntered(a) => pb::trigger::Trigger::AudienceEntered(a.clone()),
                Trigger::Schedule { days, at } => pb::trigger::Trigger::Schedule(pb::Schedule {
                    days: days.clone(),
                    at: at.clone(),
                }),
            }),
        }),
        actions: d
            .actions
            .iter()
            .map(|a| pb::Action {
                name: a.name.clone(),
                kind: a.kind.clone(),
                subject: a.subject.clone(),
                body: a.body.clone(),
                products: a.products,
                value: a.value,
            })
            .collect(),
        channels: d.channels.iter().map(|c| channel_of(c) as i32).collect(),
        consent_purposes: d.consent_purposes.clone(),
        caps: d
            .caps
            .iter()
            .map(|cap| pb::FrequencyCap {
                limit: cap.limit,
                channel: channel_of(&cap.channel) as i32,
                all_campaigns: cap.all_campaigns,
                rolling: cap.rolling_seconds.map(duration),
                calendar_days: cap.calendar_days.unwrap_or_default(),
            })
            .collect(),
        quiet_hours: d.quiet_hours.as_ref().map(|q| pb::QuietHours {
            start: q.start.clone(),
            end: q.end.clone(),
        }),
        priority: d.priority,
        budget: d.budget,
        arms: d
            .arms
            .iter()
            .map(|a| pb::Arm {
                name: a.name.clone(),
                weight: a.weight,
                actions: a.actions.clone(),
            })
            .collect(),
        holdout: d.holdout,
        goal: Some(pb::Goal {
            events: d.goal.events.clone(),
            window: Some(duration(d.goal.window_seconds)),
        }),
        default_time_zone: d.default_time_zone.clone(),
        version: 0,
        state: pb::CampaignState::Unspecified as i32,
        created_at: None,
        updated_at: None,
    }
}

/// A stored campaign as the API shows it.
pub fn campaign_message(c: &Stored) -> pb::Campaign {
    pb::Campaign {
        version: c.version,
        state: state_message(c.state) as i32,
        created_at: Some(timestamp(c.created_at)),
        updated_at: Some(timestamp(c.updated_at)),
        ..campaign_of(&c.definition)
    }
}

fn reason_message(reason: Reason) -> pb::BlockReason {
    match reason {
        Reason::Audience => pb::BlockReason::Audience,
        Reason::Consent => pb::BlockReason::Consent,
        Reason::Cap => pb::BlockReason::Cap,
        Reason::QuietHours => pb::BlockReason::QuietHours,
        Reason::Holdout => pb::BlockReason::Holdout,
        Reason::Budget => pb::BlockReason::Budget,
        Reason::Channel => pb::BlockReason::Channel,
        Reason::Priority => pb::BlockReason::Priority,
        Reason::Control => pb::BlockReason::Control,
        Reason::State => pb::BlockReason::State,
        Reason::Schedule => pb::BlockReason::Schedule,
    }
}

pub fn explanation_message(e: &Explanation) -> pb::Explanation {
    pb::Explanation {
        eligible: e
            .eligible
            .iter()
            .map(|c| pb::Candidate {
                campaign: c.campaign.clone(),
                action: c.action.clone(),
                priority: c.priority,
                expected_value: c.expected_value,
                propensity: c.propensity,
                successes: c.successes,
                trials: c.trials,
                value: c.value,
            })
            .collect(),
        blocked: e
            .blocked
            .iter()
            .map(|b| pb::Blocked {
                campaign: b.campaign.clone(),
                reason: reason_message(b.reason) as i32,
                detail: b.detail.clone(),
            })
            .collect(),
        timing: e.timing.clone(),
        channel: e.channel.clone(),
    }
}

pub fn decision_message(d: &Decision) -> pb::Decision {
    pb::Decision {
        decision_id: d.id.to_string(),
        profile_id: d.profile.to_string(),
        campaign: d.campaign.clone(),
        campaign_version: d.campaign_version,
        arm: d.arm.clone(),
        action: match d.sends() {
            true => d.action.clone(),
            false => String::new(),
        },
        products: d.products.clone(),
        subject: d.subject.clone(),
        body: d.body.clone(),
        channel: channel_of(&d.channel) as i32,
        send_at: d.sends().then(|| timestamp(d.send_at)),
        policy: d.policy.clone(),
        propensity: d.propensity,
        propensity_draws: d.propensity_draws,
        placement: d.placement.clone(),
        decided_at: Some(timestamp(d.decided_at)),
        segment: d.segment.clone(),
        arm_share: d.arm_share,
    }
}

#[tonic::async_trait]
impl OrchestrationService for OrchestrationApi {
    async fn create_campaign(
        &self,
        request: Request<pb::CreateCampaignRequest>,
    ) -> Result<Response<pb::CreateCampaignResponse>, Status> {
        let caller = caller(&request, Role::Admin, "create a campaign")?;
        let campaign = request
            .get_ref()
            .campaign
            .as_ref()
            .ok_or_else(|| invalid_argument("campaign", "required"))?;
        let stored = self.orchestration.create(&caller, &definition_of(campaign)?).await?;
        Ok(Response::new(pb::CreateCampaignResponse {
            campaign: Some(campaign_message(&stored)),
        }))
    }

    async fn update_campaign(
        &self,
        request: Request<pb::UpdateCampaignRequest>,
    ) -> Result<Response<pb::UpdateCampaignResponse>, Status> {
        let caller = caller(&request, Role::Admin, "change a campaign")?;
        let req = request.get_ref();
        let campaign = req
            .campaign
            .as_ref()
            .ok_or_else(|| invalid_argument("campaign", "required"))?;
        let stored = self
            .orchestration
            .update(&caller, &definition_of(campaign)?, req.expected_version)
            .await?;
        Ok(Response::new(pb::UpdateCampaignResponse {
            campaign: Some(campaign_message(&stored)),
        }))
    }

    async fn get_campaign(
        &self,
        request: Request<pb::GetCampaignRequest>,
    ) -> Result<Response<pb::GetCampaignResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read campaigns")?;
        let req = request.into_inner();
        let version = (req.version > 0).then_some(req.version);
        let stored = self
            .orchestration
            .store
            .campaign(&principal.workspace, &req.name, version)
            .await
            .map_err(storage_status)?
            .ok_or_else(|| match version {
                None => Status::not_found(format!("no campaign is named {:?}", req.name)),
                Some(v) => Status::not_found(format!("campaign {:?} has no version {v}", req.name)),
            })?;
        Ok(Response::new(pb::GetCampaignResponse {
            campaign: Some(campaign_message(&stored)),
        }))
    }

    async fn list_campaigns(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read campaigns")?;
        let req = request.into_inner();
        let state = state_of("state", req.state)?;
        let campaigns = self
            .orchestration
            .store
            .campaigns(&principal.workspace)
            .await
            .map_err(storage_status)?
            .iter()
            .filter(|c| state.is_none_or(|s| c.state == s))
            .filter(|c| req.tag.is_empty() || c.definition.tags.contains(&req.tag))
            .map(campaign_message)
            .collect();
        Ok(Response::new(pb::ListCampaignsResponse { campaigns }))
    }

    async fn set_campaign_state(
        &self,
        request: Request<pb::SetCampaignStateRequest>,
    ) -> Result<Response<pb::SetCampaignStateResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "change a campaign's state")?;
        let req = request.into_inner();
        let state = state_of("state", req.state)?.ok_or_else(|| invalid_argument("state", "required"))?;
        let stored = self
            .orchestration
            .set_state(&principal.workspace, &req.name, state)
            .await?;
        Ok(Response::new(pb::SetCampaignStateResponse {
            campaign: Some(campaign_message(&stored)),
        }))
    }

    async fn pause_campaigns(
        &self,
        request: Request<pb::PauseCampaignsRequest>,
    ) -> Result<Response<pb::PauseCampaignsResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "pause campaigns")?;
        let tag = &request.get_ref().tag;
        if tag.is_empty() {
            return Err(invalid_argument("tag", "required"));
        }
        let paused = self.orchestration.pause_tagged(&principal.workspace, tag).await?;
        Ok(Response::new(pb::PauseCampaignsResponse { paused }))
    }

    async fn get_control_group(
        &self,
        request: Request<pb::GetControlGroupRequest>,
    ) -> Result<Response<pb::GetControlGroupResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read the control group")?;
        let share = self
            .orchestration
            .store
            .control_share(&principal.workspace)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::GetControlGroupResponse { share }))
    }

    async fn set_control_group(
        &self,
        request: Request<pb::SetControlGroupRequest>,
    ) -> Result<Response<pb::SetControlGroupResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "set the control group")?;
        let share = request.get_ref().share;
        if !(0.0..=0.5).contains(&share) {
            return Err(invalid_argument("share", "a share in [0, 0.5]"));
        }
        self.orchestration
            .set_control_share(&principal.workspace, share)
            .await?;
        Ok(Response::new(pb::SetControlGroupResponse { share }))
    }

    async fn decide(&self, request: Request<pb::DecideRequest>) -> Result<Response<pb::DecideResponse>, Status> {
        let caller = caller(&request, Role::Read, "decide")?;
        let req = request.into_inner();
        let who = match req.person {
            Some(pb::decide_request::Person::ProfileId(id)) => Who::Profile(
                id.parse()
                    .map_err(|_| invalid_argument("profile_id", format!("{id:?} is not a profile id")))?,
            ),
            Some(pb::decide_request::Person::Identifier(i)) => {
                if i.kind.is_empty() || i.value.is_empty() {
                    return Err(invalid_argument("identifier", "a kind and a value"));
                }
                Who::Identifier {
                    kind: i.kind,
                    value: i.value,
                }
            }
            None => return Err(invalid_argument("person", "a profile_id or an identifier")),
        };
        let input = DecideInput {
            who,
            placement: req.placement,
            channels: req
                .channels
                .iter()
                .enumerate()
                .map(|(i, c)| channel_field(format!("channels[{i}]"), *c))
                .collect::<Result<_, _>>()?,
            campaigns: req.campaigns,
            at: time_of("at", req.at.as_ref())?,
            occurrence: None,
        };
        let (decision, explanation) = self.orchestration.decide(&caller, &input).await?;
        Ok(Response::new(pb::DecideResponse {
            decision: decision.as_ref().map(decision_message),
            explanation: Some(explanation_message(&explanation)),
        }))
    }

    async fn get_decision(
        &self,
        request: Request<pb::GetDecisionRequest>,
    ) -> Result<Response<pb::GetDecisionResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read decisions")?;
        let id = &request.get_ref().decision_id;
        let parsed = id
            .parse()
            .map_err(|_| invalid_argument("decision_id", format!("{id:?} is not a decision id")))?;
        let decision = self
            .orchestration
            .store
            .decision(&principal.workspace, parsed)
            .await
            .map_err(storage_status)?
            .ok_or_else(|| Status::not_found(format!("no decision {id}")))?;
        Ok(Response::new(pb::GetDecisionResponse {
            decision: Some(decision_message(&decision)),
            outcome_event: decision.outcome.as_ref().map(|o| o.0.clone()).unwrap_or_default(),
            outcome_at: decision.outcome.as_ref().map(|o| timestamp(o.1)),
            explanation: Some(explanation_message(&decision.explanation)),
        }))
    }

    async fn list_decisions(
        &self,
        request: Request<pb::ListDecisionsRequest>,
    ) -> Result<Response<pb::ListDecisionsResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read decisions")?;
        let req = request.into_inner();
        let (size, after) = page::<uuid::Uuid>(req.page.as_ref())?;
        let campaign = (!req.campaign.is_empty()).then_some(req.campaign.as_str());
        let decisions = self
            .orchestration
            .store
            .decisions(&principal.workspace, campaign, after, size)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::ListDecisionsResponse {
            page: next_page(decisions.len(), size, decisions.last().map(|d| d.id)),
            decisions: decisions.iter().map(decision_message).collect(),
        }))
    }

    async fn list_consumers(
        &self,
        request: Request<pb::ListConsumersRequest>,
    ) -> Result<Response<pb::ListConsumersResponse>, Status> {
        log::list_consumers(&self.orchestration, request).await
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        log::list_dead_letters(&self.orchestration, request).await
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        log::replay_dead_letters(&self.orchestration, request).await
    }

    type StreamAlertsStream = alerts::AlertStream;

    async fn create_alert_rule(
        &self,
        request: Request<pb::CreateAlertRuleRequest>,
    ) -> Result<Response<pb::CreateAlertRuleResponse>, Status> {
        alerts::create_rule(&self.orchestration, request).await
    }

    async fn list_alert_rules(
        &self,
        request: Request<pb::ListAlertRulesRequest>,
    ) -> Result<Response<pb::ListAlertRulesResponse>, Status> {
        alerts::list_rules(&self.orchestration, request).await
    }

    async fn delete_alert_rule(
        &self,
        request: Request<pb::DeleteAlertRuleRequest>,
    ) -> Result<Response<pb::DeleteAlertRuleResponse>, Status> {
        alerts::delete_rule(&self.orchestration, request).await
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        alerts::list_alerts(&self.orchestration, request).await
    }

    async fn stream_alerts(
        &self,
        request: Request<pb::StreamAlertsRequest>,
    ) -> Result<Response<Self::StreamAlertsStream>, Status> {
        alerts::stream_alerts(&self.orchestration, request).await
    }

    async fn acknowledge_alert(
        &self,
        request: Request<pb::AcknowledgeAlertRequest>,
    ) -> Result<Response<pb::AcknowledgeAlertResponse>, Status> {
        alerts::acknowledge(&self.orchestration, request).await
    }

    async fn assign_alert(
        &self,
        request: Request<pb::AssignAlertRequest>,
    ) -> Result<Response<pb::AssignAlertResponse>, Status> {
        alerts::assign(&self.orchestration, request).await
    }

    async fn simulate_campaign(
        &self,
        request: Request<pb::SimulateCampaignRequest>,
    ) -> Result<Response<pb::SimulateCampaignResponse>, Status> {
        let caller = caller(&request, Role::Read, "simulate a campaign")?;
        let req = request.get_ref();
        let at = time_of("at", req.at.as_ref())?;
        let version = (req.version > 0).then_some(req.version);
        let sim = self.orchestration.simulate(&caller, &req.name, version, at).await?;
        let (estimate, estimate_unavailable) = match req.estimate_metric.is_empty() {
            true => (None, String::new()),
            false => match self
                .orchestration
                .estimate_simulated(&caller, &req.name, &req.estimate_metric, &sim)
                .await
            {
                Ok(estimate) => (Some(estimate), String::new()),
                Err(why) => (None, why),
            },
        };
        Ok(Response::new(pb::SimulateCampaignResponse {
            estimate,
            estimate_unavailable,
            audience: sim.audience,
            unknown: sim.unknown,
            would_send: sim.would_send,
            sends: sim
                .sends
                .iter()
                .map(|((action, channel), people)| pb::SimulatedSends {
                    action: action.clone(),
                    channel: channel_of(channel) as i32,
                    people: *people,
                })
                .collect(),
            hours: sim
                .hours
                .iter()
                .map(|(hours, people)| pb::SimulatedHour {
                    hours_from_now: *hours,
                    people: *people,
                })
                .collect(),
            blocked: sim
                .blocked
                .iter()
                .map(|(reason, people)| pb::SimulatedBlock {
                    reason: reason_message(*reason) as i32,
                    people: *people,
                })
                .collect(),
            expected_conversions: sim.expected_conversions,
            from_propensity: sim.from_propensity,
            from_policy: sim.from_policy,
        }))
    }

    async fn set_connector(
        &self,
        request: Request<pb::SetConnectorRequest>,
    ) -> Result<Response<pb::SetConnectorResponse>, Status> {
        self.orchestration.set_connector_api(request).await
    }

    async fn list_connectors(
        &self,
        request: Request<pb::ListConnectorsRequest>,
    ) -> Result<Response<pb::ListConnectorsResponse>, Status> {
        self.orchestration.list_connectors_api(request).await
    }

    async fn delete_connector(
        &self,
        request: Request<pb::DeleteConnectorRequest>,
    ) -> Result<Response<pb::DeleteConnectorResponse>, Status> {
        self.orchestration.delete_connector_api(request).await
    }

    async fn list_sends(
        &self,
        request: Request<pb::ListSendsRequest>,
    ) -> Result<Response<pb::ListSendsResponse>, Status> {
        self.orchestration.list_sends_api(request).await
    }

    async fn retry_send(
        &self,
        request: Request<pb::RetrySendRequest>,
    ) -> Result<Response<pb::RetrySendResponse>, Status> {
        self.orchestration.retry_send_api(request).await
    }
}

#[tonic::async_trait]
impl EventConsumerService for LogConsumer {
    async fn deliver(&self, request: Request<DeliverRequest>) -> Result<Response<DeliverResponse>, Status> {
        authorise(&request, Role::Service, "deliver a log's entries")?;
        let request = request.into_inner();
        if !request.events.is_empty() {
            return Err(invalid_argument(
                "events",
                "orchestration consumes identity's log (entries), not the event log",
            ));
        }
        let (failures, erasures) = self
            .orchestration
            .deliver(&request.entries)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(DeliverResponse {
            failures: failures
                .into_iter()
                .map(|f| DeliveryFailure {
                    event_id: f.event_id,
                    reason: f.reason,
                })
                .collect(),
            erasures,
        }))
    }
}
