//! Alert rules and alerts over gRPC: check the role, parse, call the service, map the
//! error.

use std::pin::Pin;

use corvus_platform::Role;
use corvus_platform::error::invalid_argument;
use corvus_platform::paging::{next_page, page};
use corvus_platform::server::authorise;
use corvus_proto::orchestration::v1 as pb;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{channel_field, duration, seconds, timestamp};
use crate::domain::alert::{
    Condition, DEFAULT_COMPLAINT_EVENT, DEFAULT_COOLDOWN_SECONDS, DEFAULT_MAX_NPS, DEFAULT_MAX_SENTIMENT,
    DEFAULT_MIN_INCREASE, DEFAULT_RECHECK_SECONDS, DEFAULT_SENTIMENT_CHANNELS, Feedback, Kind, Rule, Summary, Webhook,
};
use crate::people::channel_of;
use crate::service::Orchestration;
use crate::storage::{Alert, AlertFilter, AlertState, StoredRule, WebhookState};

pub type AlertStream = Pin<Box<dyn Stream<Item = Result<pb::StreamAlertsResponse, Status>> + Send>>;

/// A threshold set on a rule of a kind it does not apply to.
fn not_for(field: &str, kind: &str) -> Status {
    invalid_argument(format!("rule.{field}"), format!("applies to {kind} rules only"))
}

/// The rule a message describes, with the defaults of what it leaves out; what the rule
/// must hold is checked by the service.
pub fn rule_of(r: &pb::AlertRule) -> Result<Rule, Status> {
    let kind = pb::AlertKind::try_from(r.kind).unwrap_or(pb::AlertKind::Unspecified);
    let only = |set: bool, field: &str, applies: pb::AlertKind, name: &str| match set && kind != applies {
        true => Err(not_for(field, name)),
        false => Ok(()),
    };
    only(r.max_nps.is_some(), "max_nps", pb::AlertKind::Detractor, "DETRACTOR")?;
    let sentiment = pb::AlertKind::NegativeSentiment;
    only(
        r.max_sentiment.is_some(),
        "max_sentiment",
        sentiment,
        "NEGATIVE_SENTIMENT",
    )?;
    only(!r.channels.is_empty(), "channels", sentiment, "NEGATIVE_SENTIMENT")?;
    let churn = pb::AlertKind::ChurnRiskJump;
    only(r.min_increase.is_some(), "min_increase", churn, "CHURN_RISK_JUMP")?;
    only(r.min_clv.is_some(), "min_clv", churn, "CHURN_RISK_JUMP")?;
    only(r.recheck.is_some(), "recheck", churn, "CHURN_RISK_JUMP")?;
    let drop = pb::AlertKind::SatisfactionDrop;
    only(!r.feedback.is_empty(), "feedback", drop, "SATISFACTION_DROP")?;
    only(r.window.is_some(), "window", drop, "SATISFACTION_DROP")?;
    only(r.significance.is_some(), "significance", drop, "SATISFACTION_DROP")?;
    only(r.min_responses.is_some(), "min_responses", drop, "SATISFACTION_DROP")?;
    let condition = match kind {
        pb::AlertKind::Unspecified => {
            return Err(invalid_argument(
                "rule.kind",
                format!(
                    "{} is not an alert kind: DETRACTOR, NEGATIVE_SENTIMENT, CHURN_RISK_JUMP, COMPLAINT or \
                     SATISFACTION_DROP",
                    r.kind
                ),
            ));
        }
        pb::AlertKind::Detractor => Condition::Detractor {
            max_nps: r.max_nps.unwrap_or(DEFAULT_MAX_NPS),
        },
        pb::AlertKind::NegativeSentiment => Condition::NegativeSentiment {
            max_sentiment: r.max_sentiment.unwrap_or(DEFAULT_MAX_SENTIMENT),
            channels: match r.channels.is_empty() {
                true => DEFAULT_SENTIMENT_CHANNELS.map(str::to_owned).to_vec(),
                false => r
                    .channels
                    .iter()
                    .enumerate()
                    .map(|(i, c)| channel_field(format!("rule.channels[{i}]"), *c))
                    .collect::<Result<_, _>>()?,
            },
        },
        pb::AlertKind::ChurnRiskJump => Condition::ChurnRiskJump {
            min_increase: r.min_increase.unwrap_or(DEFAULT_MIN_INCREASE),
            min_clv: r.min_clv.unwrap_or(0.0),
            recheck_seconds: seconds("rule.recheck".to_owned(), r.recheck.as_ref())?.unwrap_or(DEFAULT_RECHECK_SECONDS),
        },
        pb::AlertKind::Complaint => Condition::Complaint,
        pb::AlertKind::SatisfactionDrop => Condition::SatisfactionDrop {
            feedback: match r.feedback.as_str() {
                "nps" => Feedback::Nps,
                "csat" => Feedback::Csat,
                "mentions" => Feedback::Mentions,
                other => {
                    return Err(invalid_argument(
                        "rule.feedback",
                        format!("{other:?}: nps, csat or mentions"),
                    ));
                }
            },
            window_days: match seconds("rule.window".to_owned(), r.window.as_ref())? {
                None => 7,
                Some(s) if s % 86_400 == 0 => u32::try_from(s / 86_400).unwrap_or(u32::MAX),
                Some(_) => return Err(invalid_argument("rule.window", "whole days")),
            },
            significance: r.significance.unwrap_or(0.01),
            min_responses: r.min_responses.unwrap_or(30),
        },
    };
    let events = match (kind, r.events.is_empty()) {
        (pb::AlertKind::Complaint, true) => vec![DEFAULT_COMPLAINT_EVENT.to_owned()],
        _ => r.events.clone(),
    };
    Ok(Rule {
        name: r.name.clone(),
        description: r.description.clone(),
        condition,
        events,
        cooldown_seconds: match &r.cooldown {
            // An empty cooldown is refused by the check, not read as the default.
            Some(d) if d.seconds == 0 && d.nanos == 0 => 0,
            d => seconds("rule.cooldown".to_owned(), d.as_ref())?.unwrap_or(DEFAULT_COOLDOWN_SECONDS),
        },
        webhook: r.webhook.as_ref().map(|w| Webhook {
            url: w.url.clone(),
            secret: w.secret.clone(),
        }),
    })
}

fn kind_message(kind: Kind) -> pb::AlertKind {
    match kind {
        Kind::Detractor => pb::AlertKind::Detractor,
        Kind::NegativeSentiment => pb::AlertKind::NegativeSentiment,
        Kind::ChurnRiskJump => pb::AlertKind::ChurnRiskJump,
        Kind::Complaint => pb::AlertKind::Complaint,
        Kind::SatisfactionDrop => pb::AlertKind::SatisfactionDrop,
    }
}

/// A rule as the API shows it: without its webhook's secret.
pub fn rule_message(stored: &StoredRule) -> pb::AlertRule {
    let r = &stored.rule;
    let mut message = pb::AlertRule {
        name: r.name.clone(),
        description: r.description.clone(),
        kind: kind_message(r.kind()) as i32,
        events: r.events.clone(),
        cooldown: Some(duration(r.cooldown_seconds)),
        webhook: r.webhook.as_ref().map(|w| pb::AlertWebhook {
            url: w.url.clone(),
            secret: String::new(),
        }),
        created_at: Some(timestamp(stored.created_at)),
        ..Default::default()
    };
    match &r.condition {
        Condition::Detractor { max_nps } => message.max_nps = Some(*max_nps),
        Condition::NegativeSentiment {
            max_sentiment,
            channels,
        } => {
            message.max_sentiment = Some(*max_sentiment);
            message.channels = channels.iter().map(|c| channel_of(c) as i32).collect();
        }
        Condition::ChurnRiskJump {
            min_increase,
            min_clv,
            recheck_seconds,
        } => {
            message.min_increase = Some(*min_increase);
            message.min_clv = Some(*min_clv);
            message.recheck = Some(duration(*recheck_seconds));
        }
        Condition::Complaint => {}
        Condition::SatisfactionDrop {
            feedback,
            window_days,
            significance,
            min_responses,
        } => {
            message.feedback = feedback.as_str().to_owned();
            message.window = Some(duration(u64::from(*window_days) * 86_400));
            message.significance = Some(*significance);
            message.min_responses = Some(*min_responses);
        }
    }
    message
}

fn state_message(state: AlertState) -> pb::AlertState {
    match state {
        AlertState::Open => pb::AlertState::Open,
        AlertState::Acknowledged => pb::AlertState::Acknowledged,
        AlertState::Assigned => pb::AlertState::Assigned,
    }
}

fn summary_message(s: &Summary) -> pb::AlertProfile {
    pb::AlertProfile {
        name: s.name.clone(),
        email: s.email.clone(),
        region: s.region.clone(),
        segment: s.segment.clone(),
        clv: s.clv,
        churn_risk: s.churn_risk,
    }
}

pub fn alert_message(a: &Alert) -> pb::Alert {
    pb::Alert {
        alert_id: a.id.to_string(),
        sequence: a.sequence,
        rule: a.rule.clone(),
        kind: kind_message(a.kind) as i32,
        // A satisfaction alert is about no one.
        profile_id: match a.profile.as_uuid().is_nil() {
            true => String::new(),
            false => a.profile.to_string(),
        },
        reason: a.reason.clone(),
        event_id: a.event_id.clone(),
        raised_at: Some(timestamp(a.raised_at)),
        state: state_message(a.state) as i32,
        assignee: a.assignee.clone(),
        note: a.note.clone(),
        updated_at: Some(timestamp(a.updated_at)),
        profile: Some(summary_message(&a.summary)),
        webhook_state: match a.webhook {
            WebhookState::None => pb::AlertWebhookState::Unspecified,
            WebhookState::Pending => pb::AlertWebhookState::Pending,
            WebhookState::Delivered => pb::AlertWebhookState::Delivered,
            WebhookState::Failed => pb::AlertWebhookState::Failed,
        } as i32,
        webhook_attempts: a.webhook_attempts,
        webhook_error: a.webhook_error.clone(),
    }
}

fn alert_id(id: &str) -> Result<Uuid, Status> {
    id.parse()
        .map_err(|_| invalid_argument("alert_id", format!("{id:?} is not an alert id")))
}

fn filter_of(rules: Vec<String>, segment: String, region: String) -> AlertFilter {
    AlertFilter {
        rules,
        segment: (!segment.is_empty()).then_some(segment),
        region: (!region.is_empty()).then_some(region),
        ..Default::default()
    }
}

pub async fn create_rule(
    o: &Orchestration,
    request: Request<pb::CreateAlertRuleRequest>,
) -> Result<Response<pb::CreateAlertRuleResponse>, Status> {
    let principal = authorise(&request, Role::Admin, "create an alert rule")?;
    let rule = request
        .get_ref()
        .rule
        .as_ref()
        .ok_or_else(|| invalid_argument("rule", "required"))?;
    let stored = o.create_alert_rule(&principal.workspace, &rule_of(rule)?).await?;
    Ok(Response::new(pb::CreateAlertRuleResponse {
        rule: Some(rule_message(&stored)),
    }))
}

pub async fn list_rules(
    o: &Orchestration,
    request: Request<pb::ListAlertRulesRequest>,
) -> Result<Response<pb::ListAlertRulesResponse>, Status> {
    let principal = authorise(&request, Role::Read, "read alert rules")?;
    let rules = o.alert_rules(&principal.workspace).await?;
    Ok(Response::new(pb::ListAlertRulesResponse {
        rules: rules.iter().map(rule_message).collect(),
    }))
}

pub async fn delete_rule(
    o: &Orchestration,
    request: Request<pb::DeleteAlertRuleRequest>,
) -> Result<Response<pb::DeleteAlertRuleResponse>, Status> {
    let principal = authorise(&request, Role::Admin, "delete an alert rule")?;
    o.delete_alert_rule(&principal.workspace, &request.get_ref().name)
        .await?;
    Ok(Response::new(pb::DeleteAlertRuleResponse {}))
}

pub async fn list_alerts(
    o: &Orchestration,
    request: Request<pb::ListAlertsRequest>,
) -> Result<Response<pb::ListAlertsResponse>, Status> {
    let principal = authorise(&request, Role::Read, "read alerts")?;
    let req = request.into_inner();
    let (size, after) = page::<u64>(req.page.as_ref())?;
    let mut filter = filter_of(req.rules, req.segment, req.region);
    filter.state = match pb::AlertState::try_from(req.state) {
        Ok(pb::AlertState::Unspecified) => None,
        Ok(pb::AlertState::Open) => Some(AlertState::Open),
        Ok(pb::AlertState::Acknowledged) => Some(AlertState::Acknowledged),
        Ok(pb::AlertState::Assigned) => Some(AlertState::Assigned),
        Err(_) => {
            return Err(invalid_argument(
                "state",
                format!("{} is not an alert state", req.state),
            ));
        }
    };
    if !req.profile_id.is_empty() {
        filter.profile = Some(
            req.profile_id
                .parse()
                .map_err(|_| invalid_argument("profile_id", format!("{:?} is not a profile id", req.profile_id)))?,
        );
    }
    let alerts = o
        .store
        .alerts(&principal.workspace, &filter, after, size, req.newest_first)
        .await
        .map_err(corvus_platform::error::storage_status)?;
    Ok(Response::new(pb::ListAlertsResponse {
        page: next_page(alerts.len(), size, alerts.last().map(|a| a.sequence)),
        alerts: alerts.iter().map(alert_message).collect(),
    }))
}

pub async fn stream_alerts(
    o: &Orchestration,
    request: Request<pb::StreamAlertsRequest>,
) -> Result<Response<AlertStream>, Status> {
    let principal = authorise(&request, Role::Read, "read alerts")?;
    let req = request.into_inner();
    let filter = filter_of(req.rules, req.segment, req.region);
    let stream = o
        .alert_stream(principal.workspace, filter, req.after_sequence)
        .map(|item| match item {
            Ok(alert) => Ok(pb::StreamAlertsResponse {
                alert: Some(alert_message(&alert)),
            }),
            Err(e) => Err(Status::from(e)),
        });
    Ok(Response::new(Box::pin(stream)))
}

pub async fn acknowledge(
    o: &Orchestration,
    request: Request<pb::AcknowledgeAlertRequest>,
) -> Result<Response<pb::AcknowledgeAlertResponse>, Status> {
    let principal = authorise(&request, Role::Read, "acknowledge an alert")?;
    let id = alert_id(&request.get_ref().alert_id)?;
    let alert = o.acknowledge_alert(&principal.workspace, id).await?;
    Ok(Response::new(pb::AcknowledgeAlertResponse {
        alert: Some(alert_message(&alert)),
    }))
}

pub async fn assign(
    o: &Orchestration,
    request: Request<pb::AssignAlertRequest>,
) -> Result<Response<pb::AssignAlertResponse>, Status> {
    let principal = authorise(&request, Role::Read, "assign an alert")?;
    let req = request.get_ref();
    let id = alert_id(&req.alert_id)?;
    let alert = o
        .assign_alert(&principal.workspace, id, &req.assignee, &req.note)
        .await?;
    Ok(Response::new(pb::AssignAlertResponse {
        alert: Some(alert_message(&alert)),
    }))
}
