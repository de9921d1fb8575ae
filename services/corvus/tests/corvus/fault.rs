//! Faults: Postgres taken away in the middle of a load. While it is gone ingestion
//! answers UNAVAILABLE (never a false ACCEPTED); afterwards a client that retried what
//! was refused has every event stored exactly once, and the consumer has every event.

use std::collections::HashSet;
use std::time::Duration;

use corvus_proto::ingestion::v1::EventStatusCode;
use corvus_test_support::{Backend, FlakyProxy};
use tonic::Code;

use crate::support::{batch, eventually, message_ids, spawn_with, track};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_nothing() {
    let Some(server) = corvus_test_support::postgres_url() else {
        return;
    };
    // A database of its own, reached through a proxy that can cut it off.
    let database = corvus_test_support::fresh_postgres_database(&server).await;
    let (scheme_auth, db_name) = database.rsplit_once('/').unwrap();
    let target = scheme_auth
        .rsplit('@')
        .next()
        .unwrap()
        .trim_start_matches("postgres://")
        .to_owned();
    let proxy = FlakyProxy::start(target.clone()).await;
    let proxied = database.replace(&format!("{target}/{db_name}"), &format!("{}/{db_name}", proxy.addr()));

    let Some(app) = spawn_with(Backend::Postgres, |c| {
        c.storage.database_url = Some(proxied.clone().into());
        c.storage.max_connections = 4;
    })
    .await
    else {
        return;
    };
    let mut client = app.client(&app.ingest_key).await;
    let (batches, per_batch) = (30, 50);
    let events = |b: usize| -> Vec<_> { (0..per_batch).map(|i| track(&format!("f-{b}-{i}"))).collect() };
    let mut refused = Vec::new();
    for b in 0..batches {
        if b == 10 {
            proxy.cut();
            // Cut in the middle of a load: these batches are in flight when it happens.
            let mut inflight = tokio::task::JoinSet::new();
            for t in 0..4 {
                let mut c = client.clone();
                inflight.spawn(async move {
                    let events: Vec<_> = (0..per_batch).map(|i| track(&format!("x-{t}-{i}"))).collect();
                    tokio::time::timeout(Duration::from_secs(10), c.ingest(batch(events))).await
                });
            }
            while let Some(done) = inflight.join_next().await {
                let answer = done.unwrap().expect("an answer within 10 s");
                if let Err(status) = answer {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                }
            }
        }
        if b == 13 {
            proxy.restore();
        }
        let answer = tokio::time::timeout(Duration::from_secs(10), client.ingest(batch(events(b))))
            .await
            .expect("an answer within 10 s, outage or not");
        match answer {
            Ok(res) => {
                assert!(
                    !(10..13).contains(&b),
                    "batch {b} was acknowledged while the database was away"
                );
                let res = res.into_inner();
                assert_eq!(res.accepted as usize, per_batch, "batch {b}");
            }
            Err(status) => {
                // Refused, and said so in a way a client retries.
                assert_eq!(status.code(), Code::Unavailable, "batch {b}: {status:?}");
                refused.push(b);
            }
        }
    }
    assert!(
        refused.contains(&10) && refused.contains(&12),
        "the outage was seen: {refused:?}"
    );
    // The client retries what was refused; what had in fact been committed is a duplicate.
    for b in refused {
        let res = client
            .ingest(batch(events(b)))
            .await
            .expect("retried after the outage")
            .into_inner();
        assert!(res.statuses.iter().all(|s| s.code() != EventStatusCode::Rejected));
    }

    let stored = message_ids(&app.stored(&app.read_key).await);
    let unique: HashSet<_> = stored.iter().collect();
    assert_eq!(stored.len(), batches * per_batch, "every event stored once");
    assert_eq!(unique.len(), stored.len());
    let recorder = app.recorder.clone();
    // Delivery is at least once: a batch handed over as the database went away comes
    // again, so count distinct events, not deliveries.
    let distinct = || {
        message_ids(&recorder.received.lock().unwrap())
            .into_iter()
            .collect::<HashSet<_>>()
            .len()
    };
    assert!(
        eventually(Duration::from_secs(30), || distinct() >= batches * per_batch).await,
        "the consumer caught up"
    );
    let received = message_ids(&recorder.received.lock().unwrap());
    let unique: HashSet<_> = received.iter().collect();
    assert_eq!(unique.len(), batches * per_batch, "no gaps");
    app.stop().await;
}
