//! Orchestration through the public API: a person's events in through ingestion,
//! resolved by identity (traits, consent); a campaign created, refused when it does not
//! hold together, launched; Decide by an identifier, within the person's consent, with
//! content from their traits; the outcome an event carrying the decision id reports,
//! learnt; unknown and erased people refused.

use corvus_proto::common::v1::{Channel, Event, EventType, Identifier};
use corvus_proto::identity::v1 as idpb;
use corvus_proto::ingestion::v1::event_consumer_service_server::{EventConsumerService, EventConsumerServiceServer};
use corvus_proto::ingestion::v1::{DeliverRequest, DeliverResponse};
use corvus_proto::orchestration::v1 as pb;
use corvus_proto::orchestration::v1::orchestration_service_client::OrchestrationServiceClient;
use corvus_proto::raw::RawStruct;
use corvus_test_support::{Backend, on_both_backends};
use serde_json::json;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel as GrpcChannel;

use crate::audiences::{audience, built, compare};
use crate::identity::send;
use crate::scoring::{profile_of, track};
use crate::support::{Key, TestApp, spawn, spawn_with};

on_both_backends!(
    decide_through_the_api,
    entering_an_audience_triggers_a_campaign,
    bad_campaigns_and_people_are_refused,
    a_detractor_reaches_the_alert_stream
);

pub type OrchestrationClient = OrchestrationServiceClient<InterceptedService<GrpcChannel, Key>>;

/// A change that spoils a message, with the field the refusal names.
pub(crate) type Spoiler<T> = (fn(&mut T), &'static str);

pub async fn orchestration(app: &TestApp, key: &str) -> OrchestrationClient {
    OrchestrationServiceClient::with_interceptor(app.channel().await, Key::bearer(key))
}

fn identify(id: &str, email: &str, traits: serde_json::Value) -> Event {
    Event {
        message_id: id.to_owned(),
        r#type: EventType::Identify as i32,
        user_id: email.to_owned(),
        identifiers: vec![Identifier {
            kind: "email".to_owned(),
            value: email.to_owned(),
        }],
        traits: Some(RawStruct::from_json(traits.as_object().unwrap())),
        timestamp: Some(crate::scoring::at(1, 9)),
        ..Event::default()
    }
}

fn welcome(name: &str) -> pb::Campaign {
    pb::Campaign {
        name: name.to_owned(),
        tags: vec!["spring".to_owned()],
        actions: vec![pb::Action {
            name: "hello".to_owned(),
            subject: "Hi {{traits.first_name|there}}".to_owned(),
            ..Default::default()
        }],
        channels: vec![Channel::Sms as i32, Channel::Email as i32],
        consent_purposes: vec!["marketing".to_owned()],
        caps: vec![pb::FrequencyCap {
            limit: 2,
            calendar_days: 1,
            ..Default::default()
        }],
        quiet_hours: Some(pb::QuietHours {
            start: "21:00".to_owned(),
            end: "08:00".to_owned(),
        }),
        ..Default::default()
    }
}

/// The field an INVALID_ARGUMENT names.
pub(crate) fn field_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations[0].field.clone())
        .unwrap_or_default()
}

async fn decide(client: &mut OrchestrationClient, email: &str) -> Result<pb::DecideResponse, tonic::Status> {
    client
        .decide(pb::DecideRequest {
            person: Some(pb::decide_request::Person::Identifier(Identifier {
                kind: "email".to_owned(),
                value: email.to_owned(),
            })),
            placement: "newsletter".to_owned(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// A service that consumes orchestration's log over gRPC, as measurement would apart:
/// the decisions handed to it, in order.
#[derive(Clone, Default)]
struct DecisionSink {
    received: std::sync::Arc<std::sync::Mutex<Vec<pb::Decision>>>,
}

#[tonic::async_trait]
impl EventConsumerService for DecisionSink {
    async fn deliver(
        &self,
        request: tonic::Request<DeliverRequest>,
    ) -> Result<tonic::Response<DeliverResponse>, tonic::Status> {
        let mut received = self.received.lock().unwrap();
        received.extend(request.into_inner().decisions.into_iter().filter_map(|e| e.decision));
        Ok(tonic::Response::new(DeliverResponse::default()))
    }
}

/// Serves `sink` on an ephemeral port; its endpoint.
async fn serve_sink(sink: DecisionSink) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EventConsumerServiceServer::new(sink))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    endpoint
}

async fn decide_through_the_api(backend: Backend) {
    let sink = DecisionSink::default();
    let endpoint = serve_sink(sink.clone()).await;
    let Some(app) = spawn_with(backend, |c| {
        c.orchestration
            .consumers
            .push(corvus_ingestion::outbox::ConsumerConfig::new("exports", &endpoint));
    })
    .await
    else {
        return;
    };
    let who = ("user_id", "ada@example.com");
    send(
        &app,
        vec![
            identify(
                "i-1",
                "ada@example.com",
                json!({"first_name": "Ada", "timezone": "Europe/Paris"}),
            ),
            track(
                "c-1",
                who,
                "Consent Updated",
                crate::scoring::at(1, 10),
                json!({"purpose": "marketing", "channel": "email", "granted": true}),
            ),
        ],
    )
    .await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let mut admin = orchestration(&app, &app.admin_key).await;
    // Without quiet hours, so that the sends are due now whatever the hour.
    let created = admin
        .create_campaign(pb::CreateCampaignRequest {
            campaign: Some(pb::Campaign {
                quiet_hours: None,
                ..welcome("welcome")
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    assert_eq!((created.version, created.state), (1, pb::CampaignState::Draft as i32));
    // A draft decides nothing.
    let mut reader = orchestration(&app, &app.read_key).await;
    let none = decide(&mut reader, "ada@example.com").await.unwrap();
    assert!(none.decision.is_none());
    admin
        .set_campaign_state(pb::SetCampaignStateRequest {
            name: "welcome".to_owned(),
            state: pb::CampaignState::Live as i32,
        })
        .await
        .unwrap();
    let answer = decide(&mut reader, "ada@example.com").await.unwrap();
    let decision = answer.decision.unwrap();
    // Consent covers email only: sms is not used.
    assert_eq!(
        (
            decision.campaign.as_str(),
            decision.channel,
            decision.subject.as_str(),
            decision.placement.as_str()
        ),
        ("welcome", Channel::Email as i32, "Hi Ada", "newsletter")
    );
    assert_eq!((decision.policy.as_str(), decision.propensity), ("only", 1.0));
    let ada = profile_of(&mut app.identity(&app.admin_key).await, "email", "ada@example.com").await;
    assert_eq!(decision.profile_id, ada);
    // The cap of two a day: the third is blocked, with the reason.
    decide(&mut reader, "ada@example.com").await.unwrap().decision.unwrap();
    let third = decide(&mut reader, "ada@example.com").await.unwrap();
    assert!(third.decision.is_none());
    let blocked = &third.explanation.unwrap().blocked[0];
    assert_eq!(blocked.reason, pb::BlockReason::Cap as i32, "{blocked:?}");

    // An order carrying the decision id is its outcome.
    send(
        &app,
        vec![track(
            "o-1",
            who,
            "Order Completed",
            crate::scoring::at(2, 10),
            json!({"revenue": 20, "decision_id": decision.decision_id}),
        )],
    )
    .await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let logged = reader
        .get_decision(pb::GetDecisionRequest {
            decision_id: decision.decision_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(logged.outcome_event, "Order Completed");
    let listed = reader
        .list_decisions(pb::ListDecisionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .decisions;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].decision_id, decision.decision_id);
    // The decisions went on through orchestration's log to the service configured, in
    // order, as they were logged; its consumers have nothing left to take.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let consumers = reader
            .list_consumers(pb::ListConsumersRequest {})
            .await
            .unwrap()
            .into_inner()
            .consumers;
        let names: Vec<&str> = consumers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["exports", "measurement-exposures", "policy"]);
        if consumers.iter().all(|c| c.lag == 0) && sink.received.lock().unwrap().len() == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{consumers:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(*sink.received.lock().unwrap(), listed);

    // Paused by its tag: nothing is chosen.
    let paused = admin
        .pause_campaigns(pb::PauseCampaignsRequest {
            tag: "spring".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .paused;
    assert_eq!(paused, ["welcome"]);
    assert!(decide(&mut reader, "ada@example.com").await.unwrap().decision.is_none());

    // The sends went out through the default connector (the log), and each came back
    // into Corvus as a `Message Sent` event carrying its decision id.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let sent = reader
            .list_sends(pb::ListSendsRequest {
                state: pb::SendState::Sent as i32,
                page: None,
            })
            .await
            .unwrap()
            .into_inner()
            .sends;
        let events = app.stored(&app.admin_key).await;
        let reported = events.iter().any(|e| {
            let event = e.event.as_ref().unwrap();
            event.event == "Message Sent"
                && event.properties.as_ref().unwrap().to_json().unwrap()["decision_id"] == decision.decision_id.as_str()
        });
        if sent.len() == 2 && reported {
            assert_eq!(sent[0].to, "email:ada@example.com");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sends {sent:?}, reported {reported}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // A draft tried out on a scoring audience before it goes live.
    let mut scoring = crate::scoring::scoring(&app, &app.admin_key).await;
    scoring
        .create_audience(audience(
            "named_ada",
            compare(
                "traits.first_name",
                corvus_proto::scoring::v1::Operator::Eq,
                json!("Ada"),
            ),
        ))
        .await
        .unwrap();
    built(&mut scoring).await;
    let mut preview = welcome("preview");
    preview.audience = "named_ada".to_owned();
    admin
        .create_campaign(pb::CreateCampaignRequest {
            campaign: Some(preview),
        })
        .await
        .unwrap();
    let sim = reader
        .simulate_campaign(pb::SimulateCampaignRequest {
            name: "preview".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((sim.audience, sim.would_send), (1, 1), "{sim:?}");
    assert_eq!(sim.sends[0].channel, Channel::Email as i32);

    // Erased: NOT_FOUND, and the decisions are gone with the person.
    app.identity(&app.admin_key)
        .await
        .forget_profile(idpb::ForgetProfileRequest {
            profile_id: ada,
            allow_recreate: false,
        })
        .await
        .unwrap();
    app.downstream_caught_up().await;
    assert_eq!(
        decide(&mut reader, "ada@example.com").await.unwrap_err().code(),
        Code::NotFound
    );
    let after = reader
        .get_decision(pb::GetDecisionRequest {
            decision_id: decision.decision_id,
        })
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::NotFound);
    app.stop().await;
}

/// A campaign triggered by entering a scoring audience: the person who comes to match
/// it after the campaign went live is decided for, through scoring's stream of changes.
async fn entering_an_audience_triggers_a_campaign(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let who = ("user_id", "bo@example.com");
    send(
        &app,
        vec![
            identify("i-1", "bo@example.com", json!({"plan": "free"})),
            track(
                "c-1",
                who,
                "Consent Updated",
                crate::scoring::at(1, 10),
                json!({"purpose": "marketing", "channel": "email", "granted": true}),
            ),
        ],
    )
    .await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let mut scoring = crate::scoring::scoring(&app, &app.admin_key).await;
    scoring
        .create_audience(audience(
            "on_pro",
            compare("traits.plan", corvus_proto::scoring::v1::Operator::Eq, json!("pro")),
        ))
        .await
        .unwrap();
    built(&mut scoring).await;
    let mut admin = orchestration(&app, &app.admin_key).await;
    admin
        .create_campaign(pb::CreateCampaignRequest {
            campaign: Some(pb::Campaign {
                quiet_hours: None,
                trigger: Some(pb::Trigger {
                    trigger: Some(pb::trigger::Trigger::AudienceEntered("on_pro".to_owned())),
                }),
                ..welcome("upgraded")
            }),
        })
        .await
        .unwrap();
    admin
        .set_campaign_state(pb::SetCampaignStateRequest {
            name: "upgraded".to_owned(),
            state: pb::CampaignState::Live as i32,
        })
        .await
        .unwrap();
    // Orchestration looks at its live campaigns every second, and follows the audience
    // from then on.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    send(&app, vec![identify("i-2", "bo@example.com", json!({"plan": "pro"}))]).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let decisions = loop {
        let decisions = admin
            .list_decisions(pb::ListDecisionsRequest {
                campaign: "upgraded".to_owned(),
                page: None,
            })
            .await
            .unwrap()
            .into_inner()
            .decisions;
        if !decisions.is_empty() || tokio::time::Instant::now() > deadline {
            break decisions;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0].placement, "trigger: entered on_pro");
    assert_eq!(decisions[0].channel, Channel::Email as i32);
    app.stop().await;
}

async fn bad_campaigns_and_people_are_refused(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut admin = orchestration(&app, &app.admin_key).await;
    let bad = |change: fn(&mut pb::Campaign)| {
        let mut c = welcome("bad");
        change(&mut c);
        pb::CreateCampaignRequest { campaign: Some(c) }
    };
    let cases: [Spoiler<pb::Campaign>; 8] = [
        (
            |c| {
                c.arms = vec![
                    pb::Arm {
                        name: "a".into(),
                        weight: 0.5,
                        actions: vec![],
                    },
                    pb::Arm {
                        name: "b".into(),
                        weight: 0.4,
                        actions: vec![],
                    },
                ]
            },
            "campaign.arms",
        ),
        (|c| c.audience = "nobody".into(), "campaign.audience"),
        (
            |c| c.default_time_zone = "Mars/Olympus".into(),
            "campaign.default_time_zone",
        ),
        (|c| c.caps[0].calendar_days = 0, "campaign.caps[0].rolling"),
        (|c| c.actions[0].body = "{{email}}".into(), "campaign.actions[0].body"),
        (|c| c.channels.push(Channel::Unspecified as i32), "campaign.channels[2]"),
        (
            |c| c.quiet_hours.as_mut().unwrap().end = "8am".into(),
            "campaign.quiet_hours.end",
        ),
        // A schedule sends to an audience's members: it needs one.
        (
            |c| {
                c.trigger = Some(pb::Trigger {
                    trigger: Some(pb::trigger::Trigger::Schedule(pb::Schedule {
                        days: vec![1],
                        at: "09:00".into(),
                    })),
                })
            },
            "campaign.audience",
        ),
    ];
    for (change, field) in cases {
        let err = admin.create_campaign(bad(change)).await.unwrap_err();
        assert_eq!(
            (err.code(), field_of(&err).as_str()),
            (Code::InvalidArgument, field),
            "{err:?}"
        );
    }
    // Nothing was kept of them.
    let held = admin
        .list_campaigns(pb::ListCampaignsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .campaigns;
    assert!(held.is_empty(), "{held:?}");
    // A reader may decide but not create; an unknown person is NOT_FOUND.
    let mut reader = orchestration(&app, &app.read_key).await;
    let denied = reader
        .create_campaign(pb::CreateCampaignRequest {
            campaign: Some(welcome("welcome")),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(
        decide(&mut reader, "nobody@example.com").await.unwrap_err().code(),
        Code::NotFound
    );
    let err = reader
        .decide(pb::DecideRequest {
            person: Some(pb::decide_request::Person::ProfileId("not-an-id".into())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), field_of(&err).as_str()),
        (Code::InvalidArgument, "profile_id")
    );
    let err = reader
        .simulate_campaign(pb::SimulateCampaignRequest {
            name: "nothing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    app.stop().await;
}

/// A survey answer of 3 through ingestion: identity resolves it, orchestration raises a
/// detractor alert with the person's summary, and StreamAlerts carries it; the alert
/// is then acknowledged and assigned. Bad rules are refused with the field.
async fn a_detractor_reaches_the_alert_stream(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut admin = orchestration(&app, &app.admin_key).await;
    let rule = pb::AlertRule {
        name: "detractors".to_owned(),
        kind: pb::AlertKind::Detractor as i32,
        webhook: Some(pb::AlertWebhook {
            url: "http://127.0.0.1:9/alerts".to_owned(),
            secret: "a-secret-of-some-length".to_owned(),
        }),
        ..Default::default()
    };
    let created = admin
        .create_alert_rule(pb::CreateAlertRuleRequest {
            rule: Some(rule.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .rule
        .unwrap();
    // The defaults are filled in; the secret is never shown.
    assert_eq!(created.max_nps, Some(6.0));
    assert_eq!(created.cooldown.unwrap().seconds, 86_400);
    assert_eq!(created.webhook.unwrap().secret, "");
    let bad: [Spoiler<pb::AlertRule>; 5] = [
        (|r| r.kind = pb::AlertKind::Unspecified as i32, "rule.kind"),
        (
            |r| r.webhook.as_mut().unwrap().url = "ftp://example.com".into(),
            "rule.webhook.url",
        ),
        (
            |r| r.cooldown = Some(prost_types::Duration { seconds: 0, nanos: 0 }),
            "rule.cooldown",
        ),
        (|r| r.max_nps = Some(11.0), "rule.max_nps"),
        (|r| r.min_clv = Some(10.0), "rule.min_clv"),
    ];
    for (change, field) in bad {
        let mut r = rule.clone();
        r.name = "other".to_owned();
        change(&mut r);
        let err = admin
            .create_alert_rule(pb::CreateAlertRuleRequest { rule: Some(r) })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), field_of(&err).as_str()),
            (Code::InvalidArgument, field),
            "{err:?}"
        );
    }
    let mut reader = orchestration(&app, &app.read_key).await;
    let mut stream = reader
        .stream_alerts(pb::StreamAlertsRequest {
            rules: vec!["detractors".to_owned()],
            region: "FR".to_owned(),
            after_sequence: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let who = ("user_id", "ada@example.com");
    send(
        &app,
        vec![
            identify(
                "i-1",
                "ada@example.com",
                json!({"first_name": "Ada", "email": "ada@example.com", "region": "FR"}),
            ),
            track(
                "s-1",
                who,
                "Survey Answered",
                crate::scoring::at(1, 10),
                json!({"nps": 3, "comment": "the parcel came late"}),
            ),
        ],
    )
    .await;
    let alert = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("an alert within 10 s")
        .unwrap()
        .unwrap()
        .alert
        .unwrap();
    let ada = profile_of(&mut app.identity(&app.admin_key).await, "email", "ada@example.com").await;
    assert_eq!(
        (alert.rule.as_str(), alert.kind, alert.profile_id.as_str()),
        ("detractors", pb::AlertKind::Detractor as i32, ada.as_str())
    );
    assert!(
        alert.reason.starts_with("NPS 3 on \"Survey Answered\""),
        "{}",
        alert.reason
    );
    let profile = alert.profile.clone().unwrap();
    assert_eq!(
        (profile.name.as_str(), profile.email.as_str(), profile.region.as_str()),
        ("Ada", "ada@example.com", "FR")
    );
    assert_eq!(alert.state, pb::AlertState::Open as i32);
    // The webhook's endpoint does not answer: the alert is pending meanwhile.
    assert_ne!(alert.webhook_state, pb::AlertWebhookState::Unspecified as i32);

    let acked = reader
        .acknowledge_alert(pb::AcknowledgeAlertRequest {
            alert_id: alert.alert_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .alert
        .unwrap();
    assert_eq!(acked.state, pb::AlertState::Acknowledged as i32);
    let assigned = reader
        .assign_alert(pb::AssignAlertRequest {
            alert_id: alert.alert_id.clone(),
            assignee: "care-team".to_owned(),
            note: "call her back".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .alert
        .unwrap();
    assert_eq!(
        (assigned.state, assigned.assignee.as_str()),
        (pb::AlertState::Assigned as i32, "care-team")
    );
    let listed = reader
        .list_alerts(pb::ListAlertsRequest {
            state: pb::AlertState::Assigned as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].note, "call her back");
    let unknown = reader
        .acknowledge_alert(pb::AcknowledgeAlertRequest {
            alert_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    // A reader may not make rules.
    let denied = reader
        .create_alert_rule(pb::CreateAlertRuleRequest { rule: Some(rule) })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // A stream runs until its caller leaves: the server drains once it has.
    drop(stream);
    app.stop().await;
}
