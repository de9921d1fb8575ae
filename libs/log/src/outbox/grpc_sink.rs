use async_trait::async_trait;
use corvus_platform::telemetry::TraceContextInterceptor;
use corvus_proto::common::v1::StoredEvent;
use corvus_proto::identity::v1::{ErasureAnswer, LogEntry, log_entry};
use corvus_proto::ingestion::v1::DeliverRequest;
use corvus_proto::ingestion::v1::event_consumer_service_client::EventConsumerServiceClient;
use corvus_proto::orchestration::v1::DecisionLogEntry;
use secrecy::ExposeSecret;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use std::time::Duration;

use super::discovery::{self, Resolve};
use super::{ConsumerConfig, EventSink, Failure};

/// A consumer that is a service implementing `corvus.ingestion.v1.EventConsumerService`:
/// of ingestion's log (`events`), of identity's (`entries`) or of orchestration's
/// (`decisions`). The channel connects
/// lazily and reconnects by itself, balanced over the pods of a headless Service
/// (`discovery`); the trace context of the delivery and the key (a Corvus service's
/// consumer requires one of role `service`) travel in the metadata.
#[derive(Debug, Clone)]
pub struct GrpcSink {
    consumer: String,
    changes_only: bool,
    client: EventConsumerServiceClient<InterceptedService<Channel, Metadata>>,
}

/// What every call carries.
#[derive(Debug, Clone)]
struct Metadata {
    bearer: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Metadata {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = TraceContextInterceptor.call(request)?;
        if let Some(bearer) = &self.bearer {
            request.metadata_mut().insert("authorization", bearer.clone());
        }
        Ok(request)
    }
}

/// Why a consumer's configuration does not make a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    #[error("key: not a valid header value")]
    Key,
}

impl GrpcSink {
    pub fn new(config: &ConsumerConfig) -> Result<Self, SinkError> {
        Self::with_resolver(config, discovery::system(), discovery::EVERY)
    }

    /// A sink whose host name `resolve` looks up, every `every`. An `http://` endpoint
    /// named by host is balanced over every address the name has (the pods of a headless
    /// Service); an IP address, or `https://` (whose certificate names the host), is
    /// one connection.
    pub fn with_resolver(config: &ConsumerConfig, resolve: Resolve, every: Duration) -> Result<Self, SinkError> {
        let timeout = config.timeout;
        let configure = move |endpoint: Endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(2))
                // A consumer that hangs past this is retried like one that cannot be reached.
                .timeout(timeout)
        };
        let endpoint = Endpoint::from_shared(config.endpoint.clone())?;
        let uri = endpoint.uri();
        let by_name = uri.scheme_str() == Some("http")
            && uri
                .host()
                .is_some_and(|h| h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_err());
        let channel = match (by_name, uri.host(), uri.port_u16()) {
            (true, Some(host), port) => {
                discovery::balanced(host.to_owned(), port.unwrap_or(80), resolve, every, configure)
            }
            _ => configure(endpoint).connect_lazy(),
        };
        let bearer = config
            .key
            .as_ref()
            .map(|k| {
                format!("Bearer {}", k.expose_secret())
                    .parse()
                    .map_err(|_| SinkError::Key)
            })
            .transpose()?;
        Ok(Self {
            consumer: config.name.clone(),
            changes_only: config.changes_only,
            client: EventConsumerServiceClient::with_interceptor(channel, Metadata { bearer }),
        })
    }

    async fn send(&self, request: DeliverRequest) -> Result<(Vec<Failure>, Vec<ErasureAnswer>), String> {
        let response = self
            .client
            .clone()
            .deliver(request)
            .await
            .map_err(|status| format!("{}: {}", status.code(), status.message()))?
            .into_inner();
        let failures = response
            .failures
            .into_iter()
            .map(|f| Failure {
                event_id: f.event_id,
                reason: f.reason,
            })
            .collect();
        Ok((failures, response.erasures))
    }
}

#[async_trait]
impl EventSink<StoredEvent> for GrpcSink {
    async fn deliver(&self, events: &[StoredEvent]) -> Result<Vec<Failure>, String> {
        let request = DeliverRequest {
            consumer: self.consumer.clone(),
            events: events.to_vec(),
            ..Default::default()
        };
        Ok(self.send(request).await?.0)
    }
}

#[async_trait]
impl EventSink<LogEntry> for GrpcSink {
    async fn deliver(&self, entries: &[LogEntry]) -> Result<Vec<Failure>, String> {
        Ok(self.deliver_answering(entries).await?.0)
    }

    async fn deliver_answering(&self, entries: &[LogEntry]) -> Result<(Vec<Failure>, Vec<ErasureAnswer>), String> {
        let entries: Vec<LogEntry> = entries
            .iter()
            .filter(|e| !self.changes_only || matches!(e.entry, Some(log_entry::Entry::Change(_))))
            .cloned()
            .collect();
        if entries.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        self.send(DeliverRequest {
            consumer: self.consumer.clone(),
            entries,
            ..Default::default()
        })
        .await
    }
}

#[async_trait]
impl EventSink<DecisionLogEntry> for GrpcSink {
    async fn deliver(&self, decisions: &[DecisionLogEntry]) -> Result<Vec<Failure>, String> {
        let request = DeliverRequest {
            consumer: self.consumer.clone(),
            decisions: decisions.to_vec(),
            ..Default::default()
        };
        Ok(self.send(request).await?.0)
    }
}
