//! Triggered campaigns on both backends.

use super::*;

/// An event trigger with a property and a wait-and-check ("Product Added" for a book,
/// not followed by "Order Completed" within the wait), one at once ("Signed Up"), and
/// one on a score crossing its threshold upwards; decided by the trigger worker.
pub async fn triggers_decide_on_events_waits_and_scores(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let o = setup.replica().await;
    launch(
        &o,
        campaign(serde_json::json!({
            "name": "cart",
            "trigger": {"event": {"event": "Product Added", "properties": {"category": "Books"},
                                   "wait_seconds": 1, "unless": "Order Completed"}},
        })),
    )
    .await;
    launch(
        &o,
        campaign(serde_json::json!({"name": "welcome", "trigger": {"event": {"event": "Signed Up"}}})),
    )
    .await;
    launch(
        &o,
        campaign(serde_json::json!({"name": "save", "trigger": {"score": {"score": "churn_risk", "above": 0.7}}})),
    )
    .await;
    let [buys, abandons, toys, joins, churns] = std::array::from_fn(|_| setup.people.add(consenting()));
    let now = Utc::now();
    let book = serde_json::json!({"category": "Books"});
    o.deliver(&[
        track(buys, "Product Added", book.clone(), now),
        track(abandons, "Product Added", book, now),
        track(toys, "Product Added", serde_json::json!({"category": "Toys"}), now),
        track(joins, "Signed Up", serde_json::json!({}), now),
        track(
            buys,
            "Order Completed",
            serde_json::json!({}),
            now + chrono::Duration::milliseconds(300),
        ),
    ])
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let mut workers = o.spawn_triggers(stop.clone());
    let decided = async |campaign: Option<&str>| {
        let log = o.store.decisions(&ws(), campaign, None, 100).await.unwrap();
        log.into_iter().map(|d| (d.campaign, d.profile)).collect::<Vec<_>>()
    };
    // At once: the sign-up; after the wait: the abandoned cart only.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while decided(None).await.len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let log = decided(None).await;
    assert!(log.contains(&("welcome".to_owned(), joins)), "{log:?}");
    assert!(log.contains(&("cart".to_owned(), abandons)), "{log:?}");
    assert_eq!(log.len(), 2, "{log:?}");
    // The score: first seen at 0.5, then 0.9 after another event: it crossed 0.7.
    let set_risk = |risk: f64| {
        let mut people = setup.people.people.lock().unwrap();
        people
            .get_mut(&churns)
            .unwrap()
            .scores
            .insert("churn_risk".to_owned(), risk);
    };
    set_risk(0.5);
    o.deliver(&[track(churns, "Page Viewed", serde_json::json!({}), Utc::now())])
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2_600)).await;
    assert!(
        decided(Some("save")).await.is_empty(),
        "the first look only notes the score"
    );
    set_risk(0.9);
    o.deliver(&[track(churns, "Page Viewed", serde_json::json!({}), Utc::now())])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(6);
    while decided(Some("save")).await.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(decided(Some("save")).await, [("save".to_owned(), churns)]);
    stop.cancel();
    while workers.join_next().await.is_some() {}

    // People with a look at their score waiting, merged in one delivery (two into a
    // survivor with one of its own, then that survivor into another): one look waits,
    // for the last survivor.
    // Two more into a survivor with none: one of theirs waits for it.
    let [a, b, s, last, c, d] = std::array::from_fn(|_| setup.people.add(consenting()));
    let fresh = ProfileId::new();
    let views: Vec<_> = [a, b, s, last, c, d]
        .into_iter()
        .map(|p| track(p, "Page Viewed", serde_json::json!({}), Utc::now()))
        .collect();
    o.deliver(&views).await.unwrap();
    o.deliver(&[
        merged_into(s, &[a, b]),
        merged_into(last, &[s]),
        merged_into(fresh, &[c, d]),
    ])
    .await
    .expect("the merges are written");
    let later = Utc::now() + chrono::Duration::days(1);
    let mut looks: Vec<ProfileId> = o
        .store
        .claim_triggers(later, later, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.campaign == "save" && t.kind == TriggerKind::Score)
        .map(|t| t.profile)
        .collect();
    let mut expected = [last, fresh];
    looks.sort();
    expected.sort();
    assert_eq!(looks, expected);
}

/// Campaigns triggered from outside a person's events, followed by two replicas: one
/// decision per person entering an audience (none for an exit), and one per member for
/// a schedule's occurrence, sent at its time on that date in each member's zone.
pub async fn triggers_follow_audiences_and_schedules(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let (a, b) = (setup.replica().await, setup.replica().await);
    launch(
        &a,
        campaign(serde_json::json!({"name": "hello_vip", "trigger": {"audience_entered": "vip"}})),
    )
    .await;
    let stop = CancellationToken::new();
    let _workers = [a.spawn_triggers(stop.clone()), b.spawn_triggers(stop.clone())];
    let decided = async |campaign: &str| a.store.decisions(&ws(), Some(campaign), None, 100).await.unwrap();
    let wait_for = async |campaign: &str, n: usize| {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while decided(campaign).await.len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Anything more would show by now.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        decided(campaign).await
    };
    // Both replicas follow the audience before anyone enters it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while setup.people.followers.load(Ordering::SeqCst) < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let entering: Vec<ProfileId> = (0..6).map(|_| setup.people.add(consenting())).collect();
    {
        let mut changes = setup.people.changes.lock().unwrap();
        for (i, p) in entering.iter().enumerate() {
            let sequence = changes.len() as u64 + 1;
            changes.push(AudienceChange {
                sequence,
                profile: *p,
                // The last one leaves rather than enters.
                entered: i < 5,
            });
        }
    }
    let hello = wait_for("hello_vip", 5).await;
    let mut greeted: Vec<ProfileId> = hello.iter().map(|d| d.profile).collect();
    greeted.sort();
    let mut expected = entering[..5].to_vec();
    expected.sort();
    assert_eq!(greeted, expected, "one decision per entry, none for the exit");
    assert!(hello.iter().all(|d| d.placement == "trigger: entered vip"), "{hello:?}");

    // A schedule whose time came half an hour ago in UTC+14, the first zone: its
    // occurrence is today's date there, sent now to a member there and 24 hours later
    // to one in UTC-10.
    let first =
        Utc::now().with_timezone(&chrono::FixedOffset::east_opt(14 * 3600).unwrap()) - chrono::Duration::minutes(30);
    let time = first.format("%H:%M").to_string();
    let date = first.date_naive();
    let vip = |zone: &str| {
        let mut person = consenting();
        person.audiences = vec!["vip".to_owned()];
        person.time_zone = Some(zone.to_owned());
        setup.people.add(person)
    };
    let (kiritimati, honolulu) = (vip("Pacific/Kiritimati"), vip("Pacific/Honolulu"));
    launch(
        &b,
        campaign(serde_json::json!({
            "name": "daily", "audience": "vip", "trigger": {"schedule": {"at": time}},
        })),
    )
    .await;
    let daily = wait_for("daily", 2).await;
    assert_eq!(daily.len(), 2, "each member once: {daily:?}");
    let of = |p: ProfileId| daily.iter().find(|d| d.profile == p).unwrap();
    let local = date.and_time(chrono::NaiveTime::parse_from_str(&time, "%H:%M").unwrap());
    assert_eq!(
        of(kiritimati).send_at,
        of(kiritimati).decided_at,
        "its time has come there"
    );
    assert_eq!(of(honolulu).send_at, (local + chrono::Duration::hours(10)).and_utc());
    assert_eq!(of(honolulu).placement, format!("trigger: schedule {date}"));
    // A triggered campaign is never chosen by a call that does not name it.
    let (none, _) = a.decide(&caller(), &input(kiritimati, Utc::now())).await.unwrap();
    assert!(none.is_none(), "{none:?}");
    stop.cancel();
}
