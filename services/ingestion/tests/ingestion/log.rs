//! The event-log conformance suite: every test runs against SQLite and Postgres.

use std::time::Duration;

use corvus_ingestion::storage::{Appended, EventLog, Position, ReadBatch};
use corvus_test_support::{Backend, TempDir};

use crate::support::{event_log, new_event, workspace};
use corvus_test_support::on_both_backends;

on_both_backends!(
    appends_once_per_message_id,
    workspaces_never_see_each_other,
    cursors_move_only_from_where_they_are,
    dead_letters_are_listed_and_replayed_per_workspace,
    one_dispatcher_holds_a_lease,
    pruning_keeps_what_a_consumer_or_a_dead_letter_needs,
);

async fn appends_once_per_message_id(backend: Backend) {
    let dir = TempDir::new();
    let Some(log) = event_log(backend, &dir).await else {
        return;
    };
    let ws = workspace("acme");
    let first = [new_event("m-1"), new_event("m-2"), new_event("m-3")];
    let appended = log.append(&ws, &first).await.unwrap();
    assert_eq!(appended, vec![Appended::Inserted; 3]);

    let again = [new_event("m-2"), new_event("m-4")];
    let appended = log.append(&ws, &again).await.unwrap();
    assert_eq!(
        appended,
        vec![Appended::Duplicate(first[1].event_id), Appended::Inserted]
    );

    let listed = log.list(&ws, None, 10).await.unwrap();
    let ids: Vec<_> = listed.iter().map(|e| e.event_id).collect();
    assert_eq!(
        ids,
        vec![
            first[0].event_id,
            first[1].event_id,
            first[2].event_id,
            again[1].event_id
        ]
    );
    assert_eq!(listed[0].payload, first[0].payload);
    assert!(listed.windows(2).all(|w| w[0].position < w[1].position));

    let page = log.list(&ws, Some(listed[1].position), 1).await.unwrap();
    assert_eq!(page[0].event_id, first[2].event_id);
}

async fn workspaces_never_see_each_other(backend: Backend) {
    let dir = TempDir::new();
    let Some(log) = event_log(backend, &dir).await else {
        return;
    };
    let (a, b) = (workspace("acme"), workspace("globex"));
    // The same message id in two workspaces is two events.
    assert_eq!(
        log.append(&a, &[new_event("m-1")]).await.unwrap(),
        vec![Appended::Inserted]
    );
    assert_eq!(
        log.append(&b, &[new_event("m-1")]).await.unwrap(),
        vec![Appended::Inserted]
    );
    log.append(&a, &[new_event("m-2")]).await.unwrap();
    assert_eq!(log.list(&a, None, 10).await.unwrap().len(), 2);
    let only_b = log.list(&b, None, 10).await.unwrap();
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].workspace, b);
}

async fn cursors_move_only_from_where_they_are(backend: Backend) {
    let dir = TempDir::new();
    let Some(log) = event_log(backend, &dir).await else {
        return;
    };
    let ws = workspace("acme");
    log.append(&ws, &[new_event("m-1"), new_event("m-2")]).await.unwrap();
    let start = log.ensure_consumer("identity").await.unwrap();
    assert_eq!(start, Position::default());

    let batch = settled(log.as_ref(), start, 10, u64::MAX).await;
    assert_eq!(batch.events.len(), 2);
    let end = batch.events[1].position;
    // A byte budget stops a batch after the event that reaches it, never before the first.
    let first = batch.events[0].payload.len() as u64;
    assert_eq!(settled(log.as_ref(), start, 10, 1).await.events.len(), 1);
    assert_eq!(settled(log.as_ref(), start, 10, first).await.events.len(), 1);
    assert_eq!(settled(log.as_ref(), start, 10, first + 1).await.events.len(), 2);
    assert!(
        !log.advance("identity", end, end).await.unwrap(),
        "moved from a position it was not at"
    );
    assert!(log.advance("identity", start, end).await.unwrap());
    assert_eq!(log.ensure_consumer("identity").await.unwrap(), end);
    assert!(log.read_after(end, 10, u64::MAX).await.unwrap().events.is_empty());

    let status = log.consumers(&ws).await.unwrap();
    assert_eq!((status[0].name.as_str(), status[0].lag), ("identity", 0));
    log.append(&ws, &[new_event("m-3")]).await.unwrap();
    assert_eq!(log.consumers(&ws).await.unwrap()[0].lag, 1);
    assert_eq!(log.consumers(&workspace("globex")).await.unwrap()[0].lag, 0);
}

/// Reads after `after` once no transaction begun earlier on the server (another test's)
/// holds the log back.
async fn settled(log: &dyn EventLog, after: Position, limit: u32, max_bytes: u64) -> ReadBatch {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let batch = log.read_after(after, limit, max_bytes).await.unwrap();
        if !batch.held_back || tokio::time::Instant::now() > deadline {
            return batch;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn dead_letters_are_listed_and_replayed_per_workspace(backend: Backend) {
    let dir = TempDir::new();
    let Some(log) = event_log(backend, &dir).await else {
        return;
    };
    let (ws, other) = (workspace("acme"), workspace("globex"));
    log.append(&ws, &[new_event("m-1")]).await.unwrap();
    let event = settled(log.as_ref(), Position::default(), 1, u64::MAX)
        .await
        .events
        .remove(0);
    log.dead_letter("identity", &event, "bad identifier", 5).await.unwrap();

    let dead = log.list_dead_letters(&ws, None, 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].reason.as_str(), dead[0].attempts), ("bad identifier", 5));
    assert_eq!(dead[0].event.event_id, event.event_id);
    assert!(
        log.list_dead_letters(&ws, Some("scoring"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(log.list_dead_letters(&other, None, 0, 10).await.unwrap().is_empty());

    // Another workspace cannot replay it, by id or wholesale.
    assert_eq!(log.request_replay(&other, &[dead[0].id], None).await.unwrap(), 0);
    assert_eq!(log.request_replay(&other, &[], None).await.unwrap(), 0);
    assert!(log.replays("identity", 10).await.unwrap().is_empty());

    assert_eq!(
        log.request_replay(&ws, &[dead[0].id], Some("identity")).await.unwrap(),
        1
    );
    let replays = log.replays("identity", 10).await.unwrap();
    assert_eq!(replays.len(), 1);
    log.replay_done(replays[0].id, Some("still failing")).await.unwrap();
    let dead = log.list_dead_letters(&ws, None, 0, 10).await.unwrap();
    assert_eq!((dead[0].reason.as_str(), dead[0].attempts), ("still failing", 6));
    assert!(log.replays("identity", 10).await.unwrap().is_empty());

    log.request_replay(&ws, &[], None).await.unwrap();
    log.replay_done(dead[0].id, None).await.unwrap();
    assert!(log.list_dead_letters(&ws, None, 0, 10).await.unwrap().is_empty());
}

async fn one_dispatcher_holds_a_lease(backend: Backend) {
    let dir = TempDir::new();
    let Some(log) = event_log(backend, &dir).await else {
        return;
    };
    let lease = log
        .lease("identity")
        .await
        .unwrap()
        .expect("the first lease is granted");
    assert!(log.lease("identity").await.unwrap().is_none());
    assert!(log.lease("scoring").await.unwrap().is_some(), "leases are per consumer");
    drop(lease);
    // Postgres releases the lock when it notices the closed connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if log.lease("identity").await.unwrap().is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the lease was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A hand-off log (identity's) drops what every consumer has passed, once old enough;
/// never what a cursor has not reached or a dead letter names.
async fn pruning_keeps_what_a_consumer_or_a_dead_letter_needs(backend: Backend) {
    let dir = TempDir::new();
    let Some(log) = event_log(backend, &dir).await else {
        return;
    };
    let ws = workspace("acme");
    let two_hours_ago = chrono::Utc::now() - chrono::Duration::hours(2);
    let old = |m: &str| corvus_ingestion::storage::NewEvent {
        received_at: two_hours_ago,
        ..new_event(m)
    };
    log.append(&ws, &[old("m-1"), old("m-2"), old("m-3"), old("m-4")])
        .await
        .unwrap();
    let events = log.list(&ws, None, 10).await.unwrap();
    for (consumer, at) in [("a", 1), ("b", 2)] {
        let start = log.ensure_consumer(consumer).await.unwrap();
        assert!(log.advance(consumer, start, events[at].position).await.unwrap());
    }
    log.dead_letter("b", &events[0], "refused", 1).await.unwrap();

    // Nothing is old enough yet.
    let three_hours_ago = chrono::Utc::now() - chrono::Duration::hours(3);
    assert_eq!(log.prune(three_hours_ago).await.unwrap(), 0);
    // m-2 only: m-1 has a dead letter, m-3 and m-4 are ahead of consumer a.
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(log.prune(hour_ago).await.unwrap(), 1);
    let left: Vec<_> = log
        .list(&ws, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(left, [events[0].event_id, events[2].event_id, events[3].event_id]);
    assert_eq!(log.list_dead_letters(&ws, None, 0, 10).await.unwrap().len(), 1);
}
