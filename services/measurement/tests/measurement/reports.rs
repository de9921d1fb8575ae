//! Campaign reports over each backend: the funnel's stages from events carrying a
//! decision's id (even before the decision arrives), touches, conversions and revenue of
//! the treated, the lift against the held-out people per channel and per segment, and
//! the fatigue curve; each figure equal to what this test counts directly from the
//! people it made, each entry counted once however often it comes.

use std::collections::BTreeMap;

use chrono::{Duration, TimeZone, Utc};
use corvus_measurement::service::ReportQuery;
use corvus_measurement::storage::{Dimension, Filter};
use corvus_measurement::{Measurement, MeasurementError};
use corvus_proto::common::v1::Channel;
use corvus_proto::identity::v1::LogEntry;
use corvus_proto::orchestration::v1::DecisionLogEntry;
use corvus_test_support::{Backend, TempDir};
use serde_json::json;
use uuid::Uuid;

use crate::store::{EXPERIMENT, decision, define, measurement, order, track, ws};

/// A person of the campaign: their arm, channel and segment, how many sends they had,
/// whether they opened one, and what they ordered.
struct Person {
    id: Uuid,
    arm: &'static str,
    channel: Channel,
    segment: &'static str,
    sends: usize,
    opened: bool,
    revenue: Option<f64>,
}

fn people() -> Vec<Person> {
    (0..160)
        .map(|i| {
            let held = i % 4 == 0;
            let sends = if held { 0 } else { 1 + i % 5 };
            Person {
                id: Uuid::now_v7(),
                arm: if held { "holdout" } else { "a" },
                channel: match (held, i % 3) {
                    (true, _) => Channel::Unspecified,
                    (false, 0) => Channel::Sms,
                    _ => Channel::Email,
                },
                segment: if i % 3 == 0 { "loyal" } else { "new" },
                sends,
                opened: sends > 0 && i % 3 == 1,
                // The held out convert 1 in 8; the treated more with more sends, up to 3.
                revenue: match (held, sends) {
                    (true, _) if i % 8 == 0 => Some(20.0),
                    (true, _) => None,
                    (false, 1..=3) if i % 2 == 1 || sends == 3 => Some(10.0 + sends as f64),
                    _ => None,
                },
            }
        })
        .collect()
}

/// The decisions, stage events and orders of the people.
fn entries(people: &[Person]) -> (Vec<DecisionLogEntry>, Vec<LogEntry>) {
    let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let mut decisions = Vec::new();
    let mut events = Vec::new();
    for p in people {
        let n = p.sends.max(1);
        for k in 0..n {
            let mut d = decision(p.id, p.arm, p.channel, t0 + Duration::minutes(k as i64));
            let inner = d.decision.as_mut().unwrap();
            inner.segment = p.segment.into();
            if p.arm == "holdout" {
                inner.action.clear();
            }
            let id = inner.decision_id.clone();
            decisions.push(d);
            if p.sends > 0 {
                let at = t0 + Duration::minutes(k as i64 + 1);
                events.push(track(p.id, "Message Sent", json!({"decision_id": id}), at));
                if p.opened && k == 0 {
                    events.push(track(p.id, "Email Opened", json!({"decision_id": id}), at));
                }
            }
        }
        if let Some(r) = p.revenue {
            events.push(order(p.id, r, t0 + Duration::hours(2)));
        }
    }
    (decisions, events)
}

fn query(dimension: Dimension) -> ReportQuery {
    ReportQuery {
        experiment: EXPERIMENT.into(),
        dimension,
        conversion_metric: None,
        revenue_metric: None,
        filter: Filter::default(),
        alpha: 0.05,
        fatigue_min_people: 5,
    }
}

/// (people, held out, touches, sent, opened, treated converted, treated revenue, held-out
/// people, held-out converted) of the people `in_key`.
fn counted(people: &[&Person]) -> [f64; 7] {
    let treated: Vec<&&Person> = people.iter().filter(|p| p.arm != "holdout").collect();
    [
        people.len() as f64,
        (people.len() - treated.len()) as f64,
        people.iter().map(|p| p.sends).sum::<usize>() as f64,
        people.iter().filter(|p| p.sends > 0).count() as f64,
        people.iter().filter(|p| p.opened).count() as f64,
        treated.iter().filter(|p| p.revenue.is_some()).count() as f64,
        treated.iter().filter_map(|p| p.revenue).sum(),
    ]
}

pub async fn reports_count_the_funnel_the_lift_and_fatigue(backend: Backend) {
    let dir = TempDir::new();
    let Some(m) = measurement(backend, &dir).await else {
        return;
    };
    define(&m).await;
    let people = people();
    let (decisions, events) = entries(&people);
    // The stage events and orders come first (identity's log ran ahead), and twice.
    for _ in 0..2 {
        assert!(m.deliver(&events).await.unwrap().0.is_empty());
        assert!(m.record_decisions(&decisions).await.unwrap().is_empty());
    }
    let report = m.report(&ws(), &query(Dimension::Channel)).await.unwrap();
    assert_eq!(report.conversion_metric.as_deref(), Some("converted"));
    assert_eq!(report.revenue_metric.as_deref(), Some("revenue"));
    let figures = |r: &corvus_measurement::report::Row| {
        [
            r.counts[0] as f64,
            r.held_out as f64,
            r.counts[1] as f64,
            r.counts[2] as f64,
            r.counts[4] as f64,
            r.converted,
            r.revenue,
        ]
    };
    let all: Vec<&Person> = people.iter().collect();
    assert_eq!(figures(&report.overall), counted(&all));
    let holdout: Vec<&Person> = people.iter().filter(|p| p.arm == "holdout").collect();
    let held_rate = holdout.iter().filter(|p| p.revenue.is_some()).count() as f64 / holdout.len() as f64;
    let keys: Vec<&str> = report.rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["email", "none", "sms"]);
    for row in &report.rows {
        let channel = match row.key.as_str() {
            "email" => Channel::Email,
            "sms" => Channel::Sms,
            _ => Channel::Unspecified,
        };
        let in_key: Vec<&Person> = people.iter().filter(|p| p.channel == channel).collect();
        let want = counted(&in_key);
        assert_eq!(figures(row), want, "{}", row.key);
        // Per channel, the treated are compared with every held-out person.
        match &row.conversion_lift {
            Some(lift) => {
                let rate = want[5] / (want[0] - want[1]);
                assert!((lift.expected - (rate / held_rate - 1.0)).abs() < 1e-12, "{}", row.key);
                assert!((row.conversion_rate - rate).abs() < 1e-12);
            }
            None => assert_eq!(row.key, "none"),
        }
    }
    // Per segment, against the held-out people of the same segment.
    let report = m.report(&ws(), &query(Dimension::Segment)).await.unwrap();
    let keys: Vec<&str> = report.rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["loyal", "new"]);
    for row in &report.rows {
        let in_key: Vec<&Person> = people.iter().filter(|p| p.segment == row.key).collect();
        let want = counted(&in_key);
        assert_eq!(figures(row), want, "{}", row.key);
        let held: Vec<&&Person> = in_key.iter().filter(|p| p.arm == "holdout").collect();
        let held_rate = held.iter().filter(|p| p.revenue.is_some()).count() as f64 / held.len() as f64;
        let rate = want[5] / (want[0] - want[1]);
        let lift = row.conversion_lift.as_ref().unwrap();
        assert!((lift.expected - (rate / held_rate - 1.0)).abs() < 1e-12, "{}", row.key);
    }
    // The fatigue curve of conversion: per number of sends, the people and their rate.
    let (metric, fatigue) = report.fatigue.unwrap();
    assert_eq!(metric, "converted");
    let mut want: BTreeMap<u32, (u64, f64)> = BTreeMap::new();
    for p in &people {
        let point = want.entry(p.sends as u32).or_default();
        point.0 += 1;
        point.1 += if p.revenue.is_some() { 1.0 } else { 0.0 };
    }
    let got: Vec<(u32, u64, f64)> = fatigue
        .points
        .iter()
        .map(|p| (p.touches, p.people, p.response))
        .collect();
    let want: Vec<(u32, u64, f64)> = want.into_iter().map(|(k, (n, c))| (k, n, c / n as f64)).collect();
    assert_eq!(got, want);
    // Three sends convert best; five convert none, below three's rate.
    assert_eq!((fatigue.peak, fatigue.drops_at), (3, 4));

    // A metric of the wrong kind, or unknown; an experiment without exposures.
    let mut bad = query(Dimension::Overall);
    bad.conversion_metric = Some("revenue".into());
    assert!(matches!(m.report(&ws(), &bad).await, Err(MeasurementError::Invalid(e)) if e.field == "conversion_metric"));
    bad.conversion_metric = Some("nope".into());
    assert!(matches!(
        m.report(&ws(), &bad).await,
        Err(MeasurementError::NotFound(_))
    ));
    let mut bad = query(Dimension::Overall);
    bad.experiment = "autumn".into();
    assert!(matches!(
        m.report(&ws(), &bad).await,
        Err(MeasurementError::NotFound(_))
    ));
}

/// Keeps the compiler from warning about a helper only some backends' tests use.
#[allow(dead_code)]
fn unused(_: Measurement) {}
