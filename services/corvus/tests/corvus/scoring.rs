//! Scoring through the public API: events in through ingestion, resolved by identity,
//! kept by scoring from identity's log; features out through `ScoringService`, correct
//! through merges, unmerges and erasures; bad input refused. The models' tests, against
//! the reference libraries, are in `scoring_models.rs`.

use chrono::{TimeZone, Utc};
use corvus_proto::common::v1::{Channel, Context, Event, EventType};
use corvus_proto::identity::v1 as idpb;
use corvus_proto::raw::RawStruct;
use corvus_proto::scoring::v1 as pb;
use corvus_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use corvus_test_support::{Backend, on_both_backends};
use prost_types::Timestamp;
use serde_json::json;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel as GrpcChannel;

use crate::identity::{by_id, by_identifier, send};
use crate::support::{Key, TestApp, spawn, spawn_with};

on_both_backends!(
    features_follow_merges_unmerges_and_erasures,
    scores_are_kept_as_events_arrive,
    bad_input_is_refused_with_its_field
);

/// Each person's scores kept as events arrive, read while 15 minutes fresh.
fn keep_scores(config: &mut corvus::CorvusConfig) {
    config.scoring.scores_max_age = std::time::Duration::from_secs(15 * 60);
}

pub type ScoringClient = ScoringServiceClient<InterceptedService<GrpcChannel, Key>>;

pub async fn scoring(app: &TestApp, key: &str) -> ScoringClient {
    ScoringServiceClient::with_interceptor(app.channel().await, Key::bearer(key))
}

pub fn at(day: u32, hour: u32) -> Timestamp {
    let t = Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap();
    Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

pub fn track(id: &str, who: (&str, &str), name: &str, when: Timestamp, properties: serde_json::Value) -> Event {
    let mut e = Event {
        message_id: id.to_owned(),
        r#type: EventType::Track as i32,
        event: name.to_owned(),
        properties: Some(RawStruct::from_json(properties.as_object().unwrap())),
        context: Some(Context {
            channel: Channel::Web as i32,
            timezone: "Europe/Paris".into(),
            ..Context::default()
        }),
        timestamp: Some(when),
        ..Event::default()
    };
    match who.0 {
        "anonymous_id" => e.anonymous_id = who.1.to_owned(),
        _ => e.user_id = who.1.to_owned(),
    }
    e
}

pub async fn scores(
    client: &mut ScoringClient,
    profile: &str,
    as_of: Option<Timestamp>,
) -> Result<pb::GetScoresResponse, tonic::Status> {
    client
        .get_scores(pb::GetScoresRequest {
            profile_id: profile.to_owned(),
            as_of,
            horizon: 0.0,
        })
        .await
        .map(|r| r.into_inner())
}

fn purchases(r: &pb::GetScoresResponse) -> (u64, f64) {
    let p = r.features.as_ref().unwrap().purchases.as_ref().unwrap();
    (p.orders, p.revenue)
}

fn email(r: &pb::GetScoresResponse) -> Option<pb::Engagement> {
    r.features.as_ref().unwrap().channels.get("email").cloned()
}

pub async fn profile_of(admin: &mut crate::support::IdentityClient, kind: &str, value: &str) -> String {
    by_identifier(admin, kind, value)
        .await
        .unwrap()
        .profile
        .unwrap()
        .profile_id
}

/// Two people's histories, apart, then joined by a merge, split by the unmerge, and one
/// of them erased: each time the features are those of the events that belong to the
/// profile then, recomputed here by hand.
async fn features_follow_merges_unmerges_and_erasures(backend: Backend) {
    let Some(app) = spawn_with(backend, keep_scores).await else {
        return;
    };
    let anon = ("anonymous_id", "anon-x");
    let user = ("user_id", "user-x");
    send(
        &app,
        vec![
            track(
                "a-1",
                anon,
                "Order Completed",
                at(1, 10),
                json!({"revenue": 30, "products": [{"product_id": "p1", "category": "Books", "price": 15, "quantity": 2}]}),
            ),
            track("a-2", anon, "Email Link Clicked", at(2, 9), json!({})),
            track("a-3", anon, "Survey Answered", at(2, 12), json!({"nps": 9})),
            track(
                "b-1",
                user,
                "Order Completed",
                at(3, 10),
                json!({"total": "50", "products": [{"product_id": "p2", "category": "Music", "price": 50}]}),
            ),
            track("b-2", user, "Survey Answered", at(4, 12), json!({"nps": 3, "csat": 4})),
        ],
    )
    .await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let mut admin = app.identity(&app.admin_key).await;
    let mut client = scoring(&app, &app.read_key).await;
    let a = profile_of(&mut admin, "anonymous_id", "anon-x").await;
    let b = profile_of(&mut admin, "user_id", "user-x").await;
    assert_ne!(a, b);
    let apart_a = scores(&mut client, &a, None).await.unwrap();
    let apart_b = scores(&mut client, &b, None).await.unwrap();
    assert_eq!(purchases(&apart_a), (1, 30.0));
    assert_eq!(purchases(&apart_b), (1, 50.0));
    assert_eq!(email(&apart_a).unwrap().clicked, 1);
    assert_eq!(email(&apart_a).unwrap().converted, 0, "the click came after a's order");
    assert_eq!(email(&apart_b), None);

    // The person signs in on the anonymous device: the profiles merge.
    let mut signed_in = track("ab-1", user, "Signed In", at(5, 8), json!({}));
    signed_in.anonymous_id = "anon-x".into();
    send(&app, vec![signed_in]).await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let survivor = profile_of(&mut admin, "user_id", "user-x").await;
    let merged = if survivor == a { &b } else { &a };
    let joined = scores(&mut client, &survivor, None).await.unwrap();
    // The combined events, recomputed: two orders of 30 and 50; b's order on day 3
    // converts a's email click of day 2 (within seven days); NPS 9 then 3.
    assert_eq!(purchases(&joined), (2, 80.0));
    assert_eq!(email(&joined).unwrap().converted, 1);
    let f = joined.features.as_ref().unwrap();
    assert_eq!(f.events, 6);
    assert_eq!(f.categories["Books"].spend, 30.0);
    assert_eq!(f.categories["Books"].quantity, 2.0);
    assert_eq!(f.categories["Music"].spend, 50.0);
    let satisfaction = f.satisfaction.as_ref().unwrap();
    assert_eq!(
        (satisfaction.nps_answers, satisfaction.nps_mean, satisfaction.nps_latest),
        (2, Some(6.0), Some(3.0))
    );
    assert_eq!(satisfaction.csat_latest, Some(4.0));
    let p = f.purchases.as_ref().unwrap();
    assert_eq!((p.purchase_days, p.average_order_value), (2, 40.0));
    // Engaging events by hour of the week (from Monday 00:00) in Paris, UTC+1 in early
    // March: the click (Monday 10:00), the orders (Tuesday 11:00, Sunday 11:00).
    let hours: Vec<usize> = (0..168).filter(|h| f.hour_of_week[*h] > 0).collect();
    assert_eq!(hours, vec![10, 24 + 11, 6 * 24 + 11]);
    // The merged id answers with the survivor's.
    let redirected = scores(&mut client, merged, None).await.unwrap();
    assert_eq!(redirected.profile_id, survivor);
    assert_eq!(purchases(&redirected), (2, 80.0));
    // As of day 2 the survivor's history held a's order alone... and b's events are
    // after it: only what had happened by then counts.
    let earlier = scores(&mut client, &survivor, Some(at(2, 23))).await.unwrap();
    assert_eq!(purchases(&earlier), (1, 30.0));

    // The merge undone: each side has its own events again.
    let merges = admin
        .list_merges(idpb::ListMergesRequest {
            profile_id: survivor.clone(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .merges;
    admin
        .unmerge(idpb::UnmergeRequest {
            merge_id: merges[0].merge_id.clone(),
        })
        .await
        .unwrap();
    app.downstream_caught_up().await;
    let split_a = scores(&mut client, &a, None).await.unwrap();
    let split_b = scores(&mut client, &b, None).await.unwrap();
    assert_eq!(split_a.profile_id, a);
    assert_eq!(purchases(&split_a), (1, 30.0));
    assert_eq!(purchases(&split_b), (1, 50.0));
    assert_eq!(email(&split_a).unwrap().converted, 0);

    // b erased: nothing of it left to read, and the receipt names scoring's store.
    let receipt = admin
        .forget_profile(idpb::ForgetProfileRequest {
            profile_id: b.clone(),
            allow_recreate: false,
        })
        .await
        .unwrap();
    drop(receipt);
    app.downstream_caught_up().await;
    let err = scores(&mut client, &b, None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(purchases(&scores(&mut client, &a, None).await.unwrap()), (1, 30.0));
    let receipt = admin
        .get_erasure_receipt(idpb::GetErasureReceiptRequest { profile_id: b.clone() })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    let store = receipt
        .stores
        .iter()
        .find(|s| s.store == "scoring")
        .expect("scoring on the receipt");
    assert!(!store.pending, "{receipt:?}");
    assert!(store.removed.get("facts").copied().unwrap_or(0) >= 2, "{receipt:?}");
    assert!(by_id(&mut admin, &a).await.is_ok());
    app.stop().await;
}

/// A person's scores as of now are kept as their events arrive: GetScores answers from
/// kept scores (their `as_of` before the call), never from scores an event or a new
/// computed trait has outdated.
async fn scores_are_kept_as_events_arrive(backend: Backend) {
    let Some(app) = spawn_with(backend, keep_scores).await else {
        return;
    };
    let who = ("user_id", "kept-1");
    let order = |id: &str, day: u32, revenue: u32| {
        track(id, who, "Order Completed", at(day, 10), json!({ "revenue": revenue }))
    };
    send(&app, vec![order("k-1", 1, 30)]).await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let mut admin = app.identity(&app.admin_key).await;
    let mut client = scoring(&app, &app.read_key).await;
    let person = profile_of(&mut admin, "user_id", "kept-1").await;
    // Never an answer the last event outdated; soon one from the scores kept as it
    // arrived (computed before the call: a call that finds none keeps its own).
    let kept = async |client: &mut ScoringClient, expected: (u64, f64)| {
        let first = scores(client, &person, None).await.unwrap();
        assert_eq!(purchases(&first), expected, "{first:?}");
        for _ in 0..100 {
            let call = Utc::now();
            let answer = scores(client, &person, None).await.unwrap();
            assert_eq!(purchases(&answer), expected, "{answer:?}");
            let t = answer.as_of.as_ref().unwrap();
            if Utc.timestamp_opt(t.seconds, t.nanos as u32).unwrap() < call {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("no answer from the kept scores");
    };
    kept(&mut client, (1, 30.0)).await;

    // A second order: the kept scores are those of both.
    send(&app, vec![order("k-2", 2, 50)]).await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    kept(&mut client, (2, 80.0)).await;

    // A computed trait created since: the kept scores lack it, so they are not used.
    let mut admin_scoring = scoring(&app, &app.admin_key).await;
    admin_scoring
        .create_computed_trait(pb::CreateComputedTraitRequest {
            computed_trait: Some(pb::ComputedTrait {
                name: "orders".into(),
                aggregation: pb::Aggregation::Count as i32,
                filter: Some(pb::EventFilter {
                    events: vec!["Order Completed".into()],
                    conditions: vec![],
                }),
                ..pb::ComputedTrait::default()
            }),
        })
        .await
        .unwrap();
    let third = scores(&mut client, &person, None).await.unwrap();
    assert_eq!(
        third.computed_traits.get("orders").and_then(|v| v.kind.clone()),
        Some(prost_types::value::Kind::NumberValue(2.0)),
        "{third:?}"
    );
    // An answer as of a time is computed for it, not taken from what is kept.
    let asked_at = scores(&mut client, &person, Some(at(1, 23))).await.unwrap();
    assert_eq!(purchases(&asked_at), (1, 30.0));
    app.stop().await;
}

async fn bad_input_is_refused_with_its_field(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut client = scoring(&app, &app.admin_key).await;
    let field_of = |status: &tonic::Status| {
        use tonic_types::StatusExt;
        status
            .get_details_bad_request()
            .map(|b| b.field_violations[0].field.clone())
            .unwrap_or_default()
    };
    let err = scores(&mut client, "not-a-uuid", None).await.unwrap_err();
    assert_eq!(
        (err.code(), field_of(&err).as_str()),
        (Code::InvalidArgument, "profile_id")
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    let err = scores(&mut client, &unknown, None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let fit = |unit: &str| pb::FitModelRequest {
        kind: pb::ModelKind::Clv as i32,
        as_of: None,
        unit: unit.into(),
        ..pb::FitModelRequest::default()
    };
    let err = client.fit_model(fit("fortnight")).await.unwrap_err();
    assert_eq!((err.code(), field_of(&err).as_str()), (Code::InvalidArgument, "unit"));
    let err = client
        .fit_model(pb::FitModelRequest { kind: 0, ..fit("week") })
        .await
        .unwrap_err();
    assert_eq!((err.code(), field_of(&err).as_str()), (Code::InvalidArgument, "kind"));
    // Too little data: how much is needed, and no model.
    send(
        &app,
        vec![track(
            "o-1",
            ("user_id", "u-1"),
            "Order Completed",
            at(1, 10),
            json!({"revenue": 10}),
        )],
    )
    .await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let mut stream = client.fit_model(fit("week")).await.unwrap().into_inner();
    let err = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the fit ended without an error"),
            Err(err) => break err,
        }
    };
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("needs at least 20 customers; the data holds 1"),
        "{err:?}"
    );
    let err = client
        .get_model(pb::GetModelRequest {
            kind: pb::ModelKind::Clv as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // An order whose revenue is not a number is dead-lettered for scoring alone, with
    // the field and why; identity resolved it.
    send(
        &app,
        vec![track(
            "o-2",
            ("user_id", "u-2"),
            "Order Completed",
            at(2, 10),
            json!({"revenue": "lots"}),
        )],
    )
    .await;
    app.caught_up(&app.admin_key).await;
    let mut admin = app.identity(&app.admin_key).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let dead = loop {
        let letters = admin
            .list_dead_letters(idpb::ListDeadLettersRequest {
                consumer: "scoring".into(),
                page: None,
            })
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
        if !letters.is_empty() {
            break letters;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter for scoring");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("properties.revenue: \"lots\" is not a number"),
        "{dead:?}"
    );
    let u2 = profile_of(&mut admin, "user_id", "u-2").await;
    assert_eq!(scores(&mut client, &u2, None).await.unwrap_err().code(), Code::NotFound);
    app.stop().await;
}

pub async fn fit(
    client: &mut ScoringClient,
    kind: pb::ModelKind,
    as_of: Timestamp,
) -> Result<pb::Model, tonic::Status> {
    let mut stream = client
        .fit_model(pb::FitModelRequest {
            kind: kind as i32,
            as_of: Some(as_of),
            ..pb::FitModelRequest::default()
        })
        .await?
        .into_inner();
    let mut model = None;
    while let Some(message) = stream.message().await? {
        model = message.model.or(model);
    }
    Ok(model.expect("the last message carries the model"))
}
