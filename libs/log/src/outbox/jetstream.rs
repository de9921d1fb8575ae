//! The hand-off through NATS JetStream, for when one database no longer carries every
//! consumer's reads of the log. The log stays the transactional outbox: entries are
//! written in the transaction that made them, as always. One relay (an outbox consumer
//! of its own, named `jetstream`) publishes them in log order to a stream whose subjects
//! are partitioned by person (`<prefix>.<workspace>.<partition>`), each with
//! `Nats-Msg-Id` set to the entry's id, so a relay that publishes a batch again after a
//! crash adds nothing (the stream's duplicate window). Every consumer reads the stream
//! through a durable JetStream consumer of its own, which holds its cursor; delivery,
//! retries, dead letters (kept in the log's store) and replays are the outbox's.
//!
//! Order: the relay publishes in log order and a consumer reads the whole stream in
//! stream order, one batch in flight (`max_ack_pending` is the batch size, acknowledged
//! all at once), so a consumer sees entries in log order, as from the log itself. A
//! dispatcher taking over (after a crash, a stop or a lost lease) starts just after the
//! last acknowledged entry, not after what its predecessor had been handed.
//!
//! Erasure: the relay records the stream sequence of each entry it published, a row a
//! batch; erasing entries queues their positions, and the relay erases their messages
//! from the stream (overwritten on the server's disk) with its next delivery: on
//! identity's log, the erasure's own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream as js;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DeleteMessageErrorKind, StorageType};
use async_trait::async_trait;
use corvus_proto::WorkspaceId;
use corvus_storage::StorageError;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use super::{Dispatcher, Entry, EventSink, Failure, Stop};
use crate::store::{ConsumerStatus, EventLog, LoggedEvent, Position};

pub use crate::store::RELAY;

const WORKSPACE: &str = "Corvus-Workspace";
const EVENT_ID: &str = "Corvus-Event-Id";
const POSITION: &str = "Corvus-Log-Position";
const TRACEPARENT: &str = "traceparent";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamConfig {
    /// The NATS server (`nats://host:4222`).
    pub url: String,
    /// The stream's name.
    pub stream: String,
    /// The subjects' prefix: entries go to `<prefix>.<workspace>.<partition>`.
    pub subject_prefix: String,
    /// Partitions a workspace's people are spread over (by profile id).
    pub partitions: u32,
    /// The stream's replicas in a NATS cluster.
    pub replicas: usize,
    /// How long a delivery may stay unacknowledged before JetStream hands it to another
    /// dispatcher (after a crash, the consumer waits this long).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            stream: "CORVUS_IDENTITY".into(),
            subject_prefix: "corvus.identity".into(),
            partitions: 16,
            replicas: 1,
            ack_wait: Duration::from_secs(30),
        }
    }
}

impl JetStreamConfig {
    /// Checks the settings of the section at `section` (`identity.jetstream`).
    pub fn validate(&self, section: &str) -> Result<(), String> {
        let token = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
        if !(self.url.starts_with("nats://") || self.url.starts_with("tls://")) {
            return Err(format!("{section}.url must be a nats:// or tls:// URL"));
        }
        if !token(&self.stream) {
            return Err(format!("{section}.stream must be letters, digits, '-' or '_'"));
        }
        if !self.subject_prefix.split('.').all(token) {
            return Err(format!(
                "{section}.subject_prefix must be dot-separated tokens of letters, digits, '-' or '_'"
            ));
        }
        if self.partitions == 0 || self.replicas == 0 || self.ack_wait.is_zero() {
            return Err(format!("{section}.partitions, replicas and ack_wait must be positive"));
        }
        Ok(())
    }
}

/// A log's stream, and what the consumers reading it last failed with.
pub struct JetStream {
    context: js::Context,
    stream: stream::Stream,
    config: JetStreamConfig,
    errors: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for JetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStream").field("config", &self.config).finish()
    }
}

impl JetStream {
    /// Connects, and creates the stream if it is not there; its messages are kept for
    /// `max_age` (the log's retention).
    pub async fn connect(config: &JetStreamConfig, max_age: Duration) -> anyhow::Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name("corvus")
            .connect(config.url.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach NATS at {}: {e}", config.url))?;
        let context = js::new(client);
        let wanted = stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            storage: StorageType::File,
            max_age,
            duplicate_window: Duration::from_secs(120),
            num_replicas: config.replicas,
            ..Default::default()
        };
        let failed = |e: &dyn std::fmt::Display| anyhow::anyhow!("JetStream stream {}: {e}", config.stream);
        let mut stream = context
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(|e| failed(&e))?;
        // A stream made with other settings (a retention or replicas changed since) is
        // brought to these.
        let held = &stream.info().await.map_err(|e| failed(&e))?.config;
        if (held.max_age, held.num_replicas, &held.subjects) != (max_age, config.replicas, &wanted.subjects) {
            context.update_stream(wanted).await.map_err(|e| failed(&e))?;
            stream = context.get_stream(&config.stream).await.map_err(|e| failed(&e))?;
        }
        Ok(Self {
            context,
            stream,
            config: config.clone(),
            errors: Mutex::default(),
        })
    }

    pub fn config(&self) -> &JetStreamConfig {
        &self.config
    }

    /// Deletes the stream and everything in it.
    pub async fn delete(&self) -> Result<(), String> {
        self.context
            .delete_stream(&self.config.stream)
            .await
            .map(|_| ())
            .map_err(|e| format!("deleting stream {}: {e}", self.config.stream))
    }

    /// The subject of an entry of `workspace` about the person `key`.
    pub fn subject(&self, workspace: &str, key: &str) -> String {
        format!(
            "{}.{workspace}.{}",
            self.config.subject_prefix,
            partition(key, self.config.partitions)
        )
    }

    /// The consumer's durable JetStream consumer, placed just after what it acknowledged.
    ///
    /// Created at the start of the stream. One found with deliveries outstanding (handed
    /// to a dispatcher since gone, killed or stopped, with its prefetched messages) is made
    /// again from its acknowledgement floor. Were it kept, those deliveries would come back
    /// only as each one's `ack_wait` ran out, after entries behind them had been handed
    /// out; and acknowledging those (all up to the furthest) would acknowledge the
    /// outstanding ones unseen. Only the lease's holder calls this.
    async fn durable(&self, name: &str, batch: u32) -> Result<js::consumer::PullConsumer, String> {
        let failed = |e: &dyn std::fmt::Display| format!("JetStream consumer {name}: {e}");
        let deliver_policy = match self.stream.consumer_info(name).await {
            Ok(info) if info.num_ack_pending > 0 => {
                self.stream.delete_consumer(name).await.map_err(|e| failed(&e))?;
                DeliverPolicy::ByStartSequence {
                    start_sequence: info.ack_floor.stream_sequence + 1,
                }
            }
            Ok(info) => info.config.deliver_policy,
            Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound => DeliverPolicy::All,
            Err(err) => return Err(failed(&err)),
        };
        // Created, or brought to these settings (a batch size changed since).
        self.stream
            .create_consumer(pull::Config {
                durable_name: Some(name.to_owned()),
                deliver_policy,
                ack_policy: AckPolicy::All,
                ack_wait: self.config.ack_wait,
                // One batch in flight, so a consumer sees entries in stream order.
                max_ack_pending: i64::from(batch),
                max_deliver: -1,
                filter_subject: format!("{}.>", self.config.subject_prefix),
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&e))
    }

    /// Erases these messages from the stream; those already gone (aged out) are fine.
    async fn erase(&self, seqs: &[u64]) -> Result<(), String> {
        for seq in seqs {
            match self.stream.delete_message(*seq).await {
                Ok(_) => {}
                Err(err)
                    if matches!(err.kind(), DeleteMessageErrorKind::JetStream(e)
                        if e.error_code() == js::ErrorCode::NO_MESSAGE_FOUND) => {}
                Err(err) => return Err(format!("erasing message {seq} from the stream: {err}")),
            }
        }
        Ok(())
    }

    fn note_error(&self, consumer: &str, error: Option<&str>) {
        let mut errors = self.errors.lock().expect("errors lock");
        match error {
            Some(e) => errors.insert(consumer.to_owned(), e.to_owned()),
            None => errors.remove(consumer),
        };
    }

    /// The stream's consumers: lag (entries of every workspace not yet acknowledged),
    /// the workspace's dead letters, and the last error this process saw.
    pub async fn consumers(
        &self,
        log: &dyn EventLog,
        workspace: &WorkspaceId,
    ) -> Result<Vec<ConsumerStatus>, StorageError> {
        let mut infos = self.stream.consumers();
        let mut statuses = Vec::new();
        while let Some(info) = infos.next().await {
            let info = info.map_err(|e| StorageError::Unavailable(format!("JetStream: {e}")))?;
            let dead = log
                .list_dead_letters(workspace, Some(&info.name), 0, u32::MAX)
                .await?
                .len();
            statuses.push(ConsumerStatus {
                lag: info.num_pending + info.num_ack_pending as u64,
                dead_letters: dead as u64,
                last_delivery_at: info
                    .delivered
                    .last_active
                    .and_then(|t| chrono::DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())),
                last_error: self.errors.lock().expect("errors lock").get(&info.name).cloned(),
                name: info.name,
            });
        }
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(statuses)
    }
}

/// A stable partition of `key` among `n` (FNV-1a).
fn partition(key: &str, n: u32) -> u32 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % u64::from(n)) as u32
}

/// An entry on its way to the stream: as the log holds it, and read.
pub struct Relayed<E> {
    logged: LoggedEvent,
    entry: E,
}

impl<E: Entry> Entry for Relayed<E> {
    fn from_logged(logged: &LoggedEvent) -> Result<Self, String> {
        Ok(Self {
            entry: E::from_logged(logged)?,
            logged: logged.clone(),
        })
    }

    fn id(&self) -> &str {
        self.entry.id()
    }

    fn received_at(&self) -> Option<&prost_types::Timestamp> {
        self.entry.received_at()
    }

    fn key(&self) -> &str {
        self.entry.key()
    }
}

/// The relay: the outbox consumer that publishes the log to the stream.
pub struct Relay {
    stream: Arc<JetStream>,
    log: Arc<dyn EventLog>,
}

impl Relay {
    pub fn new(stream: Arc<JetStream>, log: Arc<dyn EventLog>) -> Self {
        Self { stream, log }
    }

    /// Erases from the stream what was erased from the log, up to where it has relayed.
    async fn erase_queued(&self, relayed_to: Position) -> Result<(), String> {
        loop {
            let queued = self
                .log
                .stream_erasures(relayed_to, 500)
                .await
                .map_err(|e| e.to_string())?;
            if queued.is_empty() {
                return Ok(());
            }
            let seqs: Vec<u64> = queued.iter().filter_map(|(_, seq)| *seq).collect();
            self.stream.erase(&seqs).await?;
            let positions: Vec<Position> = queued.iter().map(|(p, _)| *p).collect();
            self.log.stream_erased(&positions).await.map_err(|e| e.to_string())?;
        }
    }
}

#[async_trait]
impl<E: Entry> EventSink<Relayed<E>> for Relay {
    async fn deliver(&self, entries: &[Relayed<E>]) -> Result<Vec<Failure>, String> {
        // Published all at once, then the acknowledgements awaited.
        let mut acks = Vec::with_capacity(entries.len());
        let mut failures = Vec::new();
        for relayed in entries {
            let logged = &relayed.logged;
            let mut headers = HeaderMap::new();
            headers.insert(WORKSPACE, logged.workspace.as_str());
            headers.insert(EVENT_ID, logged.event_id.to_string().as_str());
            headers.insert(
                POSITION,
                format!("{}.{}", logged.position.tx, logged.position.seq).as_str(),
            );
            if let Some(traceparent) = &logged.traceparent {
                headers.insert(TRACEPARENT, traceparent.as_str());
            }
            let message = PublishMessage::build()
                .payload(logged.payload.clone().into())
                .headers(headers)
                .message_id(relayed.id());
            let subject = self.stream.subject(logged.workspace.as_str(), relayed.key());
            match self.stream.context.send_publish(subject, message).await {
                Ok(ack) => acks.push((logged.position, ack)),
                Err(err) if err.kind() == js::context::PublishErrorKind::MaxPayloadExceeded => {
                    failures.push(Failure {
                        event_id: relayed.id().to_owned(),
                        reason: format!("too large for the stream: {err}"),
                    });
                }
                Err(err) => return Err(format!("publishing to JetStream: {err}")),
            }
        }
        let mut relayed = Vec::with_capacity(acks.len());
        for (position, ack) in acks {
            let ack = ack.await.map_err(|e| format!("JetStream did not take an entry: {e}"))?;
            relayed.push((position, ack.sequence));
        }
        // Recorded before the queue is looked at, so an erasure queued meanwhile finds its
        // entry's sequence there; one queued after this look waits for the next delivery.
        self.log.relayed(&relayed).await.map_err(|e| e.to_string())?;
        if let Some(last) = entries.last() {
            self.erase_queued(last.logged.position).await?;
        }
        Ok(failures)
    }
}

/// A message of the stream as the log held it; `None` for one no relay published.
fn logged(message: &js::Message) -> Option<LoggedEvent> {
    let headers = message.headers.as_ref()?;
    let get = |name: &str| headers.get(name).map(|v| v.as_str());
    let (tx, seq) = get(POSITION)?.split_once('.')?;
    Some(LoggedEvent {
        position: Position {
            tx: tx.parse().ok()?,
            seq: seq.parse().ok()?,
        },
        workspace: get(WORKSPACE)?.parse().ok()?,
        event_id: get(EVENT_ID)?.parse().ok()?,
        payload: message.payload.to_vec(),
        traceparent: get(TRACEPARENT).map(str::to_owned),
    })
}

impl<E: Entry> Dispatcher<E> {
    /// Notes the consumer's last delivery error, or clears it: in the log, or for a
    /// consumer of the stream, in this process.
    pub(super) async fn note_error(&self, error: Option<&str>) {
        match &self.stream {
            Some(stream) => stream.note_error(&self.consumer.name, error),
            None => {
                let _ = self.log.set_error(&self.consumer.name, error).await;
            }
        }
    }

    /// Delivers from the stream while holding the lease.
    pub(super) async fn lead_stream(&self, stream: &JetStream) -> Stop {
        let name = &self.consumer.name;
        let batch_size = self.batch_size() as usize;
        let durable = match stream.durable(name, self.batch_size()).await {
            Ok(d) => d,
            Err(err) => return Stop::LostLease(err),
        };
        let mut messages = match durable
            .stream()
            .max_messages_per_batch(batch_size)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(err) => return Stop::LostLease(format!("JetStream consumer {name}: {err}")),
        };
        // The stream sequence acknowledged last: a copy of an entry up to it, handed out
        // again because a delivery outlasted `ack_wait`, is not delivered again.
        let mut acked = 0;
        let mut replays_checked: Option<tokio::time::Instant> = None;
        loop {
            if replays_checked.is_none_or(|at| at.elapsed() >= self.config.poll_interval) {
                if let Err(err) = self.replay_dead_letters().await {
                    return Stop::LostLease(err.to_string());
                }
                replays_checked = Some(tokio::time::Instant::now());
            }
            let first = tokio::select! {
                () = self.stop.cancelled() => return Stop::Cancelled,
                next = messages.next() => next,
                () = tokio::time::sleep(self.config.poll_interval) => continue,
            };
            let mut batch = vec![match first {
                Some(Ok(m)) => m,
                Some(Err(err)) => return Stop::LostLease(format!("JetStream consumer {name}: {err}")),
                None => return Stop::LostLease(format!("JetStream consumer {name} ended")),
            }];
            let mut bytes = batch[0].payload.len() as u64;
            while batch.len() < batch_size && bytes < self.config.batch_bytes {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => {
                        bytes += m.payload.len() as u64;
                        batch.push(m);
                    }
                    Some(Some(Err(err))) => return Stop::LostLease(format!("JetStream consumer {name}: {err}")),
                    _ => break,
                }
            }
            let mut events = Vec::with_capacity(batch.len());
            let mut last = acked;
            for message in &batch {
                let Ok(info) = message.info() else { continue };
                last = last.max(info.stream_sequence);
                if info.stream_sequence <= acked {
                    continue;
                }
                match logged(message) {
                    Some(event) => events.push(event),
                    None => {
                        tracing::warn!(consumer = %name, seq = info.stream_sequence, subject = %message.subject,
                            "a message in the stream that no relay published, passed over");
                    }
                }
            }
            if !events.is_empty()
                && let Err(stop) = self.deliver(&events).await
            {
                // Stopping: the next holder starts after what was acknowledged.
                return stop;
            }
            // Acknowledging the furthest message acknowledges all before it.
            let furthest = batch
                .iter()
                .max_by_key(|m| m.info().map_or(0, |i| i.stream_sequence))
                .expect("a batch holds a message");
            if let Err(err) = furthest.double_ack().await {
                return Stop::LostLease(format!("JetStream consumer {name}: acknowledging: {err}"));
            }
            acked = last;
        }
    }
}
