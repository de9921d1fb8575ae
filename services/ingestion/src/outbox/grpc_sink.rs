use async_trait::async_trait;
use corvus_platform::telemetry::TraceContextInterceptor;
use corvus_proto::common::v1::StoredEvent;
use corvus_proto::ingestion::v1::DeliverRequest;
use corvus_proto::ingestion::v1::event_consumer_service_client::EventConsumerServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::{EventSink, Failure};

/// A consumer that is a service implementing `corvus.ingestion.v1.EventConsumerService`.
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

#[async_trait]
impl EventSink for GrpcSink {
    async fn deliver(&self, events: &[StoredEvent]) -> Result<Vec<Failure>, String> {
        let request = DeliverRequest {
            consumer: self.consumer.clone(),
            events: events.to_vec(),
        };
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
