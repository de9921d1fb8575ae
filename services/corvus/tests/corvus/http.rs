//! The Segment-compatible HTTP API.

use std::io::Write;

use corvus_test_support::{Backend, on_both_backends};
use serde_json::{Value, json};

use crate::support::{TestApp, message_ids, spawn, spawn_with};

on_both_backends!(
    a_batch_gets_a_status_per_event,
    bad_requests_get_json_errors_and_store_nothing,
    gzip_bodies_are_read_and_limits_apply_after_decompression,
    single_event_endpoints_set_the_type,
    clock_skew_is_corrected_from_sent_at,
    an_exhausted_quota_is_429_with_retry_after,
);

async fn post(app: &TestApp, path: &str, key: Option<&str>, body: Vec<u8>, gzip: bool) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", app.http))
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.basic_auth(key, Some(""));
    }
    let body = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&body).unwrap();
        req = req.header("content-encoding", "gzip");
        enc.finish().unwrap()
    } else {
        body
    };
    let res = req.body(body).send().await.expect("send");
    let status = res.status().as_u16();
    let json = res.json::<Value>().await.expect("every answer is JSON");
    (status, json)
}

fn msg(id: &str) -> Value {
    json!({"type": "track", "messageId": id, "anonymousId": "anon-1", "event": "Product Viewed",
           "properties": {"sku": "A-1", "price": 9.5}, "context": {"channel": "web", "locale": "en-GB"}})
}

async fn a_batch_gets_a_status_per_event(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let body = json!({"batch": [msg("h-1"), {"type": "track", "messageId": "h-2", "userId": "undefined", "event": "x"},
                                msg("h-1"), {"type": "fly", "messageId": "h-4", "userId": "u-1"}, msg("h-5")],
                      "sentAt": chrono::Utc::now().to_rfc3339()});
    let (status, res) = post(
        &app,
        "/v1/batch",
        Some(&app.ingest_key),
        body.to_string().into_bytes(),
        false,
    )
    .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["success"], true);
    assert_eq!(
        (res["accepted"].as_u64(), res["duplicates"].as_u64()),
        (Some(2), Some(1))
    );
    let rejected = res["rejected"].as_array().unwrap();
    assert_eq!(
        rejected[0],
        json!({"index": 1, "messageId": "h-2", "field": "batch[1].userId", "reason": "blocked identifier value"})
    );
    assert_eq!(rejected[1]["field"], "batch[3].type");
    assert_eq!(message_ids(&app.stored(&app.read_key).await), ["h-1", "h-5"]);
    app.stop().await;
}

async fn bad_requests_get_json_errors_and_store_nothing(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let good = json!({"batch": [msg("b-1")]}).to_string().into_bytes();
    let cases: Vec<(Option<&str>, Vec<u8>, u16, &str)> = vec![
        (None, good.clone(), 401, "unauthorized"),
        (Some("cvs_not_a_key"), good.clone(), 401, "unauthorized"),
        (Some(&app.read_key), good.clone(), 403, "forbidden"),
        (Some(&app.ingest_key), b"{\"batch\": [".to_vec(), 400, "invalid_json"),
        (Some(&app.ingest_key), b"[1, 2]".to_vec(), 400, "invalid_json"),
        (Some(&app.ingest_key), b"{\"batch\": []}".to_vec(), 400, "invalid_batch"),
        (
            Some(&app.ingest_key),
            json!({"batch": [{"type": "track", "messageId": "b-2", "event": "no identity"}]})
                .to_string()
                .into_bytes(),
            400,
            "invalid_events",
        ),
    ];
    for (key, body, want_status, want_code) in cases {
        let (status, res) = post(&app, "/v1/batch", key, body, false).await;
        assert_eq!(
            (status, res["code"].as_str().unwrap()),
            (want_status, want_code),
            "{res}"
        );
        assert!(res["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert!(app.stored(&app.read_key).await.is_empty());
    app.stop().await;
}

async fn gzip_bodies_are_read_and_limits_apply_after_decompression(backend: Backend) {
    let Some(app) = spawn_with(backend, |c| {
        c.ingestion.max_batch_bytes = 100_000;
        c.ingestion.max_event_bytes = 4096;
    })
    .await
    else {
        return;
    };
    let batch: Vec<Value> = (0..50).map(|i| msg(&format!("g-{i}"))).collect();
    let body = json!({"batch": batch}).to_string().into_bytes();
    let (status, res) = post(&app, "/v1/batch", Some(&app.ingest_key), body, true).await;
    assert_eq!((status, res["accepted"].as_u64()), (200, Some(50)), "{res}");

    // Compresses to a few hundred bytes, inflates past the limit.
    let padding = "a".repeat(200_000);
    let bomb = json!({"batch": [{"type": "track", "messageId": "g-big", "anonymousId": "a", "event": padding}]});
    let (status, res) = post(
        &app,
        "/v1/batch",
        Some(&app.ingest_key),
        bomb.to_string().into_bytes(),
        true,
    )
    .await;
    assert_eq!((status, res["code"].as_str()), (413, Some("payload_too_large")));

    let mut fat = msg("g-fat");
    fat["properties"]["blob"] = json!("b".repeat(5000));
    let body = json!({"batch": [fat, msg("g-ok")]}).to_string().into_bytes();
    let (status, res) = post(&app, "/v1/batch", Some(&app.ingest_key), body, false).await;
    assert_eq!(status, 200);
    assert_eq!(res["rejected"][0]["field"], "batch[0]");
    assert!(res["rejected"][0]["reason"].as_str().unwrap().contains("limit is 4096"));

    let (status, res) = post(&app, "/v1/batch", Some(&app.ingest_key), b"not gzip".to_vec(), true).await;
    assert_eq!(status, 400, "{res}");
    assert_eq!(app.stored(&app.read_key).await.len(), 51);
    app.stop().await;
}

async fn single_event_endpoints_set_the_type(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let calls = [
        (
            "/v1/track",
            json!({"messageId": "s-1", "anonymousId": "a-1", "event": "Signed Up"}),
        ),
        (
            "/v1/identify",
            json!({"messageId": "s-2", "userId": "u-1", "traits": {"email": "ada@example.com"}}),
        ),
        (
            "/v1/page",
            json!({"messageId": "s-3", "anonymousId": "a-1", "name": "Home"}),
        ),
        (
            "/v1/screen",
            json!({"messageId": "s-4", "userId": "u-1", "name": "Basket"}),
        ),
        (
            "/v1/group",
            json!({"messageId": "s-5", "userId": "u-1", "groupId": "g-1"}),
        ),
        (
            "/v1/alias",
            json!({"messageId": "s-6", "userId": "u-1", "previousId": "a-1"}),
        ),
    ];
    for (path, body) in calls {
        let (status, res) = post(&app, path, Some(&app.ingest_key), body.to_string().into_bytes(), false).await;
        assert_eq!(status, 200, "{path}: {res}");
    }
    let (status, res) = post(
        &app,
        "/v1/group",
        Some(&app.ingest_key),
        json!({"messageId": "s-7", "userId": "u-1"}).to_string().into_bytes(),
        false,
    )
    .await;
    assert_eq!((status, res["code"].as_str()), (400, Some("invalid_events")));
    assert!(res["message"].as_str().unwrap().contains("groupId"), "{res}");

    let stored = app.stored(&app.read_key).await;
    let types: Vec<i32> = stored.iter().map(|e| e.event.as_ref().unwrap().r#type).collect();
    assert_eq!(types, [1, 2, 3, 4, 5, 6]);
    let identify = stored[1].event.as_ref().unwrap();
    assert_eq!(identify.identifiers[0].kind, "email");
    app.stop().await;
}

async fn clock_skew_is_corrected_from_sent_at(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    // The device clock runs two hours fast.
    let device_now = chrono::Utc::now() + chrono::Duration::hours(2);
    let happened = device_now - chrono::Duration::seconds(30);
    let body = json!({"batch": [{"type": "track", "messageId": "k-1", "anonymousId": "a-1", "event": "Tapped",
                                  "timestamp": happened.to_rfc3339()}],
                      "sentAt": device_now.to_rfc3339()});
    let (status, _) = post(
        &app,
        "/v1/batch",
        Some(&app.ingest_key),
        body.to_string().into_bytes(),
        false,
    )
    .await;
    assert_eq!(status, 200);
    let stored = app.stored(&app.read_key).await;
    let event = stored[0].event.as_ref().unwrap();
    let (ts, received) = (event.timestamp.unwrap(), event.received_at.unwrap());
    assert_eq!(
        received.seconds - ts.seconds,
        30,
        "the event happened 30 s before it was received"
    );
    app.stop().await;
}

async fn an_exhausted_quota_is_429_with_retry_after(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let key = app.key_with_quota("tiny", 10).await;
    // Twenty events at once can never fit a quota of ten a second.
    let batch: Vec<Value> = (0..20).map(|i| msg(&format!("q-{i}"))).collect();
    let res = reqwest::Client::new()
        .post(format!("{}/v1/batch", app.http))
        .basic_auth(&key, Some(""))
        .json(&json!({"batch": batch}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 429);
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 1, "the next window starts within a second");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "quota_exceeded");
    assert!(app.stored(&key).await.is_empty());
    app.stop().await;
}
