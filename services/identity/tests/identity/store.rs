//! The identity store conformance suite: every test runs on SQLite and on Postgres.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use corvus_identity::domain::batch::{ConsentChange, IncomingEvent};
use corvus_identity::domain::resolution::{EventId, Identifier, IdentifierKind, IdentityRules, ProfileId, Rule};
use corvus_identity::storage::{self, IdentityStore, Lookup, MatchMerge, ProfileData, Removed, UnmergeRefused};
use corvus_proto::WorkspaceId;
use corvus_test_support::{Backend, TempDir, on_both_backends};

on_both_backends!(
    events_create_attach_and_merge_profiles,
    newest_trait_wins_whatever_the_arrival_order,
    one_event_folds_several_profiles_into_one,
    redelivered_events_keep_their_profile,
    concurrent_batches_sharing_identifiers_make_one_profile,
    unmerge_splits_identifiers_and_later_events,
    forget_erases_everything_and_blocks_the_identifiers,
    matched_merges_respect_uniqueness,
    workspaces_do_not_meet,
    what_another_process_changed_is_seen,
);

struct Fixture {
    store: Arc<dyn IdentityStore>,
    rules: IdentityRules,
    ws: WorkspaceId,
    config: corvus_storage::StorageConfig,
    _dir: TempDir,
}

async fn fixture(backend: Backend) -> Option<Fixture> {
    let dir = TempDir::new();
    let config = corvus_test_support::storage(backend, &dir).await?;
    let store = storage::connect(&config).await.expect("connect the identity store");
    Some(Fixture {
        store,
        rules: IdentityRules::default(),
        ws: "acme".parse().unwrap(),
        config,
        _dir: dir,
    })
}

fn day(n: i64) -> DateTime<Utc> {
    DateTime::UNIX_EPOCH + TimeDelta::days(20_000 + n)
}

fn event(rules: &IdentityRules, at: DateTime<Utc>, ids: &[(&str, &str)]) -> IncomingEvent {
    let id = EventId::new();
    IncomingEvent {
        identity: rules.prepare(id, at, ids.iter().copied()),
        message_id: id.to_string(),
        event_type: 1,
        channel: 1,
        name: "Page Viewed".to_owned(),
        traits: None,
        consents: Vec::new(),
        onward: Default::default(),
    }
}

fn with_traits(mut e: IncomingEvent, traits: serde_json::Value) -> IncomingEvent {
    e.traits = traits.as_object().cloned();
    e
}

fn id(kind: &str, value: &str) -> Identifier {
    Identifier::new(IdentifierKind::parse(kind).unwrap(), value)
}

impl Fixture {
    async fn send(&self, events: &[IncomingEvent]) -> Vec<Option<ProfileId>> {
        let applied = self
            .store
            .resolve(&self.ws, events, &self.rules)
            .await
            .expect("resolve");
        applied.outcomes.iter().map(|o| o.1).collect()
    }

    async fn live(&self, profile: ProfileId) -> ProfileData {
        match self.store.lookup(&self.ws, profile).await.unwrap() {
            Lookup::Live(data) => *data,
            other => panic!("profile {profile} is not live: {other:?}"),
        }
    }

    async fn holder(&self, kind: &str, value: &str) -> Option<ProfileId> {
        self.store.holder(&self.ws, &id(kind, value)).await.unwrap()
    }
}

fn held(data: &ProfileData) -> Vec<String> {
    let mut ids: Vec<String> = data
        .identifiers
        .iter()
        .map(|(i, _)| format!("{}:{}", i.kind, i.value))
        .collect();
    ids.sort();
    ids
}

async fn events_create_attach_and_merge_profiles(backend: Backend) {
    let Some(f) = fixture(backend).await else { return };
    let r = &f.rules;
    let web = event(r, day(1), &[("anonymous_id", "a1")]);
    let login = event(r, day(2), &[("anonymous_id", "a1"), ("user_id", "u1")]);
    let till = event(r, day(3), &[("loyalty_card", "L-1")]);
    let phone = event(r, day(4), &[("loyalty_card", "L-1"), ("phone", "+44 7700 900123")]);
    let profiles = f.send(&[web, login, till, phone]).await;
    let (person, shopper) = (profiles[0].unwrap(), profiles[2].unwrap());
    assert_eq!(profiles[1], Some(person), "the login attaches to the visitor");
    assert_eq!(profiles[3], Some(shopper));
    assert_ne!(person, shopper);
    // A profile made by a batch is written whole with its seen times and count.
    for (profile, seen) in [(person, (day(1), day(2))), (shopper, (day(3), day(4)))] {
        let data = f.live(profile).await;
        assert_eq!((data.event_count, (data.first_seen, data.last_seen)), (2, seen));
    }

    // One event carrying both: the shopper folds into the known customer.
    let merge = event(r, day(5), &[("user_id", "u1"), ("phone", "+447700900123")]);
    assert_eq!(f.send(&[merge]).await, vec![Some(person)]);
    let data = f.live(person).await;
    assert_eq!(
        held(&data),
        vec![
            "anonymous_id:a1",
            "loyalty_card:L-1",
            "phone:+447700900123",
            "user_id:u1"
        ]
    );
    assert_eq!(data.event_count, 5);
    assert_eq!((data.first_seen, data.last_seen), (day(1), day(5)));
    assert_eq!(data.absorbed, vec![shopper]);
    assert_eq!(data.merges.len(), 1);
    let m = &data.merges[0];
    assert_eq!(
        (m.survivor, m.merged, m.rule, m.confidence),
        (person, shopper, Rule::Deterministic, 1.0)
    );
    assert_eq!(data.counts, vec![(1, 1, 5)]);
    assert_eq!(data.recent.len(), 5);
    assert_eq!(data.recent[0].at, day(5), "newest first");
    assert!(matches!(f.store.lookup(&f.ws, shopper).await.unwrap(), Lookup::Merged { into, .. } if into == person));
    assert_eq!(f.holder("loyalty_card", "L-1").await, Some(person));
    assert_eq!(f.store.merges(&f.ws, person, None, 10).await.unwrap().len(), 1);

    // An event whose identifiers are all blocked names no one, and is kept unplaced.
    assert_eq!(
        f.send(&[event(r, day(6), &[("anonymous_id", "null")])]).await,
        vec![None]
    );

    // A profile a batch makes can absorb one made before it: the absorbed one's count
    // and seen times go to the new survivor.
    let visitor = f.send(&[event(r, day(6), &[("anonymous_id", "a2")])]).await[0].unwrap();
    let joined = f
        .send(&[
            event(r, day(7), &[("user_id", "u2")]),
            event(r, day(8), &[("user_id", "u2"), ("anonymous_id", "a2")]),
        ])
        .await;
    let account = joined[0].unwrap();
    assert_ne!(account, visitor);
    assert_eq!(
        joined[1],
        Some(account),
        "the account, the stronger, absorbs the visitor"
    );
    let data = f.live(account).await;
    assert_eq!(
        (data.event_count, (data.first_seen, data.last_seen)),
        (3, (day(6), day(8)))
    );
    assert_eq!(data.absorbed, vec![visitor]);
}

async fn newest_trait_wins_whatever_the_arrival_order(backend: Backend) {
    let Some(f) = fixture(backend).await else { return };
    let r = &f.rules;
    let newer = with_traits(
        event(r, day(5), &[("email", "ada@example.com")]),
        serde_json::json!({"city": "Leeds", "tier": "gold"}),
    );
    let mut older = with_traits(
        event(r, day(2), &[("email", "ada@example.com")]),
        serde_json::json!({"city": "York", "age": 36}),
    );
    older.consents = vec![ConsentChange {
        purpose: "marketing".into(),
        channel: 3,
        granted: true,
    }];
    // Within one batch and across batches, the event time decides, not the arrival.
    let profile = f.send(&[newer]).await[0].unwrap();
    f.send(&[older]).await;
    let mut withdraw = event(r, day(1), &[("email", "ada@example.com")]);
    withdraw.consents = vec![ConsentChange {
        purpose: "marketing".into(),
        channel: 3,
        granted: false,
    }];
    f.send(&[withdraw]).await;
    let data = f.live(profile).await;
    let traits: Vec<(String, serde_json::Value, DateTime<Utc>)> = data
        .traits
        .iter()
        .map(|t| (t.name.clone(), t.value.clone(), t.set_at))
        .collect();
    assert_eq!(
        traits,
        vec![
            ("age".to_owned(), serde_json::json!(36), day(2)),
            ("city".to_owned(), serde_json::json!("Leeds"), day(5)),
            ("tier".to_owned(), serde_json::json!("gold"), day(5)),
        ]
    );
    assert_eq!(data.consents.len(), 1);
    assert!(
        data.consents[0].change.granted,
        "the withdrawal happened before the grant"
    );
    assert_eq!(data.consents[0].set_at, day(2));
}

fn consent(mut e: IncomingEvent, granted: bool) -> IncomingEvent {
    e.consents = vec![ConsentChange {
        purpose: "marketing".into(),
        channel: 3,
        granted,
    }];
    e
}

async fn one_event_folds_several_profiles_into_one(backend: Backend) {
    let Some(f) = fixture(backend).await else { return };
    let r = &f.rules;
    // Four profiles, the fourth already folded into the third.
    let visitor = consent(
        with_traits(
            event(r, day(2), &[("anonymous_id", "a1")]),
            serde_json::json!({"city": "York"}),
        ),
        true,
    );
    let subscriber = with_traits(
        event(r, day(3), &[("email", "ada@example.com")]),
        serde_json::json!({"city": "Leeds", "tier": "silver"}),
    );
    let caller = consent(
        with_traits(
            event(r, day(4), &[("phone", "+447700900001")]),
            serde_json::json!({"tier": "gold"}),
        ),
        false,
    );
    let shopper = event(r, day(1), &[("loyalty_card", "L-9")]);
    let first = f.send(&[visitor, subscriber, caller, shopper]).await;
    let joined = f
        .send(&[event(r, day(5), &[("phone", "+447700900001"), ("loyalty_card", "L-9")])])
        .await;
    assert_eq!(joined[0], first[2], "the card folds into the caller");

    // One event names three of them: all fold into one, in one batch.
    let all = event(
        r,
        day(6),
        &[
            ("anonymous_id", "a1"),
            ("email", "ada@example.com"),
            ("phone", "+447700900001"),
        ],
    );
    let survivor = f.send(&[all]).await[0].unwrap();
    for (kind, value) in [
        ("anonymous_id", "a1"),
        ("email", "ada@example.com"),
        ("phone", "+447700900001"),
        ("loyalty_card", "L-9"),
    ] {
        assert_eq!(f.holder(kind, value).await, Some(survivor), "{kind}");
    }
    for absorbed in first.iter().flatten().filter(|p| **p != survivor) {
        assert!(
            matches!(f.store.lookup(&f.ws, *absorbed).await.unwrap(), Lookup::Merged { into, .. } if into == survivor),
            "{absorbed} redirects to the survivor"
        );
    }
    let data = f.live(survivor).await;
    assert_eq!(data.event_count, 6);
    assert_eq!(data.counts, vec![(1, 1, 6)]);
    assert_eq!(data.recent.len(), 6);
    assert_eq!((data.first_seen, data.last_seen), (day(1), day(6)));
    let traits: Vec<(&str, &serde_json::Value, DateTime<Utc>)> = data
        .traits
        .iter()
        .map(|t| (t.name.as_str(), &t.value, t.set_at))
        .collect();
    assert_eq!(
        traits,
        vec![
            ("city", &serde_json::json!("Leeds"), day(3)),
            ("tier", &serde_json::json!("gold"), day(4)),
        ],
        "the newest of each trait over every profile folded"
    );
    assert_eq!(data.consents.len(), 1);
    assert!(!data.consents[0].change.granted, "the later withdrawal stands");
    assert_eq!(data.consents[0].set_at, day(4));
    let mut absorbed = data.absorbed.clone();
    let mut expected: Vec<ProfileId> = first.iter().flatten().copied().filter(|p| *p != survivor).collect();
    absorbed.sort();
    expected.sort();
    assert_eq!(absorbed, expected);
}

async fn redelivered_events_keep_their_profile(backend: Backend) {
    let Some(f) = fixture(backend).await else { return };
    let e = event(&f.rules, day(1), &[("email", "ada@example.com")]);
    let first = f.send(std::slice::from_ref(&e)).await;
    let again = f.send(&[e.clone(), e]).await;
    assert_eq!(again, vec![first[0], first[0]]);
    assert_eq!(f.live(first[0].unwrap()).await.event_count, 1, "counted once");
}

async fn concurrent_batches_sharing_identifiers_make_one_profile(backend: Backend) {
    let Some(f) = fixture(backend).await else { return };
    let f = Arc::new(f);
    // 16 writers, each with batches that bring a new device and two of the shared
    // identifiers in turn: every one of them belongs to one person.
    let shared = [
        ("email", "ada@example.com"),
        ("phone", "+447700900123"),
        ("user_id", "ada"),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..16 {
        let f = f.clone();
        tasks.spawn(async move {
            for round in 0..5 {
                let device = format!("d-{writer}-{round}");
                let mut ids = vec![("device_id", device.as_str())];
                ids.push(shared[(writer + round) % shared.len()]);
                ids.push(shared[(writer + round + 1) % shared.len()]);
                let e = event(&f.rules, day(round as i64), &ids);
                f.store
                    .resolve(&f.ws, &[e], &f.rules)
                    .await
                    .expect("resolve under contention");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let profile = f.holder("user_id", "ada").await.expect("a profile");
    let data = f.live(profile).await;
    assert_eq!(
        data.identifiers.len(),
        3 + 16 * 5,
        "no identifier lost: {:?}",
        held(&data)
    );
    assert_eq!(data.event_count, 16 * 5);
    for (kind, value) in shared {
        assert_eq!(
            f.holder(
                kind,
                &Identifier::new(IdentifierKind::parse(kind).unwrap(), value).value
            )
            .await,
            Some(profile)
        );
    }
}

async fn unmerge_splits_identifiers_and_later_events(backend: Backend) {
    let Some(f) = fixture(backend).await else { return };
    let r = &f.rules;
    // Two people on a shared tablet: the device joins them wrongly.
    let ada = f
        .send(&[event(
            r,
            day(1),
            &[("email", "ada@example.com"), ("device_id", "tablet")],
        )])
        .await[0]
        .unwrap();
    let bob = f.send(&[event(r, day(2), &[("phone", "+447700900999")])]).await[0].unwrap();
    let joined = f
        .send(&[event(r, day(3), &[("phone", "+447700900999"), ("device_id", "tablet")])])
        .await[0]
        .unwrap();
    assert_eq!(joined, ada);
    // Since then, Bob's phone brings a new identifier; Ada's email another.
    f.send(&[event(r, day(4), &[("phone", "+447700900999"), ("loyalty_card", "L-B")])])
        .await;
    f.send(&[event(
        r,
        day(5),
        &[("email", "ada@example.com"), ("loyalty_card", "L-A")],
    )])
    .await;

    let merge = f.live(ada).await.merges[0].id;
    let unmerged = f.store.unmerge(&f.ws, merge, r).await.unwrap().expect("unmerged");
    assert_eq!(unmerged.sides.len(), 2);
    assert_eq!(
        f.holder("loyalty_card", "L-B").await,
        Some(bob),
        "the later link went with Bob's phone"
    );
    assert_eq!(f.holder("loyalty_card", "L-A").await, Some(ada));
    assert_eq!(f.holder("phone", "+447700900999").await, Some(bob));
    let (a, b) = (f.live(ada).await, f.live(bob).await);
    assert_eq!(a.event_count + b.event_count, 5);
    assert_eq!(b.event_count, 3, "Bob's phone events: {:?}", b.recent);
    assert!(a.absorbed.is_empty());
    assert!(a.merges[0].undone_at.is_some());

    assert_eq!(
        f.store.unmerge(&f.ws, merge, r).await.unwrap(),
        Err(UnmergeRefused::AlreadyUndone(merge))
    );
    assert_eq!(
        f.store.unmerge(&f.ws, 999_999, r).await.unwrap(),
        Err(UnmergeRefused::NotFound(999_999))
    );
}

async fn forget_erases_everything_and_blocks_the_identifiers(backend: Backend) {
    let Some(f) = fixture(backend).await else { return };
    let r = &f.rules;
    let a = f
        .send(&[with_traits(
            event(r, day(1), &[("email", "ada@example.com")]),
            serde_json::json!({"name": "Ada"}),
        )])
        .await[0]
        .unwrap();
    let b = f.send(&[event(r, day(2), &[("phone", "+447700900123")])]).await[0].unwrap();
    f.send(&[event(
        r,
        day(3),
        &[("email", "ada@example.com"), ("phone", "+447700900123")],
    )])
    .await;
    let receipt = |removed: &Removed| {
        let mut rows: Vec<String> = removed.rows.iter().map(|(t, n)| format!("{t}={n}")).collect();
        rows.push(format!("messages={}", removed.message_ids.len()));
        rows.join(",").into_bytes()
    };
    // By the merged id: the survivor and all it absorbed go.
    let erasure = f
        .store
        .forget(&f.ws, b, true, &receipt)
        .await
        .unwrap()
        .expect("a profile");
    assert!(!erasure.already_erased);
    assert_eq!(erasure.pending.len(), 3);
    let text = String::from_utf8(erasure.receipt.clone()).unwrap();
    assert!(
        text.contains("identifiers=2") && text.contains("events=3") && text.contains("traits=1"),
        "{text}"
    );
    assert!(matches!(f.store.lookup(&f.ws, a).await.unwrap(), Lookup::Erased { .. }));
    assert!(matches!(f.store.lookup(&f.ws, b).await.unwrap(), Lookup::Erased { .. }));
    assert_eq!(f.holder("email", "ada@example.com").await, None);

    // Again: the first receipt, nothing changed.
    let again = f.store.forget(&f.ws, a, true, &receipt).await.unwrap().unwrap();
    assert!(again.already_erased);
    assert_eq!(again.receipt, erasure.receipt);
    f.store.erasure_done(&f.ws, a, b"done").await.unwrap();
    let done = f.store.forget(&f.ws, a, true, &receipt).await.unwrap().unwrap();
    assert_eq!((done.receipt.as_slice(), done.pending.len()), (&b"done"[..], 0));

    // The erased email cannot bring the person back; the event keeps its other identifier.
    let back = f
        .send(&[event(r, day(9), &[("email", "Ada@Example.com"), ("device_id", "new")])])
        .await;
    assert_eq!(f.holder("email", "ada@example.com").await, None);
    assert_eq!(held(&f.live(back[0].unwrap()).await), vec!["device_id:new"]);
    assert!(
        f.store
            .forget(&f.ws, ProfileId::new(), true, &receipt)
            .await
            .unwrap()
            .is_none()
    );
}

async fn matched_merges_respect_uniqueness(backend: Backend) {
    let Some(f) = fixture(backend).await else { return };
    let r = &f.rules;
    let p = f
        .send(&[
            event(r, day(1), &[("user_id", "u1")]),
            event(r, day(1), &[("email", "x@example.com")]),
            event(r, day(1), &[("user_id", "u2")]),
        ])
        .await;
    let (u1, x, u2) = (p[0].unwrap(), p[1].unwrap(), p[2].unwrap());
    let m = |a, b| MatchMerge {
        a,
        b,
        rule: Rule::Probabilistic,
        probability: 0.995,
    };
    let (made, versions) = f
        .store
        .merge_matches(&f.ws, &[m(x, u1), m(u2, x), m(u1, x)], r)
        .await
        .unwrap();
    assert_eq!(
        made.len(),
        1,
        "x joins u1; u2 never does (two user ids); the repeat is a no-op"
    );
    assert_eq!(
        (made[0].survivor, made[0].merged, made[0].rule),
        (u1, x, Rule::Probabilistic)
    );
    assert!(versions.iter().any(|(p, _)| *p == u1));
    assert_eq!(f.holder("email", "x@example.com").await, Some(u1));
    // Matching merges are undone like any other.
    f.store.unmerge(&f.ws, made[0].id, r).await.unwrap().expect("unmerged");
    assert_eq!(f.holder("email", "x@example.com").await, Some(x));
}

async fn workspaces_do_not_meet(backend: Backend) {
    let Some(f) = fixture(backend).await else { return };
    let other: WorkspaceId = "other".parse().unwrap();
    let e = event(&f.rules, day(1), &[("email", "ada@example.com")]);
    let mine = f.send(&[e]).await[0].unwrap();
    let e = event(&f.rules, day(1), &[("email", "ada@example.com")]);
    let theirs = f.store.resolve(&other, &[e], &f.rules).await.unwrap().outcomes[0]
        .1
        .unwrap();
    assert_ne!(mine, theirs);
    assert_eq!(f.store.lookup(&other, mine).await.unwrap(), Lookup::Missing);
}

/// A second process on the same store (another replica) merges, unmerges and erases the
/// profiles the first one has resolved events to. The first one's next events must land
/// where the graph now says, whatever it remembers of where it left them.
async fn what_another_process_changed_is_seen(backend: Backend) {
    let Some(f) = fixture(backend).await else { return };
    let r = &f.rules;
    let other = storage::connect(&f.config).await.expect("a second store");
    let ada = f.send(&[event(r, day(1), &[("email", "ada@example.com")])]).await[0].unwrap();
    let bob = f.send(&[event(r, day(2), &[("phone", "+447700900999")])]).await[0].unwrap();

    // Merged elsewhere: both of this process's next events land on the survivor.
    let both = event(r, day(3), &[("email", "ada@example.com"), ("phone", "+447700900999")]);
    let survivor = other
        .resolve(&f.ws, &[both], r)
        .await
        .expect("resolve elsewhere")
        .outcomes[0]
        .1
        .unwrap();
    assert!(survivor == ada || survivor == bob);
    let next = f
        .send(&[event(r, day(4), &[("email", "ada@example.com"), ("device_id", "d1")])])
        .await;
    assert_eq!(next, vec![Some(survivor)]);
    let next = f
        .send(&[event(r, day(5), &[("phone", "+447700900999"), ("device_id", "d2")])])
        .await;
    assert_eq!(next, vec![Some(survivor)]);
    assert_eq!(f.live(survivor).await.event_count, 5);

    // Unmerged elsewhere: the phone is Bob's again, and so is this process's next event.
    let merge = f.live(survivor).await.merges[0].id;
    other.unmerge(&f.ws, merge, r).await.unwrap().expect("unmerged");
    let bobs = f.holder("phone", "+447700900999").await.unwrap();
    assert_ne!(bobs, f.holder("email", "ada@example.com").await.unwrap());
    let next = f.send(&[event(r, day(6), &[("phone", "+447700900999")])]).await;
    assert_eq!(next, vec![Some(bobs)]);

    // Erased elsewhere: the phone is blocked, and names no one here either.
    let receipt = |_: &Removed| Vec::new();
    other
        .forget(&f.ws, bobs, true, &receipt)
        .await
        .unwrap()
        .expect("erased");
    let next = f.send(&[event(r, day(7), &[("phone", "+447700900999")])]).await;
    assert_eq!(next, vec![None]);
    assert_eq!(f.holder("phone", "+447700900999").await, None);
}
