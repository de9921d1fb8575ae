//! Corvus scoring: what Corvus decides with, per profile, kept current as identity's
//! log brings resolved events and profile changes.

pub mod audiences;
mod cards;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod models;
pub mod propensity;
pub mod refit;
pub mod service;
pub mod storage;

use std::sync::Arc;

use async_trait::async_trait;
use corvus_log::outbox::{Consumer, EventSink, Failure};
use corvus_platform::server::ReadinessCheck;
use corvus_proto::identity::v1::{ErasureAnswer, LogEntry};
use corvus_proto::ingestion::v1::event_consumer_service_server::EventConsumerServiceServer;
use corvus_proto::scoring::v1::scoring_service_server::ScoringServiceServer;

pub use config::ScoringConfig;
pub use service::{CONSUMER_NAME, Scoring, ScoringError};

/// The gRPC service name, as health reports it.
pub const SERVICE_NAME: &str = "corvus.scoring.v1.ScoringService";

impl Scoring {
    pub fn grpc_service(&self) -> ScoringServiceServer<grpc::ScoringApi> {
        ScoringServiceServer::new(grpc::ScoringApi { scoring: self.clone() })
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
    }

    /// Scoring as a consumer of identity's log over gRPC, when the two run apart.
    pub fn log_consumer(&self) -> EventConsumerServiceServer<grpc::LogConsumer> {
        EventConsumerServiceServer::new(grpc::LogConsumer { scoring: self.clone() })
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(corvus_log::outbox::MAX_DELIVERY_BYTES)
    }

    /// Scoring as an in-process consumer of identity's log.
    pub fn consumer(&self) -> Consumer<LogEntry> {
        Consumer {
            name: CONSUMER_NAME.to_owned(),
            sink: Arc::new(self.clone()),
            batch_size: Some(self.config().batch_size),
        }
    }

    /// Ready while the store answers.
    pub fn readiness(&self) -> ReadinessCheck {
        let store = self.store.clone();
        Arc::new(move || {
            let store = store.clone();
            Box::pin(async move { store.ping().await.map_err(|e| format!("scoring store: {e}")) })
        })
    }
}

#[async_trait]
impl EventSink<LogEntry> for Scoring {
    async fn deliver(&self, entries: &[LogEntry]) -> Result<Vec<Failure>, String> {
        Ok(self.deliver_answering(entries).await?.0)
    }

    async fn deliver_answering(&self, entries: &[LogEntry]) -> Result<(Vec<Failure>, Vec<ErasureAnswer>), String> {
        let started = std::time::Instant::now();
        let delivered = Scoring::deliver(self, entries).await.map_err(|e| e.to_string())?;
        metrics::histogram!("corvus_scoring_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("corvus_scoring_entries_total").increment(entries.len() as u64);
        Ok(delivered)
    }
}
