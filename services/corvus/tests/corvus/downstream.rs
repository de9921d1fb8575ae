//! Identity's log through the public API: every downstream consumer has its own cursor,
//! so one that is down or refuses an entry holds up neither identity nor another; and
//! a consumer that keeps state per profile stays equal to identity through merges,
//! unmerges and erasures under concurrent load, with the log read from identity's store
//! or relayed through a JetStream stream.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use corvus_ingestion::outbox::{Consumer, ConsumerConfig, EventSink, Failure, JetStream, JetStreamConfig};
use corvus_proto::identity::v1 as pb;
use corvus_proto::identity::v1::{ErasureAnswer, LogEntry, log_entry, profile_change};
use corvus_proto::ingestion::v1::event_consumer_service_server::{EventConsumerService, EventConsumerServiceServer};
use corvus_proto::ingestion::v1::{DeliverRequest, DeliverResponse};
use corvus_test_support::{Backend, eventually, on_both_backends};
use tonic::Code;

use crate::identity::{by_id, by_identifier, event, send};
use crate::support::{TestApp, spawn_downstream, spawn_with};

on_both_backends!(
    a_dead_consumer_holds_up_neither_identity_nor_another,
    a_refused_entry_is_dead_lettered_for_its_consumer_only,
    per_profile_state_follows_merges_unmerges_and_erasures,
);

/// A service after identity: up or down, refusing the events named in `refuse`.
struct Downstream {
    up: AtomicBool,
    refuse: Mutex<HashSet<String>>,
    received: Mutex<Vec<LogEntry>>,
}

impl Downstream {
    fn new(up: bool) -> Arc<Self> {
        Arc::new(Self {
            up: AtomicBool::new(up),
            refuse: Mutex::default(),
            received: Mutex::default(),
        })
    }

    fn consumer(self: &Arc<Self>, name: &str) -> Consumer<LogEntry> {
        Consumer {
            name: name.into(),
            sink: self.clone(),
            batch_size: None,
        }
    }

    /// The message ids of the events received, in order.
    fn messages(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match &e.entry {
                Some(log_entry::Entry::Event(s)) => Some(s.event.as_ref().unwrap().message_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Events per profile, as a service that keeps them would count them: each event
    /// on its profile, merges joining, unmerges placing each event on its side,
    /// erasures removing.
    fn counts(&self) -> HashMap<String, u64> {
        let mut profile_of: HashMap<String, String> = HashMap::new();
        for entry in self.received.lock().unwrap().iter() {
            match entry.entry.as_ref().unwrap() {
                log_entry::Entry::Event(e) => {
                    profile_of.entry(e.event_id.clone()).or_insert(e.profile_id.clone());
                }
                log_entry::Entry::Change(c) => match c.change.as_ref().unwrap() {
                    profile_change::Change::Merged(m) => {
                        for profile in profile_of.values_mut() {
                            if m.merged_ids.contains(profile) {
                                profile.clone_from(&m.survivor_id);
                            }
                        }
                    }
                    profile_change::Change::Unmerged(u) => {
                        for side in &u.sides {
                            for event in &side.event_ids {
                                if let Some(profile) = profile_of.get_mut(event) {
                                    profile.clone_from(&side.profile_id);
                                }
                            }
                        }
                    }
                    profile_change::Change::Erased(x) => profile_of.retain(|_, p| !x.profile_ids.contains(p)),
                },
            }
        }
        let mut counts = HashMap::new();
        for profile in profile_of.into_values() {
            *counts.entry(profile).or_default() += 1;
        }
        counts
    }
}

#[async_trait]
impl EventSink<LogEntry> for Downstream {
    /// Answers each erasure with the profiles it forgot.
    async fn deliver_answering(&self, entries: &[LogEntry]) -> Result<(Vec<Failure>, Vec<ErasureAnswer>), String> {
        let failures = self.deliver(entries).await?;
        let answers = entries
            .iter()
            .filter_map(|e| match &e.entry {
                Some(log_entry::Entry::Change(c)) => match &c.change {
                    Some(profile_change::Change::Erased(x)) => Some(ErasureAnswer {
                        change_id: c.change_id.clone(),
                        removed: [("profiles".to_owned(), x.profile_ids.len() as u64)].into(),
                        store: "warehouse-store".to_owned(),
                    }),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        Ok((failures, answers))
    }

    async fn deliver(&self, entries: &[LogEntry]) -> Result<Vec<Failure>, String> {
        if !self.up.load(Ordering::SeqCst) {
            return Err("unavailable: down for maintenance".into());
        }
        let refuse = self.refuse.lock().unwrap().clone();
        let mut failures = Vec::new();
        let mut received = self.received.lock().unwrap();
        for entry in entries {
            match &entry.entry {
                Some(log_entry::Entry::Event(s)) if refuse.contains(&s.event.as_ref().unwrap().message_id) => {
                    failures.push(Failure {
                        event_id: s.event_id.clone(),
                        reason: "refused: no such product".into(),
                    });
                }
                _ => received.push(entry.clone()),
            }
        }
        Ok(failures)
    }
}

fn fast_retries(config: &mut corvus::CorvusConfig) {
    config.identity.log.retry_base = Duration::from_millis(10);
    config.identity.log.retry_max = Duration::from_millis(100);
    config.identity.log.max_attempts = 2;
}

fn status<'a>(consumers: &'a [pb::ConsumerStatus], name: &str) -> &'a pb::ConsumerStatus {
    consumers.iter().find(|c| c.name == name).unwrap()
}

fn no_repeats(messages: &[String]) {
    let unique: HashSet<&String> = messages.iter().collect();
    assert_eq!(unique.len(), messages.len(), "delivered twice: {messages:?}");
}

async fn a_dead_consumer_holds_up_neither_identity_nor_another(backend: Backend) {
    let dead = Downstream::new(false);
    let Some(app) = spawn_downstream(backend, fast_retries, vec![dead.consumer("warehouse")]).await else {
        return;
    };
    let mut sent = Vec::new();
    for batch in 0..3 {
        let events: Vec<_> = (0..20)
            .map(|i| event(&format!("m-{batch}-{i:02}"), &[("user_id", &format!("u-{batch}-{i}"))]))
            .collect();
        sent.extend(events.iter().map(|e| e.message_id.clone()));
        send(&app, events).await;
    }
    // Identity resolves and the other consumer receives everything while one is down.
    let ingestion = app.caught_up(&app.admin_key).await;
    assert!(ingestion.iter().any(|c| c.name == "identity"));
    assert!(
        eventually(Duration::from_secs(10), || app.resolved.events().len() == sent.len()).await,
        "the healthy consumer got {} of {}",
        app.resolved.events().len(),
        sent.len()
    );
    let mut reader = app.identity(&app.read_key).await;
    assert!(by_identifier(&mut reader, "user_id", "u-2-19").await.is_ok());
    // The healthy consumer's cursor moves once its delivery has returned; the dead one's
    // first failed attempt may land a moment later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let consumers = loop {
        let consumers = app.downstream().await;
        if status(&consumers, "resolved").lag == 0 && !status(&consumers, "warehouse").last_error.is_empty() {
            break consumers;
        }
        assert!(tokio::time::Instant::now() < deadline, "{consumers:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let warehouse = status(&consumers, "warehouse");
    assert_eq!(warehouse.lag, sent.len() as u64);
    assert!(warehouse.last_error.contains("down for maintenance"), "{warehouse:?}");

    // An erasure while it is down: durably queued for it, and pending on the receipt.
    let mut admin = app.identity(&app.admin_key).await;
    let erased = by_identifier(&mut admin, "user_id", "u-0-0")
        .await
        .unwrap()
        .profile
        .unwrap();
    admin
        .forget_profile(pb::ForgetProfileRequest {
            profile_id: erased.profile_id.clone(),
            allow_recreate: false,
        })
        .await
        .unwrap();
    let receipt = |admin: &mut crate::support::IdentityClient| {
        let request = pb::GetErasureReceiptRequest {
            profile_id: erased.profile_id.clone(),
        };
        let mut admin = admin.clone();
        async move {
            admin
                .get_erasure_receipt(request)
                .await
                .unwrap()
                .into_inner()
                .receipt
                .unwrap()
        }
    };
    let pending =
        |receipt: &pb::ErasureReceipt, store: &str| receipt.stores.iter().find(|s| s.store == store).map(|s| s.pending);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = receipt(&mut admin).await;
        if pending(&now, "resolved") == Some(false) {
            assert_eq!(pending(&now, "warehouse"), Some(true), "{now:?}");
            assert_eq!(pending(&now, "identity"), Some(false), "{now:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Back up: it catches up from its own cursor, in order, each event once, and the
    // erasure with them; it answers what it deleted.
    dead.up.store(true, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(10), || dead.messages().len() >= sent.len()).await);
    app.downstream_caught_up().await;
    let done = receipt(&mut admin).await;
    let warehouse = done
        .stores
        .iter()
        .find(|s| s.store == "warehouse-store")
        .expect("answered");
    assert!(!warehouse.pending);
    assert_eq!(warehouse.removed["profiles"], 1);
    assert_eq!(pending(&done, "warehouse"), None, "{done:?}");
    assert_eq!(dead.messages(), sent);
    assert_eq!(app.resolved.events().len(), sent.len());
    assert!(status(&app.downstream().await, "warehouse").last_error.is_empty());
    app.stop().await;
}

async fn a_refused_entry_is_dead_lettered_for_its_consumer_only(backend: Backend) {
    let picky = Downstream::new(true);
    picky.refuse.lock().unwrap().insert("m-poison".into());
    let Some(app) = spawn_downstream(backend, fast_retries, vec![picky.consumer("catalogue")]).await else {
        return;
    };
    let names = ["m-1", "m-2", "m-poison", "m-3"];
    send(
        &app,
        names
            .iter()
            .map(|m| event(m, &[("user_id", &format!("u{m}"))]))
            .collect(),
    )
    .await;
    assert!(eventually(Duration::from_secs(10), || picky.messages().len() == 3).await);
    assert_eq!(picky.messages(), ["m-1", "m-2", "m-3"]);
    assert!(eventually(Duration::from_secs(10), || app.resolved.events().len() == 4).await);

    let mut admin = app.identity(&app.admin_key).await;
    let dead_letters = |consumer: &str| pb::ListDeadLettersRequest {
        consumer: consumer.into(),
        page: None,
    };
    // Dead-lettered once its tries are spent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = admin
            .list_dead_letters(dead_letters("catalogue"))
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
        if !listed.is_empty() || tokio::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].reason, "refused: no such product");
    assert_eq!(listed[0].attempts, 2);
    let Some(log_entry::Entry::Event(poison)) = listed[0].entry.as_ref().unwrap().entry.as_ref() else {
        panic!("not an event: {:?}", listed[0]);
    };
    assert_eq!(poison.event.as_ref().unwrap().message_id, "m-poison");
    assert!(!poison.profile_id.is_empty());
    for other in ["resolved", ""] {
        let listed = admin.list_dead_letters(dead_letters(other)).await.unwrap().into_inner();
        assert_eq!(listed.dead_letters.len(), usize::from(other.is_empty()));
    }
    // Identity itself did not fail: nothing on ingestion's side.
    let ingestion_dead = app
        .client(&app.admin_key)
        .await
        .list_dead_letters(corvus_proto::ingestion::v1::ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(ingestion_dead.dead_letters.is_empty());

    // An unknown consumer is named as such, and nothing changes.
    for result in [
        admin.list_dead_letters(dead_letters("catalog")).await.map(|_| ()),
        admin
            .replay_dead_letters(pb::ReplayDeadLettersRequest {
                ids: vec![],
                consumer: "catalog".into(),
            })
            .await
            .map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("catalog"), "{err:?}");
    }

    // Fixed and replayed: delivered once more, to that consumer only.
    picky.refuse.lock().unwrap().clear();
    let replayed = admin
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            ids: vec![],
            consumer: "catalogue".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.replayed, 1);
    assert!(eventually(Duration::from_secs(10), || picky.messages().len() == 4).await);
    assert_eq!(picky.messages(), ["m-1", "m-2", "m-3", "m-poison"]);
    // The dead letter goes once the replay is noted done, just after the delivery.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = admin
            .list_dead_letters(dead_letters("catalogue"))
            .await
            .unwrap()
            .into_inner();
        if listed.dead_letters.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{listed:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resolved: Vec<String> = app
        .resolved
        .events()
        .iter()
        .map(|e| e.event.as_ref().unwrap().message_id.clone())
        .collect();
    assert_eq!(resolved, names);
    app.stop().await;
}

/// People with three devices each: in the first round each device is a profile of its
/// own; in each later round one device's events also carry the person's user id, which
/// merges that device's profile into the person's. After the first phase, person 0's
/// devices stay anonymous, so that the merge undone on that person stays undone.
fn load(phase: &str, sender: usize, round: usize) -> Vec<corvus_proto::common::v1::Event> {
    (0..30)
        .map(|i| {
            let (person, device) = ((sender * 7 + round * 5 + i / 3) % 24, i % 3);
            let anonymous = format!("a-{person}-{device}");
            let user = format!("u-{person}");
            let mut ids = vec![("anonymous_id", anonymous.as_str())];
            if round > 0 && device == round % 3 && (person != 0 || phase == "first") {
                ids.push(("user_id", user.as_str()));
            }
            event(&format!("{phase}-{sender}-{round}-{i}"), &ids)
        })
        .collect()
}

async fn send_load(app: &TestApp, phase: &str) {
    let senders = (0..4).map(|sender| async move {
        for round in 0..4 {
            send(app, load(phase, sender, round)).await;
        }
    });
    futures::future::join_all(senders).await;
}

async fn per_profile_state_follows_merges_unmerges_and_erasures(backend: Backend) {
    per_profile_state_follows(backend, None).await;
}

/// Through a stream of the test's own, over Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_jetstream_per_profile_state_follows_merges_unmerges_and_erasures() {
    let Some(url) = corvus_test_support::nats_url() else {
        return;
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let stream = JetStreamConfig {
        url,
        stream: format!("TEST_{id}"),
        subject_prefix: format!("corvus.test.{id}"),
        ..JetStreamConfig::default()
    };
    per_profile_state_follows(Backend::Postgres, Some(stream)).await;
}

async fn per_profile_state_follows(backend: Backend, stream: Option<JetStreamConfig>) {
    let counter = Downstream::new(true);
    let through = stream.clone();
    let Some(app) = spawn_downstream(
        backend,
        move |config| config.identity.jetstream = through,
        vec![counter.consumer("counter")],
    )
    .await
    else {
        return;
    };
    send_load(&app, "first").await;
    app.caught_up(&app.admin_key).await;
    let mut admin = app.identity(&app.admin_key).await;
    let profile_of = |response: pb::GetProfileResponse| response.profile.unwrap().profile_id;
    let joined = profile_of(by_identifier(&mut admin, "user_id", "u-0").await.unwrap());
    let erased = profile_of(by_identifier(&mut admin, "user_id", "u-1").await.unwrap());
    let merges = admin
        .list_merges(pb::ListMergesRequest {
            profile_id: joined.clone(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .merges;
    assert!(!merges.is_empty(), "u-0's devices were merged");

    // An unmerge and an erasure while more events arrive.
    let changes = async {
        let mut admin = app.identity(&app.admin_key).await;
        admin
            .unmerge(pb::UnmergeRequest {
                merge_id: merges[0].merge_id.clone(),
            })
            .await
            .unwrap();
        admin
            .forget_profile(pb::ForgetProfileRequest {
                profile_id: erased.clone(),
                allow_recreate: false,
            })
            .await
            .unwrap();
    };
    tokio::join!(send_load(&app, "second"), changes);
    send_load(&app, "third").await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;

    // Every profile the consumer counts is live in identity with as many events…
    let counts = counter.counts();
    assert!(counts.len() > 10, "{counts:?}");
    assert!(!counts.contains_key(&erased));
    for (profile, count) in &counts {
        let read = by_id(&mut admin, profile).await.unwrap();
        assert!(read.redirected_from.is_empty(), "{profile} was merged away");
        let events: u64 = read.profile.unwrap().event_counts.iter().map(|c| c.count).sum();
        assert_eq!(events, *count, "profile {profile}");
    }
    // …and every profile identity holds for these people is counted.
    for person in (0..24).filter(|p| *p != 1) {
        let identifiers = [("user_id", format!("u-{person}"))]
            .into_iter()
            .chain((0..3).map(|d| ("anonymous_id", format!("a-{person}-{d}"))));
        for (kind, value) in identifiers {
            let Ok(read) = by_identifier(&mut admin, kind, &value).await else {
                continue;
            };
            let profile = read.profile.unwrap();
            let events: u64 = profile.event_counts.iter().map(|c| c.count).sum();
            assert_eq!(counts.get(&profile.profile_id), Some(&events), "{kind} {value}");
        }
    }
    no_repeats(&counter.messages());
    // The erasure's receipt names the consumer as having received it (and not the relay,
    // through a stream).
    let receipt = admin
        .get_erasure_receipt(pb::GetErasureReceiptRequest { profile_id: erased })
        .await
        .unwrap()
        .into_inner();
    let stores: Vec<(&str, bool)> = receipt
        .receipt
        .as_ref()
        .unwrap()
        .stores
        .iter()
        .map(|s| (s.store.as_str(), s.pending))
        .collect();
    assert!(stores.contains(&("warehouse-store", false)), "{stores:?}");
    assert!(
        stores.iter().all(|(store, pending)| !pending && *store != "jetstream"),
        "{stores:?}"
    );
    if let Some(config) = &stream {
        // Nothing of the erased person is left in the stream either, once the relay's
        // erasure round has passed (the receipt does not wait for it).
        let client = async_nats::connect(config.url.as_str()).await.unwrap();
        let context = async_nats::jetstream::new(client);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut messages = context.get_stream(&config.stream).await.unwrap();
            let last = messages.info().await.unwrap().state.last_sequence;
            let (mut kept, mut erased_at) = (0, None);
            for seq in 1..=last {
                if let Ok(message) = messages.get_raw_message(seq).await {
                    kept += 1;
                    if String::from_utf8_lossy(&message.payload).contains("a-1-") {
                        erased_at.get_or_insert(seq);
                    }
                }
            }
            assert!(kept > 100, "the others' entries are kept ({kept})");
            match erased_at {
                None => break,
                Some(seq) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "an erased device's event in the stream at {seq}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    app.stop().await;
    if let Some(config) = stream {
        let stream = JetStream::connect(&config, Duration::from_secs(3600)).await.unwrap();
        stream.delete().await.unwrap();
    }
}

/// A remote consumer that hangs for a while, then answers.
#[derive(Clone, Default)]
struct Hanging {
    hang: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl EventConsumerService for Hanging {
    async fn deliver(
        &self,
        request: tonic::Request<DeliverRequest>,
    ) -> Result<tonic::Response<DeliverResponse>, tonic::Status> {
        if self.hang.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        let mut received = self.received.lock().unwrap();
        for entry in request.into_inner().entries {
            if let Some(log_entry::Entry::Event(e)) = entry.entry {
                received.push(e.event.unwrap().message_id);
            }
        }
        Ok(tonic::Response::new(DeliverResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_hanging_past_its_deadline_is_retried_and_misses_nothing() {
    let hanging = Hanging::default();
    hanging.hang.store(true, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EventConsumerServiceServer::new(hanging.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let Some(app) = spawn_with(Backend::Embedded, |c| {
        fast_retries(c);
        let mut consumer = ConsumerConfig::new("slowpoke", &endpoint);
        consumer.timeout = Duration::from_millis(300);
        c.identity.consumers.push(consumer);
    })
    .await
    else {
        return;
    };
    let names: Vec<String> = (0..5).map(|i| format!("h-{i}")).collect();
    send(&app, names.iter().map(|m| event(m, &[("user_id", m)])).collect()).await;
    // The others are not held up; the hanging one shows why it lags.
    assert!(eventually(Duration::from_secs(10), || app.resolved.events().len() == 5).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let consumers = app.downstream().await;
        let slowpoke = status(&consumers, "slowpoke");
        if !slowpoke.last_error.is_empty() {
            assert_eq!(slowpoke.lag, 5, "{slowpoke:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{slowpoke:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Answering again: everything once, in order.
    hanging.hang.store(false, Ordering::SeqCst);
    app.downstream_caught_up().await;
    assert_eq!(*hanging.received.lock().unwrap(), names);
    assert!(status(&app.downstream().await, "slowpoke").last_error.is_empty());
    app.stop().await;
}
