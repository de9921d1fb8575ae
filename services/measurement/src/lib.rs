//! Corvus measurement: what each decision did. Orchestration's decisions are the
//! exposures, identity's resolved events the outcomes; the aggregates each experiment's
//! results are computed from are kept as they arrive (`storage`, `units`), and analysed
//! with the statistics of `stats`. Off-policy estimates of a candidate policy from logged
//! decisions are in `ope`.

pub mod config;
pub mod feedback;
pub mod grpc;
pub mod metric;
pub mod ope;
pub mod planning;
pub mod policy_value;
pub mod report;
pub mod results;
pub mod service;
pub mod stats;
pub mod storage;
pub mod units;

use std::sync::Arc;

use corvus_platform::server::ReadinessCheck;
use corvus_proto::common::v1::Channel;
use corvus_proto::ingestion::v1::event_consumer_service_server::EventConsumerServiceServer;
use corvus_proto::measurement::v1::measurement_service_server::MeasurementServiceServer;

pub use config::MeasurementConfig;
pub use service::{CONSUMER_NAME, DECISIONS_CONSUMER, Measurement, MeasurementError};

/// The gRPC service name, as health reports it.
pub const SERVICE_NAME: &str = "corvus.measurement.v1.MeasurementService";

/// A channel as measurement names it: `email`, `call_center`; `none` when nothing was
/// sent (the person was held out).
pub fn channel_name(channel: i32) -> String {
    match Channel::try_from(channel) {
        Ok(Channel::Unspecified) | Err(_) => "none".to_owned(),
        Ok(c) => c.as_str_name().trim_start_matches("CHANNEL_").to_ascii_lowercase(),
    }
}

impl Measurement {
    pub fn grpc_service(&self) -> MeasurementServiceServer<grpc::MeasurementApi> {
        MeasurementServiceServer::new(grpc::MeasurementApi {
            measurement: self.clone(),
        })
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
    }

    /// Measurement as a consumer of identity's and orchestration's logs over gRPC, when
    /// it runs apart from them.
    pub fn log_consumer(&self) -> EventConsumerServiceServer<grpc::LogConsumer> {
        EventConsumerServiceServer::new(grpc::LogConsumer {
            measurement: self.clone(),
        })
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_decoding_message_size(corvus_log::outbox::MAX_DELIVERY_BYTES)
    }

    /// Ready while the store answers.
    pub fn readiness(&self) -> ReadinessCheck {
        let store = self.store.clone();
        Arc::new(move || {
            let store = store.clone();
            Box::pin(async move { store.ping().await.map_err(|e| format!("measurement store: {e}")) })
        })
    }
}
