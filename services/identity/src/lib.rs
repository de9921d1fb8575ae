//! Corvus identity: every event resolved to one profile per person, the profile read
//! model, erasure, and probabilistic matching over the profiles.

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod log;
pub mod matching_job;
pub mod read_model;
pub mod service;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use corvus_log::outbox::{self, Consumer, Erasure, ErasureLedger, EventSink, Failure, OutboxConfig};
use corvus_platform::server::ReadinessCheck;
use corvus_proto::common::v1::StoredEvent;
use corvus_proto::identity::v1::ErasureAnswer;
use corvus_proto::identity::v1::LogEntry;
use corvus_proto::identity::v1::identity_service_server::IdentityServiceServer;
use corvus_proto::ingestion::v1::event_consumer_service_server::EventConsumerServiceServer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::IdentityConfig;
pub use service::{Caller, EventEraser, Identity, IdentityError, ProfileScores, Resolved, ScoresSource};

/// The gRPC service name, as health reports it.
pub const SERVICE_NAME: &str = "corvus.identity.v1.IdentityService";

/// How often identity's log is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The name identity consumes the event log under.
pub const CONSUMER_NAME: &str = "identity";

impl Identity {
    pub fn grpc_service(&self) -> IdentityServiceServer<grpc::IdentityApi> {
        IdentityServiceServer::new(grpc::IdentityApi { identity: self.clone() })
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
    }

    /// Identity as a consumer of ingestion's event log over gRPC, when the two run apart.
    pub fn resolving_consumer(&self) -> EventConsumerServiceServer<grpc::ResolvingConsumer> {
        EventConsumerServiceServer::new(grpc::ResolvingConsumer { identity: self.clone() })
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            // A delivery is up to the log's `batch_bytes` (16 MiB by default) of events.
            .max_decoding_message_size(corvus_log::outbox::MAX_DELIVERY_BYTES)
    }

    /// Starts identity's log: a dispatcher per consumer, each with its own cursor, so
    /// that a slow or failing consumer holds up neither identity nor another consumer;
    /// and its pruning, of the entries every consumer has passed, once `retention` old.
    /// They stop when `stop` is cancelled.
    pub fn spawn_log(
        &self,
        consumers: Vec<Consumer<LogEntry>>,
        config: &OutboxConfig,
        retention: Duration,
        stop: CancellationToken,
    ) -> JoinSet<()> {
        let receipts: Arc<dyn ErasureLedger> = Arc::new(Receipts {
            store: self.store.clone(),
        });
        let mut tasks = outbox::spawn_with_ledger(
            self.log.clone(),
            consumers,
            config.clone(),
            &self.handoff,
            Some(receipts),
            stop.clone(),
        );
        let log = self.log.clone();
        tasks.spawn(async move {
            while stop
                .run_until_cancelled(tokio::time::sleep(PRUNE_EVERY))
                .await
                .is_some()
            {
                let before = chrono::Utc::now() - retention;
                match log.prune(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(entries = n, "identity's log pruned"),
                    Err(err) => tracing::warn!(error = %err, "identity's log could not be pruned"),
                }
            }
        });
        tasks
    }

    /// Ready while the store and the cache answer.
    pub fn readiness(&self) -> ReadinessCheck {
        let (store, cache) = (self.store.clone(), self.read_model.cache.clone());
        Arc::new(move || {
            let (store, cache) = (store.clone(), cache.clone());
            Box::pin(async move {
                store.ping().await.map_err(|e| format!("identity store: {e}"))?;
                cache.ping().await.map_err(|e| format!("cache: {e}"))?;
                Ok(())
            })
        })
    }
}

/// Identity as a consumer of ingestion's event log: each delivery resolved, and the
/// events it could not read named.
#[async_trait]
impl EventSink for Identity {
    async fn deliver(&self, events: &[StoredEvent]) -> Result<Vec<Failure>, String> {
        let started = std::time::Instant::now();
        let resolved = self.resolve(events).await.map_err(|e| e.to_string())?;
        metrics::histogram!("corvus_identity_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("corvus_identity_events_resolved_total").increment(events.len() as u64);
        Ok(resolved
            .failures
            .into_iter()
            .map(|(event_id, reason)| Failure { event_id, reason })
            .collect())
    }
}

/// The erasure receipts, as the consumers of identity's log receive each erasure.
struct Receipts {
    store: Arc<dyn storage::IdentityStore>,
}

#[async_trait]
impl ErasureLedger for Receipts {
    async fn received(&self, consumer: &str, erasures: &[(Erasure<'_>, Option<&ErasureAnswer>)]) -> Result<(), String> {
        for (erasure, answer) in erasures {
            let (Ok(ws), Ok(profile)) = (erasure.workspace.parse(), erasure.profile.parse()) else {
                tracing::warn!(
                    consumer,
                    change = erasure.change_id,
                    "an erasure in identity's log names no profile"
                );
                continue;
            };
            let store = answer
                .map(|a| a.store.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(consumer);
            let removed = answer.map(|a| serde_json::to_string(&a.removed)).transpose();
            let removed = removed.map_err(|e| e.to_string())?.unwrap_or_else(|| "{}".to_owned());
            self.store
                .erasure_answered(&ws, profile, consumer, store, &removed)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
