//! Corvus ingestion: events in over gRPC and the Segment HTTP API, validated at the
//! edge, committed once per message id to the event log, and handed on in order to
//! every registered consumer through the outbox.

pub mod domain;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod storage;

/// The outbox that hands the event log on: the shared machinery of `corvus_log`.
pub use corvus_log::outbox;

use std::sync::Arc;
use std::time::Duration;

use corvus_platform::Authenticator;
use corvus_platform::server::ReadinessCheck;
use corvus_proto::ingestion::v1::event_consumer_service_server::EventConsumerServiceServer;
use corvus_proto::ingestion::v1::ingestion_service_server::IngestionServiceServer;
use corvus_storage::{Cache, StorageConfig};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::domain::Limits;
use crate::ingest::Ingestor;
use crate::outbox::{Consumer, ConsumerConfig, OutboxConfig};
use crate::storage::EventLog;

/// The gRPC service name, as health reports it.
pub const SERVICE_NAME: &str = "corvus.ingestion.v1.IngestionService";

/// The `[ingestion]` section of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestionConfig {
    /// The largest event, in bytes.
    pub max_event_bytes: usize,
    /// The largest batch (gRPC message or HTTP body after decompression), in bytes.
    pub max_batch_bytes: usize,
    /// How far in the future a skew-corrected timestamp may lie.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Identifier values that are refused (compared case-insensitively).
    pub blocked_values: Vec<String>,
    pub outbox: OutboxConfig,
    /// Services that receive every committed event over gRPC
    /// (`corvus.ingestion.v1.EventConsumerService`).
    pub consumers: Vec<ConsumerConfig>,
}

impl Default for IngestionConfig {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            max_event_bytes: limits.max_event_bytes,
            max_batch_bytes: limits.max_batch_bytes,
            max_future: limits.max_future,
            blocked_values: limits.blocked_values,
            outbox: OutboxConfig::default(),
            consumers: Vec::new(),
        }
    }
}

impl IngestionConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_event_bytes >= 1024,
            "ingestion.max_event_bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.max_batch_bytes >= self.max_event_bytes,
            "ingestion.max_batch_bytes must be at least ingestion.max_event_bytes"
        );
        self.outbox.validate("ingestion.outbox").map_err(anyhow::Error::msg)?;
        ConsumerConfig::validate_all("ingestion.consumers", &self.consumers).map_err(anyhow::Error::msg)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_event_bytes: self.max_event_bytes,
            max_batch_bytes: self.max_batch_bytes,
            max_future: self.max_future,
            blocked_values: self.blocked_values.clone(),
            ..Limits::default()
        }
    }
}

/// The ingestion service, connected to its storage.
#[derive(Clone)]
pub struct Ingestion {
    pub log: Arc<dyn EventLog>,
    pub cache: Arc<dyn Cache>,
    pub ingestor: Ingestor,
    config: IngestionConfig,
}

impl Ingestion {
    /// Connects the event log (running its migrations) and the cache.
    pub async fn connect(storage: &StorageConfig, config: &IngestionConfig) -> anyhow::Result<Self> {
        let log = storage::connect(storage).await?;
        let cache = <dyn Cache>::connect(storage).await?;
        let ingestor = Ingestor::new(log.clone(), cache.clone(), config.limits());
        Ok(Self {
            log,
            cache,
            ingestor,
            config: config.clone(),
        })
    }

    pub fn grpc_service(&self) -> IngestionServiceServer<grpc::IngestionApi> {
        let api = grpc::IngestionApi {
            ingestor: self.ingestor.clone(),
            log: self.log.clone(),
        };
        IngestionServiceServer::new(api)
            // A batch over the limit is refused by the transport with OUT_OF_RANGE.
            .max_decoding_message_size(self.config.max_batch_bytes)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
    }

    /// Ingestion as a consumer of identity's log, for erasures, when the two run apart.
    pub fn erasure_consumer(&self) -> EventConsumerServiceServer<grpc::ErasureConsumer> {
        EventConsumerServiceServer::new(grpc::ErasureConsumer { log: self.log.clone() })
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(corvus_log::outbox::MAX_DELIVERY_BYTES)
    }

    pub fn http_router(&self, auth: Arc<Authenticator>) -> axum::Router {
        http::router(self.ingestor.clone(), auth)
    }

    /// Starts the outbox for `consumers`; it stops when `stop` is cancelled.
    pub fn spawn_outbox(&self, consumers: Vec<Consumer>, stop: CancellationToken) -> JoinSet<()> {
        outbox::spawn(self.log.clone(), consumers, self.config.outbox.clone(), stop)
    }

    /// Ready while the event log and the cache answer.
    pub fn readiness(&self) -> ReadinessCheck {
        let (log, cache) = (self.log.clone(), self.cache.clone());
        Arc::new(move || {
            let (log, cache) = (log.clone(), cache.clone());
            Box::pin(async move {
                log.ping().await.map_err(|e| format!("event log: {e}"))?;
                cache.ping().await.map_err(|e| format!("cache: {e}"))?;
                Ok(())
            })
        })
    }
}
