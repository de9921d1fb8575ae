//! Scoring's models through the public API, against the reference libraries on the same
//! data: the CLV model on the CDNOW sample equal to `lifetimes`', RFM, channel
//! preference and send time, the Groceries rules equal to mlxtend's, needs-based
//! segments.

use std::collections::HashMap;

use chrono::{NaiveDate, TimeZone, Utc};
use corvus_proto::common::v1::Event;
use corvus_proto::scoring::v1 as pb;
use corvus_test_support::{Backend, on_both_backends};
use prost_types::Timestamp;
use serde_json::json;
use tonic::Code;

use crate::identity::{send, with_scores};
use crate::scoring::{at, fit, profile_of, scores, scoring, track};
use crate::support::spawn;

on_both_backends!(
    cdnow_through_the_api_equals_lifetimes,
    rfm_channel_preference_and_send_time,
    groceries_rules_through_the_api_equal_mlxtend,
    needs_based_segments_through_the_api,
);

/// The CDNOW sample's 6,919 purchases sent as `Order Completed` events; the CLV model
/// fitted as of 1997-09-30 in weeks through `FitModel`, and each customer's predictions
/// read through `GetScores`, against `lifetimes` 0.11.3 on the same purchases
/// (`tests/reference/cdnow_lifetimes.py`).
async fn cdnow_through_the_api_equals_lifetimes(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut events = Vec::new();
    for (i, line) in include_str!("../data/cdnow_sample_transactions.txt")
        .lines()
        .enumerate()
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let day = NaiveDate::parse_from_str(f[2], "%Y%m%d").unwrap();
        let when = day.and_hms_opt(0, 0, 0).unwrap().and_utc();
        let mut e = track(
            &format!("cdnow-{i}"),
            ("user_id", f[0]),
            "Order Completed",
            Timestamp {
                seconds: when.timestamp(),
                nanos: 0,
            },
            json!({"revenue": f[4].parse::<f64>().unwrap(), "cds": f[3]}),
        );
        e.context = None;
        events.push(e);
    }
    assert_eq!(events.len(), 6919);
    for chunk in events.chunks(500) {
        send(&app, chunk.to_vec()).await;
    }
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;

    let reference: serde_json::Value = serde_json::from_str(include_str!("../data/cdnow_lifetimes.json")).unwrap();
    let as_of = Timestamp {
        seconds: Utc.with_ymd_and_hms(1997, 9, 30, 23, 59, 59).unwrap().timestamp(),
        nanos: 0,
    };
    let mut admin_scoring = scoring(&app, &app.admin_key).await;
    let mut stream = admin_scoring
        .fit_model(pb::FitModelRequest {
            kind: pb::ModelKind::Clv as i32,
            as_of: Some(as_of),
            unit: "week".into(),
            clv_months: 12,
            discount_rate: Some(0.01),
            ..pb::FitModelRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut stages = Vec::new();
    let mut model = None;
    while let Some(message) = stream.message().await.unwrap() {
        stages.push(message.stage.clone());
        model = message.model.or(model);
    }
    assert!(stages.len() >= 3, "progress streamed: {stages:?}");
    let model = model.expect("the last message carries the model");
    let close = |what: &str, got: f64, expected: f64, tolerance: f64| {
        assert!(
            (got - expected).abs() <= tolerance * expected.abs().max(1.0),
            "{what}: {got} against lifetimes' {expected}"
        );
    };
    for name in ["r", "alpha", "a", "b", "p", "q", "v"] {
        close(
            name,
            model.parameters[name],
            reference["parameters"][name].as_f64().unwrap(),
            1e-4,
        );
    }
    assert_eq!(model.counts["customers"], 2357);
    assert_eq!(
        model.counts["repeat_buyers"],
        reference["repeat_buyers"].as_u64().unwrap()
    );
    let read = scoring(&app, &app.read_key)
        .await
        .get_model(pb::GetModelRequest {
            kind: pb::ModelKind::Clv as i32,
        })
        .await
        .unwrap()
        .into_inner();
    // Kept as JSON: equal to the last bit or one unit in the last place.
    let kept = read.model.unwrap().parameters;
    for (name, value) in &model.parameters {
        close(&format!("{name} as kept"), kept[name], *value, 1e-15);
    }

    // Every customer's predictions, 39 weeks ahead.
    let mut admin = app.identity(&app.admin_key).await;
    let mut client = scoring(&app, &app.read_key).await;
    let predictions = reference["predictions"].as_object().unwrap();
    let mut checked = HashMap::new();
    for (customer, expected) in predictions {
        let profile = profile_of(&mut admin, "user_id", customer).await;
        let response = client
            .get_scores(pb::GetScoresRequest {
                profile_id: profile,
                as_of: Some(as_of),
                horizon: 39.0,
            })
            .await
            .unwrap()
            .into_inner();
        let ltv = response.lifetime_value.expect("a lifetime value");
        for (field, got) in [
            ("frequency", ltv.frequency),
            ("recency", ltv.recency),
            ("age", ltv.age),
            ("monetary_value", ltv.monetary_value),
            ("p_alive", ltv.p_alive),
            ("expected_purchases", ltv.expected_purchases),
            ("expected_spend", ltv.expected_spend),
            ("clv", ltv.clv),
        ] {
            close(
                &format!("customer {customer}: {field}"),
                got,
                expected[field].as_f64().unwrap(),
                1e-4,
            );
        }
        checked.insert(customer.clone(), ltv.p_alive);
    }
    assert_eq!(checked.len(), 2357);

    // Purchase propensity over the next 90 days, on the same events: the holdout is the
    // snapshot of 1997-09-30 (outcomes to the end of 1997), as in the reference check of
    // the model against scikit-learn (tests/reference/propensity_sklearn.py, batch AUC
    // 0.787 on a like split).
    let propensity_as_of = Timestamp {
        seconds: Utc.with_ymd_and_hms(1997, 12, 29, 23, 59, 59).unwrap().timestamp(),
        nanos: 0,
    };
    let mut stream = admin_scoring
        .fit_model(pb::FitModelRequest {
            kind: pb::ModelKind::Propensity as i32,
            as_of: Some(propensity_as_of),
            horizon_days: 90,
            ..pb::FitModelRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut model = None;
    while let Some(message) = stream.message().await.unwrap() {
        model = message.model.or(model);
    }
    let d = model.expect("a propensity model").diagnostics;
    eprintln!("propensity holdout: {d:?}");
    let (online, calibrated, batch) = (
        d["holdout_auc_online"],
        d["holdout_auc_calibrated"],
        d["holdout_auc_batch"],
    );
    assert!(batch > 0.75, "batch AUC {batch}");
    assert!(
        (online - batch).abs() < 0.02,
        "online AUC {online} against batch {batch}"
    );
    assert!(
        (calibrated - online).abs() < 1e-9,
        "Platt scaling is monotone: {calibrated} {online}"
    );
    assert!(d["holdout_ece_calibrated"] < 0.1, "{d:?}");
    let customer = predictions.keys().next().unwrap();
    let profile = profile_of(&mut admin, "user_id", customer).await;
    let response = client
        .get_scores(pb::GetScoresRequest {
            profile_id: profile,
            as_of: Some(propensity_as_of),
            horizon: 0.0,
        })
        .await
        .unwrap()
        .into_inner();
    let p = response.propensity.expect("a propensity");
    assert!(p.probability > 0.0 && p.probability < 1.0, "{p:?}");
    assert_eq!(p.churn_risk, Some(1.0 - p.probability), "a customer's churn risk");
    assert_eq!(p.horizon_days, 90);
    assert!(!p.explanation.is_empty());
    app.stop().await;
}

/// Ten customers, u-i buying i + 1 times for 10 each, the last time 10 − i days before
/// the end; u-0 clicks email (10 of 20) far more than SMS (1 of 20), always on Monday
/// evenings; the others were sent two of each and clicked nothing.
async fn rfm_channel_preference_and_send_time(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let day = |d: u32, hour: u32| Timestamp {
        seconds: Utc.with_ymd_and_hms(2026, 3, 1, hour, 0, 0).unwrap().timestamp() + i64::from(d) * 86_400,
        nanos: 0,
    };
    let mut events = Vec::new();
    for i in 0..10u32 {
        let user = format!("u-{i}");
        for k in 0..=i {
            let id = format!("o-{i}-{k}");
            events.push(track(
                &id,
                ("user_id", &user),
                "Order Completed",
                day(20 + i - k, 0),
                json!({"revenue": 10}),
            ));
        }
        let sends = if i == 0 { 20 } else { 2 };
        for n in 0..sends {
            for channel in ["Email", "SMS"] {
                let id = format!("{channel}-{i}-{n}");
                events.push(track(
                    &id,
                    ("user_id", &user),
                    &format!("{channel} Sent"),
                    day(n % 7, 9),
                    json!({}),
                ));
            }
        }
    }
    // Monday 2 March, 18:00 UTC: 19:00 in Paris, hour 19 of the week.
    for n in 0..10 {
        let id = format!("click-email-{n}");
        events.push(track(
            &id,
            ("user_id", "u-0"),
            "Email Link Clicked",
            day(1, 18),
            json!({}),
        ));
    }
    events.push(track(
        "click-sms",
        ("user_id", "u-0"),
        "SMS Link Clicked",
        day(1, 18),
        json!({}),
    ));
    send(&app, events).await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;

    let end = day(30, 0);
    let mut admin = scoring(&app, &app.admin_key).await;
    let rfm = fit(&mut admin, pb::ModelKind::Rfm, end).await.unwrap();
    // numpy.percentile of 1..10 days, orders and tens at 20, 40, 60, 80.
    for (name, expected) in [
        ("recency_q20", 2.8),
        ("recency_q80", 8.2),
        ("frequency_q40", 4.6),
        ("monetary_q60", 64.0),
    ] {
        assert!(
            (rfm.parameters[name] - expected).abs() < 1e-9,
            "{name}: {:?}",
            rfm.parameters
        );
    }
    assert_eq!(rfm.counts["customers"], 10);
    fit(&mut admin, pb::ModelKind::Engagement, end).await.unwrap();

    let mut identity = app.identity(&app.admin_key).await;
    let mut client = scoring(&app, &app.read_key).await;
    let mut of = async |user: &str| {
        let profile = profile_of(&mut identity, "user_id", user).await;
        scores(&mut client, &profile, Some(end)).await.unwrap()
    };
    let champion = of("u-9").await;
    let r = champion.rfm.as_ref().unwrap();
    assert_eq!(
        (r.recency, r.frequency, r.monetary, r.cell.as_str()),
        (5, 5, 5, "champions")
    );
    assert!(r.explanation.contains("10 orders"), "{}", r.explanation);
    let middle = of("u-4").await.rfm.unwrap();
    assert_eq!(
        (middle.recency, middle.frequency, middle.cell.as_str()),
        (3, 3, "need_attention")
    );

    let clicker = of("u-0").await;
    assert_eq!(clicker.rfm.as_ref().unwrap().cell, "hibernating");
    let preference = clicker.channel_preference.unwrap();
    assert_eq!(preference.best_channel, "email", "{preference:?}");
    assert!(preference.confidence > 0.8, "{preference:?}");
    let email = &preference.channels[0];
    assert_eq!(
        (email.channel.as_str(), email.messages, email.responses),
        ("email", 20.0, 10.0)
    );
    let time = clicker.send_time.unwrap();
    assert_eq!((time.hour_of_week, time.events), (19, 12), "{time:?}");

    let quiet = of("u-5").await.channel_preference.unwrap();
    assert_eq!(
        quiet.best_channel, "",
        "two messages a channel and no click say nothing: {quiet:?}"
    );
    assert!(
        quiet.explanation.starts_with("not enough data"),
        "{}",
        quiet.explanation
    );

    // The same, as of now, on the profile: what a decision reads in one call.
    let now = scores(&mut client, &profile_of(&mut identity, "user_id", "u-0").await, None)
        .await
        .unwrap();
    let read = with_scores(&mut identity, "user_id", "u-0").await;
    assert_eq!(read.scores_unavailable, "");
    let on_profile: std::collections::BTreeMap<String, (f64, String)> = read
        .profile
        .unwrap()
        .scores
        .into_iter()
        .map(|s| (s.name, (s.value, s.label)))
        .collect();
    let rfm = now.rfm.unwrap();
    assert_eq!(on_profile["rfm_recency"].0, f64::from(rfm.recency));
    assert_eq!(on_profile["rfm_frequency"].0, f64::from(rfm.frequency));
    assert_eq!(on_profile["rfm_monetary"].0, f64::from(rfm.monetary));
    assert_eq!(on_profile["rfm_cell"].1, rfm.cell);
    let email = now.channel_preference.unwrap().channels[0].rate;
    assert_eq!(on_profile["preferred_channel"], (email, "email".to_owned()));
    assert_eq!(on_profile["best_send_time"], (19.0, "Mon 19:00".to_owned()));
    assert!(
        !on_profile.contains_key("p_alive"),
        "no CLV model was fitted: {on_profile:?}"
    );

    app.stop().await;
}

/// The Groceries baskets sent as 9,835 orders of 500 shoppers (`products[].product_id`
/// the item); the affinity model fitted at support 0.006 and confidence 0.25; every rule
/// read back through `ListAssociationRules` equal to mlxtend's on the same baskets
/// (`tests/reference/groceries_mlxtend.py`); recommendations for a shopper who bought
/// herbs.
async fn groceries_rules_through_the_api_equal_mlxtend(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let events: Vec<Event> = include_str!("../data/groceries_baskets.csv")
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let products: Vec<serde_json::Value> = line
                .split(',')
                .map(|item| json!({"product_id": item, "price": 1}))
                .collect();
            let user = format!("g-{}", i % 500);
            track(
                &format!("basket-{i}"),
                ("user_id", &user),
                "Order Completed",
                at(1, 10),
                json!({"products": products}),
            )
        })
        .collect();
    assert_eq!(events.len(), 9835);
    for chunk in events.chunks(1000) {
        send(&app, chunk.to_vec()).await;
    }
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let mut admin = scoring(&app, &app.admin_key).await;
    let mut stream = admin
        .fit_model(pb::FitModelRequest {
            kind: pb::ModelKind::Affinity as i32,
            min_support: Some(0.006),
            min_confidence: Some(0.25),
            ..pb::FitModelRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut model = None;
    while let Some(message) = stream.message().await.unwrap() {
        model = message.model.or(model);
    }
    let model = model.unwrap();
    assert_eq!((model.counts["orders"], model.counts["products"]), (9835, 169));

    let mut client = scoring(&app, &app.read_key).await;
    let mut rules = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_association_rules(pb::ListAssociationRulesRequest {
                product: String::new(),
                page: Some(corvus_proto::common::v1::PageRequest {
                    page_size: 200,
                    page_token: token,
                }),
            })
            .await
            .unwrap()
            .into_inner();
        rules.extend(page.rules);
        token = page.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let reference: serde_json::Value = serde_json::from_str(include_str!("../data/groceries_rules.json")).unwrap();
    let expected = reference["rules"].as_array().unwrap();
    assert_eq!(rules.len(), expected.len());
    assert_eq!(rules.len(), 463);
    let by_key: HashMap<(Vec<String>, String), &pb::AssociationRule> = rules
        .iter()
        .map(|r| ((r.antecedents.clone(), r.consequent.clone()), r))
        .collect();
    for e in expected {
        let antecedents: Vec<String> = e["antecedents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let key = (antecedents, e["consequent"].as_str().unwrap().to_owned());
        let got = by_key.get(&key).unwrap_or_else(|| panic!("no rule {key:?}"));
        for (name, value) in [
            ("support", got.support),
            ("confidence", got.confidence),
            ("lift", got.lift),
        ] {
            assert!(
                (value - e[name].as_f64().unwrap()).abs() < 1e-12,
                "{key:?} {name}: {value} against {}",
                e[name]
            );
        }
    }
    // Highest lift first: {herbs} → {root vegetables}, 3.956.
    assert_eq!(
        (rules[0].antecedents.as_slice(), rules[0].consequent.as_str()),
        (&["herbs".to_owned()][..], "root vegetables")
    );
    assert!((rules[0].lift - 3.956).abs() < 5e-4);
    let herbs = client
        .list_association_rules(pb::ListAssociationRulesRequest {
            product: "herbs".into(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert!(
        !herbs.is_empty()
            && herbs
                .iter()
                .all(|r| r.consequent == "herbs" || r.antecedents.contains(&"herbs".to_owned()))
    );

    // A new shopper buys herbs: the rules with {herbs} alone on the left suggest what
    // it goes with, the most confident first, and not herbs again.
    send(
        &app,
        vec![track(
            "shopper-1",
            ("user_id", "shopper"),
            "Order Completed",
            at(2, 10),
            json!({"products": [{"product_id": "herbs"}]}),
        )],
    )
    .await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let mut identity = app.identity(&app.admin_key).await;
    let shopper = profile_of(&mut identity, "user_id", "shopper").await;
    let suggested = client
        .get_recommendations(pb::GetRecommendationsRequest {
            profile_id: shopper,
            limit: 5,
            include_owned: false,
        })
        .await
        .unwrap()
        .into_inner()
        .recommendations;
    let mut from_herbs: Vec<&serde_json::Value> = expected
        .iter()
        .filter(|e| e["antecedents"] == json!(["herbs"]))
        .collect();
    from_herbs.sort_by(|a, b| {
        b["confidence"]
            .as_f64()
            .unwrap()
            .total_cmp(&a["confidence"].as_f64().unwrap())
    });
    let want: Vec<&str> = from_herbs.iter().map(|e| e["consequent"].as_str().unwrap()).collect();
    let got: Vec<&str> = suggested.iter().map(|r| r.product.as_str()).collect();
    assert_eq!(got, want);
    assert!(
        suggested[0].explanation.starts_with("bought herbs"),
        "{}",
        suggested[0].explanation
    );
    app.stop().await;
}

/// Two kinds of people: 20 happy regulars (five orders each, NPS 9) and 20 unhappy
/// one-time buyers (one order, NPS 2): two segments, chosen by silhouette, described by
/// what sets them apart, each person in theirs; a refit keeps the ids.
async fn needs_based_segments_through_the_api(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut events = Vec::new();
    for i in 0..40u32 {
        let user = format!("p-{i}");
        let (orders, nps) = if i % 2 == 0 { (5, 9) } else { (1, 2) };
        for o in 0..orders {
            events.push(track(
                &format!("o-{i}-{o}"),
                ("user_id", &user),
                "Order Completed",
                at(1 + o, 10),
                json!({"revenue": 40}),
            ));
        }
        events.push(track(
            &format!("s-{i}"),
            ("user_id", &user),
            "Survey Answered",
            at(10, 10),
            json!({"nps": nps}),
        ));
    }
    send(&app, events).await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let mut admin = scoring(&app, &app.admin_key).await;
    let end = at(20, 0);
    let model = fit(&mut admin, pb::ModelKind::Segments, end).await.unwrap();
    assert_eq!(model.parameters["k"], 2.0, "{:?}", model.parameters);
    assert!(model.parameters["silhouette"] > 0.5, "{:?}", model.parameters);

    let mut client = scoring(&app, &app.read_key).await;
    let listed = client
        .list_segments(pb::ListSegmentsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.profiles, 40);
    assert_eq!(listed.segments.iter().map(|s| s.size).collect::<Vec<_>>(), vec![20, 20]);
    let mut identity = app.identity(&app.admin_key).await;
    let mut segment_of = async |user: &str| {
        let profile = profile_of(&mut identity, "user_id", user).await;
        scores(&mut client, &profile, Some(end)).await.unwrap().segment.unwrap()
    };
    let (regular, unhappy) = (segment_of("p-0").await, segment_of("p-1").await);
    assert_ne!(regular.segment_id, unhappy.segment_id);
    assert_eq!(segment_of("p-38").await.segment_id, regular.segment_id);
    assert_eq!(segment_of("p-39").await.segment_id, unhappy.segment_id);
    // Named from two of what sets them apart (equally far here): more orders, revenue,
    // events, a higher NPS.
    let apart = ["high_orders", "high_revenue", "high_events", "high_nps"];
    assert_eq!(
        apart.iter().filter(|a| regular.name.contains(*a)).count(),
        2,
        "{}",
        regular.name
    );
    let mut client = scoring(&app, &app.read_key).await;
    let described = client
        .describe_segment(pb::DescribeSegmentRequest {
            segment_id: unhappy.segment_id,
        })
        .await
        .unwrap()
        .into_inner();
    // The unhappy answered NPS 2 against a workspace mean of 5.5, one sd below.
    let nps = described.features.iter().find(|f| f.name == "nps").unwrap();
    assert!(
        (nps.segment_mean - 2.0).abs() < 1e-9 && (nps.workspace_mean - 5.5).abs() < 1e-9,
        "{nps:?}"
    );
    assert!((nps.difference + 1.0).abs() < 1e-9, "{nps:?}");
    assert!(described.segment.unwrap().description.contains("sd below"));
    let err = client
        .describe_segment(pb::DescribeSegmentRequest { segment_id: 99 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Refitted with k given: each segment keeps its id.
    let mut request = pb::FitModelRequest {
        kind: pb::ModelKind::Segments as i32,
        as_of: Some(end),
        k: 2,
        ..pb::FitModelRequest::default()
    };
    let mut stream = admin.fit_model(request.clone()).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}
    let mut identity = app.identity(&app.admin_key).await;
    let profile = profile_of(&mut identity, "user_id", "p-1").await;
    assert_eq!(
        scores(&mut client, &profile, Some(end))
            .await
            .unwrap()
            .segment
            .unwrap()
            .segment_id,
        unhappy.segment_id
    );
    request.k = 1;
    let err = admin.fit_model(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    app.stop().await;
}
