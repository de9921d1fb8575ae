//! Corvus orchestration: campaigns, and Decide: what to send each person, on which
//! channel and when, within their consent, caps and quiet hours, learning from the
//! outcomes of earlier decisions.

pub mod alerts;
pub mod config;
pub mod decide;
mod decider;
pub mod delivery;
pub mod domain;
pub mod follow;
pub mod grpc;
pub mod log;
pub mod outcomes;
pub mod people;
pub mod satisfaction;
pub mod service;
pub mod simulate;
pub mod storage;
pub mod triggers;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use corvus_log::outbox::{self, Consumer, EventSink, Failure};
use corvus_platform::server::ReadinessCheck;
use corvus_proto::identity::v1::{ErasureAnswer, LogEntry};
use corvus_proto::ingestion::v1::event_consumer_service_server::EventConsumerServiceServer;
use corvus_proto::orchestration::v1::DecisionLogEntry;
use corvus_proto::orchestration::v1::orchestration_service_server::OrchestrationServiceServer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::OrchestrationConfig;
pub use service::{CONSUMER_NAME, Orchestration, OrchestrationError};

/// How often the decision log is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The gRPC service name, as health reports it.
pub const SERVICE_NAME: &str = "corvus.orchestration.v1.OrchestrationService";

impl Orchestration {
    pub fn grpc_service(&self) -> OrchestrationServiceServer<grpc::OrchestrationApi> {
        OrchestrationServiceServer::new(grpc::OrchestrationApi {
            orchestration: self.clone(),
        })
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
    }

    /// Orchestration as a consumer of identity's log over gRPC, when the two run apart.
    pub fn log_consumer(&self) -> EventConsumerServiceServer<grpc::LogConsumer> {
        EventConsumerServiceServer::new(grpc::LogConsumer {
            orchestration: self.clone(),
        })
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_decoding_message_size(corvus_log::outbox::MAX_DELIVERY_BYTES)
    }

    /// Orchestration as an in-process consumer of identity's log.
    pub fn consumer(&self) -> Consumer<LogEntry> {
        Consumer {
            name: CONSUMER_NAME.to_owned(),
            sink: Arc::new(self.clone()),
            batch_size: Some(self.config().batch_size),
        }
    }

    /// Hands the decision log on: to the policy's own consumer, which counts trials, and
    /// to `consumers` (measurement, and the services configured); and prunes what every
    /// consumer has passed once it is older than the retention.
    pub fn spawn_log(&self, mut consumers: Vec<Consumer<DecisionLogEntry>>, stop: CancellationToken) -> JoinSet<()> {
        let config = self.config();
        consumers.push(Consumer {
            name: log::POLICY_CONSUMER.to_owned(),
            sink: Arc::new(log::Policy {
                store: self.store.clone(),
            }),
            batch_size: None,
        });
        let log = self.store.log();
        let mut tasks = outbox::spawn(log.clone(), consumers, config.log.clone(), stop.clone());
        let retention = config.log_retention;
        tasks.spawn(async move {
            while stop
                .run_until_cancelled(tokio::time::sleep(PRUNE_EVERY))
                .await
                .is_some()
            {
                match log.prune(chrono::Utc::now() - retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(entries = n, "orchestration's log pruned"),
                    Err(err) => tracing::warn!(error = %err, "orchestration's log could not be pruned"),
                }
            }
        });
        tasks
    }

    /// Ready while the store answers.
    pub fn readiness(&self) -> ReadinessCheck {
        let store = self.store.clone();
        Arc::new(move || {
            let store = store.clone();
            Box::pin(async move { store.ping().await.map_err(|e| format!("orchestration store: {e}")) })
        })
    }
}

#[async_trait]
impl EventSink<LogEntry> for Orchestration {
    async fn deliver(&self, entries: &[LogEntry]) -> Result<Vec<Failure>, String> {
        Ok(self.deliver_answering(entries).await?.0)
    }

    async fn deliver_answering(&self, entries: &[LogEntry]) -> Result<(Vec<Failure>, Vec<ErasureAnswer>), String> {
        Orchestration::deliver(self, entries).await.map_err(|e| e.to_string())
    }
}
