use async_trait::async_trait;
use corvus_platform::telemetry::TraceContextInterceptor;
use corvus_proto::common::v1::StoredEvent;
use corvus_proto::identity::v1::LogEntry;
use corvus_proto::ingestion::v1::DeliverRequest;
use corvus_proto::ingestion::v1::event_consumer_service_client::EventConsumerServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::{EventSink, Failure};

/// A consumer that is a service implementing `corvus.ingestion.v1.EventConsumerService`:
/// of ingestion's log (`events`) or of identity's (`entries`).
/// The channel connects lazily and reconnects by itself; the trace context of the
/// delivery travels in the call's metadata.
#[derive(Debug, Clone)]
pub struct GrpcSink {
    consumer: String,
    client: EventConsumerServiceClient<InterceptedService<Channel, TraceContextInterceptor>>,
}

impl GrpcSink {
    pub fn new(consumer: &str, endpoint: &str) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(30))
            .connect_lazy();
        Ok(Self {
            consumer: consumer.to_owned(),
            client: EventConsumerServiceClient::with_interceptor(channel, TraceContextInterceptor),
        })
    }
}

impl GrpcSink {
    async fn send(&self, request: DeliverRequest) -> Result<Vec<Failure>, String> {
        let response = self
            .client
            .clone()
            .deliver(request)
            .await
            .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
        Ok(response
            .into_inner()
            .failures
            .into_iter()
            .map(|f| Failure {
                event_id: f.event_id,
                reason: f.reason,
            })
            .collect())
    }
}

#[async_trait]
impl EventSink<StoredEvent> for GrpcSink {
    async fn deliver(&self, events: &[StoredEvent]) -> Result<Vec<Failure>, String> {
        self.send(DeliverRequest {
            consumer: self.consumer.clone(),
            events: events.to_vec(),
            entries: Vec::new(),
        })
        .await
    }
}

#[async_trait]
impl EventSink<LogEntry> for GrpcSink {
    async fn deliver(&self, entries: &[LogEntry]) -> Result<Vec<Failure>, String> {
        self.send(DeliverRequest {
            consumer: self.consumer.clone(),
            events: Vec::new(),
            entries: entries.to_vec(),
        })
        .await
    }
}
