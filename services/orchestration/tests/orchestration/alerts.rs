//! Hot alerts on both backends: identity's log held to alert rules; one alert per rule
//! and person within the cooldown, across replicas; detractors, complaints, negative
//! chats scored by the lexicon, churn-risk jumps of valuable customers; the stream,
//! filtered and resumable, with alerts raised on another replica; acknowledgement and
//! assignment; merges and erasures; signed webhooks, retried, one hanging endpoint
//! holding up no other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use corvus_orchestration::alerts::{Rule, WebhookSettings};
use corvus_orchestration::domain::alert::{Condition, Kind, Webhook};
use corvus_orchestration::people::Person;
use corvus_orchestration::storage::{Alert, AlertFilter, AlertState, WebhookState};
use corvus_orchestration::{Orchestration, OrchestrationError, webhook};
use corvus_proto::ProfileId;
use corvus_proto::common::v1::{Channel, Context, Event, EventType, StoredEvent};
use corvus_proto::identity::v1::{LogEntry, ProfilesErased, ProfilesMerged, log_entry, profile_change};
use corvus_test_support::Backend;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Setup, change, merged_into, ws};

fn rule(name: &str, condition: Condition) -> Rule {
    Rule {
        name: name.to_owned(),
        description: String::new(),
        events: match condition {
            Condition::Complaint => vec!["Complaint Filed".to_owned()],
            _ => Vec::new(),
        },
        condition,
        cooldown_seconds: 86_400,
        webhook: None,
    }
}

fn detractors() -> Rule {
    rule("detractors", Condition::Detractor { max_nps: 6.0 })
}

/// A customer as identity and scoring would describe them.
fn customer(region: &str, clv: f64, churn_risk: f64) -> Person {
    Person {
        traits: json!({"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com", "region": region})
            .as_object()
            .unwrap()
            .clone(),
        segment: Some("loyal".to_owned()),
        scores: [("clv".to_owned(), clv), ("churn_risk".to_owned(), churn_risk)].into(),
        ..Default::default()
    }
}

/// A track event of the person, on a channel, as identity's log carries it.
fn event(profile: ProfileId, name: &str, channel: Channel, properties: serde_json::Value) -> LogEntry {
    LogEntry {
        entry: Some(log_entry::Entry::Event(StoredEvent {
            workspace_id: "acme".to_owned(),
            event_id: uuid::Uuid::now_v7().to_string(),
            profile_id: profile.to_string(),
            event: Some(Event {
                r#type: EventType::Track as i32,
                event: name.to_owned(),
                properties: Some(corvus_proto::raw::RawStruct::from_json(properties.as_object().unwrap())),
                context: Some(Context {
                    channel: channel as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

fn answer(profile: ProfileId, nps: u32) -> LogEntry {
    event(
        profile,
        "Survey Answered",
        Channel::Survey,
        json!({"nps": nps, "comment": "slow delivery"}),
    )
}

fn event_id(entry: &LogEntry) -> String {
    match &entry.entry {
        Some(log_entry::Entry::Event(e)) => e.event_id.clone(),
        _ => unreachable!("an event"),
    }
}

async fn alerts_of(o: &Orchestration, filter: AlertFilter) -> Vec<Alert> {
    o.store.alerts(&ws(), &filter, None, 100, false).await.unwrap()
}

async fn all_alerts(o: &Orchestration) -> Vec<Alert> {
    alerts_of(o, AlertFilter::default()).await
}

fn about(profile: ProfileId) -> AlertFilter {
    AlertFilter {
        profile: Some(profile),
        ..Default::default()
    }
}

pub async fn a_detractor_raises_one_alert_per_cooldown(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let o = setup.replica().await;
    o.create_alert_rule(&ws(), &detractors()).await.unwrap();
    let ada = setup.people.add(customer("FR", 1_200.0, 0.3));
    let first = answer(ada, 3);
    o.deliver(std::slice::from_ref(&first)).await.unwrap();
    let raised = all_alerts(&o).await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    let alert = &raised[0];
    assert_eq!(
        (alert.rule.as_str(), alert.kind, alert.profile, alert.state),
        ("detractors", Kind::Detractor, ada, AlertState::Open)
    );
    assert_eq!(alert.event_id, event_id(&first));
    assert_eq!(
        alert.reason,
        r#"NPS 3 on "Survey Answered": a detractor, 6 or less: "slow delivery""#
    );
    let s = &alert.summary;
    assert_eq!(
        (s.name.as_str(), s.email.as_str(), s.region.as_str(), s.segment.as_str()),
        ("Ada Lovelace", "ada@example.com", "FR", "loyal")
    );
    assert_eq!((s.clv, s.churn_risk), (Some(1_200.0), Some(0.3)));
    assert_eq!(alert.webhook, WebhookState::None);
    // A second answer within the cooldown raises none, even on a fresh replica that
    // knows nothing of the first; a promoter's none either.
    o.deliver(&[answer(ada, 2)]).await.unwrap();
    setup.replica().await.deliver(&[answer(ada, 1)]).await.unwrap();
    let other = setup.people.add(customer("DE", 10.0, 0.1));
    o.deliver(&[answer(other, 9)]).await.unwrap();
    assert_eq!(all_alerts(&o).await.len(), 1);
    // Another person raises their own.
    o.deliver(&[answer(other, 0)]).await.unwrap();
    let theirs = alerts_of(&o, about(other)).await;
    assert_eq!(theirs.len(), 1);
    assert!(theirs[0].sequence > alert.sequence);

    // Rules are checked, and named once.
    let mut bad = detractors();
    bad.cooldown_seconds = 0;
    match o.create_alert_rule(&ws(), &bad).await {
        Err(OrchestrationError::Invalid { field, .. }) => assert_eq!(field, "rule.cooldown"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        o.create_alert_rule(&ws(), &detractors()).await,
        Err(OrchestrationError::AlreadyExists(_))
    ));
    assert!(matches!(
        o.delete_alert_rule(&ws(), "nobody").await,
        Err(OrchestrationError::NotFound(_))
    ));
    // A deleted rule raises nothing more; its alerts stay.
    o.delete_alert_rule(&ws(), "detractors").await.unwrap();
    let third = setup.people.add(customer("FR", 1.0, 0.1));
    o.deliver(&[answer(third, 1)]).await.unwrap();
    assert_eq!(all_alerts(&o).await.len(), 2);
}

pub async fn complaints_and_negative_chats_raise_alerts_of_their_kinds(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let o = setup.replica().await;
    o.create_alert_rule(&ws(), &rule("complaints", Condition::Complaint))
        .await
        .unwrap();
    let unhappy = rule(
        "unhappy",
        Condition::NegativeSentiment {
            max_sentiment: -0.25,
            channels: vec!["chat".to_owned(), "social".to_owned()],
        },
    );
    o.create_alert_rule(&ws(), &unhappy).await.unwrap();
    let (ada, bob, cy) = (
        setup.people.add(customer("FR", 100.0, 0.1)),
        setup.people.add(customer("FR", 100.0, 0.1)),
        setup.people.add(customer("FR", 100.0, 0.1)),
    );
    o.deliver(&[
        event(
            ada,
            "Complaint Filed",
            Channel::CallCenter,
            json!({"reason": "broken on arrival"}),
        ),
        // Scored by the lexicon: no sentiment was sent.
        event(
            bob,
            "Message Sent",
            Channel::Chat,
            json!({"text": "This is terrible, the worst service I have ever had"}),
        ),
        // Kind words, or the wrong channel, raise nothing.
        event(
            cy,
            "Message Sent",
            Channel::Chat,
            json!({"text": "Thank you, that was wonderful help"}),
        ),
        event(cy, "Email Replied", Channel::Email, json!({"text": "This is terrible"})),
        // A sentiment sent with the mention is taken as sent.
        event(cy, "Mentioned", Channel::Social, json!({"sentiment": -0.8})),
    ])
    .await
    .unwrap();
    let by = |p| {
        let o = &o;
        async move { alerts_of(o, about(p)).await }
    };
    let complaint = by(ada).await;
    assert_eq!(complaint.len(), 1);
    assert_eq!(
        (complaint[0].kind, complaint[0].reason.as_str()),
        (Kind::Complaint, r#"complaint "Complaint Filed": "broken on arrival""#)
    );
    let chat = by(bob).await;
    assert_eq!(chat.len(), 1);
    assert_eq!(chat[0].kind, Kind::NegativeSentiment);
    assert!(chat[0].reason.starts_with("negative sentiment -"), "{}", chat[0].reason);
    assert!(chat[0].reason.contains("on chat"), "{}", chat[0].reason);
    let mention = by(cy).await;
    assert_eq!(mention.len(), 1, "{mention:?}");
    assert!(mention[0].reason.starts_with("negative sentiment -0.80 on social"));
}

pub async fn a_churn_jump_alerts_for_valuable_customers(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let o = setup.replica().await;
    let jump = rule(
        "slipping",
        Condition::ChurnRiskJump {
            min_increase: 0.2,
            min_clv: 500.0,
            recheck_seconds: 0,
        },
    );
    o.create_alert_rule(&ws(), &jump).await.unwrap();
    let rich = setup.people.add(customer("FR", 2_000.0, 0.2));
    let modest = setup.people.add(customer("FR", 100.0, 0.2));
    let visit = |p| event(p, "Product Viewed", Channel::Web, json!({}));
    // The first look only keeps the risk.
    o.deliver(&[visit(rich), visit(modest)]).await.unwrap();
    assert!(all_alerts(&o).await.is_empty());
    // Up by less than the threshold: nothing.
    let set_risk = |p: ProfileId, risk: f64| {
        setup
            .people
            .people
            .lock()
            .unwrap()
            .get_mut(&p)
            .unwrap()
            .scores
            .insert("churn_risk".to_owned(), risk);
    };
    set_risk(rich, 0.3);
    o.deliver(&[visit(rich)]).await.unwrap();
    assert!(all_alerts(&o).await.is_empty());
    // Up by the threshold since the last look: the valuable customer only.
    set_risk(rich, 0.5);
    set_risk(modest, 0.9);
    o.deliver(&[visit(rich), visit(modest)]).await.unwrap();
    let raised = all_alerts(&o).await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!((raised[0].kind, raised[0].profile), (Kind::ChurnRiskJump, rich));
    assert!(
        raised[0].reason.starts_with("churn risk rose from 0.30 to 0.50"),
        "{}",
        raised[0].reason
    );
    assert_eq!(raised[0].summary.churn_risk, Some(0.5));

    // With a recheck of an hour, the person is looked at once: a second rise within it
    // is not seen.
    o.delete_alert_rule(&ws(), "slipping").await.unwrap();
    let hourly = rule(
        "hourly",
        Condition::ChurnRiskJump {
            min_increase: 0.2,
            min_clv: 0.0,
            recheck_seconds: 3_600,
        },
    );
    o.create_alert_rule(&ws(), &hourly).await.unwrap();
    let cy = setup.people.add(customer("FR", 10.0, 0.1));
    o.deliver(&[visit(cy)]).await.unwrap();
    set_risk(cy, 0.9);
    o.deliver(&[visit(cy)]).await.unwrap();
    setup.replica().await.deliver(&[visit(cy)]).await.unwrap();
    assert!(alerts_of(&o, about(cy)).await.is_empty());
}

/// Two replicas delivering the same events raise each alert once; a stream on one
/// sees the alerts raised on the other, filtered by rule and region, and resumes after
/// a sequence.
pub async fn replicas_raise_one_alert_and_stream_it(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let (a, b) = (setup.replica().await, setup.replica().await);
    a.create_alert_rule(&ws(), &detractors()).await.unwrap();
    a.create_alert_rule(&ws(), &rule("complaints", Condition::Complaint))
        .await
        .unwrap();
    let filter = AlertFilter {
        rules: vec!["detractors".to_owned()],
        region: Some("FR".to_owned()),
        ..Default::default()
    };
    let mut live = a.alert_stream(ws(), filter.clone(), None);
    // The stream starts from now: let it take its place before anything is raised.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), live.next())
            .await
            .is_err()
    );

    let people: Vec<ProfileId> = (0..8).map(|_| setup.people.add(customer("FR", 1.0, 0.1))).collect();
    let german = setup.people.add(customer("DE", 1.0, 0.1));
    let mut entries: Vec<LogEntry> = people.iter().map(|p| answer(*p, 2)).collect();
    entries.push(answer(german, 2));
    entries.push(event(people[0], "Complaint Filed", Channel::Web, json!({})));
    let (x, y) = tokio::join!(a.deliver(&entries), b.deliver(&entries));
    x.unwrap();
    y.unwrap();
    let raised = all_alerts(&a).await;
    assert_eq!(raised.len(), 10, "one per person and rule: {raised:?}");
    let sequences: Vec<u64> = raised.iter().map(|r| r.sequence).collect();
    assert_eq!(sequences, (1..=10).collect::<Vec<_>>(), "numbered without gaps");

    // The stream has the eight French detractors, whichever replica raised them.
    let mut streamed = Vec::new();
    while streamed.len() < 8 {
        let next = tokio::time::timeout(Duration::from_secs(5), live.next())
            .await
            .expect("an alert within 5 s")
            .unwrap()
            .unwrap();
        streamed.push(next);
    }
    assert!(
        streamed
            .iter()
            .all(|s| s.rule == "detractors" && s.summary.region == "FR")
    );
    // One more raised on the other replica only: it reaches the stream on this one.
    let late = setup.people.add(customer("FR", 1.0, 0.1));
    b.deliver(&[answer(late, 4)]).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .expect("the other replica's alert within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(next.profile, late);
    // Nothing else matches.
    assert!(
        tokio::time::timeout(Duration::from_millis(600), live.next())
            .await
            .is_err()
    );
    // Resumed after the fourth, the rest; from 0, all.
    let after = streamed[3].sequence;
    let resumed: Vec<Alert> = b
        .alert_stream(ws(), filter.clone(), Some(after))
        .take(5)
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(
        resumed.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        streamed[4..]
            .iter()
            .chain([&next])
            .map(|r| r.sequence)
            .collect::<Vec<_>>()
    );
    let everything: Vec<Alert> = b
        .alert_stream(ws(), AlertFilter::default(), Some(0))
        .take(11)
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(everything.len(), 11);
}

pub async fn alerts_are_acknowledged_assigned_moved_and_erased(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let o = setup.replica().await;
    o.create_alert_rule(&ws(), &detractors()).await.unwrap();
    let merged = setup.people.add(customer("FR", 1.0, 0.1));
    o.deliver(&[answer(merged, 1)]).await.unwrap();
    let alert = all_alerts(&o).await.remove(0);
    let acked = o.acknowledge_alert(&ws(), alert.id).await.unwrap();
    assert_eq!(acked.state, AlertState::Acknowledged);
    let assigned = o
        .assign_alert(&ws(), alert.id, "care-team@example.com", "call back today")
        .await
        .unwrap();
    assert_eq!(
        (assigned.state, assigned.assignee.as_str(), assigned.note.as_str()),
        (AlertState::Assigned, "care-team@example.com", "call back today")
    );
    // Acknowledged again, it stays assigned.
    assert_eq!(
        o.acknowledge_alert(&ws(), alert.id).await.unwrap().state,
        AlertState::Assigned
    );
    assert!(matches!(
        o.acknowledge_alert(&ws(), uuid::Uuid::now_v7()).await,
        Err(OrchestrationError::NotFound(_))
    ));
    assert!(matches!(
        o.assign_alert(&ws(), alert.id, " ", "").await,
        Err(OrchestrationError::Invalid { .. })
    ));
    let state = AlertFilter {
        state: Some(AlertState::Assigned),
        ..Default::default()
    };
    assert_eq!(alerts_of(&o, state).await.len(), 1);

    // Merged into a survivor: the alert and the cooldown are the survivor's, before
    // an answer in the merge's own delivery is judged (merges are written together,
    // but before any alert is raised).
    let survivor = setup.people.add(customer("FR", 1.0, 0.1));
    let merge = change(profile_change::Change::Merged(ProfilesMerged {
        survivor_id: survivor.to_string(),
        merged_ids: vec![merged.to_string()],
        ..Default::default()
    }));
    setup
        .replica()
        .await
        .deliver(&[merge, answer(survivor, 0)])
        .await
        .unwrap();
    assert_eq!(
        alerts_of(&o, about(survivor)).await.len(),
        1,
        "the cooldown moved with it"
    );

    // Erased: the alert and the cooldown are gone.
    let (_, answers) = o
        .deliver(&[change(profile_change::Change::Erased(ProfilesErased {
            profile_ids: vec![survivor.to_string()],
            ..Default::default()
        }))])
        .await
        .unwrap();
    assert_eq!(answers[0].removed["alerts"], 2, "the alert and its cooldown");
    assert!(all_alerts(&o).await.is_empty());
    assert!(matches!(
        o.acknowledge_alert(&ws(), alert.id).await,
        Err(OrchestrationError::NotFound(_))
    ));

    // An answer, then its person merged away, in one delivery: the alert is about the
    // one they became.
    let (early, later) = (
        setup.people.add(customer("FR", 1.0, 0.1)),
        setup.people.add(customer("FR", 1.0, 0.1)),
    );
    o.deliver(&[
        answer(early, 2),
        change(profile_change::Change::Merged(ProfilesMerged {
            survivor_id: later.to_string(),
            merged_ids: vec![early.to_string()],
            ..Default::default()
        })),
    ])
    .await
    .unwrap();
    assert_eq!(alerts_of(&o, about(later)).await.len(), 1);
    assert!(alerts_of(&o, about(early)).await.is_empty());

    // A chain of merges in one delivery: the alerts and cooldowns of each merged
    // profile end with the last survivor, whose own answer then raises nothing.
    let [a, b, c] = [(); 3].map(|()| setup.people.add(customer("FR", 1.0, 0.1)));
    o.deliver(&[answer(a, 1), answer(b, 2)]).await.unwrap();
    o.deliver(&[merged_into(b, &[a]), merged_into(c, &[b]), answer(c, 0)])
        .await
        .unwrap();
    assert_eq!(alerts_of(&o, about(c)).await.len(), 2, "a's and b's, and no third");
    assert!(alerts_of(&o, about(a)).await.is_empty());
    assert!(alerts_of(&o, about(b)).await.is_empty());
}

const SECRET: &str = "an-alert-secret-of-some-length";

/// What an endpoint received, by path: (headers, body).
type Received = Arc<Mutex<Vec<(String, HeaderMap, String)>>>;
/// Requests seen per path and idempotency key.
type Tries = Arc<Mutex<HashMap<String, u32>>>;

/// An endpoint on loopback: `/ok` answers 200, `/flaky` 500 then 200 for each
/// idempotency key, `/hang` never within a test, anything else 400.
async fn endpoint() -> (String, Received) {
    let received: Received = Arc::default();
    let tries: Tries = Arc::default();
    let app = axum::Router::new()
        .route(
            "/{path}",
            axum::routing::post(
                |Path(path): Path<String>,
                 AxumState((received, tries)): AxumState<(Received, Tries)>,
                 headers: HeaderMap,
                 body: String| async move {
                    let key = headers
                        .get(webhook::IDEMPOTENCY_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    received.lock().unwrap().push((path.clone(), headers, body));
                    let n = {
                        let mut tries = tries.lock().unwrap();
                        let n = tries.entry(format!("{path}/{key}")).or_default();
                        *n += 1;
                        *n
                    };
                    match path.as_str() {
                        "ok" => StatusCode::OK,
                        "flaky" if n == 1 => StatusCode::INTERNAL_SERVER_ERROR,
                        "flaky" => StatusCode::OK,
                        "hang" => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            StatusCode::OK
                        }
                        _ => StatusCode::BAD_REQUEST,
                    }
                },
            ),
        )
        .with_state((received.clone(), tries));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn hooked(name: &str, condition: Condition, url: String) -> Rule {
    Rule {
        webhook: Some(Webhook {
            url,
            secret: SECRET.to_owned(),
        }),
        ..rule(name, condition)
    }
}

/// Waits up to `secs` for `check`.
async fn until(secs: u64, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

async fn alert_of(o: &Orchestration, rule: &str) -> Alert {
    let filter = AlertFilter {
        rules: vec![rule.to_owned()],
        ..Default::default()
    };
    alerts_of(o, filter).await.remove(0)
}

pub async fn alert_webhooks_are_signed_retried_and_independent(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let (url, received) = endpoint().await;
    let settings = WebhookSettings {
        timeout: Duration::from_secs(3),
        backoff: Duration::from_millis(50),
        max_attempts: 2,
        poll: Duration::from_millis(100),
        concurrency: 8,
    };
    let o = setup.replica().await.with_alert_webhooks(settings);
    // Two rules on the same complaint: one endpoint hangs, the other fails once. A
    // detractor goes to one that answers, a negative mention to one that refuses.
    let complaint = |name: &str, path: &str| hooked(name, Condition::Complaint, format!("{url}/{path}"));
    for r in [
        complaint("hanging", "hang"),
        complaint("flaky", "flaky"),
        hooked("detractors", Condition::Detractor { max_nps: 6.0 }, format!("{url}/ok")),
        hooked(
            "refused",
            Condition::NegativeSentiment {
                max_sentiment: -0.25,
                channels: vec!["social".to_owned()],
            },
            format!("{url}/bad"),
        ),
    ] {
        o.create_alert_rule(&ws(), &r).await.unwrap();
    }
    let stop = CancellationToken::new();
    let mut task = o.spawn_alert_webhooks(stop.clone());
    let ada = setup.people.add(customer("FR", 1.0, 0.1));
    let started = tokio::time::Instant::now();
    o.deliver(&[
        event(ada, "Complaint Filed", Channel::Web, json!({})),
        answer(ada, 2),
        event(ada, "Mentioned", Channel::Social, json!({"sentiment": -0.9})),
    ])
    .await
    .unwrap();
    // The hanging endpoint holds up neither the detractor's nor the flaky one's retry.
    let delivered = until(5, async || {
        let (d, f) = (alert_of(&o, "detractors").await, alert_of(&o, "flaky").await);
        d.webhook == WebhookState::Delivered && f.webhook == WebhookState::Delivered
    })
    .await;
    assert!(delivered, "{:?}", all_alerts(&o).await);
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "delivered in {:?}, within the hanging endpoint's timeout",
        started.elapsed()
    );
    assert_eq!(alert_of(&o, "flaky").await.webhook_attempts, 2);
    assert_eq!(alert_of(&o, "detractors").await.webhook_attempts, 1);
    let refused = alert_of(&o, "refused").await;
    assert_eq!(refused.webhook, WebhookState::Failed);
    assert!(refused.webhook_error.contains("400"), "{}", refused.webhook_error);
    assert_eq!(alert_of(&o, "hanging").await.webhook, WebhookState::Pending);

    // Each request is signed over "<t>.<body>" and carries the alert id as its key;
    // the flaky endpoint saw the same key twice.
    let flaky = alert_of(&o, "flaky").await;
    let requests = received.lock().unwrap().clone();
    for (path, headers, body) in &requests {
        let signature = headers[webhook::SIGNATURE_HEADER].to_str().unwrap();
        let t: i64 = signature
            .strip_prefix("t=")
            .and_then(|rest| rest.split(',').next())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(signature, webhook::signature(SECRET, t, body.as_bytes()), "{path}");
        let sent: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            headers[webhook::IDEMPOTENCY_HEADER].to_str().unwrap(),
            sent["alert_id"].as_str().unwrap()
        );
        assert_eq!(sent["profile"]["region"], "FR");
    }
    let flaky_keys: Vec<&str> = requests
        .iter()
        .filter(|(path, _, _)| path == "flaky")
        .map(|(_, headers, _)| headers[webhook::IDEMPOTENCY_HEADER].to_str().unwrap())
        .collect();
    assert_eq!(flaky_keys, [flaky.id.to_string(), flaky.id.to_string()]);

    // The hanging endpoint times out twice and is given up, recorded on the alert.
    let given_up = until(15, async || {
        alert_of(&o, "hanging").await.webhook == WebhookState::Failed
    })
    .await;
    let hanging = alert_of(&o, "hanging").await;
    assert!(given_up, "{hanging:?}");
    assert_eq!(hanging.webhook_attempts, 2);
    assert_eq!(hanging.webhook_error, "timed out");
    stop.cancel();
    while task.join_next().await.is_some() {}
}
