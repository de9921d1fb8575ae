//! Scoring's store, one conformance suite for Postgres and SQLite: facts kept once per
//! event, moved by merges and unmerges, deleted by erasures; purchases up to a time;
//! models kept per workspace and kind; audience standings recorded once per change,
//! due with time, and ended by erasures.

use chrono::{DateTime, TimeZone, Utc};
use corvus_proto::{EventId, ProfileId, WorkspaceId};
use corvus_scoring::domain::facts::Fact;
use corvus_scoring::domain::traits::Payload;
use corvus_scoring::storage::{self, Change, Definitions, ScoringStore, Standing};
use corvus_test_support::{Backend, TempDir, on_both_backends};

on_both_backends!(
    facts_are_kept_once_and_follow_profile_changes,
    a_delivery_is_applied_in_log_order,
    purchases_and_models_are_kept_per_workspace,
    standings_record_each_change_once,
    models_older_than_the_schedule_are_refitted,
);

async fn store(backend: Backend, dir: &TempDir) -> Option<std::sync::Arc<dyn ScoringStore>> {
    let config = corvus_test_support::storage(backend, dir).await?;
    Some(storage::connect(&config).await.expect("connect"))
}

fn day(d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, d, 12, 0, 0).unwrap()
}

fn fact(event: EventId, profile: ProfileId, d: u32, revenue: Option<f64>) -> Change {
    Change::Fact {
        event,
        profile,
        at: day(d),
        fact: Box::new(Fact {
            revenue,
            ..Fact::default()
        }),
        payload: Box::new(Payload {
            kind: "track".into(),
            name: "Order Completed".into(),
            ..Payload::default()
        }),
    }
}

fn standing(audience: &str, profile: ProfileId, member: bool, recheck_at: Option<DateTime<Utc>>) -> Standing {
    Standing {
        audience: audience.into(),
        profile,
        member,
        recheck_at,
        reason: "event",
    }
}

/// An RFM model fitted on day 10, refitted by the schedule once it is a day old, as of
/// the time of the refit; a model the schedule has not reached is left alone.
async fn models_older_than_the_schedule_are_refitted(backend: Backend) {
    let dir = TempDir::new();
    let Some(store) = store(backend, &dir).await else {
        return;
    };
    let scoring = corvus_scoring::Scoring::new(store.clone(), &corvus_scoring::ScoringConfig::default());
    let ws: WorkspaceId = "acme".parse().unwrap();
    let changes: Vec<_> = (0..6u32)
        .map(|i| {
            (
                ws.clone(),
                fact(EventId::new(), ProfileId::new(), 1 + i, Some(10.0 * f64::from(i + 1))),
            )
        })
        .collect();
    store.apply(&changes).await.unwrap();
    let fitted = scoring.fit_rfm(&ws, day(10), |_, _| {}).await.unwrap();
    let day = std::time::Duration::from_secs(86_400);
    let mut attempts = corvus_scoring::refit::Attempts::default();
    let not_yet = fitted.fitted_at + chrono::TimeDelta::hours(1);
    assert_eq!(scoring.refit_due(not_yet, day, &mut attempts).await.unwrap(), 0);
    let later = fitted.fitted_at + chrono::TimeDelta::days(2);
    assert_eq!(scoring.refit_due(later, day, &mut attempts).await.unwrap(), 1);
    let Some(corvus_scoring::models::Fitted::Rfm(refitted)) = scoring.model(&ws, "rfm").await.unwrap() else {
        panic!("an RFM model");
    };
    assert_eq!(refitted.as_of, later);
    assert!(refitted.fitted_at >= fitted.fitted_at);
}

async fn standings_record_each_change_once(backend: Backend) {
    let dir = TempDir::new();
    let Some(store) = store(backend, &dir).await else {
        return;
    };
    let ws: WorkspaceId = "acme".parse().unwrap();
    let (a, b) = (ProfileId::new(), ProfileId::new());
    assert!(
        store
            .define(&ws, Definitions::Audiences, "vip", "{}", day(1))
            .await
            .unwrap()
    );
    assert!(
        !store
            .define(&ws, Definitions::Audiences, "vip", "{}", day(1))
            .await
            .unwrap(),
        "the name is taken"
    );
    assert_eq!(store.building().await.unwrap(), vec![(ws.clone(), "vip".to_owned())]);
    store.mark_built(&ws, "vip", day(1)).await.unwrap();
    assert!(store.building().await.unwrap().is_empty());

    // a enters; the same standing again changes nothing; b is out but due on the 5th.
    let entered = store
        .record(
            &ws,
            &[standing("vip", a, true, None), standing("vip", b, false, Some(day(5)))],
            day(2),
        )
        .await
        .unwrap();
    assert_eq!(entered.len(), 1);
    assert_eq!((entered[0].profile, entered[0].entered), (a, true));
    assert!(
        store
            .record(&ws, &[standing("vip", a, true, None)], day(3))
            .await
            .unwrap()
            .is_empty()
    );
    // Two evaluators racing with the same news: one records the change.
    let news = [standing("vip", b, true, None)];
    let (x, y) = tokio::join!(store.record(&ws, &news, day(5)), store.record(&ws, &news, day(5)));
    assert_eq!(x.unwrap().len() + y.unwrap().len(), 1);
    assert_eq!(store.member_count(&ws, "vip").await.unwrap(), 2);
    assert_eq!(store.memberships(&ws, b).await.unwrap(), vec!["vip"]);

    // Due by time: only what is due by then.
    store
        .record(&ws, &[standing("vip", a, true, Some(day(10)))], day(6))
        .await
        .unwrap();
    assert!(store.due(day(9), 10).await.unwrap().is_empty());
    assert_eq!(store.due(day(10), 10).await.unwrap(), vec![(ws.clone(), a)]);

    // a leaves: the row goes with the standing; the changes read back in order.
    let left = store
        .record(&ws, &[standing("vip", a, false, None)], day(10))
        .await
        .unwrap();
    assert_eq!((left[0].profile, left[0].entered), (a, false));
    let changes = store.changes(&ws, "vip", 0, 100).await.unwrap();
    assert_eq!(
        changes.iter().map(|c| (c.profile, c.entered)).collect::<Vec<_>>(),
        vec![(a, true), (b, true), (a, false)]
    );
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.last_change(&ws, "vip").await.unwrap(), changes[2].seq);
    assert_eq!(store.changes(&ws, "vip", changes[1].seq, 100).await.unwrap().len(), 1);
    let page = store.members(&ws, "vip", None, 10).await.unwrap();
    assert_eq!(page.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![b]);
    assert!(store.due(day(30), 10).await.unwrap().is_empty());

    // b erased: its standing and history go, but for an exit that tells the stream.
    let erased = store
        .apply(&[(ws.clone(), Change::Erased { profiles: vec![b] })])
        .await
        .unwrap();
    assert_eq!(erased, vec![(0, 1)]);
    assert_eq!(store.member_count(&ws, "vip").await.unwrap(), 0);
    let changes = store.changes(&ws, "vip", 0, 100).await.unwrap();
    let of_b: Vec<_> = changes.iter().filter(|c| c.profile == b).collect();
    assert_eq!(of_b.len(), 1);
    assert_eq!((of_b[0].entered, of_b[0].reason.as_str()), (false, "erased"));

    // A call of more standings than one statement writes; a profile standing twice in
    // one call is recorded in turn (in, then out: both changes, no row left).
    let many: Vec<ProfileId> = (0..1_201).map(|_| ProfileId::new()).collect();
    let twice = many[7];
    let mut standings: Vec<Standing> = many.iter().map(|p| standing("vip", *p, true, None)).collect();
    standings.push(standing("vip", twice, false, None));
    let recorded = store.record(&ws, &standings, day(11)).await.unwrap();
    assert_eq!(recorded.len(), 1_202);
    assert!(recorded.windows(2).all(|w| w[0].seq < w[1].seq));
    let of_twice: Vec<bool> = recorded
        .iter()
        .filter(|c| c.profile == twice)
        .map(|c| c.entered)
        .collect();
    assert_eq!(of_twice, vec![true, false]);
    assert_eq!(store.member_count(&ws, "vip").await.unwrap(), 1_200);
    let out: Vec<Standing> = many.iter().map(|p| standing("vip", *p, false, None)).collect();
    assert_eq!(store.record(&ws, &out, day(12)).await.unwrap().len(), 1_200);
    assert_eq!(store.member_count(&ws, "vip").await.unwrap(), 0);

    // An audience deleted takes its standings and history with it.
    assert!(store.undefine(&ws, Definitions::Audiences, "vip").await.unwrap());
    assert!(store.changes(&ws, "vip", 0, 100).await.unwrap().is_empty());
    assert!(!store.undefine(&ws, Definitions::Audiences, "vip").await.unwrap());
}

async fn facts_are_kept_once_and_follow_profile_changes(backend: Backend) {
    let dir = TempDir::new();
    let Some(store) = store(backend, &dir).await else {
        return;
    };
    let ws: WorkspaceId = "acme".parse().unwrap();
    let (a, b) = (ProfileId::new(), ProfileId::new());
    let events: Vec<EventId> = (0..4).map(|_| EventId::new()).collect();
    let changes = vec![
        (ws.clone(), fact(events[0], a, 1, Some(10.0))),
        (ws.clone(), fact(events[1], a, 2, None)),
        (ws.clone(), fact(events[2], b, 3, Some(5.0))),
    ];
    store.apply(&changes).await.unwrap();
    // The same delivery again (at-least-once): nothing doubles. A fact of an event
    // already held is not moved by a late copy naming another profile.
    store.apply(&changes).await.unwrap();
    store
        .apply(&[(ws.clone(), fact(events[0], b, 1, Some(10.0)))])
        .await
        .unwrap();
    assert_eq!(store.survivor_facts(&ws, a).await.unwrap().1.len(), 2);
    assert_eq!(store.survivor_facts(&ws, b).await.unwrap().1.len(), 1);

    // b merged into a: a holds all three in time order, b redirects to a.
    store
        .apply(&[(
            ws.clone(),
            Change::Merged {
                survivor: a,
                merged: vec![b],
            },
        )])
        .await
        .unwrap();
    let joined = store.survivor_facts(&ws, a).await.unwrap().1;
    assert_eq!(
        joined.iter().map(|f| f.at).collect::<Vec<_>>(),
        vec![day(1), day(2), day(3)]
    );
    assert_eq!(store.survivor_facts(&ws, b).await.unwrap().0, a);
    // a merged on into c: b's alias follows.
    let c = ProfileId::new();
    store
        .apply(&[
            (ws.clone(), fact(events[3], c, 4, None)),
            (
                ws.clone(),
                Change::Merged {
                    survivor: c,
                    merged: vec![a],
                },
            ),
        ])
        .await
        .unwrap();
    assert_eq!(store.survivor_facts(&ws, b).await.unwrap().0, c);
    assert_eq!(store.survivor_facts(&ws, c).await.unwrap().1.len(), 4);
    // Both in one read, from a merged id, with the facts in time order.
    let (survivor, facts) = store.survivor_facts(&ws, b).await.unwrap();
    assert_eq!(survivor, c);
    assert_eq!(
        facts.iter().map(|f| f.at).collect::<Vec<_>>(),
        vec![day(1), day(2), day(3), day(4)]
    );

    // Unmerged: each side takes its events back and answers for itself.
    store
        .apply(&[(
            ws.clone(),
            Change::Unmerged {
                sides: vec![(c, vec![events[3]]), (b, vec![events[0], events[1], events[2]])],
            },
        )])
        .await
        .unwrap();
    assert_eq!(store.survivor_facts(&ws, b).await.unwrap().0, b);
    assert_eq!(store.survivor_facts(&ws, b).await.unwrap().1.len(), 3);
    assert_eq!(store.survivor_facts(&ws, c).await.unwrap().1.len(), 1);

    // A chain undone in the middle: x into y, y into z, then y's merge into z undone:
    // x is y's again, not z's.
    let (x, y, z) = (ProfileId::new(), ProfileId::new(), ProfileId::new());
    let late = EventId::new();
    store
        .apply(&[
            (
                ws.clone(),
                Change::Merged {
                    survivor: y,
                    merged: vec![x],
                },
            ),
            (
                ws.clone(),
                Change::Merged {
                    survivor: z,
                    merged: vec![y],
                },
            ),
        ])
        .await
        .unwrap();
    assert_eq!(store.survivor_facts(&ws, x).await.unwrap().0, z);
    // An event that reaches scoring under an id merged away (a replay) counts for the
    // survivor.
    store.apply(&[(ws.clone(), fact(late, x, 9, Some(1.0)))]).await.unwrap();
    assert_eq!(store.survivor_facts(&ws, z).await.unwrap().1.len(), 1);
    assert_eq!(
        store
            .purchases(&ws, day(9))
            .await
            .unwrap()
            .iter()
            .filter(|p| p.profile == z)
            .count(),
        1
    );
    store
        .apply(&[(
            ws.clone(),
            Change::Unmerged {
                sides: vec![(z, vec![]), (y, vec![late])],
            },
        )])
        .await
        .unwrap();
    assert_eq!(store.survivor_facts(&ws, x).await.unwrap().0, y);
    assert_eq!(store.survivor_facts(&ws, y).await.unwrap().0, y);
    assert_eq!(store.survivor_facts(&ws, y).await.unwrap().1.len(), 1);
    assert_eq!(store.survivor_facts(&ws, x).await.unwrap().1.len(), 1);
    // A profile with no facts stands for itself, with none.
    let nobody = ProfileId::new();
    assert_eq!(store.survivor_facts(&ws, nobody).await.unwrap(), (nobody, Vec::new()));

    // Erased: the answer counts what went; nothing is left, in another workspace
    // nothing was touched.
    let other: WorkspaceId = "globex".parse().unwrap();
    store
        .apply(&[(other.clone(), fact(EventId::new(), b, 1, None))])
        .await
        .unwrap();
    let removed = store
        .apply(&[(ws.clone(), Change::Erased { profiles: vec![b, a] })])
        .await
        .unwrap();
    assert_eq!(removed, vec![(3, 0)]);
    assert!(store.survivor_facts(&ws, b).await.unwrap().1.is_empty());
    assert_eq!(store.survivor_facts(&other, b).await.unwrap().1.len(), 1);
    assert_eq!(store.survivor_facts(&ws, c).await.unwrap().1.len(), 1);
}

/// A large delivery (its facts written in chunks side by side) with a chain of merges
/// in it, an event replayed under a merged id after them, and the same profile id in
/// another workspace; then one with an erasure between facts, applied whole.
async fn a_delivery_is_applied_in_log_order(backend: Backend) {
    let dir = TempDir::new();
    let Some(store) = store(backend, &dir).await else {
        return;
    };
    let (ws, other): (WorkspaceId, WorkspaceId) = ("acme".parse().unwrap(), "globex".parse().unwrap());
    let (p, q, r) = (ProfileId::new(), ProfileId::new(), ProfileId::new());
    let mut changes: Vec<(WorkspaceId, Change)> = (0..1500u32)
        .map(|i| {
            (
                ws.clone(),
                fact(EventId::new(), [p, q, r][i as usize % 3], 1 + i % 28, None),
            )
        })
        .collect();
    changes.push((
        ws.clone(),
        Change::Merged {
            survivor: q,
            merged: vec![p],
        },
    ));
    changes.push((other.clone(), fact(EventId::new(), p, 1, None)));
    changes.push((
        ws.clone(),
        Change::Merged {
            survivor: r,
            merged: vec![q],
        },
    ));
    changes.push((ws.clone(), fact(EventId::new(), p, 2, Some(3.0))));
    store.apply(&changes).await.unwrap();
    // Every fact of p and q is r's now, the replayed one too, whichever id it names.
    assert_eq!(store.survivor_facts(&ws, r).await.unwrap().1.len(), 1501);
    let histories = store.histories(&ws, &[p, q, r]).await.unwrap();
    assert_eq!(histories[&r].0.len(), 1501);
    assert_eq!(histories[&r].1.len(), 1501, "each fact with its event");
    assert!(histories[&p].0.is_empty() && histories[&q].0.is_empty());
    assert_eq!(
        (
            store.survivor_facts(&ws, p).await.unwrap().0,
            store.survivor_facts(&ws, q).await.unwrap().0
        ),
        (r, r)
    );
    let purchases = store.purchases(&ws, day(28)).await.unwrap();
    assert_eq!(purchases.iter().map(|b| b.profile).collect::<Vec<_>>(), vec![r]);
    // A merge in one workspace moves nothing of another's.
    assert_eq!(store.survivor_facts(&other, p).await.unwrap().1.len(), 1);
    assert_eq!(store.survivor_facts(&other, p).await.unwrap().0, p);

    // An erasure between facts: those before it go, those after it stay.
    let s = ProfileId::new();
    let mut changes: Vec<(WorkspaceId, Change)> = (0..700u32)
        .map(|i| (ws.clone(), fact(EventId::new(), s, 1 + i % 28, None)))
        .collect();
    changes.push((ws.clone(), Change::Erased { profiles: vec![s] }));
    changes.push((ws.clone(), fact(EventId::new(), s, 3, None)));
    assert_eq!(store.apply(&changes).await.unwrap(), vec![(700, 0)]);
    assert_eq!(store.survivor_facts(&ws, s).await.unwrap().1.len(), 1);
    assert_eq!(store.survivor_facts(&ws, r).await.unwrap().1.len(), 1501);
}

async fn purchases_and_models_are_kept_per_workspace(backend: Backend) {
    let dir = TempDir::new();
    let Some(store) = store(backend, &dir).await else {
        return;
    };
    let ws: WorkspaceId = "acme".parse().unwrap();
    let p = ProfileId::new();
    store
        .apply(&[
            (ws.clone(), fact(EventId::new(), p, 1, Some(10.0))),
            (ws.clone(), fact(EventId::new(), p, 2, None)),
            (ws.clone(), fact(EventId::new(), p, 3, Some(7.5))),
        ])
        .await
        .unwrap();
    let held = store.purchases(&ws, day(2)).await.unwrap();
    assert_eq!(held.len(), 1, "purchases up to day 2, not the page view");
    assert_eq!((held[0].profile, held[0].revenue), (p, 10.0));
    assert_eq!(store.purchases(&ws, day(3)).await.unwrap().len(), 2);
    assert!(
        store
            .purchases(&"globex".parse().unwrap(), day(3))
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(store.model(&ws, "clv").await.unwrap(), None);
    store.save_model(&ws, "clv", "{\"v\":1}", day(1)).await.unwrap();
    store.save_model(&ws, "rfm", "{}", day(1)).await.unwrap();
    assert_eq!(
        store.model_versions(&ws).await.unwrap(),
        vec![("clv".to_owned(), 1), ("rfm".to_owned(), 1)]
    );
    // A save counts the version up, with the same fitted_at too (an online update).
    store.save_model(&ws, "clv", "{\"v\":2}", day(1)).await.unwrap();
    assert_eq!(store.model(&ws, "clv").await.unwrap().as_deref(), Some("{\"v\":2}"));
    assert_eq!(
        store.model_versions(&ws).await.unwrap(),
        vec![("clv".to_owned(), 2), ("rfm".to_owned(), 1)]
    );
    assert_eq!(store.model(&"globex".parse().unwrap(), "clv").await.unwrap(), None);
    assert!(
        store
            .model_versions(&"globex".parse().unwrap())
            .await
            .unwrap()
            .is_empty()
    );
}
