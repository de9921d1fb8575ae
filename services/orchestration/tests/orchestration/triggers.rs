//! Triggered campaigns on both backends.

use super::*;

/// An event trigger with a property and a wait-and-check ("Product Added" for a book,
/// not followed by "Order Completed" within the wait), one at once ("Signed Up"), and
/// one on a score crossing its threshold upwards; decided by the trigger worker.
pub async fn triggers_decide_on_events_waits_and_scores(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let o = setup.replica().await;
    launch(
        &o,
        campaign(serde_json::json!({
            "name": "cart",
            "trigger": {"event": {"event": "Product Added", "properties": {"category": "Books"},
                                   "wait_seconds": 1, "unless": "Order Completed"}},
        })),
    )
    .await;
    launch(
        &o,
        campaign(serde_json::json!({"name": "welcome", "trigger": {"event": {"event": "Signed Up"}}})),
    )
    .await;
    launch(
        &o,
        campaign(serde_json::json!({"name": "save", "trigger": {"score": {"score": "churn_risk", "above": 0.7}}})),
    )
    .await;
    let [buys, abandons, toys, joins, churns] = std::array::from_fn(|_| setup.people.add(consenting()));
    let now = Utc::now();
    let book = serde_json::json!({"category": "Books"});
    o.deliver(&[
        track(buys, "Product Added", book.clone(), now),
        track(abandons, "Product Added", book, now),
        track(toys, "Product Added", serde_json::json!({"category": "Toys"}), now),
        track(joins, "Signed Up", serde_json::json!({}), now),
        track(
            buys,
            "Order Completed",
            serde_json::json!({}),
            now + chrono::Duration::milliseconds(300),
        ),
    ])
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let mut workers = o.spawn_triggers(stop.clone());
    let decided = async |campaign: Option<&str>| {
        let log = o.store.decisions(&ws(), campaign, None, 100).await.unwrap();
        log.into_iter().map(|d| (d.campaign, d.profile)).collect::<Vec<_>>()
    };
    // At once: the sign-up; after the wait: the abandoned cart only.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while decided(None).await.len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let log = decided(None).await;
    assert!(log.contains(&("welcome".to_owned(), joins)), "{log:?}");
    assert!(log.contains(&("cart".to_owned(), abandons)), "{log:?}");
    assert_eq!(log.len(), 2, "{log:?}");
    // The score: first seen at 0.5, then 0.9 after another event: it crossed 0.7.
    let set_risk = |risk: f64| {
        let mut people = setup.people.people.lock().unwrap();
        people
            .get_mut(&churns)
            .unwrap()
            .scores
            .insert("churn_risk".to_owned(), risk);
    };
    set_risk(0.5);
    o.deliver(&[track(churns, "Page Viewed", serde_json::json!({}), Utc::now())])
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2_600)).await;
    assert!(
        decided(Some("save")).await.is_empty(),
        "the first look only notes the score"
    );
    set_risk(0.9);
    o.deliver(&[track(churns, "Page Viewed", serde_json::json!({}), Utc::now())])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(6);
    while decided(Some("save")).await.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(decided(Some("save")).await, [("save".to_owned(), churns)]);
    stop.cancel();
    while workers.join_next().await.is_some() {}
}
