//! `corvus campaigns` against the app: a file of campaigns applied (created as drafts,
//! idempotent, a change a new version), refused whole when a definition does not hold
//! together or the server refuses it, launched, exported and applied back unchanged,
//! paused by tag, listed; an ended campaign is not changed.

use std::collections::BTreeMap;

use crate::orchestration::{OrchestrationClient as Client, orchestration};
use crate::support::spawn;
use corvus_proto::orchestration::v1 as pb;
use corvus_proto::orchestration::v1::CampaignState::{Draft, Ended, Live, Paused};
use corvus_test_support::{Backend, on_both_backends};
use serde_json::json;

on_both_backends!(campaigns_are_applied_from_a_file);

/// `corvus campaigns ARGS` against the app.
async fn cli(app: &crate::support::TestApp, args: &[&str]) -> (bool, String) {
    app.cli("campaigns", args).await
}

/// Each campaign's version and state, by name.
async fn held(client: &mut Client) -> BTreeMap<String, (u32, pb::CampaignState)> {
    client
        .list_campaigns(pb::ListCampaignsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .campaigns
        .into_iter()
        .map(|c| (c.name.clone(), (c.version, c.state())))
        .collect()
}

fn campaign(name: &str, tag: &str, priority: i32) -> serde_json::Value {
    json!({
        "name": name,
        "tags": [tag],
        "actions": [
            {"name": "hello", "subject": "Hi {{traits.first_name|there}}", "body": "Spring is here."},
            {"name": "offer", "kind": "offer", "subject": "10% off, {{traits.first_name|there}}", "value": 2.0}
        ],
        "channels": ["email", "sms"],
        "consent_purposes": ["marketing"],
        "caps": [{"limit": 1, "calendar_days": 1}],
        "quiet_hours": {"start": "21:00", "end": "08:00"},
        "priority": priority,
        "arms": [{"name": "plain", "weight": 0.5, "actions": ["hello"]},
                 {"name": "discount", "weight": 0.5, "actions": ["offer"]}],
        "holdout": 0.1
    })
}

fn file(campaigns: &[serde_json::Value]) -> serde_json::Value {
    json!({ "campaigns": campaigns })
}

async fn campaigns_are_applied_from_a_file(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut client = orchestration(&app, &app.admin_key).await;
    let dir = corvus_test_support::TempDir::new();
    let write = |name: &str, value: &serde_json::Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_string_pretty(value).unwrap()).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let versions = |campaigns: &BTreeMap<String, (u32, pb::CampaignState)>| {
        campaigns.iter().map(|(n, (v, _))| (n.clone(), *v)).collect::<Vec<_>>()
    };
    let ones = vec![("welcome".to_owned(), 1), ("winback".to_owned(), 1)];

    let first = write(
        "first.json",
        &file(&[
            campaign("welcome", "onboarding", 1),
            campaign("winback", "retention", 5),
        ]),
    );
    let (ok, printed) = cli(&app, &["apply", &first, "--dry-run"]).await;
    assert!(
        ok && printed.contains("+ welcome") && printed.contains("nothing changed"),
        "{printed}"
    );
    assert!(held(&mut client).await.is_empty(), "a dry run changes nothing");

    let (ok, printed) = cli(&app, &["apply", &first]).await;
    assert!(ok, "{printed}");
    assert!(printed.contains("+ welcome\n+ winback\n"), "{printed}");
    assert!(
        printed.contains("applied: 2 created, 0 updated, 0 unchanged"),
        "{printed}"
    );
    let now = held(&mut client).await;
    assert_eq!(versions(&now), ones);
    assert!(now.values().all(|(_, s)| *s == Draft), "created as drafts: {now:?}");

    // Again: nothing to do, no new version.
    let (ok, printed) = cli(&app, &["apply", &first]).await;
    assert!(ok && printed.contains("= welcome\n= winback\n"), "{printed}");
    assert!(
        printed.contains("applied: 0 created, 0 updated, 2 unchanged"),
        "{printed}"
    );
    assert_eq!(versions(&held(&mut client).await), ones);

    // A change: a new version of that campaign only.
    let second = write(
        "second.json",
        &file(&[
            campaign("welcome", "onboarding", 1),
            campaign("winback", "retention", 7),
        ]),
    );
    let (ok, printed) = cli(&app, &["apply", &second]).await;
    assert!(ok && printed.contains("= welcome\n~ winback"), "{printed}");
    assert!(
        printed.contains("applied: 0 created, 1 updated, 1 unchanged"),
        "{printed}"
    );
    let twos = vec![("welcome".to_owned(), 1), ("winback".to_owned(), 2)];
    assert_eq!(versions(&held(&mut client).await), twos);
    let winback = client
        .get_campaign(pb::GetCampaignRequest {
            name: "winback".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    assert_eq!(winback.priority, 7);

    // Weights that do not add up: the whole file refused before any call, with the field.
    let mut weights = campaign("third", "spring", 1);
    weights["arms"][1]["weight"] = json!(0.4);
    let bad = write(
        "bad.json",
        &file(&[
            campaign("welcome", "onboarding", 9),
            weights,
            campaign("winback", "retention", 8),
        ]),
    );
    let (ok, printed) = cli(&app, &["apply", &bad]).await;
    assert!(
        !ok && printed.contains("campaigns[1] (third): campaign.arms:"),
        "{printed}"
    );
    assert!(printed.contains("nothing changed"), "{printed}");
    assert_eq!(versions(&held(&mut client).await), twos, "nothing changed");

    // What the server refuses (an audience the workspace lacks) is told with the
    // campaign's name and the field.
    let mut unknown = campaign("ghost", "spring", 1);
    unknown["audience"] = json!("nobody");
    let (ok, printed) = cli(&app, &["apply", &write("unknown.json", &file(&[unknown]))]).await;
    assert!(
        !ok && printed.contains("campaign \"ghost\": campaign.audience: no audience is named \"nobody\""),
        "{printed}"
    );
    assert_eq!(versions(&held(&mut client).await), twos, "nothing created");

    // Launched: the drafts of the file go live.
    let (ok, printed) = cli(&app, &["apply", &second, "--launch"]).await;
    assert!(
        ok && printed.contains("2 unchanged") && printed.contains("live welcome") && printed.contains("live winback"),
        "{printed}"
    );
    let now = held(&mut client).await;
    assert!(now.values().all(|(_, s)| *s == Live), "{now:?}");
    assert_eq!(versions(&now), twos);

    // What `export` writes, applied back: nothing to do.
    let (ok, exported) = cli(&app, &["export"]).await;
    assert!(ok, "{exported}");
    let exported: serde_json::Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(exported["campaigns"].as_array().unwrap().len(), 2, "{exported}");
    let (ok, printed) = cli(&app, &["apply", &write("exported.json", &exported)]).await;
    assert!(ok && printed.contains("= welcome\n= winback\n"), "{printed}");
    assert!(printed.contains("2 unchanged"), "{printed}");
    assert_eq!(versions(&held(&mut client).await), twos);

    // Paused by tag: the tagged one only.
    let (ok, printed) = cli(&app, &["pause", "--tag", "retention"]).await;
    assert!(ok && printed.contains("paused winback"), "{printed}");
    let now = held(&mut client).await;
    assert_eq!((now["welcome"].1, now["winback"].1), (Live, Paused));
    let (ok, printed) = cli(&app, &["list"]).await;
    assert!(ok, "{printed}");
    let lines: Vec<Vec<&str>> = printed.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        lines,
        vec![
            vec!["NAME", "STATE", "VERSION", "PRIORITY", "CHANNELS", "TAGS"],
            vec!["welcome", "live", "1", "1", "email,sms", "onboarding"],
            vec!["winback", "paused", "2", "7", "email,sms", "retention"],
        ],
        "{printed}"
    );

    // An ended campaign: a change to it refused before anything changes, the other
    // campaign of the file included.
    let (ok, printed) = cli(&app, &["state", "welcome", "ended"]).await;
    assert!(ok && printed.contains("welcome is ended"), "{printed}");
    let (ok, printed) = cli(&app, &["state", "welcome", "live"]).await;
    assert!(!ok && printed.contains("FailedPrecondition"), "{printed}");
    let third = write(
        "third.json",
        &file(&[
            campaign("winback", "retention", 3),
            campaign("welcome", "onboarding", 2),
        ]),
    );
    let (ok, printed) = cli(&app, &["apply", &third]).await;
    assert!(
        !ok && printed.contains("~ welcome (ended: cannot be changed)")
            && printed.contains("campaign \"welcome\" is ended"),
        "{printed}"
    );
    let now = held(&mut client).await;
    assert_eq!(versions(&now), twos);
    assert_eq!((now["welcome"].1, now["winback"].1), (Ended, Paused));
    app.stop().await;
}
