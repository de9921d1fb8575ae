//! Identity end to end: events in through ingestion, profiles out through
//! `corvus.identity.v1`, on both backends.

use std::time::Duration;

use corvus_proto::common::v1::{Channel, Context, Event, EventType, Identifier};
use corvus_proto::identity::v1 as pb;
use corvus_proto::identity::v1::get_profile_request::Lookup;
use corvus_proto::identity::v1::{log_entry, profile_change};
use corvus_proto::ingestion::v1::IngestRequest;
use corvus_proto::raw::RawStruct;
use corvus_test_support::{Backend, on_both_backends};
use tonic::Code;

use crate::support::{IdentityClient, TestApp, spawn};

on_both_backends!(
    profiles_form_merge_and_redirect,
    unmerge_and_forget_through_the_api,
    matching_merges_and_queues_for_review,
    bad_identity_requests_are_refused_and_change_nothing,
);

pub fn event(message_id: &str, ids: &[(&str, &str)]) -> Event {
    let mut e = Event {
        message_id: message_id.to_owned(),
        r#type: EventType::Track as i32,
        event: "Product Viewed".into(),
        context: Some(Context {
            channel: Channel::Web as i32,
            ..Context::default()
        }),
        ..Event::default()
    };
    for (kind, value) in ids {
        match *kind {
            "anonymous_id" => e.anonymous_id = (*value).to_owned(),
            "user_id" => e.user_id = (*value).to_owned(),
            _ => e.identifiers.push(Identifier {
                kind: (*kind).to_owned(),
                value: (*value).to_owned(),
            }),
        }
    }
    e
}

pub fn identify(message_id: &str, ids: &[(&str, &str)], traits: serde_json::Value) -> Event {
    Event {
        r#type: EventType::Identify as i32,
        event: String::new(),
        traits: Some(RawStruct::from_json(traits.as_object().unwrap())),
        ..event(message_id, ids)
    }
}

pub async fn send(app: &TestApp, events: Vec<Event>) {
    let response = app
        .client(&app.admin_key)
        .await
        .ingest(IngestRequest { events, sent_at: None })
        .await
        .expect("ingest")
        .into_inner();
    assert_eq!(response.rejected, 0, "{response:?}");
}

pub async fn by_identifier(
    client: &mut IdentityClient,
    kind: &str,
    value: &str,
) -> Result<pb::GetProfileResponse, tonic::Status> {
    get_profile(client, identifier(kind, value), false).await
}

/// The profile holding an identifier, with its scores and audiences from scoring.
pub async fn with_scores(client: &mut IdentityClient, kind: &str, value: &str) -> pb::GetProfileResponse {
    get_profile(client, identifier(kind, value), true).await.unwrap()
}

pub async fn by_id(client: &mut IdentityClient, id: &str) -> Result<pb::GetProfileResponse, tonic::Status> {
    get_profile(client, Lookup::ProfileId(id.to_owned()), false).await
}

fn identifier(kind: &str, value: &str) -> Lookup {
    Lookup::Identifier(Identifier {
        kind: kind.into(),
        value: value.into(),
    })
}

async fn get_profile(
    client: &mut IdentityClient,
    lookup: Lookup,
    include_scores: bool,
) -> Result<pb::GetProfileResponse, tonic::Status> {
    client
        .get_profile(pb::GetProfileRequest {
            lookup: Some(lookup),
            include_scores,
        })
        .await
        .map(|r| r.into_inner())
}

/// The profile holding an identifier, once identity has caught up with `check`.
async fn wait_for(
    client: &mut IdentityClient,
    kind: &str,
    value: &str,
    check: impl Fn(&pb::Profile) -> bool,
) -> pb::Profile {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = by_identifier(client, kind, value).await {
            let profile = response.profile.unwrap();
            if check(&profile) {
                return profile;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "identity never caught up on {kind} {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kinds(profile: &pb::Profile) -> Vec<String> {
    profile
        .identifiers
        .iter()
        .map(|i| format!("{}:{}", i.kind, i.value))
        .collect()
}

async fn profiles_form_merge_and_redirect(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let mut identity = app.identity(&app.read_key).await;
    send(
        &app,
        vec![
            event("m1", &[("anonymous_id", "a1")]),
            identify(
                "m2",
                &[("anonymous_id", "a1"), ("email", "Ada@Example.com")],
                serde_json::json!({"first_name": "Ada"}),
            ),
            event("m3", &[("loyalty_card", "L-1"), ("phone", "+44 7700 900123")]),
        ],
    )
    .await;
    let visitor = wait_for(&mut identity, "anonymous_id", "a1", |p| p.event_count == 2).await;
    // Any spelling of the email finds the profile.
    let found = by_identifier(&mut identity, "email", "  ADA@example.COM ")
        .await
        .unwrap();
    assert_eq!(found.profile.unwrap().profile_id, visitor.profile_id);
    assert_eq!(visitor.traits[0].name, "first_name");
    let shopper = wait_for(&mut identity, "loyalty_card", "L-1", |_| true).await;
    assert_ne!(shopper.profile_id, visitor.profile_id);

    // The login brings both together; the merged id redirects, and the read model never
    // serves the profile as it was before the merge.
    send(
        &app,
        vec![event(
            "m4",
            &[
                ("user_id", "ada"),
                ("email", "ada@example.com"),
                ("phone", "+447700900123"),
            ],
        )],
    )
    .await;
    let merged = wait_for(&mut identity, "phone", "+447700900123", |p| p.event_count == 4).await;
    assert_eq!(
        merged.profile_id, visitor.profile_id,
        "the older profile with the stronger identifier survives"
    );
    assert_eq!(
        kinds(&merged),
        vec![
            "user_id:ada",
            "email:ada@example.com",
            "phone:+447700900123",
            "loyalty_card:L-1",
            "anonymous_id:a1"
        ]
    );
    assert_eq!(merged.merged_profile_ids, vec![shopper.profile_id.clone()]);
    let redirected = by_id(&mut identity, &shopper.profile_id).await.unwrap();
    assert_eq!(redirected.redirected_from, shopper.profile_id);
    assert_eq!(redirected.profile.unwrap().profile_id, merged.profile_id);
    let counts: u64 = merged.event_counts.iter().map(|c| c.count).sum();
    assert_eq!(counts, 4);
    assert_eq!(merged.merges.len(), 1);
    // The workspace's profiles are those that stand: the merged one is not listed, a
    // page at a time.
    let first = identity
        .list_profiles(pb::ListProfilesRequest {
            page: Some(corvus_proto::common::v1::PageRequest {
                page_size: 1,
                page_token: String::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.profile_ids, std::slice::from_ref(&merged.profile_id));
    let rest = identity
        .list_profiles(pb::ListProfilesRequest {
            page: Some(corvus_proto::common::v1::PageRequest {
                page_size: 1,
                page_token: first.page.unwrap().next_page_token,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rest.profile_ids.is_empty(), "{rest:?}");

    // Consumers after identity get every event with its profile id, and the merge
    // before the event that made it.
    let resolved = corvus_test_support::eventually(Duration::from_secs(10), || app.resolved.events().len() >= 4).await;
    assert!(resolved, "the events reached the consumer after identity");
    let received = app.resolved.received.lock().unwrap().clone();
    let position = |wanted: &dyn Fn(&log_entry::Entry) -> bool| {
        received
            .iter()
            .position(|e| e.entry.as_ref().is_some_and(wanted))
            .expect("in identity's log")
    };
    let m4 = position(&|e| matches!(e, log_entry::Entry::Event(s) if s.event.as_ref().unwrap().message_id == "m4"));
    let Some(log_entry::Entry::Event(m4_event)) = &received[m4].entry else {
        unreachable!()
    };
    assert_eq!(m4_event.profile_id, merged.profile_id);
    let merge = position(&|e| {
        matches!(e, log_entry::Entry::Change(c) if matches!(&c.change,
            Some(profile_change::Change::Merged(m)) if m.survivor_id == merged.profile_id
                && m.merged_ids == [shopper.profile_id.clone()]))
    });
    assert!(merge < m4, "the merge comes before the event resolved to the survivor");
    app.stop().await;
}

async fn unmerge_and_forget_through_the_api(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let mut admin = app.identity(&app.admin_key).await;
    send(
        &app,
        vec![
            event("m1", &[("email", "ada@example.com"), ("device_id", "tablet")]),
            event("m2", &[("phone", "+447700900999")]),
        ],
    )
    .await;
    wait_for(&mut admin, "phone", "+447700900999", |_| true).await;
    send(
        &app,
        vec![event("m3", &[("phone", "+447700900999"), ("device_id", "tablet")])],
    )
    .await;
    let joined = wait_for(&mut admin, "phone", "+447700900999", |p| p.event_count == 3).await;

    let merges = admin
        .list_merges(pb::ListMergesRequest {
            profile_id: joined.profile_id.clone(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .merges;
    assert_eq!(merges.len(), 1);
    let unmerged = admin
        .unmerge(pb::UnmergeRequest {
            merge_id: merges[0].merge_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unmerged.sides.len(), 2);
    // Read at once: the read model shows the split, not the cached merged profile.
    let phone = by_identifier(&mut admin, "phone", "+447700900999")
        .await
        .unwrap()
        .profile
        .unwrap();
    assert_ne!(phone.profile_id, joined.profile_id);
    let again = admin
        .unmerge(pb::UnmergeRequest {
            merge_id: merges[0].merge_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // Erase the phone's person: gone from identity, the cache and the event log.
    let forget = pb::ForgetProfileRequest {
        profile_id: phone.profile_id.clone(),
        allow_recreate: false,
    };
    let first = admin.forget_profile(forget.clone()).await.unwrap().into_inner();
    let receipt = first.receipt.clone().unwrap();
    assert!(!first.already_erased);
    let store = |name: &str| receipt.stores.iter().find(|s| s.store == name).unwrap().removed.clone();
    assert_eq!(store("ingestion")["events"], phone.event_count);
    assert_eq!(store("identity")["identifiers"], 1);
    assert_eq!(
        by_id(&mut admin, &phone.profile_id).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        by_identifier(&mut admin, "phone", "+447700900999")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let left: Vec<String> = app
        .stored(&app.admin_key)
        .await
        .iter()
        .map(|e| e.event.as_ref().unwrap().message_id.clone())
        .collect();
    assert!(
        !left.contains(&"m2".to_owned()) && left.contains(&"m1".to_owned()),
        "{left:?}"
    );
    let repeat = admin.forget_profile(forget).await.unwrap().into_inner();
    assert!(repeat.already_erased);
    assert_eq!(repeat.receipt, first.receipt);

    // The blocked phone does not bring the person back.
    send(
        &app,
        vec![event("m9", &[("phone", "+447700900999"), ("device_id", "new-phone")])],
    )
    .await;
    let newcomer = wait_for(&mut admin, "device_id", "new-phone", |_| true).await;
    assert_eq!(kinds(&newcomer), vec!["device_id:new-phone"]);
    app.stop().await;
}

async fn matching_merges_and_queues_for_review(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let mut admin = app.identity(&app.admin_key).await;
    // 40 people, each twice under different emails; one copy with a typo in the name.
    let mut events = Vec::new();
    let first = ["ada", "bob", "cyd", "dee", "eve", "fay", "gus", "hal", "ivy", "jon"];
    let last = [
        "lovelace",
        "marley",
        "charisse",
        "dee",
        "moneypenny",
        "wray",
        "grissom",
        "jordan",
        "tyler",
        "snow",
    ];
    for i in 0..40 {
        let (f, l) = (first[i % 10], last[i / 4 % 10]);
        let dob = format!("19{:02}-0{}-1{}", 50 + i, 1 + i % 9, i % 10);
        let postcode = format!("LS{} {}AB", i, i % 10);
        for copy in 0..2 {
            let name = if copy == 1 && i % 3 == 0 {
                format!("{f}e")
            } else {
                f.to_owned()
            };
            events.push(identify(
                &format!("p{i}-{copy}"),
                &[("email", &format!("{f}{i}-{copy}@example.com"))],
                serde_json::json!({"first_name": name, "last_name": l, "date_of_birth": dob, "postcode": postcode}),
            ));
        }
    }
    send(&app, events).await;
    // The events of one delivery commit in parts, in any order: seeing the last one
    // resolved is not enough, identity's cursor must have passed them all.
    app.caught_up(&app.admin_key).await;
    let mut stream = admin
        .run_matching(pb::RunMatchingRequest {
            auto_merge_threshold: 0.99,
            review_threshold: 0.5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut stages = Vec::new();
    let mut last_report = None;
    while let Some(report) = stream.message().await.unwrap() {
        stages.push(report.stage);
        last_report = Some(report);
    }
    let report = last_report.unwrap();
    assert_eq!(stages.first(), Some(&(pb::MatchingStage::Loading as i32)));
    assert!(stages.contains(&(pb::MatchingStage::Training as i32)), "{stages:?}");
    assert_eq!(report.stage, pb::MatchingStage::Done as i32);
    assert_eq!(report.profiles, 80);
    assert!(report.auto_merged >= 30, "{report:?}");
    let a = by_identifier(&mut admin, "email", "ada0-0@example.com")
        .await
        .unwrap()
        .profile
        .unwrap();
    let b = by_identifier(&mut admin, "email", "ada0-1@example.com")
        .await
        .unwrap()
        .profile
        .unwrap();
    let pending = admin
        .list_match_candidates(pb::ListMatchCandidatesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .candidates;
    assert_eq!(pending.len() as u64, report.queued_for_review);
    if a.profile_id != b.profile_id {
        // Not merged automatically: the pair waits for review; accepting merges it.
        let candidate = pending
            .iter()
            .find(|c| [&c.profile_id_a, &c.profile_id_b].contains(&&a.profile_id))
            .expect("the pair waits for review");
        let reviewed = admin
            .review_match_candidate(pb::ReviewMatchCandidateRequest {
                candidate_id: candidate.candidate_id.clone(),
                accept: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(reviewed.merge.is_some());
    }
    let a = by_identifier(&mut admin, "email", "ada0-0@example.com")
        .await
        .unwrap()
        .profile
        .unwrap();
    let b = by_identifier(&mut admin, "email", "ada0-1@example.com")
        .await
        .unwrap()
        .profile
        .unwrap();
    assert_eq!(a.profile_id, b.profile_id);
    assert!(a.merges.iter().all(|m| m.rule != pb::MatchRule::Deterministic as i32));
    app.stop().await;
}

async fn bad_identity_requests_are_refused_and_change_nothing(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let mut admin = app.identity(&app.admin_key).await;
    send(&app, vec![event("m1", &[("email", "ada@example.com")])]).await;
    let profile = wait_for(&mut admin, "email", "ada@example.com", |_| true).await;
    let code = |r: Result<pb::GetProfileResponse, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(by_identifier(&mut admin, "E-mail", "x").await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(by_identifier(&mut admin, "email", "not an email").await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(by_identifier(&mut admin, "anonymous_id", "undefined").await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(by_identifier(&mut admin, "email", "nobody@example.com").await),
        Code::NotFound
    );
    assert_eq!(code(by_id(&mut admin, "not-a-uuid").await), Code::InvalidArgument);
    let empty = admin
        .get_profile(pb::GetProfileRequest {
            lookup: None,
            include_scores: true,
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    // Another workspace's key sees nothing of acme's profile, and cannot erase it.
    let mut other = app.identity(&app.other_key).await;
    assert_eq!(code(by_id(&mut other, &profile.profile_id).await), Code::NotFound);
    let erase = other
        .forget_profile(pb::ForgetProfileRequest {
            profile_id: profile.profile_id.clone(),
            allow_recreate: false,
        })
        .await
        .unwrap_err();
    assert_eq!(erase.code(), Code::NotFound);
    // Roles: reading is not enough to unmerge, erase or run matching.
    let mut reader = app.identity(&app.read_key).await;
    let denied = reader
        .forget_profile(pb::ForgetProfileRequest {
            profile_id: profile.profile_id.clone(),
            allow_recreate: false,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    for bad in ["", "abc"] {
        let status = admin
            .unmerge(pb::UnmergeRequest { merge_id: bad.into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    let status = admin
        .unmerge(pb::UnmergeRequest {
            merge_id: "12345".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = admin
        .run_matching(pb::RunMatchingRequest {
            review_threshold: 0.9,
            auto_merge_threshold: 0.5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = admin
        .run_matching(pb::RunMatchingRequest {
            blocking_rules: vec!["shoe_size".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = admin
        .review_match_candidate(pb::ReviewMatchCandidateRequest {
            candidate_id: uuid::Uuid::new_v4().to_string(),
            accept: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // Nothing changed.
    let after = by_identifier(&mut admin, "email", "ada@example.com")
        .await
        .unwrap()
        .profile
        .unwrap();
    assert_eq!(after, profile);
    app.stop().await;
}
