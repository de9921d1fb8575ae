//! The outbox: committed entries handed on in log order to every registered consumer,
//! each with its own cursor and task, so a slow or failing consumer never holds up
//! another. Woken by commits (and NOTIFY from other replicas), with a slow poll as the
//! fallback. A consumer that cannot be reached is retried with backoff for as long as
//! it takes; an event the consumer refuses is retried, then dead-lettered with the
//! reason. Delivery is at least once; consumers are idempotent by event id.

mod config;
pub mod discovery;
mod entry;
mod grpc_sink;
pub mod jetstream;
mod shared_reads;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use corvus_proto::common::v1::StoredEvent;
use corvus_proto::identity::v1::ErasureAnswer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::{ConsumerConfig, MAX_DELIVERY_BYTES, OutboxConfig};
pub use entry::{Entry, Erasure, ErasureLedger};
pub use grpc_sink::{GrpcSink, SinkError};
pub use jetstream::{JetStream, JetStreamConfig};

use crate::store::{EventLog, LoggedEvent, Position, ReadBatch};

/// An event (or change) a consumer could not process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The entry's id (`Entry::id`).
    pub event_id: String,
    pub reason: String,
}

/// Where a consumer's entries go: in process, or a service over gRPC.
#[async_trait]
pub trait EventSink<E = StoredEvent>: Send + Sync {
    /// Hands over a batch in log order. `Err` means nothing can be said of the batch
    /// (the consumer is unreachable) and the whole batch is retried; `Ok` lists the
    /// entries that failed, which are retried on their own.
    async fn deliver(&self, entries: &[E]) -> Result<Vec<Failure>, String>;

    /// `deliver`, with what the consumer answered it deleted for the erasures among the
    /// entries (identity's log). A sink that deletes nothing need not say so.
    async fn deliver_answering(&self, entries: &[E]) -> Result<(Vec<Failure>, Vec<ErasureAnswer>), String>
    where
        E: Sync,
    {
        Ok((self.deliver(entries).await?, Vec::new()))
    }
}

/// A registered consumer.
pub struct Consumer<E = StoredEvent> {
    pub name: String,
    pub sink: Arc<dyn EventSink<E>>,
    /// Entries per delivery for this consumer, instead of `OutboxConfig::batch_size`.
    pub batch_size: Option<u32>,
}

impl<E> Clone for Consumer<E> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            sink: self.sink.clone(),
            batch_size: self.batch_size,
        }
    }
}

/// How a log's entries reach its consumers.
#[derive(Debug, Clone, Default)]
pub enum Handoff {
    /// Each consumer reads the log, its cursor kept in the log's store.
    #[default]
    Log,
    /// A relay publishes the log to a JetStream stream, and each consumer reads the
    /// stream through a durable JetStream consumer of its own (see `jetstream`).
    JetStream(Arc<JetStream>),
}

impl Handoff {
    /// Whether `consumer` is the relay to the stream: the log's consumer that receives
    /// entries on behalf of every other.
    pub fn is_relay(&self, consumer: &str) -> bool {
        matches!(self, Self::JetStream(_)) && consumer == jetstream::RELAY
    }

    /// Every consumer's status in the workspace: its lag, dead letters and last error.
    pub async fn consumers(
        &self,
        log: &dyn EventLog,
        workspace: &corvus_proto::WorkspaceId,
    ) -> Result<Vec<crate::store::ConsumerStatus>, corvus_storage::StorageError> {
        let mut statuses = log.consumers(workspace).await?;
        if let Self::JetStream(stream) = self {
            statuses.extend(stream.consumers(log, workspace).await?);
        }
        Ok(statuses)
    }
}

/// Starts one dispatcher task per consumer; they stop when `stop` is cancelled.
pub fn spawn<E: Entry>(
    log: Arc<dyn EventLog>,
    consumers: Vec<Consumer<E>>,
    config: OutboxConfig,
    stop: CancellationToken,
) -> JoinSet<()> {
    spawn_with_ledger(log, consumers, config, &Handoff::Log, None, stop)
}

/// `spawn`, through `handoff`, noting in `ledger` which consumer received which erasure.
pub fn spawn_with_ledger<E: Entry>(
    log: Arc<dyn EventLog>,
    consumers: Vec<Consumer<E>>,
    config: OutboxConfig,
    handoff: &Handoff,
    ledger: Option<Arc<dyn ErasureLedger>>,
    stop: CancellationToken,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    let reads = Arc::new(shared_reads::SharedReads::default());
    let stream = match handoff {
        Handoff::Log => None,
        Handoff::JetStream(stream) => {
            // The relay: the one consumer that reads the log itself.
            let relay = Consumer::<jetstream::Relayed<E>> {
                name: jetstream::RELAY.to_owned(),
                sink: Arc::new(jetstream::Relay::new(stream.clone(), log.clone())),
                batch_size: None,
            };
            tasks.spawn(dispatch(log.clone(), relay, &config, None, reads.clone(), None, &stop));
            Some(stream.clone())
        }
    };
    for consumer in consumers {
        tasks.spawn(dispatch(
            log.clone(),
            consumer,
            &config,
            ledger.clone(),
            reads.clone(),
            stream.clone(),
            &stop,
        ));
    }
    tasks
}

fn dispatch<E: Entry>(
    log: Arc<dyn EventLog>,
    consumer: Consumer<E>,
    config: &OutboxConfig,
    ledger: Option<Arc<dyn ErasureLedger>>,
    reads: Arc<shared_reads::SharedReads>,
    stream: Option<Arc<JetStream>>,
    stop: &CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let dispatcher = Dispatcher {
        log,
        ledger,
        reads,
        stream,
        consumer,
        config: config.clone(),
        stop: stop.clone(),
        error_noted: AtomicBool::new(false),
    };
    async move { dispatcher.run().await }
}

struct Dispatcher<E> {
    log: Arc<dyn EventLog>,
    ledger: Option<Arc<dyn ErasureLedger>>,
    /// Shared with the other dispatchers of the same log in this process.
    reads: Arc<shared_reads::SharedReads>,
    /// Set when the consumer reads a stream the log is relayed to, not the log.
    stream: Option<Arc<JetStream>>,
    consumer: Consumer<E>,
    config: OutboxConfig,
    stop: CancellationToken,
    /// Whether a delivery error may be on record for the consumer: set at each lease
    /// taken (a holder before, here or in a process since gone, may have left one) and
    /// at each failure; the next delivery that goes through clears it.
    error_noted: AtomicBool,
}

/// Why a leader round ended.
enum Stop {
    Cancelled,
    /// Storage failed or another replica moved the cursor: give up the lease.
    LostLease(String),
}

impl<E: Entry> Dispatcher<E> {
    fn batch_size(&self) -> u32 {
        self.consumer.batch_size.unwrap_or(self.config.batch_size)
    }

    /// Whether a read came back with all it was allowed: more is likely waiting.
    fn is_full(&self, batch: &ReadBatch) -> bool {
        batch.events.len() >= self.batch_size() as usize
    }

    async fn run(self) {
        let name = self.consumer.name.clone();
        let mut pause = self.config.retry_base;
        // A consumer of the stream takes a lease of its own, apart from any of the log.
        let lease_name = match &self.stream {
            Some(_) => format!("{}.{name}", jetstream::RELAY),
            None => name.clone(),
        };
        while !self.stop.is_cancelled() {
            let lease = match self.log.lease(&lease_name).await {
                Ok(Some(lease)) => {
                    self.error_noted.store(true, Ordering::Relaxed);
                    lease
                }
                Ok(None) => {
                    // Another replica dispatches this consumer; check back later.
                    self.sleep(self.config.poll_interval).await;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(consumer = %name, error = %err, "outbox cannot take its lease");
                    self.sleep(pause).await;
                    pause = (pause * 2).min(self.config.retry_max);
                    continue;
                }
            };
            let led = match &self.stream {
                Some(stream) => self.lead_stream(stream).await,
                None => self.lead().await,
            };
            match led {
                Stop::Cancelled => return,
                Stop::LostLease(cause) => {
                    tracing::warn!(consumer = %name, error = %cause, "outbox gives up its lease");
                    drop(lease);
                    self.sleep(pause).await;
                    pause = (pause * 2).min(self.config.retry_max);
                }
            }
        }
    }

    async fn sleep(&self, pause: Duration) {
        tokio::select! {
            () = self.stop.cancelled() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }

    /// Delivers while holding the lease.
    async fn lead(&self) -> Stop {
        let name = &self.consumer.name;
        let mut wakeups = self.log.wakeups();
        let mut cursor = match self.log.ensure_consumer(name).await {
            Ok(p) => p,
            Err(err) => return Stop::LostLease(err.to_string()),
        };
        // The batch after the one being delivered, read while it was.
        let mut read_ahead: Option<ReadBatch> = None;
        // Where the last delivery ended: the cursor moves there while the next one runs.
        let mut delivered_to = cursor;
        let mut replays_checked: Option<tokio::time::Instant> = None;
        loop {
            if self.stop.is_cancelled() {
                // What was delivered is not handed out again after a restart.
                let _ = self.settle(&mut cursor, delivered_to).await;
                return Stop::Cancelled;
            }
            // Dead letters marked for replay are looked for at most once a poll interval
            // (not on every wake-up: at the head of a busy log that is many a second).
            if replays_checked.is_none_or(|at| at.elapsed() >= self.config.poll_interval) {
                if let Err(err) = self.replay_dead_letters().await {
                    return Stop::LostLease(err.to_string());
                }
                replays_checked = Some(tokio::time::Instant::now());
            }
            let batch = match read_ahead.take() {
                Some(batch) => batch,
                None => {
                    // Mark the wake-ups seen before reading, so a commit after the read wakes us.
                    wakeups.borrow_and_update();
                    match self.read_after(delivered_to).await {
                        Ok(b) => b,
                        Err(err) => return Stop::LostLease(err),
                    }
                }
            };
            let Some(last) = batch.events.last().map(|e| e.position) else {
                if let Err(stop) = self.settle(&mut cursor, delivered_to).await {
                    return stop;
                }
                metrics::gauge!("corvus_outbox_lag_seconds", "consumer" => name.clone()).set(0.0);
                let pause = if batch.held_back {
                    Duration::from_millis(5)
                } else {
                    self.config.poll_interval
                };
                tokio::select! {
                    () = self.stop.cancelled() => return Stop::Cancelled,
                    _ = wakeups.changed() => {
                        if !self.config.linger.is_zero() {
                            self.sleep(self.config.linger).await;
                        }
                    }
                    () = tokio::time::sleep(pause) => {}
                }
                continue;
            };
            // Deliver; meanwhile move the cursor past the previous delivery and, when this
            // batch was full (the consumer is behind), read what follows; a short batch
            // means the consumer has caught up, and a read-ahead would come back short too.
            // Only a full read-ahead is kept: one that came back short is read again after
            // the delivery, so that events committed meanwhile are not left for a round
            // later. One that failed is dropped too; the next round reads after marking
            // wake-ups.
            let behind = self.is_full(&batch);
            let reading_ahead = async {
                if behind {
                    Some(self.read_after(last).await)
                } else {
                    None
                }
            };
            let (settled, delivered, next) = tokio::join!(
                self.settle(&mut cursor, delivered_to),
                self.deliver(&batch.events),
                reading_ahead
            );
            if let Err(stop) = settled.and(delivered) {
                return stop;
            }
            delivered_to = last;
            read_ahead = next.and_then(Result::ok).filter(|b| self.is_full(b));
        }
    }

    async fn read_after(&self, after: Position) -> Result<ReadBatch, String> {
        self.reads
            .read_after(&self.log, after, self.batch_size(), self.config.batch_bytes)
            .await
    }

    /// Moves the cursor to where delivery has reached, if it is not there yet.
    async fn settle(&self, cursor: &mut Position, delivered_to: Position) -> Result<(), Stop> {
        if *cursor == delivered_to {
            return Ok(());
        }
        match self.log.advance(&self.consumer.name, *cursor, delivered_to).await {
            Ok(true) => {
                *cursor = delivered_to;
                Ok(())
            }
            Ok(false) => Err(Stop::LostLease("the cursor was moved by another dispatcher".into())),
            Err(err) => Err(Stop::LostLease(err.to_string())),
        }
    }

    /// Delivers a batch until every event went through or was dead-lettered.
    async fn deliver(&self, events: &[LoggedEvent]) -> Result<(), Stop> {
        let name = &self.consumer.name;
        // What is still to go, in two lists kept in step: the sink takes the decoded
        // events as a slice, so they are not copied for each attempt.
        let mut logged: Vec<&LoggedEvent> = Vec::with_capacity(events.len());
        let mut pending: Vec<E> = Vec::with_capacity(events.len());
        for e in events {
            match E::from_logged(e) {
                Ok(stored) => {
                    logged.push(e);
                    pending.push(stored);
                }
                Err(err) => self.bury(e, &err, 1).await?,
            }
        }
        let span = tracing::info_span!("outbox.deliver", consumer = %name, events = events.len());
        if let Some(parent) = events.iter().find_map(|e| e.traceparent.as_deref()) {
            corvus_platform::telemetry::set_parent_from_traceparent(&span, parent);
        }
        let mut attempts = 0;
        let mut transport_pause = self.config.retry_base;
        while !pending.is_empty() {
            let started = std::time::Instant::now();
            let result = tokio::select! {
                // Stopping wins over a sink that answers at once (one that is down).
                biased;
                () = self.stop.cancelled() => return Err(Stop::Cancelled),
                r = self.consumer.sink.deliver_answering(&pending).instrument(span.clone()) => r,
            };
            metrics::histogram!("corvus_outbox_delivery_seconds", "consumer" => name.clone())
                .record(started.elapsed().as_secs_f64());
            match result {
                Err(cause) => {
                    // Unreachable: nothing is known of the batch; retry all of it, forever.
                    tracing::warn!(consumer = %name, error = %cause, "outbox delivery failed, retrying");
                    metrics::counter!("corvus_outbox_delivery_errors_total", "consumer" => name.clone()).increment(1);
                    self.error_noted.store(true, Ordering::Relaxed);
                    self.note_error(Some(&cause)).await;
                    self.sleep(transport_pause).await;
                    transport_pause = (transport_pause * 2).min(self.config.retry_max);
                }
                Ok((mut failures, answers)) => {
                    // A failure naming nothing of this batch is the consumer's mistake:
                    // noted, and otherwise the batch counts as delivered.
                    let before = failures.len();
                    failures.retain(|f| pending.iter().any(|s| s.id() == f.event_id));
                    if failures.len() < before {
                        tracing::warn!(consumer = %name, unknown = before - failures.len(), "consumer named failures of entries it was not sent");
                    }
                    let delivered = pending.len() - failures.len();
                    self.note_erasures(&pending, &failures, &answers).await?;
                    metrics::counter!("corvus_outbox_delivered_total", "consumer" => name.clone())
                        .increment(delivered as u64);
                    if let Some(received) = pending.last().and_then(E::received_at) {
                        let lag = chrono::Utc::now().timestamp_millis()
                            - (received.seconds * 1000 + i64::from(received.nanos) / 1_000_000);
                        metrics::gauge!("corvus_outbox_lag_seconds", "consumer" => name.clone())
                            .set(lag.max(0) as f64 / 1000.0);
                    }
                    if failures.is_empty() && self.error_noted.swap(false, Ordering::Relaxed) {
                        self.note_error(None).await;
                    }
                    if failures.is_empty() {
                        return Ok(());
                    }
                    attempts += 1;
                    (logged, pending) = std::mem::take(&mut logged)
                        .into_iter()
                        .zip(std::mem::take(&mut pending))
                        .filter(|(_, s)| failures.iter().any(|f| f.event_id == s.id()))
                        .unzip();
                    if attempts >= self.config.max_attempts {
                        for (logged, stored) in logged.iter().zip(&pending) {
                            let reason = failures
                                .iter()
                                .find(|f| f.event_id == stored.id())
                                .map_or("failed", |f| f.reason.as_str());
                            self.bury(logged, reason, attempts).await?;
                        }
                        return Ok(());
                    }
                    let pause = self.config.retry_base * 2u32.pow(attempts.min(16));
                    self.sleep(pause.min(self.config.retry_max)).await;
                }
            }
        }
        Ok(())
    }

    /// Notes the erasures the consumer took (those it did not refuse) in the ledger.
    async fn note_erasures(&self, pending: &[E], failures: &[Failure], answers: &[ErasureAnswer]) -> Result<(), Stop> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        let taken: Vec<(Erasure<'_>, Option<&ErasureAnswer>)> = pending
            .iter()
            .filter_map(E::erasure)
            .filter(|e| !failures.iter().any(|f| f.event_id == e.change_id))
            .map(|e| (e, answers.iter().find(|a| a.change_id == e.change_id)))
            .collect();
        if taken.is_empty() {
            return Ok(());
        }
        // Not noted, it would stay pending on the receipt: the delivery goes again.
        ledger
            .received(&self.consumer.name, &taken)
            .await
            .map_err(|e| Stop::LostLease(format!("erasure receipts: {e}")))
    }

    async fn bury(&self, event: &LoggedEvent, reason: &str, attempts: u32) -> Result<(), Stop> {
        let name = &self.consumer.name;
        tracing::warn!(consumer = %name, event_id = %event.event_id, reason, "event dead-lettered");
        metrics::counter!("corvus_outbox_dead_letters_total", "consumer" => name.clone()).increment(1);
        self.log
            .dead_letter(name, event, reason, attempts)
            .await
            .map_err(|e| Stop::LostLease(e.to_string()))
    }

    /// Hands dead letters marked for replay to the consumer once more.
    async fn replay_dead_letters(&self) -> Result<(), corvus_storage::StorageError> {
        let name = &self.consumer.name;
        for dead in self.log.replays(name, self.config.batch_size).await? {
            let failure = match E::from_logged(&dead.event) {
                Err(err) => Some(err),
                Ok(stored) => match self.consumer.sink.deliver(std::slice::from_ref(&stored)).await {
                    Ok(failures) => failures.into_iter().next().map(|f| f.reason),
                    Err(cause) => Some(cause),
                },
            };
            self.log.replay_done(dead.id, failure.as_deref()).await?;
        }
        Ok(())
    }
}
