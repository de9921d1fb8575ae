//! The outbox's guarantees: nothing skipped, nothing handed on twice, in order per
//! writer, one slow consumer never holding up another, refused events dead-lettered
//! and replayable, an unreachable consumer catching up: on both backends, with each
//! consumer reading the log, and with the log relayed to a JetStream stream that each
//! consumer reads through a durable consumer of its own.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use corvus_ingestion::outbox::{self, Consumer, Handoff, JetStream, JetStreamConfig, OutboxConfig};
use corvus_ingestion::storage::{EventLog, PgEventLog, Position};
use corvus_storage::Database;
use corvus_test_support::{Backend, TempDir};
use tokio_util::sync::CancellationToken;

use crate::support::{RecordingSink, event_log, eventually, new_event, workspace};

/// Runs each named test (an `async fn(Backend, Via)`) on both backends, each way.
macro_rules! on_every_handoff {
    ($($name:ident),* $(,)?) => {
        on_every_handoff!(@mod sqlite, Embedded, Log, $($name),*);
        on_every_handoff!(@mod postgres, Postgres, Log, $($name),*);
        on_every_handoff!(@mod jetstream_sqlite, Embedded, JetStream, $($name),*);
        on_every_handoff!(@mod jetstream_postgres, Postgres, JetStream, $($name),*);
    };
    (@mod $module:ident, $backend:ident, $via:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(corvus_test_support::Backend::$backend, super::Via::$via).await
                }
            )*
        }
    };
}

on_every_handoff!(
    concurrent_writers_are_delivered_once_in_order,
    a_slow_consumer_never_stalls_another,
    refused_events_are_dead_lettered_then_replayed,
    an_unreachable_consumer_catches_up_without_gaps,
    a_restarted_consumer_goes_on_after_what_it_took,
);

#[derive(Debug, Clone, Copy)]
enum Via {
    Log,
    JetStream,
}

fn fast_retries() -> OutboxConfig {
    OutboxConfig {
        batch_size: 100,
        max_attempts: 3,
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(50),
        poll_interval: Duration::from_millis(500),
        ..OutboxConfig::default()
    }
}

struct Running {
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    handoff: Handoff,
}

impl Running {
    /// Stops the dispatchers, and leaves the stream for a restart.
    async fn halt(&mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    async fn stop(mut self) {
        self.halt().await;
        if let Handoff::JetStream(stream) = &self.handoff {
            stream.delete().await.expect("delete the test's stream");
        }
    }
}

/// How the log reaches its consumers `via`: a stream of the test's own on JetStream, or
/// `None` (skip) when the NATS server is not configured.
async fn handoff(via: Via) -> Option<Handoff> {
    match via {
        Via::Log => Some(Handoff::Log),
        Via::JetStream => {
            let url = corvus_test_support::nats_url()?;
            let id = uuid::Uuid::new_v4().simple().to_string();
            let config = JetStreamConfig {
                url,
                stream: format!("TEST_{id}"),
                subject_prefix: format!("corvus.test.{id}"),
                ack_wait: Duration::from_secs(5),
                ..JetStreamConfig::default()
            };
            let stream = JetStream::connect(&config, Duration::from_secs(3600))
                .await
                .expect("create the test's stream");
            Some(Handoff::JetStream(Arc::new(stream)))
        }
    }
}

fn start(log: &Arc<dyn EventLog>, handoff: Handoff, sinks: &[(&str, Arc<RecordingSink>)]) -> Running {
    let consumers = sinks
        .iter()
        .map(|(name, sink)| Consumer {
            name: (*name).to_owned(),
            sink: sink.clone(),
            batch_size: None,
        })
        .collect();
    let stop = CancellationToken::new();
    let tasks = outbox::spawn_with_ledger(log.clone(), consumers, fast_retries(), &handoff, None, stop.clone());
    Running { stop, tasks, handoff }
}

/// Asserts each id arrived exactly once and that every writer's ids arrived in the
/// order that writer committed them (`w{writer}-{n}`).
fn assert_once_in_order(received: &[String], expected: usize) {
    let unique: HashSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "an event was handed on twice");
    assert_eq!(received.len(), expected, "an event was skipped");
    let mut last_per_writer = std::collections::HashMap::new();
    for id in received {
        let (writer, n) = id.rsplit_once('-').unwrap();
        let n: u32 = n.parse().unwrap();
        if let Some(prev) = last_per_writer.insert(writer.to_owned(), n) {
            assert!(prev < n, "{writer}: {n} arrived after {prev}");
        }
    }
}

async fn concurrent_writers_are_delivered_once_in_order(backend: Backend, via: Via) {
    let dir = TempDir::new();
    let (Some(log), Some(handoff)) = (event_log(backend, &dir).await, handoff(via).await) else {
        return;
    };
    let (identity, scoring) = (Arc::new(RecordingSink::default()), Arc::new(RecordingSink::default()));
    let running = start(
        &log,
        handoff,
        &[("identity", identity.clone()), ("scoring", scoring.clone())],
    );

    let (writers, batches, per_batch) = (8, 25, 20);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let log = log.clone();
        tasks.spawn(async move {
            for b in 0..batches {
                let events: Vec<_> = (0..per_batch)
                    .map(|i| new_event(&format!("w{w}-{}", b * per_batch + i)))
                    .collect();
                log.append(&workspace("acme"), &events).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let total = writers * batches * per_batch;
    for sink in [&identity, &scoring] {
        assert!(
            eventually(Duration::from_secs(30), || sink.received().len() >= total).await,
            "delivered {} of {total}",
            sink.received().len()
        );
    }
    // Give a duplicate delivery the chance to show up before checking.
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.stop().await;
    assert_once_in_order(&identity.received(), total);
    assert_once_in_order(&scoring.received(), total);
}

async fn a_slow_consumer_never_stalls_another(backend: Backend, via: Via) {
    let dir = TempDir::new();
    let (Some(log), Some(handoff)) = (event_log(backend, &dir).await, handoff(via).await) else {
        return;
    };
    let slow = Arc::new(RecordingSink {
        delay: Some(Duration::from_secs(60)),
        ..RecordingSink::default()
    });
    let fast = Arc::new(RecordingSink::default());
    let running = start(&log, handoff, &[("slow", slow.clone()), ("fast", fast.clone())]);
    for b in 0..10 {
        let events: Vec<_> = (0..10).map(|i| new_event(&format!("w0-{}", b * 10 + i))).collect();
        log.append(&workspace("acme"), &events).await.unwrap();
    }
    assert!(eventually(Duration::from_secs(10), || fast.received().len() == 100).await);
    assert!(
        slow.received().is_empty(),
        "the slow consumer is still on its first delivery"
    );
    running.stop().await;
    assert_once_in_order(&fast.received(), 100);
}

async fn refused_events_are_dead_lettered_then_replayed(backend: Backend, via: Via) {
    let dir = TempDir::new();
    let (Some(log), Some(handoff)) = (event_log(backend, &dir).await, handoff(via).await) else {
        return;
    };
    let ws = workspace("acme");
    let sink = Arc::new(RecordingSink::default());
    sink.refuse.lock().unwrap().insert("w0-1".into());
    let running = start(&log, handoff, &[("identity", sink.clone())]);
    let events: Vec<_> = (0..4).map(|i| new_event(&format!("w0-{i}"))).collect();
    log.append(&ws, &events).await.unwrap();

    let log2 = log.clone();
    let buried = async {
        for _ in 0..500 {
            let dead = log2.list_dead_letters(&ws, None, 0, 10).await.unwrap();
            if !dead.is_empty() {
                return dead;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the refused event was never dead-lettered");
    }
    .await;
    assert_eq!(buried.len(), 1);
    assert_eq!(buried[0].event.event_id, events[1].event_id);
    assert_eq!(buried[0].reason, "profile store rejected the event");
    assert_eq!(buried[0].attempts, 3);
    assert!(eventually(Duration::from_secs(5), || sink.received().len() == 3).await);
    assert_eq!(sink.received(), ["w0-0", "w0-2", "w0-3"], "the others went through");

    // Once the consumer is mended, a replay hands it over and clears the dead letter.
    sink.refuse.lock().unwrap().clear();
    assert_eq!(log.request_replay(&ws, &[], None).await.unwrap(), 1);
    assert!(eventually(Duration::from_secs(5), || sink.received().len() == 4).await);
    assert_eq!(sink.received()[3], "w0-1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !log.list_dead_letters(&ws, None, 0, 10).await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replayed dead letter stayed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.stop().await;
}

async fn an_unreachable_consumer_catches_up_without_gaps(backend: Backend, via: Via) {
    let dir = TempDir::new();
    let (Some(log), Some(handoff)) = (event_log(backend, &dir).await, handoff(via).await) else {
        return;
    };
    let sink = Arc::new(RecordingSink::default());
    *sink.down.lock().unwrap() = true;
    let mut running = start(&log, handoff.clone(), &[("identity", sink.clone())]);
    for b in 0..20 {
        let events: Vec<_> = (0..25).map(|i| new_event(&format!("w0-{}", b * 25 + i))).collect();
        log.append(&workspace("acme"), &events).await.unwrap();
    }
    // It is retried while down, and nothing is dead-lettered for being unreachable.
    assert!(eventually(Duration::from_secs(5), || *sink.calls.lock().unwrap() >= 3).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (lag, error) = identity_status(&log, &running).await;
        if lag == 500 {
            assert_eq!(error.as_deref(), Some("connection refused"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lag {lag}, not 500");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The dispatcher goes while the error is on record (a process killed mid-retry); its
    // successor's first delivery clears it, though it never failed itself.
    running.halt().await;
    *sink.down.lock().unwrap() = false;
    let running = start(&log, handoff, &[("identity", sink.clone())]);
    assert!(eventually(Duration::from_secs(10), || sink.received().len() >= 500).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(identity_status(&log, &running).await, (0, None));
    running.stop().await;
    assert_once_in_order(&sink.received(), 500);
    assert!(
        log.list_dead_letters(&workspace("acme"), None, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The lag and last error of the consumer `identity`.
async fn identity_status(log: &Arc<dyn EventLog>, running: &Running) -> (u64, Option<String>) {
    let all = running.handoff.consumers(&**log, &workspace("acme")).await.unwrap();
    let status = all
        .into_iter()
        .find(|c| c.name == "identity")
        .expect("the consumer is listed");
    (status.lag, status.last_error)
}

/// Ingestion's migrated schema on the test server, or `None` (skip) without one.
async fn postgres(dir: &TempDir) -> Option<sqlx::PgPool> {
    let config = corvus_test_support::storage(Backend::Postgres, dir).await?;
    match Database::connect(&config, "ingestion", &corvus_ingestion::storage::migrators()).await {
        Ok(Database::Postgres(pool)) => Some(pool),
        Ok(_) => unreachable!("a database url was given"),
        Err(e) => panic!("the test database: {e}"),
    }
}

/// The classic trap: a transaction takes a seq, then commits after later seqs have
/// committed and been handed on. Reading by seq alone would skip it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_late_commit_is_never_skipped() {
    let dir = TempDir::new();
    let Some(pool) = postgres(&dir).await else {
        return;
    };
    let log: Arc<dyn EventLog> = Arc::new(PgEventLog::new(pool.clone(), corvus_ingestion::storage::CHANNEL));
    let sink = Arc::new(RecordingSink::default());
    let running = start(&log, Handoff::Log, &[("identity", sink.clone())]);

    // The slow transaction takes its seq first and stays open.
    let mut slow = pool.begin().await.unwrap();
    let late = new_event("w1-0");
    sqlx::query(
        "INSERT INTO events (workspace_id, message_id, event_id, event_type, received_at, payload) \
         VALUES ('acme', $1, $2, 1, now(), $3)",
    )
    .bind(&late.message_id)
    .bind(late.event_id.as_uuid())
    .bind(&late.payload)
    .execute(&mut *slow)
    .await
    .unwrap();
    let slow_seq: i64 = sqlx::query_scalar("SELECT max(seq) FROM events")
        .fetch_one(&mut *slow)
        .await
        .unwrap();

    // Later seqs commit and would be handed on ahead of it.
    let early: Vec<_> = (0..5).map(|i| new_event(&format!("w0-{i}"))).collect();
    log.append(&workspace("acme"), &early).await.unwrap();
    let committed = log.list(&workspace("acme"), None, 10).await.unwrap();
    assert!(
        committed.iter().all(|e| e.position.seq > slow_seq),
        "the open transaction holds the lower seq"
    );
    // While the slow transaction is open, nothing after it is safe to hand on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        sink.received().is_empty(),
        "events were handed on past an open transaction"
    );

    slow.commit().await.unwrap();
    assert!(eventually(Duration::from_secs(10), || sink.received().len() == 6).await);
    running.stop().await;
    let received = sink.received();
    assert_eq!(
        received[0], "w1-0",
        "the late commit comes first: its transaction began first"
    );
    assert_once_in_order(&received, 6);
    let cursor = log.ensure_consumer("identity").await.unwrap();
    assert!(cursor > Position::default());
}

/// A replica's dispatchers are woken by another's commits: the writer sends a NOTIFY
/// after each commit (no trigger in the writing transaction), and a replica hears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_commit_wakes_the_other_replicas() {
    let dir = TempDir::new();
    let Some(pool) = postgres(&dir).await else {
        return;
    };
    let triggers: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'events'::regclass")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(triggers, 0, "no trigger notifies from the writing transaction");
    let channel = corvus_ingestion::storage::CHANNEL;
    let (writer, replica) = (
        PgEventLog::new(pool.clone(), channel),
        PgEventLog::new(pool.clone(), channel),
    );
    // The replica's listener is up once a NOTIFY sent by hand reaches it.
    let mut woken = replica.wakeups();
    let mut heard = false;
    for _ in 0..100 {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(channel)
            .execute(&pool)
            .await
            .unwrap();
        if tokio::time::timeout(Duration::from_millis(100), woken.changed())
            .await
            .is_ok()
        {
            heard = true;
            break;
        }
    }
    assert!(heard, "the replica's listener never heard a NOTIFY");
    tokio::time::sleep(Duration::from_millis(200)).await;
    woken.borrow_and_update();
    writer.append(&workspace("acme"), &[new_event("w0-0")]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), woken.changed())
        .await
        .expect("the other replica is woken well within its poll")
        .unwrap();
}

async fn a_restarted_consumer_goes_on_after_what_it_took(backend: Backend, via: Via) {
    let dir = TempDir::new();
    let (Some(log), Some(handoff)) = (event_log(backend, &dir).await, handoff(via).await) else {
        return;
    };
    let first = Arc::new(RecordingSink::default());
    let mut running = start(&log, handoff.clone(), &[("scoring", first.clone())]);
    let events: Vec<_> = (0..150).map(|i| new_event(&format!("w0-{i}"))).collect();
    log.append(&workspace("acme"), &events[..100]).await.unwrap();
    assert!(eventually(Duration::from_secs(10), || first.received().len() == 100).await);
    running.halt().await;

    // A new process: what the consumer took is not handed to it again, the rest is.
    let second = Arc::new(RecordingSink::default());
    let running = start(&log, handoff, &[("scoring", second.clone())]);
    log.append(&workspace("acme"), &events[100..]).await.unwrap();
    assert!(eventually(Duration::from_secs(10), || second.received().len() >= 50).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.stop().await;
    assert_once_in_order(&first.received(), 100);
    let expected: Vec<String> = (100..150).map(|i| format!("w0-{i}")).collect();
    assert_eq!(second.received(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_erased_entry_is_erased_from_the_stream() {
    an_erased_entry_is_erased_from_the_stream(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_erased_entry_is_erased_from_the_stream() {
    an_erased_entry_is_erased_from_the_stream(Backend::Postgres).await;
}

/// The person's entries are erased from the stream as from the log, the others kept.
async fn an_erased_entry_is_erased_from_the_stream(backend: Backend) {
    let dir = TempDir::new();
    let (Some(log), Some(handoff)) = (event_log(backend, &dir).await, handoff(Via::JetStream).await) else {
        return;
    };
    let Handoff::JetStream(js) = &handoff else {
        unreachable!("a stream was asked for")
    };
    let sink = Arc::new(RecordingSink::default());
    let running = start(&log, handoff.clone(), &[("scoring", sink.clone())]);
    let ws = workspace("acme");
    let events: Vec<_> = (0..3).map(|i| new_event(&format!("w0-{i}"))).collect();
    log.append(&ws, &events).await.unwrap();
    assert!(eventually(Duration::from_secs(10), || sink.received().len() == 3).await);
    assert_eq!(log.erase(&ws, &["w0-1".to_owned()]).await.unwrap(), 1);
    log.append(&ws, &[new_event("w0-3")]).await.unwrap();
    assert!(eventually(Duration::from_secs(10), || sink.received().len() == 4).await);

    // Read the stream as anyone with access to the NATS server could.
    let client = async_nats::connect(corvus_test_support::nats_url().unwrap())
        .await
        .unwrap();
    let context = async_nats::jetstream::new(client);
    let mut stream = context.get_stream(&js.config().stream).await.unwrap();
    // The relay erases the queued position on its next round, which may follow the
    // delivery of the entry after it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ids = loop {
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut ids = Vec::new();
        for seq in 1..=last {
            if let Ok(message) = stream.get_raw_message(seq).await {
                let id = message.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned());
                ids.push(id.expect("every message has its id"));
            }
        }
        if ids.len() <= 3 || tokio::time::Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ids.len(), 3, "the erased entry's message is gone: {ids:?}");
    assert_eq!(
        ids[..2],
        [events[0].event_id.to_string(), events[2].event_id.to_string()]
    );
    let end = Position {
        tx: i64::MAX,
        seq: i64::MAX,
    };
    // The relay deletes the message, then records the erasure done: the record may
    // follow the deletion by a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !log.stream_erasures(end, 10).await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "nothing left to erase");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
}
