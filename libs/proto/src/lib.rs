//! The Corvus API: messages and gRPC services generated from `proto/`, the file
//! descriptor set that server reflection serves, and the id types every service shares.

pub mod codec;
pub mod ids;
pub mod json;
mod profile_response;
pub mod raw;

pub mod common {
    pub mod v1 {
        tonic::include_proto!("corvus.common.v1");
    }
}

pub mod identity {
    // `LogEntry` holds an event or a (much smaller) profile change; nearly every entry is
    // an event, so boxing it would cost an allocation for the common case.
    #[allow(clippy::large_enum_variant)]
    pub mod v1 {
        tonic::include_proto!("corvus.identity.v1");
        pub use crate::profile_response::GetProfileResponse;
    }
}

pub mod ingestion {
    pub mod v1 {
        tonic::include_proto!("corvus.ingestion.v1");
    }
}

pub mod measurement {
    pub mod v1 {
        tonic::include_proto!("corvus.measurement.v1");
    }
}

pub mod orchestration {
    pub mod v1 {
        tonic::include_proto!("corvus.orchestration.v1");
    }
}

pub mod scoring {
    pub mod v1 {
        tonic::include_proto!("corvus.scoring.v1");
    }
}

/// Every Corvus proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("corvus_descriptor");

pub use ids::{EventId, IdError, ProfileId, WorkspaceId};
