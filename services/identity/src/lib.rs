//! Corvus identity: resolves events to profiles. For now only the pure domain logic of
//! probabilistic record linkage; the gRPC service and storage come later.

pub mod domain;
