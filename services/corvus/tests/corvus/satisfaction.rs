//! Satisfaction through the public API: NPS by region from people's identifies and
//! survey answers, with its interval; live figures on `StreamMetrics`; and a drop of NPS
//! raising orchestration's satisfaction alert.

use corvus_proto::common::v1::EventType;
use corvus_proto::measurement::v1 as pb;
use corvus_proto::orchestration::v1 as opb;
use corvus_proto::raw::RawStruct;
use corvus_test_support::{Backend, on_both_backends};
use serde_json::json;
use tonic::Code;

use crate::identity::send;
use crate::measurement::{days, event, measurement};
use crate::orchestration::{field_of, orchestration};
use crate::support::{spawn, spawn_with};

on_both_backends!(satisfaction_through_the_api, a_satisfaction_drop_raises_an_alert);

/// NPS by region through the API: people's regions from their identify, their answers
/// from surveys; the figure and its interval as the test computes them.
async fn satisfaction_through_the_api(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let scores = [10.0, 9.0, 8.0, 3.0, 10.0, 6.0, 9.0, 10.0];
    let mut events = Vec::new();
    for (i, nps) in scores.iter().enumerate() {
        let email = format!("s{i}@example.com");
        let mut identify = event(format!("i-{i}"), EventType::Identify, &email, "", json!({}));
        let region = if i < 4 { "FR" } else { "DE" };
        identify.traits = Some(RawStruct::from_json(json!({"region": region}).as_object().unwrap()));
        events.push(identify);
        events.push(event(
            format!("a-{i}"),
            EventType::Track,
            &email,
            "Survey Answered",
            json!({"nps": nps, "comment": "thanks"}),
        ));
    }
    send(&app, events).await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let mut reader = measurement(&app, &app.read_key).await;
    let answer = reader
        .get_satisfaction(pb::GetSatisfactionRequest {
            kind: pb::FeedbackKind::Nps as i32,
            breakdown: pb::FeedbackBreakdown::Region as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // NPS = % promoters − % detractors; each answer +1, 0 or −1, its variance
    // (p + d) − NPS², the interval ± 1.96 standard errors.
    let nps = |answers: &[f64]| {
        let n = answers.len() as f64;
        let p = answers.iter().filter(|a| **a >= 9.0).count() as f64 / n;
        let d = answers.iter().filter(|a| **a <= 6.0).count() as f64 / n;
        let se = ((p + d - (p - d).powi(2)) / n).sqrt();
        (100.0 * (p - d), 100.0 * ((p - d) - 1.959963984540054 * se))
    };
    let overall = answer.overall.unwrap();
    assert_eq!(overall.responses, 8);
    let (score, lower) = nps(&scores);
    assert!(
        (overall.score - score).abs() < 1e-9 && (overall.ci_lower - lower).abs() < 1e-6,
        "{overall:?}"
    );
    let regions: Vec<(&str, u64, f64)> = answer
        .rows
        .iter()
        .map(|r| (r.key.as_str(), r.responses, r.score))
        .collect();
    assert_eq!(
        regions,
        [("DE", 4, nps(&scores[4..]).0), ("FR", 4, nps(&scores[..4]).0)]
    );
    let err = reader
        .get_satisfaction(pb::GetSatisfactionRequest::default())
        .await
        .unwrap_err();
    assert_eq!((err.code(), field_of(&err).as_str()), (Code::InvalidArgument, "kind"));

    // Live: today's NPS now, and again once another answer arrives, with the rate of
    // events measurement saw in between.
    let mut live = reader
        .stream_metrics(pb::StreamMetricsRequest {
            experiments: vec![],
            interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let first = live.message().await.unwrap().unwrap();
    assert_eq!(first.nps_today.unwrap().score, score);
    send(
        &app,
        vec![event(
            "a-late".to_owned(),
            EventType::Track,
            "s0@example.com",
            "Survey Answered",
            json!({"nps": 0}),
        )],
    )
    .await;
    let mut all = scores.to_vec();
    all.push(0.0);
    let (mut rate, deadline) = (0.0f64, tokio::time::Instant::now() + std::time::Duration::from_secs(20));
    loop {
        let snapshot = tokio::time::timeout_at(deadline, live.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        rate = rate.max(snapshot.events_per_second);
        let nps_today = snapshot.nps_today.unwrap();
        if nps_today.responses == 9 {
            assert!((nps_today.score - nps(&all).0).abs() < 1e-9);
            assert!(rate > 0.0);
            break;
        }
    }
    let err = reader
        .stream_metrics(pb::StreamMetricsRequest {
            experiments: vec![],
            interval: Some(prost_types::Duration { seconds: 0, nanos: 1 }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), field_of(&err).as_str()),
        (Code::InvalidArgument, "interval")
    );
    app.stop().await;
}

/// A satisfaction rule through the API: the answers of the day before yesterday were
/// promoters, yesterday's detractors; orchestration, looking at measurement's figures,
/// raises one alert about no one, on the alert stream's list, with the drop as its
/// reason.
async fn a_satisfaction_drop_raises_an_alert(backend: Backend) {
    let Some(app) = spawn_with(backend, |c| {
        c.orchestration.satisfaction_check_interval = std::time::Duration::from_millis(200);
    })
    .await
    else {
        return;
    };
    let mut alerts = orchestration(&app, &app.admin_key).await;
    alerts
        .create_alert_rule(opb::CreateAlertRuleRequest {
            rule: Some(opb::AlertRule {
                name: "nps-drop".to_owned(),
                kind: opb::AlertKind::SatisfactionDrop as i32,
                feedback: "nps".to_owned(),
                window: Some(days(1)),
                min_responses: Some(10),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    // The last whole day against the one before it.
    let (before_yesterday, yesterday) = (
        chrono::Utc::now() - chrono::Duration::days(2),
        chrono::Utc::now() - chrono::Duration::days(1),
    );
    let mut events = Vec::new();
    for i in 0..12 {
        let email = format!("n{i}@example.com");
        // The day before 11 promoters and a detractor (NPS 83.3); the last day the other
        // way round.
        let (then, now) = if i == 0 { (5, 9) } else { (10, 2) };
        let mut before = event(
            format!("b-{i}"),
            EventType::Track,
            &email,
            "Survey Answered",
            json!({"nps": then}),
        );
        before.timestamp = Some(prost_types::Timestamp {
            seconds: before_yesterday.timestamp(),
            nanos: 0,
        });
        events.push(before);
        let mut after = event(
            format!("t-{i}"),
            EventType::Track,
            &email,
            "Survey Answered",
            json!({"nps": now}),
        );
        after.timestamp = Some(prost_types::Timestamp {
            seconds: yesterday.timestamp(),
            nanos: 0,
        });
        events.push(after);
    }
    send(&app, events).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let raised = loop {
        let listed = alerts
            .list_alerts(opb::ListAlertsRequest {
                rules: vec!["nps-drop".to_owned()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .alerts;
        if !listed.is_empty() {
            break listed;
        }
        assert!(tokio::time::Instant::now() < deadline, "no alert");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // One alert, however many looks the cooldown spans.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let again = alerts
        .list_alerts(opb::ListAlertsRequest {
            rules: vec!["nps-drop".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert_eq!(again.len(), 1, "{again:?}");
    let alert = &raised[0];
    assert_eq!(
        (alert.kind, alert.profile_id.as_str()),
        (opb::AlertKind::SatisfactionDrop as i32, "")
    );
    assert!(
        alert
            .reason
            .starts_with("NPS fell from 83.3 to -83.3 (-166.7 points) over the last day"),
        "{}",
        alert.reason
    );
    // A satisfaction rule reads figures, not events.
    let err = alerts
        .create_alert_rule(opb::CreateAlertRuleRequest {
            rule: Some(opb::AlertRule {
                name: "bad".to_owned(),
                kind: opb::AlertKind::SatisfactionDrop as i32,
                feedback: "joy".to_owned(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), field_of(&err).as_str()),
        (Code::InvalidArgument, "rule.feedback")
    );
    app.stop().await;
}
