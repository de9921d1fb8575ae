//! Corvus identity: every event resolved to one profile per person, the profile read
//! model, erasure, and probabilistic matching over the profiles.

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod matching_job;
pub mod read_model;
pub mod service;
pub mod storage;

use std::sync::Arc;

use corvus_platform::server::ReadinessCheck;
use corvus_proto::identity::v1::identity_service_server::IdentityServiceServer;

pub use config::IdentityConfig;
pub use service::{EventEraser, Identity, IdentityError, Resolved};

/// The gRPC service name, as health reports it.
pub const SERVICE_NAME: &str = "corvus.identity.v1.IdentityService";

/// The name identity consumes the event log under.
pub const CONSUMER_NAME: &str = "identity";

impl Identity {
    pub fn grpc_service(&self) -> IdentityServiceServer<grpc::IdentityApi> {
        IdentityServiceServer::new(grpc::IdentityApi { identity: self.clone() })
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
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
