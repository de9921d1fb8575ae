//! Computed traits and audiences through the public API: values folded from the events
//! held, membership kept current by events, merges, erasures and the passing of time,
//! entries and exits streamed in order, estimates before saving, bad definitions
//! refused with their path; `corvus audiences apply` of a file of definitions.

use std::time::Duration;

use chrono::Utc;
use corvus_proto::identity::v1 as idpb;
use corvus_proto::json::value_to_json;
use corvus_proto::scoring::v1 as pb;
use corvus_test_support::{Backend, on_both_backends};
use prost_types::Timestamp;
use serde_json::json;
use tonic::Code;

use crate::identity::{identify, send, with_scores};
use crate::scoring::{ScoringClient, profile_of, scores, scoring, track};
use crate::support::spawn;

on_both_backends!(
    audiences_follow_events_merges_erasures_and_time,
    bad_definitions_are_refused_with_their_path,
    definitions_are_applied_from_a_file,
);

/// A time `seconds` ago.
fn ago(seconds: i64) -> Timestamp {
    let t = Utc::now() - chrono::TimeDelta::seconds(seconds);
    Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

const DAY: i64 = 86_400;

fn window(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

fn orders() -> Option<pb::EventFilter> {
    Some(pb::EventFilter {
        events: vec!["Order Completed".into()],
        conditions: vec![],
    })
}

fn computed(
    name: &str,
    aggregation: pb::Aggregation,
    property: &str,
    within: Option<i64>,
) -> pb::CreateComputedTraitRequest {
    pb::CreateComputedTraitRequest {
        computed_trait: Some(pb::ComputedTrait {
            name: name.into(),
            aggregation: aggregation as i32,
            property: property.into(),
            filter: orders(),
            within: within.and_then(window),
            created_at: None,
        }),
    }
}

fn condition(c: pb::condition::Condition) -> pb::Condition {
    pb::Condition { condition: Some(c) }
}

fn bought(at_least: u32, within: i64) -> pb::Condition {
    condition(pb::condition::Condition::Event(pb::EventCondition {
        filter: orders(),
        within: window(within),
        at_least,
        at_most: None,
    }))
}

pub(crate) fn compare(field: &str, op: pb::Operator, value: serde_json::Value) -> pb::Condition {
    condition(pb::condition::Condition::Compare(pb::Comparison {
        field: field.into(),
        op: op as i32,
        value: Some(corvus_proto::json::json_to_value(&value)),
    }))
}

pub(crate) fn audience(name: &str, definition: pb::Condition) -> pb::CreateAudienceRequest {
    pb::CreateAudienceRequest {
        audience: Some(pb::Audience {
            name: name.into(),
            description: format!("the {name} audience"),
            definition: Some(definition),
            ..pb::Audience::default()
        }),
    }
}

async fn members(client: &mut ScoringClient, name: &str) -> Vec<String> {
    let mut ids: Vec<String> = client
        .list_audience_members(pb::ListAudienceMembersRequest {
            name: name.into(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .members
        .into_iter()
        .map(|m| m.profile_id)
        .collect();
    ids.sort();
    ids
}

/// Waits until every audience is built.
pub(crate) async fn built(client: &mut ScoringClient) -> Vec<pb::Audience> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = client
            .list_audiences(pb::ListAudiencesRequest {})
            .await
            .unwrap()
            .into_inner()
            .audiences;
        if list.iter().all(|a| a.built_at.is_some()) {
            return list;
        }
        assert!(tokio::time::Instant::now() < deadline, "audiences not built: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next change on a stream, within 20 seconds.
async fn next(stream: &mut tonic::Streaming<pb::StreamAudienceChangesResponse>) -> pb::StreamAudienceChangesResponse {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("a change within 20 s")
        .unwrap()
        .expect("the stream goes on")
}

async fn audiences_follow_events_merges_erasures_and_time(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut client = scoring(&app, &app.admin_key).await;
    for request in [
        computed("orders_30d", pb::Aggregation::Count, "", Some(30 * DAY)),
        computed("spend", pb::Aggregation::Sum, "revenue", None),
        computed(
            "favourite_category",
            pb::Aggregation::MostFrequent,
            "products.category",
            None,
        ),
        computed("categories", pb::Aggregation::UniqueList, "products.category", None),
    ] {
        client.create_computed_trait(request).await.unwrap();
    }
    let (ann, bob, cat) = (("user_id", "ann"), ("user_id", "bob"), ("anonymous_id", "cat-device"));
    // Ann's first order leaves the last 30 days 12 seconds from now: she is in
    // "twice in 30 days" until then, and out after with no new event.
    let soon = 15;
    let order = |id: &str, who, seconds_ago: i64, revenue: f64, categories: &[&str]| {
        let products: Vec<_> = categories.iter().map(|c| json!({"category": c, "price": 1})).collect();
        track(
            id,
            who,
            "Order Completed",
            ago(seconds_ago),
            json!({"revenue": revenue, "products": products}),
        )
    };
    send(
        &app,
        vec![
            order("ann-1", ann, 30 * DAY - soon, 10.0, &["Books"]),
            order("ann-2", ann, DAY, 30.0, &["Games", "Books"]),
            order("bob-1", bob, 5 * DAY, 5.0, &["Books"]),
            order("cat-1", cat, 2 * DAY, 7.0, &["Toys"]),
            identify("bob-2", &[("user_id", "bob")], json!({"plan": "pro"})),
        ],
    )
    .await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let mut admin = app.identity(&app.admin_key).await;
    let a = profile_of(&mut admin, "user_id", "ann").await;
    let b = profile_of(&mut admin, "user_id", "bob").await;
    let c = profile_of(&mut admin, "anonymous_id", "cat-device").await;

    // Computed traits are there at once for the events already held.
    let ann_scores = scores(&mut client, &a, None).await.unwrap();
    let traits: std::collections::BTreeMap<_, _> = ann_scores
        .computed_traits
        .iter()
        .map(|(k, v)| (k.as_str(), value_to_json(v)))
        .collect();
    assert_eq!(traits["orders_30d"], json!(2.0));
    assert_eq!(traits["spend"], json!(40.0));
    assert_eq!(traits["favourite_category"], json!("Books"));
    assert_eq!(traits["categories"], json!(["Books", "Games"]));

    // The size of a definition before it is saved.
    let estimate = |definition| pb::EstimateAudienceRequest {
        definition: Some(definition),
    };
    let e = client
        .estimate_audience(estimate(bought(1, 30 * DAY)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((e.size, e.profiles, e.evaluated, e.low, e.high), (3, 3, 3, 3, 3));
    let e = client
        .estimate_audience(estimate(compare("traits.plan", pb::Operator::Eq, json!("pro"))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.size, 1);

    let twice = bought(2, 30 * DAY);
    client.create_audience(audience("twice_in_30d", twice)).await.unwrap();
    client
        .create_audience(audience(
            "big_spenders",
            compare("computed.spend", pb::Operator::Gte, json!(40)),
        ))
        .await
        .unwrap();
    // Pro customers who are not big spenders: another audience in the definition.
    let pro_small = condition(pb::condition::Condition::All(pb::Conditions {
        conditions: vec![
            compare("traits.plan", pb::Operator::Eq, json!("pro")),
            condition(pb::condition::Condition::Not(Box::new(condition(
                pb::condition::Condition::Audience("big_spenders".into()),
            )))),
        ],
    }));
    client.create_audience(audience("pro_small", pro_small)).await.unwrap();
    let mut stream = client
        .stream_audience_changes(pb::StreamAudienceChangesRequest {
            name: "twice_in_30d".into(),
            after_sequence: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    let list = built(&mut client).await;
    assert_eq!(
        list.iter().map(|a| a.size).collect::<Vec<_>>(),
        vec![1, 1, 1],
        "{list:?}"
    );
    assert_eq!(members(&mut client, "twice_in_30d").await, vec![a.clone()]);
    assert_eq!(members(&mut client, "big_spenders").await, vec![a.clone()]);
    assert_eq!(members(&mut client, "pro_small").await, vec![b.clone()]);
    let entry = next(&mut stream).await;
    assert_eq!(
        (entry.profile_id.as_str(), entry.entered, entry.reason.as_str()),
        (a.as_str(), true, "backfill")
    );
    assert_eq!(
        scores(&mut client, &a, None).await.unwrap().audiences,
        vec!["big_spenders", "twice_in_30d"]
    );
    // The profile carries them too, so a decision reads one record.
    let mut reader = app.identity(&app.read_key).await;
    let segments_of_ann = async |reader: &mut crate::support::IdentityClient| {
        let read = with_scores(reader, "user_id", "ann").await;
        assert_eq!(read.scores_unavailable, "");
        read.profile.unwrap().segments
    };
    assert_eq!(segments_of_ann(&mut reader).await, vec!["big_spenders", "twice_in_30d"]);

    // An event moves Bob in at once.
    send(&app, vec![order("bob-3", bob, 60, 20.0, &["Games"])]).await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let entry = next(&mut stream).await;
    assert_eq!(
        (entry.profile_id.as_str(), entry.entered, entry.reason.as_str()),
        (b.as_str(), true, "event")
    );
    assert!(entry.sequence > 0);
    assert!(
        scores(&mut client, &b, None)
            .await
            .unwrap()
            .audiences
            .contains(&"twice_in_30d".to_owned())
    );

    // Time moves Ann out: her first order leaves the window, with no new event.
    let exit = next(&mut stream).await;
    assert_eq!(
        (exit.profile_id.as_str(), exit.entered, exit.reason.as_str()),
        (a.as_str(), false, "time")
    );
    assert_eq!(members(&mut client, "twice_in_30d").await, vec![b.clone()]);
    assert_eq!(segments_of_ann(&mut reader).await, vec!["big_spenders"]);

    // Cat's device signs in as Bob: Bob's profile absorbs Cat's (or the other way), the
    // merged id leaves, the survivor holds both histories.
    let mut signed_in = track("bob-4", bob, "Signed In", ago(1), json!({}));
    signed_in.anonymous_id = "cat-device".into();
    send(&app, vec![signed_in]).await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let survivor = profile_of(&mut admin, "user_id", "bob").await;
    assert!(survivor == b || survivor == c);
    let survivor_scores = scores(&mut client, &survivor, None).await.unwrap();
    let spend = survivor_scores.computed_traits.get("spend").map(value_to_json);
    assert_eq!(spend, Some(json!(32.0)), "5 + 20 + 7");
    assert_eq!(members(&mut client, "twice_in_30d").await, vec![survivor.clone()]);
    if survivor == c {
        // Bob's id merged away: out; Cat's survivor: in.
        let changes = [next(&mut stream).await, next(&mut stream).await];
        assert!(changes.iter().any(|x| x.profile_id == b && !x.entered), "{changes:?}");
        assert!(changes.iter().any(|x| x.profile_id == c && x.entered), "{changes:?}");
    }

    // The survivor erased: out of every audience, the stream told, the receipt counts.
    admin
        .forget_profile(idpb::ForgetProfileRequest {
            profile_id: survivor.clone(),
            allow_recreate: false,
        })
        .await
        .unwrap();
    app.downstream_caught_up().await;
    let exit = next(&mut stream).await;
    assert_eq!(
        (exit.profile_id.as_str(), exit.entered, exit.reason.as_str()),
        (survivor.as_str(), false, "erased")
    );
    assert!(members(&mut client, "twice_in_30d").await.is_empty());
    assert!(members(&mut client, "pro_small").await.is_empty());
    // Resuming after the last change seen gives nothing more, and from the start the
    // erased person's history is gone but for the exit.
    let mut replay = client
        .stream_audience_changes(pb::StreamAudienceChangesRequest {
            name: "twice_in_30d".into(),
            after_sequence: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut replay).await;
    assert_eq!(
        (first.profile_id.as_str(), first.reason.as_str()),
        (a.as_str(), "backfill")
    );

    // A trait an audience compares cannot go; once the audience has, it can.
    let err = client
        .delete_computed_trait(pb::DeleteComputedTraitRequest { name: "spend".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = client
        .delete_audience(pb::DeleteAudienceRequest {
            name: "big_spenders".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "pro_small refers to it: {err:?}");
    let mut watching = client
        .stream_audience_changes(pb::StreamAudienceChangesRequest {
            name: "pro_small".into(),
            after_sequence: None,
        })
        .await
        .unwrap()
        .into_inner();
    for name in ["pro_small", "big_spenders"] {
        client
            .delete_audience(pb::DeleteAudienceRequest { name: name.into() })
            .await
            .unwrap();
    }
    // A stream of a deleted audience ends, saying so, and sends nothing of a new one of
    // the same name (this one takes Bob in as it is built).
    client
        .create_audience(audience(
            "pro_small",
            compare("traits.plan", pb::Operator::Eq, json!("pro")),
        ))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(20), watching.message())
        .await
        .expect("the stream ends within 20 s")
        .unwrap_err();
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    client
        .delete_audience(pb::DeleteAudienceRequest {
            name: "pro_small".into(),
        })
        .await
        .unwrap();
    client
        .delete_computed_trait(pb::DeleteComputedTraitRequest { name: "spend".into() })
        .await
        .unwrap();
    let left: Vec<String> = client
        .list_computed_traits(pb::ListComputedTraitsRequest {})
        .await
        .unwrap()
        .into_inner()
        .computed_traits
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(left, vec!["categories", "favourite_category", "orders_30d"]);
    app.stop().await;
}

async fn bad_definitions_are_refused_with_their_path(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut client = scoring(&app, &app.admin_key).await;
    let field_of = |status: &tonic::Status| {
        use tonic_types::StatusExt;
        status
            .get_details_bad_request()
            .map(|b| b.field_violations[0].field.clone())
            .unwrap_or_default()
    };
    let refused = |result: Result<tonic::Response<pb::CreateAudienceResponse>, tonic::Status>| {
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        (field_of(&err), err.message().to_owned())
    };
    let unknown_op = condition(pb::condition::Condition::Compare(pb::Comparison {
        field: "features.orders".into(),
        op: 99,
        value: None,
    }));
    let (field, _) = refused(client.create_audience(audience("a", unknown_op)).await);
    assert_eq!(field, "audience.definition.compare.op");
    let misspelt = condition(pb::condition::Condition::Any(pb::Conditions {
        conditions: vec![bought(1, DAY), compare("scores.pallive", pb::Operator::Gt, json!(0.5))],
    }));
    let (field, message) = refused(client.create_audience(audience("a", misspelt)).await);
    assert_eq!(field, "audience.definition.any[1].compare.field");
    assert!(message.contains("unknown score \"pallive\""), "{message}");
    let (field, _) = refused(
        client
            .create_audience(audience(
                "a",
                compare("features.revenue", pb::Operator::Gt, json!("lots")),
            ))
            .await,
    );
    assert_eq!(field, "audience.definition.compare.value");
    let (field, message) = refused(client.create_audience(audience("a", bought(1, 4000 * DAY))).await);
    assert_eq!(field, "audience.definition.event.within");
    assert!(message.contains("longer than the longest window"), "{message}");
    let (field, _) = refused(
        client
            .create_audience(audience("a", condition(pb::condition::Condition::Audience("a".into()))))
            .await,
    );
    assert_eq!(field, "audience.definition.audience");
    let (field, _) = refused(client.create_audience(audience("Not A Name", bought(1, DAY))).await);
    assert_eq!(field, "audience.name");
    let (field, _) = refused(
        client
            .create_audience(audience(
                "a",
                compare("computed.nothing", pb::Operator::Exists, serde_json::Value::Null),
            ))
            .await,
    );
    assert_eq!(field, "audience.definition.compare.field");
    // A trait without the property it folds.
    let err = client
        .create_computed_trait(computed("total", pb::Aggregation::Sum, "", None))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), field_of(&err).as_str()),
        (Code::InvalidArgument, "computed_trait.property")
    );
    let err = client
        .create_computed_trait(computed("total", pb::Aggregation::Unspecified, "revenue", None))
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), "computed_trait.aggregation");
    // Nothing was saved; a name is taken once.
    let listed = client
        .list_audiences(pb::ListAudiencesRequest {})
        .await
        .unwrap()
        .into_inner()
        .audiences;
    assert!(listed.is_empty(), "{listed:?}");
    client.create_audience(audience("a", bought(1, DAY))).await.unwrap();
    let err = client.create_audience(audience("a", bought(2, DAY))).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // Unknown audiences are not found; a reader cannot define.
    let err = client
        .list_audience_members(pb::ListAudienceMembersRequest {
            name: "nobody".into(),
            page: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut reader = scoring(&app, &app.read_key).await;
    let err = reader.create_audience(audience("b", bought(1, DAY))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    app.stop().await;
}

/// `corvus audiences ARGS` against the app.
async fn cli(app: &crate::support::TestApp, args: &[&str]) -> (bool, String) {
    app.cli("audiences", args).await
}

/// Members of an audience, once they are `want` (within 20 s).
async fn members_become(client: &mut ScoringClient, name: &str, mut want: Vec<String>) {
    want.sort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = members(client, name).await;
        if now == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name}: {now:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn definitions_are_applied_from_a_file(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut client = scoring(&app, &app.admin_key).await;
    let order = |id: &str, user: &str, revenue: f64| {
        track(
            id,
            ("user_id", user),
            "Order Completed",
            ago(DAY),
            json!({"revenue": revenue}),
        )
    };
    send(
        &app,
        vec![
            order("ann-1", "ann", 10.0),
            order("ann-2", "ann", 30.0),
            order("bob-1", "bob", 5.0),
            identify("ann-3", &[("user_id", "ann")], json!({"plan": "pro"})),
        ],
    )
    .await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let mut identity = app.identity(&app.admin_key).await;
    let (ann, bob) = (
        profile_of(&mut identity, "user_id", "ann").await,
        profile_of(&mut identity, "user_id", "bob").await,
    );

    // An audience that refers to another comes first in the file: it is created after.
    let file = |threshold: serde_json::Value| {
        json!({
            "computed_traits": [{"name": "spend", "aggregation": "sum", "property": "revenue",
                                 "filter": {"events": ["Order Completed"]}}],
            "audiences": [
                {"name": "spenders_pro", "definition": {"all": [{"audience": "spenders"},
                    {"compare": {"field": "traits.plan", "op": "eq", "value": "pro"}}]}},
                {"name": "spenders", "description": "spent more than the threshold",
                 "definition": {"compare": {"field": "computed.spend", "op": "gt", "value": threshold}}}
            ]
        })
    };
    let dir = corvus_test_support::TempDir::new();
    let write = |name: &str, value: &serde_json::Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_string_pretty(value).unwrap()).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let first = write("first.json", &file(json!(20)));

    let (ok, printed) = cli(&app, &["apply", &first, "--dry-run"]).await;
    assert!(ok, "{printed}");
    assert!(
        printed.contains("+ computed trait spend") && printed.contains("nothing changed"),
        "{printed}"
    );
    assert!(built(&mut client).await.is_empty(), "a dry run changes nothing");

    let (ok, printed) = cli(&app, &["apply", &first]).await;
    assert!(ok, "{printed}");
    assert!(
        printed.contains("applied: 3 created, 0 replaced, 0 unchanged"),
        "{printed}"
    );
    built(&mut client).await;
    members_become(&mut client, "spenders", vec![ann.clone()]).await;
    members_become(&mut client, "spenders_pro", vec![ann.clone()]).await;

    // Again, and from what `export` writes: nothing to do (20 in the file is the 20.0
    // the API holds).
    let (ok, printed) = cli(&app, &["apply", &first]).await;
    assert!(
        printed.contains("applied: 0 created, 0 replaced, 3 unchanged"),
        "{ok} {printed}"
    );
    let (ok, exported) = cli(&app, &["export"]).await;
    assert!(ok, "{exported}");
    let exported = write("exported.json", &serde_json::from_str(&exported).unwrap());
    let (ok, printed) = cli(&app, &["apply", &exported]).await;
    assert!(ok && printed.contains("3 unchanged"), "{printed}");

    // A changed definition: refused without --replace, nothing changed; replaced with it.
    let second = write("second.json", &file(json!(2)));
    let (ok, printed) = cli(&app, &["apply", &second]).await;
    assert!(
        !ok && printed.contains("~ audience spenders") && printed.contains("--replace"),
        "{printed}"
    );
    members_become(&mut client, "spenders", vec![ann.clone()]).await;
    // The audience that refers to it is replaced with it.
    let (ok, printed) = cli(&app, &["apply", &second, "--replace"]).await;
    assert!(
        ok && printed.contains("~ audience spenders_pro")
            && printed.contains("applied: 0 created, 2 replaced, 1 unchanged"),
        "{printed}"
    );
    built(&mut client).await;
    members_become(&mut client, "spenders", vec![ann.clone(), bob.clone()]).await;

    // A file the server would refuse changes nothing, and says where it is wrong.
    let mut bad = file(json!(2));
    bad["audiences"][1]["definition"]["compare"]["field"] = json!("computed.spent");
    bad["audiences"].as_array_mut().unwrap().push(json!({"name": "new_one",
        "definition": {"compare": {"field": "traits.plan", "op": "exists"}}}));
    let (ok, printed) = cli(&app, &["apply", &write("bad.json", &bad), "--replace"]).await;
    assert!(
        !ok && printed.contains("audiences[1] (spenders).definition.compare.field"),
        "{printed}"
    );
    assert_eq!(built(&mut client).await.len(), 2, "nothing created");
    let (ok, printed) = cli(&app, &["apply", &write("typo.json", &json!({"audience": []}))]).await;
    assert!(!ok && printed.contains("unknown field `audience`"), "{printed}");

    let (ok, printed) = cli(&app, &["list"]).await;
    assert!(
        ok && printed.contains("audience spenders") && printed.contains("2 members"),
        "{printed}"
    );
    let (ok, printed) = cli(&app, &["delete", "spenders"]).await;
    assert!(!ok && printed.contains("spenders_pro"), "referred to: {printed}");
    let (ok, printed) = cli(&app, &["delete", "spenders_pro"]).await;
    assert!(ok, "{printed}");
    app.stop().await;
}
