//! Delivery on both backends: each decision that sends goes out once through its
//! channel's connector, signed, with the decision id as the idempotency key; failures
//! are retried with backoff and end as dead letters a caller can retry; one hanging
//! provider holds up only its own queue; two replicas delivering at once, one of them
//! stopped part way, still send each decision once; and each send's end comes back as
//! an event carrying the decision id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use corvus_orchestration::delivery::Receipts;
use corvus_orchestration::people::Caller;
use corvus_orchestration::storage::{ConnectorDef, ConnectorKind, SendState};
use corvus_orchestration::webhook;
use corvus_proto::common::v1::Event;
use corvus_test_support::Backend;
use tokio_util::sync::CancellationToken;

use super::{Setup, caller, campaign, consenting, input, launch, ws};

/// What the provider received, by path: (headers, body).
type Received = Arc<Mutex<Vec<(String, HeaderMap, String)>>>;
/// Attempts the provider saw, by path and idempotency key.
type Seen = Arc<Mutex<HashMap<String, u32>>>;

/// A provider on loopback: `/ok` answers 200, `/flaky` 500 then 200 for each
/// idempotency key, `/bad` 400, `/hang` never within a test.
async fn provider() -> (String, Received) {
    let received: Received = Arc::default();
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/{path}",
            axum::routing::post(
                |Path(path): Path<String>,
                 AxumState((received, seen)): AxumState<(Received, Seen)>,
                 headers: HeaderMap,
                 body: String| async move {
                    let key = headers
                        .get(webhook::IDEMPOTENCY_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    received.lock().unwrap().push((path.clone(), headers, body));
                    let tries = {
                        let mut seen = seen.lock().unwrap();
                        let n = seen.entry(format!("{path}/{key}")).or_default();
                        *n += 1;
                        *n
                    };
                    match path.as_str() {
                        "ok" => (StatusCode::OK, "queued-1".to_owned()),
                        "flaky" if tries == 1 => (StatusCode::INTERNAL_SERVER_ERROR, "busy".to_owned()),
                        "flaky" => (StatusCode::OK, "queued-2".to_owned()),
                        "hang" => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            (StatusCode::OK, String::new())
                        }
                        _ => (StatusCode::BAD_REQUEST, "unknown recipient".to_owned()),
                    }
                },
            ),
        )
        .with_state((received.clone(), seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

#[derive(Default)]
struct Recorded(Mutex<Vec<Event>>);

#[async_trait]
impl Receipts for Recorded {
    async fn ingest(&self, _: &Caller, events: Vec<Event>) -> Result<(), String> {
        self.0.lock().unwrap().extend(events);
        Ok(())
    }
}

const SECRET: &str = "a-secret-of-some-length";

fn webhook(channel: &str, url: String, max_attempts: u32, timeout_ms: u64) -> ConnectorDef {
    ConnectorDef {
        channel: channel.to_owned(),
        kind: ConnectorKind::Webhook {
            url,
            secret: SECRET.to_owned(),
        },
        rate_per_second: 1_000.0,
        max_attempts,
        timeout_ms,
    }
}

/// Waits up to `secs` for `check`.
async fn until(secs: u64, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub async fn each_send_goes_once_through_its_connector(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let (url, received) = provider().await;
    let recorded = Arc::new(Recorded::default());
    let (a, b) = (
        setup.replica().await.with_receipts(recorded.clone()),
        setup.replica().await.with_receipts(recorded.clone()),
    );
    // email: a provider that answers; sms: one that answers 500 first; push: one
    // that refuses; app: one that hangs (1 s timeout, 1 attempt).
    for (channel, path, attempts, timeout) in [
        ("email", "ok", 8, 5_000),
        ("sms", "flaky", 8, 5_000),
        ("push", "bad", 8, 5_000),
        ("app", "hang", 1, 1_000),
    ] {
        a.store
            .set_connector(&ws(), &webhook(channel, format!("{url}/{path}"), attempts, timeout))
            .await
            .unwrap();
        launch(
            &a,
            campaign(serde_json::json!({"name": format!("to-{channel}"), "channels": [channel]})),
        )
        .await;
    }
    // Forty decisions on email, one on each other channel.
    let mut email = Vec::new();
    let mut others = HashMap::new();
    for i in 0..43 {
        let person = setup.people.add(super::Person {
            identifiers: vec![("email".to_owned(), format!("p{i}@example.com"))],
            ..consenting()
        });
        let mut ask = input(person, Utc::now());
        ask.campaigns = vec![
            match i {
                40 => "to-sms",
                41 => "to-push",
                42 => "to-app",
                _ => "to-email",
            }
            .to_owned(),
        ];
        let d = a.decide(&caller(), &ask).await.unwrap().0.unwrap();
        match i {
            0..40 => email.push(d),
            _ => {
                others.insert(d.channel.clone(), d);
            }
        }
    }
    // Both replicas deliver; the hanging provider holds up nothing but its own queue.
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let mut workers_a = a.spawn_delivery(stop_a.clone());
    let mut workers_b = b.spawn_delivery(stop_b.clone());
    let started = tokio::time::Instant::now();
    let sent_on = |path: &'static str| {
        let received = received.clone();
        move || received.lock().unwrap().iter().filter(|r| r.0 == path).count()
    };
    let email_count = sent_on("ok");
    assert!(
        until(10, async || email_count() >= 40).await,
        "email sends: {}",
        email_count()
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "email waited for the hanging provider: {:?}",
        started.elapsed()
    );
    // One replica stops part way; the other finishes.
    stop_a.cancel();
    while workers_a.join_next().await.is_some() {}
    let store = b.store.clone();
    assert!(
        until(15, async || {
            let pending = store.sends(&ws(), Some(SendState::Pending), None, 100).await.unwrap();
            pending.is_empty()
        })
        .await,
        "sends still pending"
    );
    // Every send's end comes back as an event (two replicas may both report one: the
    // message id tells them apart).
    let reported = || {
        let events = recorded.0.lock().unwrap();
        events
            .iter()
            .map(|e| e.message_id.clone())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    assert!(until(5, async || reported() >= 43).await, "{} reports", reported());
    stop_b.cancel();
    while workers_b.join_next().await.is_some() {}

    // Each email decision reached the provider once, signed, keyed by its id.
    let got = received.lock().unwrap().clone();
    for d in &email {
        let hits: Vec<_> = got
            .iter()
            .filter(|(path, h, _)| path == "ok" && h[webhook::IDEMPOTENCY_HEADER] == d.id.to_string().as_str())
            .collect();
        assert_eq!(hits.len(), 1, "decision {} sent {} times", d.id, hits.len());
        let (_, headers, body) = hits[0];
        let signature = headers[webhook::SIGNATURE_HEADER].to_str().unwrap();
        let t: i64 = signature
            .split(',')
            .next()
            .unwrap()
            .trim_start_matches("t=")
            .parse()
            .unwrap();
        assert_eq!(signature, webhook::signature(SECRET, t, body.as_bytes()));
        let payload: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(payload["decision_id"], d.id.to_string());
        assert_eq!(payload["to"]["kind"], "email");
        assert_eq!(payload["subject"], "Hi there");
    }
    // The flaky provider's send went on the second attempt; the refused one is dead.
    let sends = b.store.sends(&ws(), None, None, 100).await.unwrap();
    let of = |channel: &str| sends.iter().find(|s| s.decision_id == others[channel].id).unwrap();
    assert_eq!(
        (of("sms").state, of("sms").attempts, of("sms").receipt.as_str()),
        (SendState::Sent, 2, "queued-2")
    );
    assert_eq!((of("push").state, of("push").attempts), (SendState::Dead, 1));
    assert!(of("push").last_error.contains("400"), "{}", of("push").last_error);
    assert_eq!(of("app").state, SendState::Dead);
    assert!(of("app").last_error.contains("timed out"), "{}", of("app").last_error);

    // Each came back once, carrying its decision id.
    let events = recorded.0.lock().unwrap().clone();
    let mut by_id: HashMap<String, Vec<&Event>> = HashMap::new();
    for e in &events {
        by_id.entry(e.message_id.clone()).or_default().push(e);
    }
    assert_eq!(by_id.len(), 43);
    // (Two replicas may both report a send: the message id makes the second a
    // duplicate that ingestion drops.)
    let names: Vec<&str> = by_id
        .iter()
        .filter(|(id, _)| id.contains(&others["push"].id.to_string()))
        .map(|(_, e)| e[0].event.as_str())
        .collect();
    assert_eq!(names, ["Delivery Failed"]);

    // A dead send tried again goes out (once the provider takes it).
    b.store
        .set_connector(&ws(), &webhook("push", format!("{url}/ok"), 3, 5_000))
        .await
        .unwrap();
    let retried = b
        .store
        .retry_send(&ws(), others["push"].id, Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((retried.state, retried.attempts), (SendState::Pending, 0));
    let stop = CancellationToken::new();
    let mut workers = b.spawn_delivery(stop.clone());
    let store = b.store.clone();
    let push = others["push"].id;
    assert!(
        until(5, async || {
            let sends = store.sends(&ws(), Some(SendState::Sent), None, 100).await.unwrap();
            sends.iter().any(|s| s.decision_id == push)
        })
        .await
    );
    stop.cancel();
    while workers.join_next().await.is_some() {}
}
