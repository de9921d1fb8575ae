//! Orchestration, one conformance suite for Postgres and SQLite: campaigns versioned
//! and moved through their states; Decide within caps under concurrent calls across two
//! replicas, never choosing a paused campaign once the pause returned, within budgets,
//! consent and quiet hours; arms and holdouts by hashing; outcomes that teach the
//! policy, through merges and erasures; decisions that replay.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corvus_orchestration::decide::DecideInput;
use corvus_orchestration::domain::campaign::Definition;
use corvus_orchestration::domain::policy;
use corvus_orchestration::people::{AudienceChange, Caller, Changes, Consent, Directory, Person, Targets, Who};
use corvus_orchestration::storage::{self, Reason, State, TriggerKind};
use corvus_orchestration::{Orchestration, OrchestrationConfig, OrchestrationError};
use corvus_platform::{Principal, Role};
use corvus_proto::common::v1::{Event, EventType, StoredEvent};
use corvus_proto::identity::v1::{LogEntry, ProfileChange, ProfilesErased, ProfilesMerged, log_entry, profile_change};
use corvus_proto::{ProfileId, WorkspaceId};
use corvus_test_support::{Backend, TempDir, on_both_backends};
use tokio_util::sync::CancellationToken;

mod alerts;
mod delivery;
mod log;
mod simulate;
mod triggers;

use alerts::{
    a_churn_jump_alerts_for_valuable_customers, a_detractor_raises_one_alert_per_cooldown,
    alert_webhooks_are_signed_retried_and_independent, alerts_are_acknowledged_assigned_moved_and_erased,
    complaints_and_negative_chats_raise_alerts_of_their_kinds, replicas_raise_one_alert_and_stream_it,
};
use delivery::each_send_goes_once_through_its_connector;
use futures::StreamExt as _;
use log::decisions_are_handed_on_once_in_order_and_erased;
use simulate::a_simulation_decides_for_the_audience_and_changes_nothing;
use triggers::{triggers_decide_on_events_waits_and_scores, triggers_follow_audiences_and_schedules};

on_both_backends!(
    a_detractor_raises_one_alert_per_cooldown,
    complaints_and_negative_chats_raise_alerts_of_their_kinds,
    a_churn_jump_alerts_for_valuable_customers,
    replicas_raise_one_alert_and_stream_it,
    alerts_are_acknowledged_assigned_moved_and_erased,
    alert_webhooks_are_signed_retried_and_independent,
    each_send_goes_once_through_its_connector,
    decisions_are_handed_on_once_in_order_and_erased,
    triggers_decide_on_events_waits_and_scores,
    triggers_follow_audiences_and_schedules,
    a_simulation_decides_for_the_audience_and_changes_nothing,
    campaigns_are_versioned_and_move_through_states,
    caps_hold_under_concurrent_decisions_across_replicas,
    a_paused_campaign_is_never_chosen_after_its_pause_returned,
    a_budget_is_never_overspent,
    arms_and_holdouts_are_stable_hashes,
    consent_quiet_hours_audience_and_priority_shape_the_decision,
    outcomes_teach_the_policy_through_merges_and_erasures,
);

/// People held in memory, as identity and scoring would answer.
#[derive(Default)]
struct People {
    people: std::sync::Mutex<HashMap<ProfileId, Person>>,
    audiences: Vec<String>,
    /// Audience members identity no longer knows.
    gone: std::sync::Mutex<Vec<ProfileId>>,
    /// Every audience's entries and exits, in order (sequence = index + 1).
    changes: Arc<std::sync::Mutex<Vec<AudienceChange>>>,
    /// Streams of changes opened.
    followers: Arc<std::sync::atomic::AtomicUsize>,
}

impl People {
    fn add(&self, person: Person) -> ProfileId {
        let id = person.profile.unwrap_or_default();
        let person = Person {
            profile: Some(id),
            ..person
        };
        self.people.lock().unwrap().insert(id, person);
        id
    }
}

#[async_trait]
impl Directory for People {
    async fn person(&self, _: &Caller, who: &Who) -> Result<Option<Person>, String> {
        let Who::Profile(id) = who else {
            return Err("by profile id only here".to_owned());
        };
        Ok(self.people.lock().unwrap().get(id).cloned())
    }

    async fn targets(&self, _: &Caller) -> Result<Targets, String> {
        Ok(Targets {
            audiences: self.audiences.clone(),
            segments: Some(vec!["bargain_hunters".to_owned()]),
        })
    }

    async fn members(&self, _: &Caller, audience: &str) -> Result<Option<Vec<ProfileId>>, String> {
        if !self.audiences.iter().any(|a| a == audience) {
            return Ok(None);
        }
        let people = self.people.lock().unwrap();
        let mut members: Vec<ProfileId> = people
            .values()
            .filter(|p| p.audiences.iter().any(|a| a == audience))
            .filter_map(|p| p.profile)
            .collect();
        members.extend(self.gone.lock().unwrap().iter().copied());
        Ok(Some(members))
    }

    async fn population(&self, _: &Caller) -> Result<Vec<ProfileId>, String> {
        let mut everyone: Vec<ProfileId> = self.people.lock().unwrap().keys().copied().collect();
        everyone.sort();
        Ok(everyone)
    }

    async fn audience_changes(&self, _: &Caller, _: &str, after: Option<u64>) -> Result<Changes, String> {
        let changes = self.changes.clone();
        let from = after.unwrap_or(changes.lock().unwrap().len() as u64);
        self.followers.fetch_add(1, Ordering::SeqCst);
        // Polls the list, as scoring's stream waits for news.
        Ok(futures::stream::unfold(from, move |seen| {
            let changes = changes.clone();
            async move {
                loop {
                    if let Some(next) = changes.lock().unwrap().get(seen as usize).cloned() {
                        return Some((Ok(next), seen + 1));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        })
        .boxed())
    }
}

struct Setup {
    _dir: TempDir,
    config: corvus_storage::StorageConfig,
    people: Arc<People>,
}

impl Setup {
    async fn new(backend: Backend) -> Option<Self> {
        let dir = TempDir::new();
        let config = corvus_test_support::storage(backend, &dir).await?;
        Some(Self {
            _dir: dir,
            config,
            people: Arc::new(People {
                audiences: vec!["vip".to_owned()],
                ..Default::default()
            }),
        })
    }

    /// A replica: its own store connection (pool), cache and service.
    async fn replica(&self) -> Orchestration {
        self.replica_with(&OrchestrationConfig::default()).await
    }

    async fn replica_with(&self, config: &OrchestrationConfig) -> Orchestration {
        let store = storage::connect(&self.config).await.expect("connect");
        Orchestration::new(store, config, self.people.clone())
    }
}

fn caller() -> Caller {
    Caller {
        principal: Principal {
            workspace: ws(),
            role: Role::Admin,
            key_prefix: "test".to_owned(),
            events_per_second: None,
        },
        metadata: Default::default(),
    }
}

fn ws() -> WorkspaceId {
    "acme".parse().unwrap()
}

fn campaign(value: serde_json::Value) -> Definition {
    let mut base = serde_json::json!({
        "name": "winback",
        "actions": [{"name": "mail", "subject": "Hi {{traits.first_name|there}}", "products": 1}],
        "channels": ["email"],
        "consent_purposes": ["marketing"],
    });
    base.as_object_mut().unwrap().extend(value.as_object().unwrap().clone());
    serde_json::from_value(base).unwrap()
}

fn consenting() -> Person {
    Person {
        consents: vec![Consent {
            purpose: "marketing".to_owned(),
            channel: String::new(),
            granted: true,
        }],
        ..Default::default()
    }
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

fn input(profile: ProfileId, when: DateTime<Utc>) -> DecideInput {
    DecideInput {
        who: Who::Profile(profile),
        placement: String::new(),
        channels: Vec::new(),
        campaigns: Vec::new(),
        at: when,
        occurrence: None,
    }
}

async fn launch(o: &Orchestration, def: Definition) {
    o.create(&caller(), &def).await.unwrap();
    o.set_state(&ws(), &def.name, State::Live).await.unwrap();
}

async fn campaigns_are_versioned_and_move_through_states(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let o = setup.replica().await;
    let def = campaign(serde_json::json!({"tags": ["spring"]}));
    let created = o.create(&caller(), &def).await.unwrap();
    assert_eq!((created.version, created.state), (1, State::Draft));
    assert!(matches!(
        o.create(&caller(), &def).await,
        Err(OrchestrationError::AlreadyExists(_))
    ));
    // A draft cannot be paused; it goes live, pauses, resumes.
    assert!(matches!(
        o.set_state(&ws(), "winback", State::Paused).await,
        Err(OrchestrationError::Precondition(_))
    ));
    assert_eq!(
        o.set_state(&ws(), "winback", State::Live).await.unwrap().state,
        State::Live
    );
    let mut v2 = def.clone();
    v2.priority = 5;
    let updated = o.update(&caller(), &v2, Some(1)).await.unwrap();
    assert_eq!(
        (updated.version, updated.state, updated.definition.priority),
        (2, State::Live, 5)
    );
    // A stale expected version is refused; the first version is still there to read.
    assert!(matches!(
        o.update(&caller(), &v2, Some(1)).await,
        Err(OrchestrationError::Precondition(_))
    ));
    let first = o.store.campaign(&ws(), "winback", Some(1)).await.unwrap().unwrap();
    assert_eq!(first.definition.priority, 0);
    // Pausing by tag pauses the live campaigns with it; ended is final.
    assert_eq!(o.pause_tagged(&ws(), "spring").await.unwrap(), ["winback"]);
    assert_eq!(
        o.set_state(&ws(), "winback", State::Paused).await.unwrap().state,
        State::Paused
    );
    assert_eq!(
        o.set_state(&ws(), "winback", State::Ended).await.unwrap().state,
        State::Ended
    );
    assert!(matches!(
        o.set_state(&ws(), "winback", State::Live).await,
        Err(OrchestrationError::Precondition(_))
    ));
    assert!(matches!(
        o.update(&caller(), &v2, None).await,
        Err(OrchestrationError::Precondition(_))
    ));
    // Targets are checked against the workspace; a bad definition changes nothing.
    let unknown = campaign(serde_json::json!({"name": "other", "audience": "nobody"}));
    match o.create(&caller(), &unknown).await {
        Err(OrchestrationError::Invalid { field, .. }) => assert_eq!(field, "campaign.audience"),
        other => panic!("{other:?}"),
    }
    assert!(o.store.campaign(&ws(), "other", None).await.unwrap().is_none());
    let segment = campaign(serde_json::json!({"name": "seg", "segment": "big_spenders"}));
    match o.create(&caller(), &segment).await {
        Err(OrchestrationError::Invalid { field, reason }) => {
            assert_eq!(field, "campaign.segment");
            assert!(reason.contains("bargain_hunters"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// 64 Decide calls at once for one person, half on each of two replicas: a cap of 3 a
/// day lets exactly 3 through, and every other call says why.
async fn caps_hold_under_concurrent_decisions_across_replicas(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let (a, b) = (setup.replica().await, setup.replica().await);
    launch(
        &a,
        campaign(serde_json::json!({"caps": [{"limit": 3, "calendar_days": 1}]})),
    )
    .await;
    let person = setup.people.add(consenting());
    let when = at("2026-03-02T12:00:00Z");
    let calls = (0..64).map(|i| {
        let o = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { o.decide(&caller(), &input(person, when)).await.unwrap() })
    });
    let answers = futures::future::join_all(calls).await;
    let mut sent = 0;
    for answer in answers {
        let (decision, explanation) = answer.unwrap();
        match decision {
            Some(d) => {
                assert!(d.sends());
                sent += 1;
            }
            None => assert_eq!(explanation.blocked[0].reason, Reason::Cap, "{explanation:?}"),
        }
    }
    assert_eq!(sent, 3);
    let logged = a.store.decisions(&ws(), None, None, 100).await.unwrap();
    assert_eq!(logged.len(), 3);
    // The next day is a new calendar day.
    let next = a
        .decide(&caller(), &input(person, at("2026-03-03T12:00:00Z")))
        .await
        .unwrap();
    assert!(next.0.is_some());
}

async fn a_paused_campaign_is_never_chosen_after_its_pause_returned(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let (a, b) = (setup.replica().await, setup.replica().await);
    launch(&a, campaign(serde_json::json!({}))).await;
    let people: Vec<ProfileId> = (0..40).map(|_| setup.people.add(consenting())).collect();
    // Both replicas have the campaign in their caches.
    for o in [&a, &b] {
        assert!(
            o.decide(&caller(), &input(people[0], Utc::now()))
                .await
                .unwrap()
                .0
                .is_some()
        );
    }
    let paused = Arc::new(AtomicBool::new(false));
    // Four deciders, two on each replica, deciding without pause until each has made
    // ten decisions that started after the pause returned.
    let deciders: Vec<_> = (0..4)
        .map(|i| {
            let o = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (paused, people) = (paused.clone(), people.clone());
            tokio::spawn(async move {
                let (mut before, mut after) = (0, 0);
                for p in people.iter().cycle().skip(1 + i) {
                    let started_after_pause = paused.load(Ordering::SeqCst);
                    let (decision, _) = o.decide(&caller(), &input(*p, Utc::now())).await.unwrap();
                    if started_after_pause {
                        assert!(decision.is_none(), "chosen after its pause returned");
                        after += 1;
                        if after == 10 {
                            return before;
                        }
                    } else if decision.is_some() {
                        before += 1;
                    }
                }
                unreachable!("people cycle")
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    a.set_state(&ws(), "winback", State::Paused).await.unwrap();
    paused.store(true, Ordering::SeqCst);
    let mut chosen_before = 0;
    for d in deciders {
        chosen_before += d.await.unwrap();
    }
    assert!(chosen_before > 0, "the deciders were deciding when the pause came");
    // And afterwards on the replica that did not pause it, at once.
    let (decision, explanation) = b.decide(&caller(), &input(people[0], Utc::now())).await.unwrap();
    assert!(decision.is_none(), "{explanation:?}");
}

async fn a_budget_is_never_overspent(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let (a, b) = (setup.replica().await, setup.replica().await);
    launch(&a, campaign(serde_json::json!({"budget": 5}))).await;
    let people: Vec<ProfileId> = (0..24).map(|_| setup.people.add(consenting())).collect();
    let calls = people.iter().enumerate().map(|(i, p)| {
        let o = if i % 2 == 0 { a.clone() } else { b.clone() };
        let p = *p;
        tokio::spawn(async move { o.decide(&caller(), &input(p, Utc::now())).await.unwrap() })
    });
    let answers = futures::future::join_all(calls).await;
    let sent = answers.iter().filter(|a| a.as_ref().unwrap().0.is_some()).count();
    assert_eq!(sent, 5);
    let blocked = answers
        .iter()
        .filter_map(|a| a.as_ref().unwrap().1.blocked.first().map(|b| b.reason))
        .collect::<Vec<_>>();
    assert_eq!(blocked, vec![Reason::Budget; 19]);
}

async fn arms_and_holdouts_are_stable_hashes(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let (a, b) = (setup.replica().await, setup.replica().await);
    let def = campaign(serde_json::json!({
        "actions": [{"name": "ten"}, {"name": "twenty"}],
        "arms": [{"name": "small", "weight": 0.25, "actions": ["ten"]}, {"name": "big", "weight": 0.75, "actions": ["twenty"]}],
        "holdout": 0.2,
    }));
    launch(&a, def).await;
    let n = 400;
    let mut arms: HashMap<String, usize> = HashMap::new();
    for i in 0..n {
        let p = setup.people.add(consenting());
        let (d1, _) = a.decide(&caller(), &input(p, Utc::now())).await.unwrap();
        let (d2, _) = b.decide(&caller(), &input(p, Utc::now())).await.unwrap();
        let (d1, d2) = (d1.unwrap(), d2.unwrap());
        // The same arm on either replica, every time.
        assert_eq!(d1.arm, d2.arm, "person {i}");
        match d1.arm.as_str() {
            "holdout" => {
                assert!(!d1.sends() && d1.subject.is_empty());
                assert_eq!(d1.explanation.blocked.last().unwrap().reason, Reason::Holdout);
            }
            "small" => assert_eq!(d1.action, "ten"),
            "big" => assert_eq!(d1.action, "twenty"),
            other => panic!("arm {other}"),
        }
        *arms.entry(d1.arm).or_default() += 1;
    }
    // 20 % held out, the rest split 1:3 (each within four standard deviations).
    let share = |arm: &str| arms.get(arm).copied().unwrap_or(0) as f64 / n as f64;
    let near = |got: f64, p: f64| (got - p).abs() < 4.0 * (p * (1.0 - p) / n as f64).sqrt();
    assert!(near(share("holdout"), 0.2), "{arms:?}");
    assert!(near(share("small"), 0.2), "{arms:?}");
    assert!(near(share("big"), 0.6), "{arms:?}");
    // The workspace's control group takes its share from every campaign, on another
    // replica once it has read the campaigns' changes again (within 200 ms).
    a.set_control_share(&ws(), 0.5).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let mut control = 0;
    for _ in 0..100 {
        let p = setup.people.add(consenting());
        let (d, _) = b.decide(&caller(), &input(p, Utc::now())).await.unwrap();
        let d = d.unwrap();
        if d.arm == "control" {
            assert!(!d.sends());
            control += 1;
        }
    }
    assert!((30..=70).contains(&control), "{control}");
}

async fn consent_quiet_hours_audience_and_priority_shape_the_decision(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let o = setup.replica().await;
    launch(
        &o,
        campaign(serde_json::json!({
            "name": "nightly",
            "channels": ["sms", "email"],
            "quiet_hours": {"start": "21:00", "end": "08:00"},
            "actions": [{"name": "note", "body": "{{traits.first_name|friend}}, {{products.0}}", "products": 1}],
        })),
    )
    .await;
    launch(
        &o,
        campaign(serde_json::json!({"name": "vip-only", "audience": "vip", "priority": 9})),
    )
    .await;
    // No consent: blocked, nothing logged.
    let stranger = setup.people.add(Person::default());
    let (none, why) = o
        .decide(&caller(), &input(stranger, at("2026-03-02T12:00:00Z")))
        .await
        .unwrap();
    assert!(none.is_none());
    let reasons: Vec<_> = why.blocked.iter().map(|b| (b.campaign.as_str(), b.reason)).collect();
    assert_eq!(reasons, [("nightly", Reason::Consent), ("vip-only", Reason::Audience)]);
    // Consent to email only, in Paris, at 22:30 local: email, deferred to 08:00.
    let person = setup.people.add(Person {
        consents: vec![Consent {
            purpose: "marketing".to_owned(),
            channel: "email".to_owned(),
            granted: true,
        }],
        time_zone: Some("Europe/Paris".to_owned()),
        traits: serde_json::json!({"first_name": "Ada"}).as_object().unwrap().clone(),
        products: vec!["milk".to_owned(), "bread".to_owned()],
        ..Default::default()
    });
    let (d, why) = o
        .decide(&caller(), &input(person, at("2026-01-15T21:30:00Z")))
        .await
        .unwrap();
    let d = d.unwrap();
    assert_eq!((d.campaign.as_str(), d.channel.as_str()), ("nightly", "email"));
    assert_eq!(d.send_at, at("2026-01-16T07:00:00Z"));
    assert_eq!(d.body, "Ada, milk");
    assert_eq!(d.products, ["milk"]);
    assert!(why.timing.contains("quiet hours"), "{}", why.timing);
    // A VIP gets the higher priority campaign, and the other is blocked by priority.
    let vip = setup.people.add(Person {
        audiences: vec!["vip".to_owned()],
        ..consenting()
    });
    let (d, why) = o
        .decide(&caller(), &input(vip, at("2026-03-02T12:00:00Z")))
        .await
        .unwrap();
    assert_eq!(d.unwrap().campaign, "vip-only");
    assert!(
        why.blocked
            .iter()
            .any(|b| b.campaign == "nightly" && b.reason == Reason::Priority)
    );
    // An unknown person: NOT_FOUND, nothing logged.
    let before = o.store.decisions(&ws(), None, None, 100).await.unwrap().len();
    assert!(matches!(
        o.decide(&caller(), &input(ProfileId::new(), Utc::now())).await,
        Err(OrchestrationError::NotFound(_))
    ));
    assert_eq!(o.store.decisions(&ws(), None, None, 100).await.unwrap().len(), before);
}

fn goal_event(profile: ProfileId, decision: Option<uuid::Uuid>, when: DateTime<Utc>) -> LogEntry {
    let properties = match decision {
        Some(id) => serde_json::json!({"decision_id": id.to_string(), "revenue": 10}),
        None => serde_json::json!({"revenue": 10}),
    };
    track(profile, "Order Completed", properties, when)
}

/// A resolved track event of identity's log.
fn track(profile: ProfileId, name: &str, properties: serde_json::Value, when: DateTime<Utc>) -> LogEntry {
    LogEntry {
        entry: Some(log_entry::Entry::Event(StoredEvent {
            workspace_id: "acme".to_owned(),
            event_id: uuid::Uuid::now_v7().to_string(),
            profile_id: profile.to_string(),
            event: Some(Event {
                r#type: EventType::Track as i32,
                event: name.to_owned(),
                properties: Some(corvus_proto::raw::RawStruct::from_json(properties.as_object().unwrap())),
                timestamp: Some(prost_types::Timestamp {
                    seconds: when.timestamp(),
                    nanos: when.timestamp_subsec_nanos() as i32,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

fn change(change: profile_change::Change) -> LogEntry {
    LogEntry {
        entry: Some(log_entry::Entry::Change(ProfileChange {
            workspace_id: "acme".to_owned(),
            change_id: uuid::Uuid::now_v7().to_string(),
            change: Some(change),
            ..Default::default()
        })),
    }
}

/// Identity's log entry of `merged` merged into `survivor`.
fn merged_into(survivor: ProfileId, merged: &[ProfileId]) -> LogEntry {
    change(profile_change::Change::Merged(ProfilesMerged {
        survivor_id: survivor.to_string(),
        merged_ids: merged.iter().map(ToString::to_string).collect(),
        ..Default::default()
    }))
}

async fn outcomes_teach_the_policy_through_merges_and_erasures(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    // The evidence read again at every decision, so that the test sees each outcome's
    // effect at once.
    let o = setup
        .replica_with(&OrchestrationConfig {
            evidence_refresh: std::time::Duration::ZERO,
            ..Default::default()
        })
        .await;
    // The policy's consumer of the decision log counts each send as a trial.
    let stop = CancellationToken::new();
    let _log = o.spawn_log(Vec::new(), stop.clone());
    launch(
        &o,
        campaign(serde_json::json!({"actions": [{"name": "good"}, {"name": "bad"}]})),
    )
    .await;
    let when = Utc::now() - chrono::Duration::hours(1);
    // 60 decisions; the ones that chose "good" convert, carrying the decision id.
    let mut chose = HashMap::<String, usize>::new();
    for _ in 0..60 {
        let p = setup.people.add(consenting());
        let d = o.decide(&caller(), &input(p, when)).await.unwrap().0.unwrap();
        assert_eq!(d.policy, "thompson");
        assert!(d.propensity >= 0.05 && d.propensity <= 0.95 + 1e-12, "{}", d.propensity);
        *chose.entry(d.action.clone()).or_default() += 1;
        if d.action == "good" {
            o.deliver(&[goal_event(p, Some(d.id), when + chrono::Duration::minutes(5))])
                .await
                .unwrap();
            let kept = o.store.decision(&ws(), d.id).await.unwrap().unwrap();
            assert_eq!(kept.outcome.as_ref().unwrap().0, "Order Completed");
        }
    }
    // The policy has learnt: "good" now wins nearly every draw, and "bad" keeps ε.
    log::settled(&o).await;
    let p = setup.people.add(consenting());
    let d = o.decide(&caller(), &input(p, when)).await.unwrap().0.unwrap();
    let candidates = &d.explanation.eligible;
    let trials: f64 = candidates.iter().map(|c| c.trials).sum();
    assert_eq!(trials, 60.0, "each send counted once: {candidates:?}");
    let good = candidates.iter().find(|c| c.action == "good").unwrap();
    let bad = candidates.iter().find(|c| c.action == "bad").unwrap();
    assert!(good.propensity > 0.85, "{candidates:?} after {chose:?}");
    assert!((bad.propensity - 0.05).abs() < 0.03, "{candidates:?}");
    // The decision replays: the same candidates and id give the same choice and
    // propensities.
    let arms: Vec<policy::Arm> = candidates
        .iter()
        .map(|c| policy::Arm {
            successes: c.successes,
            trials: c.trials,
            value: c.value,
        })
        .collect();
    let replay = policy::thompson(&arms, 0.05, d.propensity_draws, &d.id.to_string());
    assert_eq!(candidates[replay.index].action, d.action);
    assert_eq!(
        replay.propensities,
        candidates.iter().map(|c| c.propensity).collect::<Vec<_>>()
    );

    // Without a decision id, a goal event within the window is the person's latest
    // decision's outcome, and only once; after a merge, the survivor's event finds the
    // merged profile's decision, in the merge's own delivery too (merges are written
    // together, but before a goal is looked up).
    let merged = setup.people.add(consenting());
    let survivor = ProfileId::new();
    let d = o.decide(&caller(), &input(merged, when)).await.unwrap().0.unwrap();
    o.deliver(&[
        change(profile_change::Change::Merged(ProfilesMerged {
            survivor_id: survivor.to_string(),
            merged_ids: vec![merged.to_string()],
            ..Default::default()
        })),
        goal_event(survivor, None, when + chrono::Duration::minutes(1)),
    ])
    .await
    .unwrap();
    let kept = o.store.decision(&ws(), d.id).await.unwrap().unwrap();
    assert!(
        kept.outcome.is_some(),
        "the survivor's order is the merged profile's outcome"
    );
    // Goals of several people in one delivery: each finds their own decision.
    let (x, y) = (setup.people.add(consenting()), setup.people.add(consenting()));
    let dx = o.decide(&caller(), &input(x, when)).await.unwrap().0.unwrap();
    let dy = o.decide(&caller(), &input(y, when)).await.unwrap().0.unwrap();
    let after = when + chrono::Duration::minutes(2);
    o.deliver(&[
        goal_event(x, None, after),
        goal_event(x, None, after),
        goal_event(y, None, after),
    ])
    .await
    .unwrap();
    for d in [dx.id, dy.id] {
        assert!(o.store.decision(&ws(), d).await.unwrap().unwrap().outcome.is_some());
    }
    // A chain of merges in one delivery (a survivor merged in turn, beside another):
    // the last survivor's sends count the first's, and its goal finds the first's
    // decision.
    let (first, between, beside, last) = (
        setup.people.add(consenting()),
        ProfileId::new(),
        ProfileId::new(),
        ProfileId::new(),
    );
    let d = o.decide(&caller(), &input(first, when)).await.unwrap().0.unwrap();
    o.deliver(&[
        merged_into(between, &[first]),
        merged_into(last, &[between, beside]),
        goal_event(last, None, when + chrono::Duration::minutes(3)),
    ])
    .await
    .unwrap();
    let touches = o
        .store
        .touches(&ws(), last, when - chrono::Duration::days(1))
        .await
        .unwrap();
    assert_eq!(touches.len(), 1, "the first profile's send is the last survivor's");
    assert!(
        o.store.decision(&ws(), d.id).await.unwrap().unwrap().outcome.is_some(),
        "the last survivor's order is the first profile's outcome"
    );
    // An event outside the window is no one's outcome.
    let late = setup.people.add(consenting());
    let d = o.decide(&caller(), &input(late, when)).await.unwrap().0.unwrap();
    o.deliver(&[goal_event(late, None, when + chrono::Duration::days(8))])
        .await
        .unwrap();
    assert!(o.store.decision(&ws(), d.id).await.unwrap().unwrap().outcome.is_none());
    // An erasure deletes the person's decisions and sends.
    let (_, answers) = o
        .deliver(&[change(profile_change::Change::Erased(ProfilesErased {
            profile_ids: vec![late.to_string()],
            ..Default::default()
        }))])
        .await
        .unwrap();
    assert_eq!(
        answers[0].removed["decisions_and_sends"], 3,
        "decision, touch and send (the person's row stays, marked)"
    );
    assert!(o.store.decision(&ws(), d.id).await.unwrap().is_none());
    // A Decide that read the person before the erasure (here the people source still
    // knows them) writes nothing after it.
    let after = o.decide(&caller(), &input(late, when)).await;
    assert!(
        matches!(after, Err(OrchestrationError::NotFound(_))),
        "a person erased meanwhile is not decided for: {after:?}"
    );
    assert!(
        o.store
            .touches(&ws(), late, when - chrono::Duration::days(1))
            .await
            .unwrap()
            .is_empty()
    );
}
