//! The measurement service over each backend: decisions and outcomes from the two logs
//! become aggregates equal to the sums computed here, directly, from the same people;
//! each entry counts once however often it is delivered; merges, unmerges and erasures
//! move the aggregates as if the people had always been as they are after them; two
//! replicas delivering at once count everything once.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use corvus_measurement::metric::{EventFilter, Metric};
use corvus_measurement::results::Settings;
use corvus_measurement::service::Query;
use corvus_measurement::stats::{MetricType, Prior};
use corvus_measurement::storage::{self, Filter};
use corvus_measurement::{Measurement, MeasurementConfig, MeasurementError};
use corvus_proto::WorkspaceId;
use corvus_proto::common::v1::{Channel, Event, EventType, StoredEvent};
use corvus_proto::identity::v1::{
    LogEntry, ProfileChange, ProfileUnmerged, ProfilesErased, ProfilesMerged, UnmergeSide, log_entry, profile_change,
};
use corvus_proto::orchestration::v1::{Decision, DecisionLogEntry};
use corvus_test_support::{Backend, TempDir};
use uuid::Uuid;

pub(crate) const EXPERIMENT: &str = "spring";

pub(crate) fn ws() -> WorkspaceId {
    "acme".parse().unwrap()
}

pub(crate) fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub(crate) async fn measurement(backend: Backend, dir: &TempDir) -> Option<Measurement> {
    let config = corvus_test_support::storage(backend, dir).await?;
    Some(
        Measurement::connect(&config, &MeasurementConfig::default())
            .await
            .unwrap(),
    )
}

pub(crate) fn order_completed(value: &str) -> EventFilter {
    EventFilter {
        event: "Order Completed".into(),
        value: value.into(),
        ..Default::default()
    }
}

/// Converted (binomial), revenue per user (count, with CUPED's covariate) and revenue
/// per order (ratio), each over a day after exposure.
pub(crate) fn metrics() -> Vec<Metric> {
    let day = 24 * 3600;
    let metric = |name: &str, metric_type, numerator, denominator, lookback| Metric {
        name: name.into(),
        metric_type,
        numerator,
        denominator,
        window_seconds: day,
        lookback_seconds: lookback,
        inverse: false,
        guardrail: false,
        description: String::new(),
    };
    vec![
        metric("converted", MetricType::Binomial, order_completed(""), None, 14 * day),
        metric("revenue", MetricType::Count, order_completed("revenue"), None, 14 * day),
        metric(
            "revenue_per_order",
            MetricType::Ratio,
            order_completed("revenue"),
            Some(order_completed("")),
            0,
        ),
    ]
}

pub(crate) fn decision(profile: Uuid, arm: &str, channel: Channel, at: DateTime<Utc>) -> DecisionLogEntry {
    let share = match arm {
        "holdout" => 0.2,
        _ => 0.4,
    };
    DecisionLogEntry {
        workspace_id: "acme".into(),
        decision: Some(Decision {
            decision_id: Uuid::now_v7().to_string(),
            profile_id: profile.to_string(),
            campaign: EXPERIMENT.into(),
            campaign_version: 1,
            arm: arm.into(),
            action: "offer".into(),
            channel: channel as i32,
            policy: "thompson".into(),
            propensity: 0.5,
            decided_at: Some(ts(at)),
            segment: "loyal".into(),
            arm_share: share,
            ..Default::default()
        }),
    }
}

pub(crate) fn order(profile: Uuid, revenue: f64, at: DateTime<Utc>) -> LogEntry {
    track(
        profile,
        "Order Completed",
        serde_json::json!({ "revenue": revenue }),
        at,
    )
}

/// A resolved track event of the person's.
pub(crate) fn track(profile: Uuid, name: &str, properties: serde_json::Value, at: DateTime<Utc>) -> LogEntry {
    LogEntry {
        entry: Some(log_entry::Entry::Event(StoredEvent {
            workspace_id: "acme".into(),
            event_id: Uuid::now_v7().to_string(),
            profile_id: profile.to_string(),
            event: Some(Event {
                r#type: EventType::Track as i32,
                event: name.into(),
                properties: Some(corvus_proto::raw::RawStruct::from_json(properties.as_object().unwrap())),
                timestamp: Some(ts(at)),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

fn change(change: profile_change::Change) -> LogEntry {
    LogEntry {
        entry: Some(log_entry::Entry::Change(ProfileChange {
            workspace_id: "acme".into(),
            change_id: Uuid::now_v7().to_string(),
            change: Some(change),
            ..Default::default()
        })),
    }
}

/// A person of the simulated experiment, as the test knows them.
struct Person {
    id: Uuid,
    arm: &'static str,
    channel: Channel,
    exposed_at: DateTime<Utc>,
    /// Orders: (revenue, at).
    orders: Vec<(f64, DateTime<Utc>)>,
}

/// 90 people over three arms, exposed across a UTC midnight; orders before, within and
/// after a day's window.
fn people() -> Vec<Person> {
    let start = Utc.with_ymd_and_hms(2026, 3, 1, 23, 0, 0).unwrap();
    (0..90)
        .map(|i| {
            let arm = ["holdout", "a", "b"][i % 3];
            let exposed_at = start + Duration::minutes(i as i64);
            let mut orders = Vec::new();
            if i % 4 == 0 {
                orders.push((30.0 + i as f64, exposed_at - Duration::hours(2)));
            }
            for j in 0..(i % 3 + i % 2) {
                orders.push((
                    10.0 + (i + j) as f64,
                    exposed_at + Duration::minutes(10 * (j as i64 + 1)),
                ));
            }
            if i % 5 == 0 {
                orders.push((99.0, exposed_at + Duration::days(2)));
            }
            Person {
                id: Uuid::now_v7(),
                arm,
                channel: match arm {
                    "holdout" => Channel::Unspecified,
                    _ if i % 2 == 0 => Channel::Email,
                    _ => Channel::Sms,
                },
                exposed_at,
                orders,
            }
        })
        .collect()
}

/// Per arm: users, and per metric the eight sums, computed directly from the people.
fn expected(people: &[&Person]) -> storage::Aggregates {
    let mut users = BTreeMap::new();
    let mut sums: BTreeMap<(String, String), [f64; 8]> = BTreeMap::new();
    for p in people {
        *users.entry(p.arm.to_owned()).or_default() += 1;
        let within: Vec<f64> = p
            .orders
            .iter()
            .filter(|(_, at)| *at >= p.exposed_at && *at < p.exposed_at + Duration::days(1))
            .map(|(r, _)| *r)
            .collect();
        let before: Vec<f64> = p
            .orders
            .iter()
            .filter(|(_, at)| *at < p.exposed_at && *at >= p.exposed_at - Duration::days(14))
            .map(|(r, _)| *r)
            .collect();
        let converted = if within.is_empty() { 0.0 } else { 1.0 };
        let converted_before = if before.is_empty() { 0.0 } else { 1.0 };
        let revenue: f64 = within.iter().sum();
        let revenue_before: f64 = before.iter().sum();
        let orders = within.len() as f64;
        let values = [
            (
                "converted",
                [
                    converted,
                    converted,
                    0.0,
                    0.0,
                    0.0,
                    converted_before,
                    converted_before,
                    converted * converted_before,
                ],
            ),
            (
                "revenue",
                [
                    revenue,
                    revenue * revenue,
                    0.0,
                    0.0,
                    0.0,
                    revenue_before,
                    revenue_before * revenue_before,
                    revenue * revenue_before,
                ],
            ),
            (
                "revenue_per_order",
                [
                    revenue,
                    revenue * revenue,
                    orders,
                    orders * orders,
                    revenue * orders,
                    0.0,
                    0.0,
                    0.0,
                ],
            ),
        ];
        for (metric, v) in values {
            let s = sums.entry((metric.to_owned(), p.arm.to_owned())).or_default();
            for (s, v) in s.iter_mut().zip(v) {
                *s += v;
            }
        }
    }
    sums.retain(|_, s| s.iter().any(|x| *x != 0.0));
    storage::Aggregates { users, sums }
}

fn assert_sums(got: &BTreeMap<(String, String), [f64; 8]>, want: &BTreeMap<(String, String), [f64; 8]>) {
    let got: BTreeMap<_, _> = got.iter().filter(|(_, s)| s.iter().any(|x| x.abs() > 1e-9)).collect();
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (key, want) in want {
        for (g, w) in got[key].iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                "{key:?}: {:?} against {want:?}",
                got[key]
            );
        }
    }
}

pub(crate) async fn define(m: &Measurement) {
    for metric in metrics() {
        m.create_metric(&ws(), &metric).await.unwrap();
    }
}

pub async fn aggregates_equal_the_sums_of_the_people_and_count_each_entry_once(backend: Backend) {
    let dir = TempDir::new();
    let Some(m) = measurement(backend, &dir).await else {
        return;
    };
    define(&m).await;
    let people = people();
    // Half the people's orders arrive before their decision does (the two logs are read
    // apart); each delivery comes twice.
    let (early, late): (Vec<&Person>, Vec<&Person>) = people.iter().partition(|p| p.orders.len() % 2 == 0);
    let orders_of = |ps: &[&Person]| -> Vec<LogEntry> {
        ps.iter()
            .flat_map(|p| p.orders.iter().map(|(r, at)| order(p.id, *r, *at)))
            .collect()
    };
    let mut decisions: Vec<DecisionLogEntry> = people
        .iter()
        .map(|p| decision(p.id, p.arm, p.channel, p.exposed_at))
        .collect();
    // A second decision of the same campaign a day later is a touch, not an exposure.
    decisions.extend(
        people
            .iter()
            .step_by(7)
            .map(|p| decision(p.id, p.arm, p.channel, p.exposed_at + Duration::days(1))),
    );
    let early_orders = orders_of(&early);
    let late_orders = orders_of(&late);
    for _ in 0..2 {
        assert!(m.deliver(&early_orders).await.unwrap().0.is_empty());
        assert!(m.record_decisions(&decisions).await.unwrap().is_empty());
        assert!(m.deliver(&late_orders).await.unwrap().0.is_empty());
    }
    let all: Vec<&Person> = people.iter().collect();
    let storage::Aggregates { users, sums } = expected(&all);
    let got = m.store.aggregates(&ws(), EXPERIMENT, &Filter::default()).await.unwrap();
    assert_eq!(got.users, users);
    assert_sums(&got.sums, &sums);

    // Narrowed to a channel and to the second day: the same sums over those people.
    let email: Vec<&Person> = people.iter().filter(|p| p.channel == Channel::Email).collect();
    let filter = Filter {
        channel: Some("email".into()),
        ..Default::default()
    };
    let got = m.store.aggregates(&ws(), EXPERIMENT, &filter).await.unwrap();
    assert_eq!(got.users, expected(&email).users);
    assert_sums(&got.sums, &expected(&email).sums);
    let second_day = storage::day(Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap());
    let filter = Filter {
        from_day: Some(second_day),
        to_day: Some(second_day),
        ..Default::default()
    };
    let after_midnight: Vec<&Person> = people
        .iter()
        .filter(|p| p.exposed_at.date_naive().to_string() == "2026-03-02")
        .collect();
    assert_eq!(after_midnight.len(), 30);
    let got = m.store.aggregates(&ws(), EXPERIMENT, &filter).await.unwrap();
    assert_eq!(got.users, expected(&after_midnight).users);
    assert_sums(&got.sums, &expected(&after_midnight).sums);

    // The experiment as listed: its arms' people and designed shares.
    let arms = m.store.experiments(&ws()).await.unwrap();
    let listed: Vec<(&str, u64, f64)> = arms.iter().map(|a| (a.arm.as_str(), a.users, a.share)).collect();
    assert_eq!(listed, [("a", 30, 0.4), ("b", 30, 0.4), ("holdout", 30, 0.2)]);

    // Another workspace with the same experiment and metric names counts apart, and
    // changes nothing of this one's.
    let globex: WorkspaceId = "globex".parse().unwrap();
    for metric in metrics() {
        m.create_metric(&globex, &metric).await.unwrap();
    }
    let stranger = Uuid::now_v7();
    let t = people[0].exposed_at;
    let mut theirs = decision(stranger, "a", Channel::Email, t);
    theirs.workspace_id = "globex".into();
    let mut bought = order(stranger, 500.0, t + Duration::hours(1));
    if let Some(log_entry::Entry::Event(e)) = &mut bought.entry {
        e.workspace_id = "globex".into();
    }
    m.record_decisions(&[theirs]).await.unwrap();
    m.deliver(&[bought]).await.unwrap();
    let ours = m.store.aggregates(&ws(), EXPERIMENT, &Filter::default()).await.unwrap();
    assert_eq!(ours.users, users);
    assert_sums(&ours.sums, &sums);
    let other = m
        .store
        .aggregates(&globex, EXPERIMENT, &Filter::default())
        .await
        .unwrap();
    assert_eq!(other.users, BTreeMap::from([("a".to_owned(), 1)]));
    assert_eq!(other.sums[&("revenue".to_owned(), "a".to_owned())][0], 500.0);

    // Results: the holdout is the baseline; the split as designed (0.2/0.4/0.4).
    let query = Query {
        experiment: EXPERIMENT.into(),
        metrics: vec![],
        baseline: None,
        filter: Filter::default(),
        settings: Settings {
            alpha: 0.05,
            sequential_tuning_parameter: 5000.0,
            prior: Prior::default(),
        },
    };
    let results = m.results(&ws(), &query).await.unwrap();
    assert_eq!(results.baseline, "holdout");
    let shares: Vec<(&str, f64)> = results.arms.iter().map(|a| (a.name.as_str(), a.share)).collect();
    assert_eq!(shares, [("holdout", 0.2), ("a", 0.4), ("b", 0.4)]);
    // 30 each against 18/36/36 expected: χ² = 12²/18 + 6²/36 + 6²/36 = 10 on two degrees
    // of freedom, whose tail is e^(−10/2).
    assert!((results.srm_p - (-5.0f64).exp()).abs() < 1e-12, "{}", results.srm_p);
    let names: Vec<&str> = results.cases.iter().map(|(m, _)| m.name.as_str()).collect();
    assert_eq!(names, ["converted", "revenue", "revenue_per_order"]);
    for (metric, case) in &results.cases {
        case.check().unwrap();
        assert_eq!(case.variants[0].name, "holdout");
        assert_eq!(
            case.variants[0].sum,
            sums[&(metric.name.clone(), "holdout".to_owned())][0]
        );
        assert_eq!(case.cuped(), metric.name != "revenue_per_order");
    }
    // Unknown metrics, experiments and baselines are refused.
    let mut bad = query.clone();
    bad.metrics = vec!["nope".into()];
    assert!(matches!(
        m.results(&ws(), &bad).await,
        Err(MeasurementError::NotFound(_))
    ));
    bad = query.clone();
    bad.experiment = "autumn".into();
    assert!(matches!(
        m.results(&ws(), &bad).await,
        Err(MeasurementError::NotFound(_))
    ));
    bad = query.clone();
    bad.baseline = Some("c".into());
    assert!(matches!(m.results(&ws(), &bad).await, Err(MeasurementError::Invalid(e)) if e.field == "baseline"));
}

pub async fn merges_unmerges_and_erasures_move_the_aggregates(backend: Backend) {
    let dir = TempDir::new();
    let Some(m) = measurement(backend, &dir).await else {
        return;
    };
    define(&m).await;
    let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
    let (x, y, z) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let x_order = order(x, 20.0, t0 + Duration::hours(1));
    let y_order = order(y, 5.0, t0 + Duration::hours(3));
    let event_id = |e: &LogEntry| match &e.entry {
        Some(log_entry::Entry::Event(s)) => s.event_id.clone(),
        _ => unreachable!(),
    };
    m.record_decisions(&[
        decision(x, "a", Channel::Email, t0),
        decision(y, "b", Channel::Sms, t0 + Duration::hours(2)),
        decision(z, "a", Channel::Email, t0),
    ])
    .await
    .unwrap();
    m.deliver(&[x_order.clone(), y_order.clone(), order(z, 7.0, t0 + Duration::hours(1))])
        .await
        .unwrap();
    let revenue =
        |got: &storage::Aggregates, arm: &str| got.sums.get(&("revenue".to_owned(), arm.to_owned())).map(|s| s[0]);
    let got = m.store.aggregates(&ws(), EXPERIMENT, &Filter::default()).await.unwrap();
    assert_eq!(got.users, BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 1)]));
    assert_eq!((revenue(&got, "a"), revenue(&got, "b")), (Some(27.0), Some(5.0)));

    // y merges into x: one person, in the arm of the earlier exposure (x's), with both
    // orders; their square is of the sum, not the sum of squares.
    let merged = change(profile_change::Change::Merged(ProfilesMerged {
        survivor_id: x.to_string(),
        merged_ids: vec![y.to_string()],
        event_id: String::new(),
    }));
    for _ in 0..2 {
        m.deliver(std::slice::from_ref(&merged)).await.unwrap();
    }
    let got = m.store.aggregates(&ws(), EXPERIMENT, &Filter::default()).await.unwrap();
    assert_eq!(got.users, BTreeMap::from([("a".to_owned(), 2)]));
    let a = got.sums[&("revenue".to_owned(), "a".to_owned())];
    assert_eq!((a[0], a[1]), (32.0, 25.0 * 25.0 + 7.0 * 7.0));

    // Unmerged: y's order and decision are y's again (the decision goes back to the
    // person it was made for): y counts in arm b with 5, x in arm a with 20 alone.
    let unmerged = change(profile_change::Change::Unmerged(ProfileUnmerged {
        merge_id: 1,
        sides: vec![
            UnmergeSide {
                profile_id: x.to_string(),
                event_ids: vec![event_id(&x_order)],
            },
            UnmergeSide {
                profile_id: y.to_string(),
                event_ids: vec![event_id(&y_order)],
            },
        ],
    }));
    m.deliver(&[unmerged]).await.unwrap();
    let got = m.store.aggregates(&ws(), EXPERIMENT, &Filter::default()).await.unwrap();
    assert_eq!(got.users, BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 1)]));
    let a = got.sums[&("revenue".to_owned(), "a".to_owned())];
    assert_eq!((a[0], a[1]), (27.0, 20.0 * 20.0 + 7.0 * 7.0));
    assert_eq!((revenue(&got, "b")), Some(5.0));

    // x erased: nothing of x is left, and the answer says what went.
    let erased = change(profile_change::Change::Erased(ProfilesErased {
        profile_ids: vec![x.to_string()],
        message_ids: vec![],
    }));
    let (_, answers) = m.deliver(&[erased]).await.unwrap();
    // x's decision, x's order as each of the three metrics counted it, and x's row of
    // what feedback is counted by.
    assert_eq!(answers[0].removed["decisions_outcomes_and_feedback"], 1 + 3 + 1);
    let got = m.store.aggregates(&ws(), EXPERIMENT, &Filter::default()).await.unwrap();
    assert_eq!(got.users, BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]));
    let a = got.sums[&("revenue".to_owned(), "a".to_owned())];
    assert_eq!((a[0], a[1]), (7.0, 49.0));
    // A decision of x's handed on after the erasure (orchestration's log is read apart)
    // is not kept again.
    m.record_decisions(&[decision(x, "a", Channel::Email, t0 + Duration::hours(5))])
        .await
        .unwrap();
    let after = m.store.aggregates(&ws(), EXPERIMENT, &Filter::default()).await.unwrap();
    assert_eq!(after.users, got.users);
}

pub async fn metrics_are_fixed_once_defined_and_checked(backend: Backend) {
    let dir = TempDir::new();
    let Some(m) = measurement(backend, &dir).await else {
        return;
    };
    let metric = metrics().remove(1);
    let (first, at) = m.create_metric(&ws(), &metric).await.unwrap();
    let (again, at_again) = m.create_metric(&ws(), &metric).await.unwrap();
    assert_eq!((first, at), (again, at_again));
    let mut changed = metric.clone();
    changed.window_seconds = 3600;
    assert!(matches!(
        m.create_metric(&ws(), &changed).await,
        Err(MeasurementError::AlreadyExists(_))
    ));
    let mut bad = metric.clone();
    bad.name = "other".into();
    bad.window_seconds = 0;
    assert!(
        matches!(m.create_metric(&ws(), &bad).await, Err(MeasurementError::Invalid(e)) if e.field == "metric.window")
    );
    let kept = m.store.metrics(&ws()).await.unwrap();
    assert_eq!(kept.len(), 1, "the bad metric changed nothing");
    assert_eq!(kept[0].0, metric);
}

pub async fn two_replicas_delivering_at_once_count_everything_once(backend: Backend) {
    let dir = TempDir::new();
    let Some(config) = corvus_test_support::storage(backend, &dir).await else {
        return;
    };
    let one = Measurement::connect(&config, &MeasurementConfig::default())
        .await
        .unwrap();
    let two = Measurement::connect(&config, &MeasurementConfig::default())
        .await
        .unwrap();
    define(&one).await;
    let people = people();
    let decisions: Vec<DecisionLogEntry> = people
        .iter()
        .map(|p| decision(p.id, p.arm, p.channel, p.exposed_at))
        .collect();
    let orders: Vec<LogEntry> = people
        .iter()
        .flat_map(|p| p.orders.iter().map(|(r, at)| order(p.id, *r, *at)))
        .collect();
    // One replica's decisions consumer and the other's outcomes consumer, in small
    // deliveries interleaved, as the two logs' dispatchers run.
    let exposures = async {
        for chunk in decisions.chunks(7) {
            two.record_decisions(chunk).await.unwrap();
        }
    };
    let outcomes = async {
        for chunk in orders.chunks(5) {
            one.deliver(chunk).await.unwrap();
        }
    };
    tokio::join!(exposures, outcomes);
    let all: Vec<&Person> = people.iter().collect();
    let storage::Aggregates { users, sums } = expected(&all);
    let got = one
        .store
        .aggregates(&ws(), EXPERIMENT, &Filter::default())
        .await
        .unwrap();
    assert_eq!(got.users, users);
    assert_sums(&got.sums, &sums);
}
