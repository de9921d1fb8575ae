//! Satisfaction over each backend: NPS and CSAT answers and social mentions kept once
//! each, counted by the region of the person's traits (or the one the event names), the
//! segment of their latest decision, the channel, the activation and the day, equal to
//! what this test tallies directly; an erased person's feedback goes.

use chrono::{Duration, TimeZone, Utc};
use corvus_measurement::feedback::{Kind, Tally};
use corvus_measurement::storage::{FeedbackBy, FeedbackFilter};
use corvus_proto::common::v1::{Channel, Context, Event, EventType, StoredEvent};
use corvus_proto::identity::v1::{LogEntry, ProfileChange, ProfilesErased, log_entry, profile_change};
use corvus_test_support::{Backend, TempDir};
use serde_json::json;
use uuid::Uuid;

use crate::store::{decision, measurement, ws};

fn event(
    profile: Uuid,
    kind: EventType,
    name: &str,
    channel: Channel,
    props: serde_json::Value,
    traits: serde_json::Value,
    day: i64,
) -> LogEntry {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap() + Duration::days(day);
    let raw = |v: serde_json::Value| Some(corvus_proto::raw::RawStruct::from_json(v.as_object().unwrap()));
    LogEntry {
        entry: Some(log_entry::Entry::Event(StoredEvent {
            workspace_id: "acme".into(),
            event_id: Uuid::now_v7().to_string(),
            profile_id: profile.to_string(),
            event: Some(Event {
                r#type: kind as i32,
                event: name.into(),
                properties: raw(props),
                traits: raw(traits),
                context: Some(Context {
                    channel: channel as i32,
                    ..Default::default()
                }),
                timestamp: Some(prost_types::Timestamp {
                    seconds: at.timestamp(),
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

/// Person i: region FR or DE by traits, segment from a decision for every third, one NPS
/// answer (i % 11) on day i % 2 at activation "launch" for every fourth, a CSAT answer
/// (1 + i % 5), and a mention with sentiment for every fifth.
struct Person {
    id: Uuid,
    region: &'static str,
    segment: &'static str,
    nps: f64,
    day: i64,
    activation: &'static str,
    csat: f64,
    mention: Option<f64>,
}

fn people() -> Vec<Person> {
    (0..60)
        .map(|i| Person {
            id: Uuid::now_v7(),
            region: if i % 2 == 0 { "FR" } else { "DE" },
            segment: if i % 3 == 0 { "loyal" } else { "" },
            nps: (i % 11) as f64,
            day: (i % 3) as i64,
            activation: if i % 4 == 0 { "launch" } else { "" },
            csat: (1 + i % 5) as f64,
            mention: (i % 5 == 0).then(|| if i % 2 == 0 { 0.6 } else { -0.4 }),
        })
        .collect()
}

/// The tallies are equal: counts exactly, sums to 1e-9 (they are added in another order).
fn assert_tallies(got: &[(String, Tally)], want: &[(String, Tally)]) {
    assert_eq!(got.len(), want.len(), "{got:?} against {want:?}");
    for ((gk, g), (wk, w)) in got.iter().zip(want) {
        assert_eq!((gk, g.responses, g.top, g.bottom), (wk, w.responses, w.top, w.bottom));
        assert!(
            (g.sum - w.sum).abs() < 1e-9 && (g.sum_squares - w.sum_squares).abs() < 1e-9,
            "{g:?} against {w:?}"
        );
    }
}

/// The tally made here: promoters 9–10 and detractors 0–6; satisfied 4–5 and
/// dissatisfied 1–2; mentions positive above 0.05 and negative below −0.05.
fn tally(kind: Kind, values: impl Iterator<Item = f64>) -> Tally {
    // The lowest value at the top, and the highest at the bottom.
    let (top, bottom) = match kind {
        Kind::Nps => (9.0, 6.0),
        Kind::Csat => (4.0, 2.0),
        Kind::Mention => (0.05 + f64::EPSILON, -0.05 - f64::EPSILON),
    };
    let mut t = Tally::default();
    for v in values {
        t.responses += 1;
        t.sum += v;
        t.sum_squares += v * v;
        t.top += u64::from(v >= top);
        t.bottom += u64::from(v <= bottom);
    }
    t
}

pub async fn feedback_is_tallied_by_region_segment_activation_and_day(backend: Backend) {
    let dir = TempDir::new();
    let Some(m) = measurement(backend, &dir).await else {
        return;
    };
    let people = people();
    let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let decisions: Vec<_> = people
        .iter()
        .filter(|p| !p.segment.is_empty())
        .map(|p| {
            let mut d = decision(p.id, "a", Channel::Email, t0);
            d.decision.as_mut().unwrap().segment = p.segment.into();
            d
        })
        .collect();
    let mut entries = Vec::new();
    for p in &people {
        entries.push(event(
            p.id,
            EventType::Identify,
            "",
            Channel::Web,
            json!({}),
            json!({"region": p.region}),
            0,
        ));
        let nps = json!({"nps": p.nps, "activation": p.activation, "comment": "fine"});
        entries.push(event(
            p.id,
            EventType::Track,
            "Survey Answered",
            Channel::Survey,
            nps,
            json!({}),
            p.day,
        ));
        entries.push(event(
            p.id,
            EventType::Track,
            "Chat Ended",
            Channel::Chat,
            json!({"csat": p.csat}),
            json!({}),
            0,
        ));
        if let Some(s) = p.mention {
            entries.push(event(
                p.id,
                EventType::Track,
                "Posted",
                Channel::Social,
                json!({"sentiment": s}),
                json!({}),
                0,
            ));
        }
    }
    m.record_decisions(&decisions).await.unwrap();
    // Twice: each answer counts once.
    for _ in 0..2 {
        assert!(m.deliver(&entries).await.unwrap().0.is_empty());
    }
    let read = |kind, by, filter: FeedbackFilter| {
        let m = m.clone();
        async move { m.store.satisfaction(&ws(), kind, by, &filter).await.unwrap() }
    };
    // By region, from the traits.
    let got = read(Kind::Nps, FeedbackBy::Region, FeedbackFilter::default()).await;
    let want: Vec<(String, Tally)> = ["DE", "FR"]
        .iter()
        .map(|r| {
            (
                r.to_string(),
                tally(Kind::Nps, people.iter().filter(|p| p.region == *r).map(|p| p.nps)),
            )
        })
        .collect();
    assert_tallies(&got, &want);
    // By segment, from the latest decision ("" for people without one).
    let got = read(Kind::Csat, FeedbackBy::Segment, FeedbackFilter::default()).await;
    let want: Vec<(String, Tally)> = ["", "loyal"]
        .iter()
        .map(|s| {
            (
                s.to_string(),
                tally(Kind::Csat, people.iter().filter(|p| p.segment == *s).map(|p| p.csat)),
            )
        })
        .collect();
    assert_tallies(&got, &want);
    // By activation and day: each day's, in order of time.
    let filter = FeedbackFilter {
        activation: Some("launch".into()),
        ..Default::default()
    };
    let got = read(Kind::Nps, FeedbackBy::Day, filter.clone()).await;
    let launch = |day: i64| {
        tally(
            Kind::Nps,
            people
                .iter()
                .filter(|p| p.activation == "launch" && p.day == day)
                .map(|p| p.nps),
        )
    };
    let first = corvus_measurement::storage::day(t0);
    let days: Vec<(String, Tally)> = (0..3).map(|d| ((first + d as i32).to_string(), launch(d))).collect();
    assert_tallies(&got, &days);
    // Narrowed to the middle day.
    let narrowed = FeedbackFilter {
        from_day: Some(first + 1),
        to_day: Some(first + 1),
        ..filter
    };
    assert_tallies(&read(Kind::Nps, FeedbackBy::Day, narrowed).await, &days[1..2]);
    // Mentions: volume and sentiment, on the social channel.
    let got = read(Kind::Mention, FeedbackBy::Channel, FeedbackFilter::default()).await;
    assert_tallies(
        &got,
        &[(
            "social".to_owned(),
            tally(Kind::Mention, people.iter().filter_map(|p| p.mention)),
        )],
    );

    // An erased person's feedback goes with them.
    let gone = &people[0];
    let erased = LogEntry {
        entry: Some(log_entry::Entry::Change(ProfileChange {
            workspace_id: "acme".into(),
            change_id: Uuid::now_v7().to_string(),
            change: Some(profile_change::Change::Erased(ProfilesErased {
                profile_ids: vec![gone.id.to_string()],
                message_ids: vec![],
            })),
            ..Default::default()
        })),
    };
    let (_, answers) = m.deliver(&[erased]).await.unwrap();
    // NPS, CSAT and a mention, and the person's row; and their decision.
    assert_eq!(answers[0].removed["decisions_outcomes_and_feedback"], 3 + 1 + 1);
    let got = read(Kind::Nps, FeedbackBy::Overall, FeedbackFilter::default()).await;
    assert_tallies(
        &got,
        &[(String::new(), tally(Kind::Nps, people[1..].iter().map(|p| p.nps)))],
    );
}
