//! Measurement through the public API: metrics defined; people decided for by a live
//! campaign with a holdout (the exposures, through orchestration's log); their orders
//! ingested (the outcomes, through identity's log); the experiment's results equal to
//! what AnalyzeAggregates computes from the sums the test makes of the same people; bad
//! metrics and queries refused with the field, and nothing defined.

use corvus_proto::common::v1::{Channel, Event, EventType, Identifier};
use corvus_proto::measurement::v1 as pb;
use corvus_proto::measurement::v1::measurement_service_client::MeasurementServiceClient;
use corvus_proto::orchestration::v1 as opb;
use corvus_proto::raw::RawStruct;
use corvus_test_support::{Backend, on_both_backends};
use serde_json::json;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel as GrpcChannel;

use crate::identity::send;
use crate::orchestration::{Spoiler, field_of, orchestration};
use crate::support::{Key, TestApp, spawn};

on_both_backends!(
    an_experiment_is_measured_through_the_api,
    bad_metrics_and_queries_are_refused
);

pub(crate) type MeasurementClient = MeasurementServiceClient<InterceptedService<GrpcChannel, Key>>;

pub(crate) async fn measurement(app: &TestApp, key: &str) -> MeasurementClient {
    MeasurementServiceClient::with_interceptor(app.channel().await, Key::bearer(key))
}

pub(crate) fn days(n: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: n * 86_400,
        nanos: 0,
    }
}

fn orders(name: &str, metric_type: pb::MetricType, value: &str) -> pb::Metric {
    pb::Metric {
        name: name.to_owned(),
        r#type: metric_type as i32,
        numerator: Some(pb::MetricEvent {
            event: "Order Completed".to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        window: Some(days(7)),
        ..Default::default()
    }
}

fn now() -> prost_types::Timestamp {
    let t = chrono::Utc::now();
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub(crate) fn event(id: String, kind: EventType, email: &str, name: &str, properties: serde_json::Value) -> Event {
    Event {
        message_id: id,
        r#type: kind as i32,
        user_id: email.to_owned(),
        identifiers: vec![Identifier {
            kind: "email".to_owned(),
            value: email.to_owned(),
        }],
        event: name.to_owned(),
        properties: Some(RawStruct::from_json(properties.as_object().unwrap())),
        timestamp: Some(now()),
        ..Event::default()
    }
}

/// Waits (up to 20 s) for the experiment's results to count `people` people.
async fn results_for(client: &mut MeasurementClient, people: u64) -> pb::GetExperimentResultsResponse {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let answer = client
            .get_experiment_results(pb::GetExperimentResultsRequest {
                experiment: "spring".to_owned(),
                ..Default::default()
            })
            .await;
        if let Ok(answer) = answer.map(|a| a.into_inner())
            && answer.arms.iter().map(|a| a.users).sum::<u64>() == people
        {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the results never counted {people}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn an_experiment_is_measured_through_the_api(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let mut admin = measurement(&app, &app.admin_key).await;
    for metric in [
        orders("converted", pb::MetricType::Binomial, ""),
        orders("revenue", pb::MetricType::Count, "revenue"),
    ] {
        admin
            .create_metric(pb::CreateMetricRequest { metric: Some(metric) })
            .await
            .unwrap();
    }
    let listed = admin
        .list_metrics(pb::ListMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .metrics;
    let names: Vec<&str> = listed.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["converted", "revenue"]);
    // CUPED's lookback defaults to 14 days.
    assert_eq!(listed[1].lookback, Some(days(14)));

    // 24 people who agreed to marketing email; a campaign holding half of them out.
    let people: Vec<String> = (0..24).map(|i| format!("p{i}@example.com")).collect();
    let consent = json!({"purpose": "marketing", "channel": "email", "granted": true});
    send(
        &app,
        people
            .iter()
            .map(|p| {
                event(
                    format!("c-{p}"),
                    EventType::Track,
                    p,
                    "Consent Updated",
                    consent.clone(),
                )
            })
            .collect(),
    )
    .await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let mut campaigns = orchestration(&app, &app.admin_key).await;
    campaigns
        .create_campaign(opb::CreateCampaignRequest {
            campaign: Some(opb::Campaign {
                name: "spring".to_owned(),
                actions: vec![opb::Action {
                    name: "offer".to_owned(),
                    subject: "Spring".to_owned(),
                    ..Default::default()
                }],
                channels: vec![Channel::Email as i32],
                consent_purposes: vec!["marketing".to_owned()],
                holdout: 0.5,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    campaigns
        .set_campaign_state(opb::SetCampaignStateRequest {
            name: "spring".to_owned(),
            state: opb::CampaignState::Live as i32,
        })
        .await
        .unwrap();
    let mut arms = Vec::new();
    for p in &people {
        let decision = campaigns
            .decide(opb::DecideRequest {
                person: Some(opb::decide_request::Person::Identifier(Identifier {
                    kind: "email".to_owned(),
                    value: p.clone(),
                })),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap();
        assert_eq!(decision.arm_share, 0.5);
        arms.push(decision.arm);
    }
    // Every third person of each arm orders (the first of each among them), twice (the
    // second within the window too): both arms have buyers and others, whatever the
    // split.
    let revenue = |i: usize| (10 * (i + 1)) as f64;
    let mut seen: std::collections::BTreeMap<&str, usize> = Default::default();
    let buys: Vec<bool> = arms
        .iter()
        .map(|arm| {
            let n = seen.entry(arm.as_str()).or_default();
            *n += 1;
            (*n - 1).is_multiple_of(3)
        })
        .collect();
    let mut ordered = Vec::new();
    for (i, p) in people.iter().enumerate().filter(|(i, _)| buys[*i]) {
        for n in 0..2 {
            ordered.push(event(
                format!("o-{n}-{p}"),
                EventType::Track,
                p,
                "Order Completed",
                json!({"revenue": revenue(i)}),
            ));
        }
    }
    send(&app, ordered).await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let mut reader = measurement(&app, &app.read_key).await;
    let results = results_for(&mut reader, 24).await;
    // The sums of each arm, made here from who was in which arm and who ordered.
    let mut sums: std::collections::BTreeMap<&str, [f64; 4]> = Default::default();
    for (i, arm) in arms.iter().enumerate() {
        let value = if buys[i] { 2.0 * revenue(i) } else { 0.0 };
        let s = sums.entry(arm.as_str()).or_default();
        let converted = if value > 0.0 { 1.0 } else { 0.0 };
        for (s, v) in s.iter_mut().zip([1.0, converted, value, value * value]) {
            *s += v;
        }
    }
    assert_eq!(results.baseline, "holdout");
    let got: Vec<(&str, u64, f64)> = results
        .arms
        .iter()
        .map(|a| (a.name.as_str(), a.users, a.designed_share))
        .collect();
    let want: Vec<(&str, u64, f64)> = ["holdout", "default"]
        .iter()
        .map(|a| (*a, sums[a][0] as u64, 0.5))
        .collect();
    assert_eq!(got, want);
    // The same figures as AnalyzeAggregates gives for the sums made here.
    let aggregates = |metric: &str, metric_type: pb::MetricType, at: usize| pb::MetricAggregates {
        metric: metric.to_owned(),
        metric_type: metric_type as i32,
        arms: ["holdout", "default"]
            .iter()
            .map(|a| pb::ArmAggregates {
                name: (*a).to_owned(),
                users: sums[a][0] as u64,
                sum: sums[a][at],
                sum_squares: if at == 1 { sums[a][1] } else { sums[a][3] },
                ..Default::default()
            })
            .collect(),
        inverse: false,
    };
    let analysed = reader
        .analyze_aggregates(pb::AnalyzeAggregatesRequest {
            metrics: vec![
                aggregates("converted", pb::MetricType::Binomial, 1),
                aggregates("revenue", pb::MetricType::Count, 2),
            ],
            weights: vec![0.5, 0.5],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(results.metrics.len(), 2);
    for (got, want) in results.metrics.iter().zip(&analysed.metrics) {
        assert_eq!(got.metric, want.metric);
        assert_eq!(got.settings, want.settings, "{}", got.metric);
        // Each arm as observed: the mean per person of the sums made here.
        let at = if got.metric == "converted" { 1 } else { 2 };
        let means: Vec<(&str, f64)> = got.observed.iter().map(|a| (a.name.as_str(), a.mean)).collect();
        let want: Vec<(&str, f64)> = ["holdout", "default"]
            .iter()
            .map(|a| (*a, sums[a][at] / sums[a][0]))
            .collect();
        assert_eq!(means, want);
    }
    assert!((results.srm_p - analysed.metrics[0].settings[0].srm_p).abs() < 1e-12);

    // The campaign's report: every treated person was sent their message (the log
    // connector's `Message Sent`, carrying the decision id, came back in through
    // ingestion), and the treated converted and spent what the sums made here say.
    let treated = sums["default"];
    let held = sums["holdout"];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let report = loop {
        let report = reader
            .get_campaign_report(pb::GetCampaignReportRequest {
                experiment: "spring".to_owned(),
                breakdown: pb::Breakdown::Channel as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if report.overall.as_ref().unwrap().sent == treated[0] as u64 {
            break report;
        }
        assert!(tokio::time::Instant::now() < deadline, "{report:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let overall = report.overall.unwrap();
    assert_eq!((overall.people, overall.held_out), (24, held[0] as u64));
    assert_eq!((overall.converted, overall.revenue), (treated[1], treated[2]));
    let lift = overall.conversion_lift.unwrap();
    {
        let want = (treated[1] / treated[0]) / (held[1] / held[0]) - 1.0;
        assert!((lift.expected - want).abs() < 1e-12, "{lift:?}");
    }
    let keys: Vec<&str> = report.rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["email", "none"]);
    assert_eq!(report.fatigue.unwrap().points[0].touches, 0);

    // What always sending the offer would have done, estimated from the log: the offer
    // was the only action, chosen with probability 1, so every estimate is the treated
    // people's revenue per person, and so is the log's own value.
    let estimate = reader
        .estimate_policy_value(pb::EstimatePolicyValueRequest {
            experiment: "spring".to_owned(),
            metric: "revenue".to_owned(),
            candidate: vec![pb::ActionProbability {
                action: "offer".to_owned(),
                segment: String::new(),
                probability: 1.0,
            }],
            alpha: 0.0,
        })
        .await
        .unwrap()
        .into_inner();
    let per_person = treated[2] / treated[0];
    assert_eq!((estimate.rounds, estimate.skipped), (treated[0] as u64, held[0] as u64));
    for e in [
        &estimate.ips,
        &estimate.snips,
        &estimate.dm,
        &estimate.dr,
        &estimate.logged,
    ] {
        assert!((e.as_ref().unwrap().value - per_person).abs() < 1e-9, "{estimate:?}");
    }
    // Orchestration's simulation of the campaign shows the same estimate beside its
    // own: as simulated, the campaign sends the offer to everyone it sends to.
    let simulated = campaigns
        .simulate_campaign(opb::SimulateCampaignRequest {
            name: "spring".to_owned(),
            estimate_metric: "revenue".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(simulated.estimate_unavailable, "");
    let beside = simulated.estimate.unwrap();
    assert!((beside.ips.unwrap().value - per_person).abs() < 1e-9);
    assert_eq!(beside.rounds, estimate.rounds);

    // A candidate with an action the log never tried is refused with its field.
    let err = reader
        .estimate_policy_value(pb::EstimatePolicyValueRequest {
            experiment: "spring".to_owned(),
            metric: "revenue".to_owned(),
            candidate: vec![pb::ActionProbability {
                action: "discount".to_owned(),
                segment: String::new(),
                probability: 1.0,
            }],
            alpha: 0.0,
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), "candidate[0].action");
    // Exported as files, the same log gives `corvus stats ope` the same estimate.
    let dir = corvus_test_support::TempDir::new();
    let out = dir.path().join("log");
    let (ok, printed) = app
        .cli(
            "stats",
            &[
                "export",
                "--experiment",
                "spring",
                "--metric",
                "revenue",
                "--out",
                out.to_str().unwrap(),
            ],
        )
        .await;
    assert!(ok, "{printed}");
    std::fs::write(dir.path().join("policy.csv"), "action,position,probability\n0,0,1\n").unwrap();
    let ope = std::process::Command::new(env!("CARGO_BIN_EXE_corvus"))
        .args(["stats", "ope", "--logged"])
        .arg(out.join("logged.csv"))
        .arg("--policy")
        .arg(dir.path().join("policy.csv"))
        .output()
        .unwrap();
    assert!(ope.status.success(), "{}", String::from_utf8_lossy(&ope.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&ope.stdout).unwrap();
    let ipw = printed["ipw"]["value"].as_f64().unwrap();
    assert!((ipw - estimate.ips.unwrap().value).abs() < 1e-9, "{printed}");
    assert_eq!(
        std::fs::read_to_string(out.join("actions.csv")).unwrap(),
        "action,name\n0,offer\n"
    );

    // Planning the next one off this one: the holdout's conversion rate and the people a
    // day it exposed (all 24 on one day); the sizes as the planning module computes
    // them (held to statsmodels in the measurement crate's tests).
    {
        let plan = reader
            .plan_experiment(pb::PlanExperimentRequest {
                metric: "converted".to_owned(),
                from_experiment: "spring".to_owned(),
                mde: 0.2,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let rate = held[1] / held[0];
        assert_eq!((plan.baseline_mean, plan.daily_traffic), (rate, 24.0));
        let want = corvus_measurement::planning::size(
            &corvus_measurement::planning::Plan {
                metric: corvus_measurement::planning::Baseline::Binomial { rate },
                weights: vec![0.5, 0.5],
                absolute: false,
                alpha: 0.05,
                power: 0.8,
                bonferroni: false,
                daily_traffic: Some(24.0),
            },
            0.2,
        )
        .unwrap();
        assert_eq!((plan.people, plan.days), (want.people, want.days.unwrap()));
    }
    // What cannot be planned: no baseline to read, no effect, a split not adding up.
    for (request, field) in [
        (
            pb::PlanExperimentRequest {
                metric: "converted".to_owned(),
                mde: 0.1,
                ..Default::default()
            },
            "from_experiment",
        ),
        (
            pb::PlanExperimentRequest {
                metric: "converted".to_owned(),
                baseline_rate: Some(0.1),
                daily_traffic: Some(1000.0),
                ..Default::default()
            },
            "mde",
        ),
        (
            pb::PlanExperimentRequest {
                metric: "converted".to_owned(),
                baseline_rate: Some(0.1),
                daily_traffic: Some(1000.0),
                mde: 0.1,
                weights: vec![0.5, 0.4],
                ..Default::default()
            },
            "weights",
        ),
    ] {
        let err = reader.plan_experiment(request).await.unwrap_err();
        assert_eq!((err.code(), field_of(&err).as_str()), (Code::InvalidArgument, field));
    }

    // Listed with its arms; the consumers of both logs have caught up.
    let experiments = reader
        .list_experiments(pb::ListExperimentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .experiments;
    assert_eq!(experiments.len(), 1);
    assert_eq!(experiments[0].arms.iter().map(|a| a.users).sum::<u64>(), 24);
    let downstream = app.downstream_caught_up().await;
    assert!(downstream.iter().any(|c| c.name == "measurement"), "{downstream:?}");
    let decisions = campaigns
        .list_consumers(opb::ListConsumersRequest {})
        .await
        .unwrap()
        .into_inner()
        .consumers;
    assert!(
        decisions.iter().any(|c| c.name == "measurement-exposures"),
        "{decisions:?}"
    );
    // The console, in a browser, shows the same figures (once: the page is the same
    // whatever the backend).
    if backend == Backend::Embedded {
        let results = results_for(&mut reader, 24).await;
        let report = reader
            .get_campaign_report(pb::GetCampaignReportRequest {
                experiment: "spring".to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        crate::console::the_console_shows_what_the_api_gives(&app, &results, &report).await;
    }
    app.stop().await;
}

async fn bad_metrics_and_queries_are_refused(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let mut admin = measurement(&app, &app.admin_key).await;
    let good = orders("revenue", pb::MetricType::Count, "revenue");
    let spoil: [Spoiler<pb::Metric>; 6] = [
        (|m| m.r#type = 0, "metric.type"),
        (|m| m.name = "Revenue!".into(), "metric.name"),
        (|m| m.window = None, "metric.window"),
        (|m| m.numerator = None, "metric.numerator"),
        (
            |m| m.window = Some(prost_types::Duration { seconds: -1, nanos: 0 }),
            "metric.window",
        ),
        (|m| m.denominator = m.numerator.clone(), "metric.denominator"),
    ];
    for (change, field) in spoil {
        let mut metric = good.clone();
        change(&mut metric);
        let err = admin
            .create_metric(pb::CreateMetricRequest { metric: Some(metric) })
            .await
            .unwrap_err();
        assert_eq!((err.code(), field_of(&err).as_str()), (Code::InvalidArgument, field));
    }
    assert!(
        admin
            .list_metrics(pb::ListMetricsRequest {})
            .await
            .unwrap()
            .into_inner()
            .metrics
            .is_empty()
    );
    // A reader may not define; a name taken by another definition is refused.
    let mut reader = measurement(&app, &app.read_key).await;
    let err = reader
        .create_metric(pb::CreateMetricRequest {
            metric: Some(good.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    admin
        .create_metric(pb::CreateMetricRequest {
            metric: Some(good.clone()),
        })
        .await
        .unwrap();
    let mut other = good;
    other.window = Some(days(1));
    let err = admin
        .create_metric(pb::CreateMetricRequest { metric: Some(other) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // Results of an experiment without exposures; a day that is not one.
    let query = |experiment: &str, from_day: &str| pb::GetExperimentResultsRequest {
        experiment: experiment.to_owned(),
        from_day: from_day.to_owned(),
        ..Default::default()
    };
    let err = reader.get_experiment_results(query("spring", "")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = reader
        .get_experiment_results(query("spring", "March 1"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), field_of(&err).as_str()),
        (Code::InvalidArgument, "from_day")
    );
    let err = reader.get_experiment_results(query("", "")).await.unwrap_err();
    assert_eq!(
        (err.code(), field_of(&err).as_str()),
        (Code::InvalidArgument, "experiment")
    );
    app.stop().await;
}
