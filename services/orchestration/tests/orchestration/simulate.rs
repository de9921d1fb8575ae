//! SimulateCampaign on both backends.

use super::*;

/// A draft over its audience: who would get what, on which channel and when, who is
/// blocked and why, the conversions to expect; and nothing sent or logged.
pub async fn a_simulation_decides_for_the_audience_and_changes_nothing(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let o = setup.replica().await;
    // A live campaign of higher priority for people in audience "vip" with a trait.
    launch(
        &o,
        campaign(serde_json::json!({"name": "loud", "priority": 5, "audience": "vip", "segment": ""})),
    )
    .await;
    let draft = campaign(serde_json::json!({
        "name": "draft",
        "audience": "vip",
        "channels": ["email"],
        "holdout": 0.25,
        "budget": 30,
        "quiet_hours": {"start": "00:00", "end": "06:00"},
    }));
    o.create(&caller(), &draft).await.unwrap();
    // 100 members: 60 consenting (20 of them with a propensity of 0.2), 40 without
    // consent; 2 members identity no longer knows.
    for i in 0..100 {
        let mut person = match i < 60 {
            true => consenting(),
            false => Person::default(),
        };
        person.audiences = vec!["vip".to_owned()];
        if i < 20 {
            person.scores.insert("propensity".to_owned(), 0.2);
        }
        setup.people.add(person);
    }
    setup
        .people
        .gone
        .lock()
        .unwrap()
        .extend([ProfileId::new(), ProfileId::new()]);
    // "loud" takes everyone it can: pause it first, and the draft is simulated alone.
    o.set_state(&ws(), "loud", State::Paused).await.unwrap();
    let at = at("2026-03-02T02:00:00Z");
    let sim = o.simulate(&caller(), "draft", None, at).await.unwrap();
    assert_eq!((sim.audience, sim.unknown), (102, 2));
    let consent = sim.blocked.get(&Reason::Consent).copied().unwrap_or(0);
    let holdout = sim.blocked.get(&Reason::Holdout).copied().unwrap_or(0);
    assert_eq!(consent, 40);
    // Of the 60 who consent, 30 (the budget) are sent to; the others are held out, or,
    // once the budget is spent, blocked by it (as Decide checks the budget first).
    let budget = sim.blocked.get(&Reason::Budget).copied().unwrap_or(0);
    assert_eq!(sim.would_send, 30);
    assert_eq!(sim.would_send + holdout + budget, 60);
    assert!(holdout <= 25, "{holdout}");
    assert_eq!(
        sim.sends.get(&("mail".to_owned(), "email".to_owned())),
        Some(&sim.would_send)
    );
    // 02:00 UTC is within quiet hours (UTC): every send waits until 06:00.
    assert_eq!(sim.hours.keys().collect::<Vec<_>>(), [&4]);
    assert_eq!(sim.from_propensity + sim.from_policy, sim.would_send);
    // Without evidence, the policy's prior mean is 0.5 a person.
    let expected = 0.2 * sim.from_propensity as f64 + 0.5 * sim.from_policy as f64;
    assert!((sim.expected_conversions - expected).abs() < 1e-9);
    // Nothing sent, logged or spent.
    assert!(o.store.decisions(&ws(), None, None, 10).await.unwrap().is_empty());
    assert!(o.store.sends(&ws(), None, None, 10).await.unwrap().is_empty());
    assert_eq!(o.store.spent(&ws(), "draft").await.unwrap(), 0);
    // With "loud" live, the people it reaches are blocked by its priority.
    o.set_state(&ws(), "loud", State::Live).await.unwrap();
    let sim = o.simulate(&caller(), "draft", None, at).await.unwrap();
    assert_eq!(sim.would_send, 0);
    assert_eq!(sim.blocked.get(&Reason::Priority).copied().unwrap_or(0), 60);
    // A campaign for everyone runs over every person of the workspace, one for a
    // segment over those in it. "loud" is paused again, and the segment's five people
    // (all consenting, outside "vip") are the only ones added.
    o.set_state(&ws(), "loud", State::Paused).await.unwrap();
    for _ in 0..5 {
        setup.people.add(Person {
            segment: Some("bargain_hunters".to_owned()),
            ..consenting()
        });
    }
    for (name, segment) in [("everyone", ""), ("hunters", "bargain_hunters")] {
        let def = campaign(serde_json::json!({"name": name, "segment": segment}));
        o.create(&caller(), &def).await.unwrap();
    }
    let everyone = o.simulate(&caller(), "everyone", None, at).await.unwrap();
    // The 100 members, 5 more, none unknown (identity lists those who stand); the 65
    // who consent are sent to, the 40 who do not are blocked.
    assert_eq!((everyone.audience, everyone.unknown), (105, 0));
    assert_eq!(everyone.would_send, 65);
    assert_eq!(everyone.blocked.get(&Reason::Consent).copied(), Some(40));
    let hunters = o.simulate(&caller(), "hunters", None, at).await.unwrap();
    assert_eq!((hunters.audience, hunters.would_send), (5, 5), "{hunters:?}");
}
